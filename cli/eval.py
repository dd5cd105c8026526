"""`tfpurify eval RUN`: measure robustness, with the threat model named on every number."""

import pathlib

import click

from cli.options import limit_option, parse_float_list, parse_list, seed_option


@click.command("eval")
@click.argument("run")
@click.option("--attacks", default="fgsm,pgd", show_default=True,
              help="Comma list: fgsm, pgd, bim, mim, cw_l2, spsa.")
@click.option("--eps", default="0.1", show_default=True, help="Comma list of L-inf budgets in [0, 1].")
@click.option("--threat-model", default="none", show_default=True,
              help="Comma list: none, transfer (graybox, whitebox with a defense run).")
@click.option("--surrogate", default=None, help="Classifier run to craft transfer attacks on.")
@click.option("--nb-iter", default=40, show_default=True, type=int, help="Iterations of pgd/bim/mim.")
@click.option("--eps-iter", default=None, type=float, help="Step size (default eps/4).")
@click.option("--restarts", default=1, show_default=True, type=int, help="PGD random restarts.")
@click.option("--batch-size", default=256, show_default=True, type=int)
@limit_option
@seed_option
@click.option("--sanity-checks/--no-sanity-checks", default=True, show_default=True,
              help="Gradient-masking checks 1-3 of EVALUATION.md (on 200 examples).")
@click.option("--report", "report_path", default=None,
              help="Markdown report path (default RUN/report.md); .json and .png are written beside it.")
def eval_command(run, attacks, eps, threat_model, surrogate, nb_iter, eps_iter, restarts, batch_size,
                 limit, seed, sanity_checks, report_path):
    """Attack RUN's model on the test split and write a robustness report."""
    from tfpurify.classifiers import load_classifier
    from tfpurify.data import dataset_info, load_dataset
    from tfpurify.evaluation import evaluate, make_attack_specs
    from tfpurify.reports import to_markdown, write_report

    specs = make_attack_specs(parse_list(attacks, "--attacks"), parse_float_list(eps, "--eps"),
                              nb_iter=nb_iter, eps_iter=eps_iter, restarts=restarts)
    model, config = load_classifier(run)
    surrogate_model = load_classifier(surrogate)[0] if surrogate else None
    x, y = load_dataset(config.dataset, "test", limit=limit)
    report = evaluate(model, x, y, specs, threat_model=parse_list(threat_model, "--threat-model"),
                      surrogate_fn=surrogate_model, batch_size=batch_size, seed=seed,
                      sanity_checks=sanity_checks, classifier=config.arch, dataset=config.dataset,
                      progress=True)
    paths = write_report(report, report_path or pathlib.Path(run) / "report.md",
                         dataset_info(config.dataset).class_names)
    click.echo(to_markdown(report))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")
