"""`tfpurify eval RUN`: measure robustness, with the threat model named on every number."""

import pathlib

import click
import numpy as np

from cli.options import (COUNT, NON_NEGATIVE, POSITIVE, ZERO_OR_MORE, limit_option, parse_float_list, parse_list, registries,
                         runtime_options, runtime_overrides, seed_option)
from tfpurify.errors import InputValidationError




def _attacks_help():
    """The --attacks help: every registered attack, built-in and plug-in."""
    attacks = registries()[1]
    on_purifier = [name for name, attack in sorted(attacks.items()) if attack.needs_purifier]
    return (f"Comma list: {', '.join(name for name in sorted(attacks) if name not in on_purifier)} (l2l_da with "
            f"--l2l-da-run); on a purifier, white-box: {', '.join(on_purifier)}.")


@click.command("eval")
@click.argument("run")
@click.option("--classifier", "classifier_run", default=None,
              help="Classifier run the defense RUN protects (needed when RUN is a purifier); for an "
                   "adversarially trained RUN (pgd_at, l2l_da), the plain classifier of the `none` rows.")
@click.option("--attacks", default="fgsm,pgd", show_default=True, help=_attacks_help())
@click.option("--eps", default="0.1", show_default=True, help="Comma list of L-inf budgets in [0, 1].")
@click.option("--threat-model", default=None,
              help="Comma list of none, graybox, whitebox, whitebox_no_bpda (plain gradients, no BPDA: the "
                   "papers' protocol: a row beside theirs, masked where a non-differentiable part decides), transfer "
                   "[default: none for a classifier run, none,graybox,whitebox for a defense run].")
@click.option("--graybox-only", is_flag=True,
              help="Allow gray-box rows without white-box ones (otherwise whitebox is added to a graybox "
                   "request); the report then says it makes no robustness claim.")
@click.option("--surrogate", default=None, help="Classifier run to craft transfer attacks on.")
@click.option("--nb-iter", default=None, type=COUNT,
              help="Iterations of pgd/bim/mim [default: 40] and of the APGD attacks [default: 100].")
@click.option("--eps-iter", default=None, type=POSITIVE, help="Step size (default eps/4).")
@click.option("--restarts", default=1, show_default=True, type=COUNT, help="PGD random restarts.")
@click.option("--early-exit/--no-early-exit", default=True, show_default=True,
              help="PGD/BIM/MIM stop on an example at its first success (off: cleverhans' fixed steps).")
@click.option("--cascade/--no-cascade", default=True, show_default=True,
              help="Each attack runs only on the examples the attacks before it left robust (the worst case "
                   "for less compute; rows then count the attacks before them). Off: every attack's own number.")
@click.option("--autoattack-version", default="standard", show_default=True,
              help="standard (APGD-CE, APGD-T, FAB-T, Square), rand (APGD-CE, APGD-DLR with EOT, stochastic "
                   "defenses), or a comma list of stages run in that order (apgd-ce, apgd-dlr, apgd-t, fab-t, "
                   "square: the original's custom version).")
@click.option("--l2l-da-run", default=None,
              help="An l2l_da run folder: its trained generator is the `l2l_da` attack (10 z draws per example).")
@click.option("--l2l-da-finetune-steps", default=20, show_default=True, type=ZERO_OR_MORE,
              help="Before attacking, the `l2l_da` generator is fine-tuned this many updates against its target on "
                   "each batch, as the paper does (0: the generator as trained).")
@click.option("--eot-samples", default=8, show_default=True, type=COUNT,
              help="Draws averaged per gradient (EOT) for stochastic purifiers, white-box.")
@click.option("--bpda", default="auto", show_default=True,
              help="White-box gradients through the purifier, a comma list: surrogate (the defense's BPDA "
                   "surrogate), identity, unroll:K (K descent steps of a latent search), exact (backpropagation "
                   "through the served purifier; Cowboy: every step of its search); auto: surrogate, plus exact "
                   "where the purifier is differentiable end to end. Each attack runs with each; all count in "
                   "the white-box worst case.")
@click.option("--score-draws", default=10, show_default=True, type=COUNT,
              help="A stochastic pipeline classifies each adversarial example this many times: beside the "
                   "single draw, robust in all of them and in the majority (1: the single draw only).")
@click.option("--detector-weight", default=1.0, show_default=True, type=NON_NEGATIVE,
              help="Weight of the detector score in the white-box attack loss.")
@click.option("--batch-size", default=256, show_default=True, type=COUNT)
@limit_option
@seed_option
@click.option("--sanity-checks/--no-sanity-checks", default=True, show_default=True,
              help="Sanity checks 1-5 on the first 200 examples (PGD-2k, FGSM, eps 0.5, Square; the binarization test on 20).")
@click.option("--check-queries", default=5000, show_default=True, type=COUNT,
              help="Query budget of sanity check 4's Square attack (recorded in the report); the check says "
                   "what it will cost before a long run.")
@click.option("--chunk-minutes", default=0.0, show_default=True, type=NON_NEGATIVE,
              help="Run each attack in chunks of images of about this many minutes, the report kept after each, "
                   "so that a killed evaluation resumes inside a long attack (a latent-search defense); each chunk "
                   "draws its own random starts. 0: each attack at once, kept when it finishes.")
@click.option("--report", "report_path", default=None,
              help="Markdown report path (default RUN/report.md, for zoo:ENTRY reports/zoo-ENTRY.md); .json and "
                   ".png are written beside it.")
@click.option("--corruptions", default=None,
              help="Also measure accuracy under common corruptions (CIFAR-10-C definitions): all, or a comma list "
                   "of gaussian_noise, shot_noise, impulse_noise, speckle_noise, gaussian_blur, glass_blur, "
                   "defocus_blur, motion_blur, zoom_blur, brightness, contrast, elastic_transform, pixelate, "
                   "jpeg_compression; bare classifier and defense side by side. Needs tfpurify[corruptions].")
@click.option("--severities", default="1,2,3,4,5", show_default=True, help="Corruption severities (1-5).")
@runtime_options
def eval_command(run, classifier_run, attacks, eps, threat_model, graybox_only, surrogate, nb_iter, eps_iter, restarts,
                 early_exit, cascade, autoattack_version, l2l_da_run, l2l_da_finetune_steps, eot_samples, bpda, score_draws, detector_weight, batch_size,
                 limit, seed,
                 sanity_checks, check_queries, chunk_minutes, report_path, corruptions, severities, **runtime):
    """Attack RUN (a classifier or a defense run, or zoo:ENTRY) on the test split and write a report. A killed
    evaluation resumes with its next attack (or chunk of one: --chunk-minutes) when the same command is run
    again."""
    from tfpurify.adaptive import parse_bpda, threat_model_pipelines
    from tfpurify.classifiers import load_classifier
    from tfpurify.data import dataset_info, load_dataset
    from tfpurify.evaluation import evaluate, make_attack_specs
    from tfpurify.evaluation.report import KeptEvaluation
    from tfpurify.reports import save_pictures, to_markdown, write_json, write_markdown, write_report
    from tfpurify.training import load_defended
    from tfpurify.zoo import PREFIX, is_reference, resolve

    bpda_modes = parse_bpda(bpda)
    specs = make_attack_specs(parse_list(attacks, "--attacks"), parse_float_list(eps, "--eps"),
                              nb_iter=nb_iter, eps_iter=eps_iter, restarts=restarts, early_exit=early_exit,
                              version=autoattack_version, generator_run=l2l_da_run,
                              finetune_steps=l2l_da_finetune_steps)
    if corruptions is not None:  # fail on a bad list or a missing extra before any attack runs
        from tfpurify import corruptions as corruptions_lib

        corruption_names = corruptions_lib.parse_corruptions(corruptions)
        severity_values = [int(s) if s.is_integer() else s for s in parse_float_list(severities, "--severities")]
        for s in severity_values:
            if s not in corruptions_lib.SEVERITIES:
                raise InputValidationError(f"--severities: {s:g} is not an integer in 1-5")
        corruptions_lib.corrupt(np.zeros((1, 2, 2, 1), np.float32), corruption_names[0], 1)
    overrides = runtime_overrides(runtime)
    default_report = pathlib.Path(run) / "report.md"
    if is_reference(run):  # zoo:ENTRY -> its run folders, after checking their SHA-256 (the zoo stays as shipped)
        default_report = pathlib.Path("reports") / f"zoo-{run[len(PREFIX):]}.md"
        run, classifier_run, overrides = resolve(run, classifier_run, overrides)
    defended, info = load_defended(run, classifier_run, overrides)
    if info["defense"] == "none":
        default_threat_models = "none"
    elif defended.robust_classifier:  # adversarial training: gray-box = white-box; none needs the plain classifier
        default_threat_models = "none,whitebox" if classifier_run else "whitebox"
    else:
        default_threat_models = "none,graybox,whitebox"
    threat_models = parse_list(threat_model or default_threat_models, "--threat-model")
    if "graybox" in threat_models and "whitebox" not in threat_models and info["defense"] != "none":
        if graybox_only:
            click.echo("gray-box only (--graybox-only): the report says it makes no robustness claim", err=True)
        else:
            threat_models.append("whitebox")
            click.echo("gray-box numbers come with white-box ones: whitebox added (--graybox-only to leave it "
                       "out; the report then says so)", err=True)
    surrogate_model = load_classifier(surrogate)[0] if surrogate else None
    x, y = load_dataset(info["dataset"], "test", limit=limit)
    pipelines = threat_model_pipelines(defended, surrogate_model, eot_samples, detector_weight, bpda_modes)
    markdown_path = pathlib.Path(report_path or default_report)

    # a killed evaluation keeps what it finished, and the same command resumes it with the next attack
    kept = KeptEvaluation(markdown_path.with_suffix(".partial.npz"),
                          {"options": click.get_current_context().params, "runs": info["runs"]})
    if kept.resume is not None:
        click.echo(f"resuming the unfinished evaluation in {kept.path} ({len(kept.resume.results)} attack runs "
                   "finished)", err=True)

    def checkpoint(unfinished):  # after every attack and check
        write_json(unfinished, markdown_path.with_suffix(".json"))
        write_markdown(unfinished, markdown_path)
        kept.checkpoint(unfinished)

    report = evaluate(defended, x, y, specs, threat_model=threat_models, pipelines=pipelines,
                      batch_size=batch_size, seed=seed, sanity_checks=sanity_checks, defense=info["defense"],
                      classifier=info["classifier"], dataset=info["dataset"], progress=True,
                      detector=defended.detector, runs=info["runs"], cascade=cascade, score_draws=score_draws,
                      sanity_queries=check_queries, checkpoint=checkpoint, resume=kept.resume,
                      chunk_seconds=chunk_minutes * 60 or None)
    if corruptions is not None:
        scored = {name: pipeline[1] for name, pipeline in pipelines.items()
                  if name in ("none", "graybox") and pipeline is not None}
        bare = {"none": scored["none"]} if "none" in scored else {}
        defense = {info["defense"]: scored["graybox"]} if "graybox" in scored else {}
        report.corruptions = corruptions_lib.evaluate_corruptions(
            {**bare, **defense}, x, y, corruption_names, severity_values, batch_size, seed, info["classifier"])
        report.corruption_grid = corruptions_lib.corruption_grid(x[0], corruption_names, (0, *severity_values), seed)
    paths = write_report(report, markdown_path, dataset_info(info["dataset"]).class_names)
    if defended.purifier is not None:  # reconstructions, latent traversals ...
        paths.update(save_pictures(defended.purifier.pictures(x[:10]), pathlib.Path(paths["markdown"]).parent / "pictures"))
    kept.discard()
    click.echo(to_markdown(report))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")
