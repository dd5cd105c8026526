"""`tfpurify tune DEFENSE`: keras-tuner search over a defense's config fields."""

import click

from cli.options import COUNT, POSITIVE, limit_option, seed_option


@click.command("tune")
@click.argument("defense")
@click.option("--param", "params", multiple=True, required=True,
              help="NAME=LOW:HIGH (int or float range, :log for log scale) or NAME=a,b,c (choice); repeatable.")
@click.option("--set", "sets", multiple=True, help="NAME=VALUE: a config field kept fixed; repeatable.")
@click.option("--classifier", "classifier_run", default=None,
              help="Classifier run the defense protects (purifiers); also its `classifier` field where it has one.")
@click.option("--objective-classifier", "objective_classifier_run", default=None,
              help="Classifier run the objective is measured with [default: --classifier]; e.g. a transfer "
                   "classifier for aaa.")
@click.option("--objective", default="robust_accuracy", show_default=True,
              help="robust_accuracy (white-box PGD), clean_accuracy or worst_case (clean, FGSM and PGD).")
@click.option("--tuner", default="random", show_default=True, help="random or hyperband.")
@click.option("--trials", default=10, show_default=True, type=COUNT, help="Trials of the random search.")
@click.option("--max-epochs", default=3, show_default=True, type=COUNT, help="Hyperband's epochs per trial at most.")
@click.option("--epochs", default=None, type=COUNT, help="Epochs per random-search trial [default: the config's].")
@click.option("--eps", default=0.1, show_default=True, type=POSITIVE, help="L-inf budget of the objective's attacks.")
@click.option("--nb-iter", default=10, show_default=True, type=COUNT, help="PGD iterations of the objective.")
@click.option("--val-limit", default=500, show_default=True, type=COUNT,
              help="Validation images (of the training split) the objective is measured on.")
@limit_option
@seed_option
@click.option("--out", required=True, help="Folder: trials.csv/.md, objective.png, best/config.json; resumes.")
def tune_command(defense, params, sets, classifier_run, objective_classifier_run, objective, tuner, trials, max_epochs, epochs, eps, nb_iter,
                 val_limit, limit, seed, out):
    """Search DEFENSE's hyperparameters; the objective never sees the test split."""
    import dataclasses

    from tfpurify.defenses import get_defense
    from tfpurify.tuning import parse_assignment, parse_param, tune

    _, config_class = get_defense(defense)
    fixed = dict(parse_assignment(text, config_class) for text in sets)
    fields = {f.name for f in dataclasses.fields(config_class)}
    extra = {"seed": seed, "classifier": classifier_run if "classifier" in fields else None}
    fixed.update({k: v for k, v in extra.items() if v is not None})
    base = config_class(**fixed)
    specs = [parse_param(text, config_class) for text in params]
    best, rows = tune(defense, specs, out, base, classifier_run, objective, tuner, trials, max_epochs, eps, nb_iter,
                      val_limit=val_limit, seed=seed, objective_classifier_run=objective_classifier_run,
                      search_epochs=epochs, search_limit=limit)
    import json
    import pathlib

    searched = json.loads((pathlib.Path(out) / "best" / "search.json").read_text())
    finished = [r for r in rows if r["score"] is not None]
    click.echo(f"{len(finished)} of {len(rows)} trials finished; table: {out}/trials.md, plot: {out}/objective.png")
    click.echo("best: " + ", ".join(f"{s.name}={getattr(best, s.name)}" for s in specs))
    if searched.get("warning"):
        click.echo(f"warning: {searched['warning']}", err=True)
    click.echo(f"train it: tfpurify train {defense} --config {out}/best/config.json --out runs/{defense} (the "
               f"search trained each trial on {searched['train_examples']} images for {searched['epochs_per_trial']} "
               "epoch(s); best/config.json keeps the config's own sizes)")
