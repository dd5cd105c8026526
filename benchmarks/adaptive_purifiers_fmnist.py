"""Every purifier's white-box number before and after the attacks purification papers are broken with.

For each purifier run given (denoising AE, FBGAN, Cowboy and its Defense-GAN mode, GCLN, AAA), on the
first --n test images at eps 0.1, two white-box evaluations of the same pipeline:

- before: what tfpurify reported until now: FGSM, PGD-40 and AutoAttack (rand for a stochastic
  pipeline) through the purifier's BPDA surrogate with EOT over 8 draws, one draw scored, checks 1-4;
- after: the same attacks with every white-box gradient (`--bpda auto`: the surrogate, and the exact
  gradient through an iterative purifier such as Cowboy's latent search), PGD-EOT (200 steps, 20 draws
  per step, `--eot-samples 1`) where the pipeline is stochastic, each adversarial example scored over
  10 draws (robust in all, in the majority), and sanity check 5, the binarization test.

Reported per purifier: the white-box worst case before and after, which attack set it, the
binarization test's success rate, seconds per example on this machine, and the rows of both reports.

A run folder that holds no trained defense is trained first, with the defense's default config (the
defense named by the label's start: `cowboy_gan` -> cowboy) for --train-minutes of wall time.

Usage: python benchmarks/adaptive_purifiers_fmnist.py --classifier runs/bench-cnn
       --run denoising_ae=runs/bench-denoising_ae [--run cowboy=runs/cowboy --run cowboy_gan=runs/cowboy:mode=defense_gan]
       [--n 200] [--eps 0.1] [--train-minutes 10] [--name adaptive_purifiers_fmnist]
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import environment, machine, rows_table, train_on_budget, write_results  # noqa: E402

from tfpurify import adaptive, data, evaluation, registry  # noqa: E402
from tfpurify.defenses import get_defense  # noqa: E402
from tfpurify.defenses.registry import REGISTRY, WEIGHTS  # noqa: E402
from tfpurify.training import load_defended  # noqa: E402


def _parse_run(text):
    """label=path[:field=value,...] -> (label, path, runtime overrides as text, read as each field's type
    by `load_defended`)."""
    label, _, rest = text.partition("=")
    path, _, fields = rest.partition(":")
    overrides = dict(item.partition("=")[::2] for item in filter(None, fields.split(",")))
    return label, path, overrides


def _train_missing(label, path, classifier, minutes):
    """Trains the defense the label names (its longest registered prefix) into `path` unless it holds one;
    returns the training record (that of an earlier run of this script where the run exists)."""
    name = max((n for n in REGISTRY if label.startswith(n)), key=len, default=None)
    if (pathlib.Path(path) / WEIGHTS).exists():
        timing = pathlib.Path(path) / "timing.json"
        return {"defense": name, "minutes": minutes, **json.loads(timing.read_text())} if timing.exists() else None
    if name is None:
        raise SystemExit(f"{label}: no trained defense in {path} and no registered defense named by the label")
    _, config_class = get_defense(name)
    fields = {f.name for f in dataclasses.fields(config_class)}
    overrides = {"epochs": 1000} if "epochs" in fields else {}
    if "classifier" in fields:
        overrides["classifier"] = (classifier,) if name == "aaa" else classifier
    timing = train_on_budget(name, config_class(**overrides), path, 60 * minutes)
    return {"defense": name, "minutes": minutes, **timing}


def _evaluate(defended, x, y, eps, after, label, args):
    stochastic = bool(getattr(defended.purifier, "stochastic", False))
    names = args.attacks.split(",") + (["pgd_eot"] if after and stochastic else [])
    specs = evaluation.make_attack_specs(names, [eps], version="rand" if stochastic else "standard",
                                         n_target_classes=args.n_target_classes)
    pipelines = adaptive.threat_model_pipelines(defended, eot_samples=1 if after else 8,
                                                bpda="auto" if after else "surrogate")
    start = time.perf_counter()
    report = evaluation.evaluate(defended, x, y, specs, threat_model="whitebox", pipelines=pipelines,
                                 score_draws=10 if after else 1, defense=label, classifier="cnn",
                                 dataset="fashion_mnist", progress=True, detector=defended.detector,
                                 sanity_n=args.sanity_n, sanity_queries=args.sanity_queries)
    seconds = time.perf_counter() - start
    if not after:  # check 5 did not exist before: keep the record, but it is no part of "before"
        report.sanity = [c for c in report.sanity if c["check"] != 5]
    return report, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", default="runs/bench-cnn")
    parser.add_argument("--run", action="append", required=True, help="label=path[:field=value,...]")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--offset", type=int, default=0,
                        help="start at this test image (a costly purifier measured in parts, combined afterwards)")
    parser.add_argument("--train-minutes", type=float, default=10.0,
                        help="wall time for training a run that does not exist yet")
    parser.add_argument("--name", default="adaptive_purifiers_fmnist")
    parser.add_argument("--attacks", default="fgsm,pgd,autoattack",
                        help="the attack set, before and after (a cheaper one for a costly purifier, stated in the results)")
    parser.add_argument("--n-target-classes", type=int, default=None, help="APGD-T's and AutoAttack's target classes")
    parser.add_argument("--sanity-n", type=int, default=200, help="examples the sanity checks run on")
    parser.add_argument("--sanity-queries", type=int, default=None, help="check 4's query budget (default 5000)")
    parser.add_argument("--append", action="store_true",
                        help="keep the purifiers already in the results file that this start does not run again")
    args = parser.parse_args()
    registry.load()
    trained = {}
    for text in args.run:  # train every missing run first, so a long evaluation never waits on one
        label, path, _ = _parse_run(text)
        if path not in trained:
            trained[path] = _train_missing(label, path, args.classifier, args.train_minutes)
    x, y = data.load_dataset("fashion_mnist", "test", limit=args.offset + args.n)
    x, y = x[args.offset:], y[args.offset:]
    rows, summary = _kept(args)
    for text in args.run:
        label, path, overrides = _parse_run(text)
        defended, info = load_defended(path, args.classifier, overrides)
        typed = info["runs"]["defense"].get("runtime", {})  # the overrides as the config holds them
        line = {"defense": label, "run": path, "overrides": typed, "training": trained.get(path),
                "protocol": _protocol(args)}
        for when in ("before", "after"):
            report, seconds = _evaluate(defended, x, y, args.eps, when == "after", label, args)
            worst = report.worst_case("whitebox", args.eps)
            results = [r for r in report.results if r.threat_model == "whitebox"]
            deciding = min(results, key=lambda r: r.accuracy) if results else None
            check5 = next((c for c in report.sanity if c["check"] == 5), None)
            line[when] = {"worst_case": worst, "seconds_per_example": seconds / len(x),
                          "set_by": None if deciding is None else deciding.attack
                          + (f" [{deciding.params['gradient']}]" if "gradient" in deciding.params else ""),
                          "binarization": None if check5 is None else {k: check5.get(k) for k in (
                              "status", "attack_success", "random_success", "fitted", "reason")},
                          "warnings": list(report.warnings)}
            over = report.worst_case_over_draws("whitebox", args.eps)
            if over is not None:
                line[when].update(score_draws=over[0], worst_case_all_draws=over[1], worst_case_majority=over[2])
            rows += [{**r, "params": {**r["params"], "protocol": when}, "benchmark_protocol": line["protocol"]}
                     for r in report.rows()
                     if r["threat_model"] == "whitebox"]
            _write(args, rows, summary + [line])  # a long run killed later keeps what it finished
        summary.append(line)


def _protocol(args):
    """The attack set and sanity-check budget of this start (recorded per purifier: --append mixes starts)."""
    return {"n": args.n, "offset": args.offset, "attacks": args.attacks, "n_target_classes": args.n_target_classes,
            "sanity_n": args.sanity_n, "sanity_queries": args.sanity_queries or 5000}


def _kept(args):
    """The rows and summary lines of purifiers this start does not run (with --append), else nothing."""
    path = pathlib.Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    if not args.append or not path.exists():
        return [], []
    labels = {_parse_run(text)[0] for text in args.run}
    old = json.loads(path.read_text())
    default = {"attacks": "fgsm,pgd,autoattack", "n_target_classes": None, "sanity_n": 200, "sanity_queries": 5000}
    summary = [{"protocol": default, **s} for s in old["summary"] if s["defense"] not in labels]
    rows = [{"benchmark_protocol": default, **r} for r in old["rows"] if r["defense"] not in labels]
    return rows, summary


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f} %"


def _number(value):
    return "-" if value is None else f"{value:.2f}"


def _write(args, rows, summary):
    """Writes the results so far (after every protocol of every purifier)."""
    lines = ["# Adaptive attacks on every purifier (Fashion-MNIST, white-box)", "",
             f"Machine: {machine()}. The first {args.n} test images, eps {args.eps:g} (L-inf), the `cnn` behind each "
             "purifier. Before: the attack set (default FGSM, PGD-40 and AutoAttack) through the BPDA surrogate, "
             "EOT 8, one draw scored, checks 1-4. After: the same with every white-box gradient (`--bpda auto`: "
             "the surrogate and, where the purifier is differentiable end to end, the exact gradient), PGD-EOT "
             "200 x 20 where the pipeline is stochastic, 10 draws scored, and sanity check 5 (the binarization "
             "test). A purifier too costly for the whole set gets a smaller one, named in its row. Script: "
             "`benchmarks/adaptive_purifiers_fmnist.py`.", "",
             "| purifier | worst case before | worst case after | set by (after) | all 10 draws / majority | "
             "binarization test (PGD success, random control) | s/example before | s/example after | "
             "attacks (sanity checks on, check-4 queries) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        b, a = s["before"], s.get("after")
        if a is None:  # "after" unfinished
            a = {"worst_case": None, "set_by": "(not finished)", "binarization": None, "seconds_per_example": None}
        draws = (f"{100 * a['worst_case_all_draws']:.1f} % / {100 * a['worst_case_majority']:.1f} %"
                 if "score_draws" in a else "- (deterministic)")
        check = a["binarization"] or {}
        binar = (f"{check['status']}: {100 * check['attack_success']:.0f} %, {100 * check['random_success']:.0f} %"
                 if check.get("attack_success") is not None else check.get("status", "-"))
        proto = s["protocol"]
        attacks = proto["attacks"].replace(",", ", ") + (
            f" ({proto['n_target_classes']} target classes)" if proto["n_target_classes"] else "")
        n = proto.get("n", args.n)  # a costly purifier may have run on fewer images: named in its row
        overrides = ", ".join(f"{k}={v}" for k, v in s["overrides"].items()) + (
            f"; the first {n} images" if n != args.n else "")
        lines.append(f"| {s['defense']}{f' ({overrides})' if overrides else ''} | {100 * b['worst_case']:.1f} % | "
                     f"{_percent(a['worst_case'])} | {a['set_by']} | {draws} | {binar} | "
                     f"{b['seconds_per_example']:.2f} | {_number(a['seconds_per_example'])} | "
                     f"{attacks} ({min(proto['sanity_n'], n)}, {proto['sanity_queries']}) |")
    trained = [f"{s['defense']} ({s['training']['defense']}, default config): {s['training']['train_seconds'] / 60:.0f} "
               f"minutes of wall time, {s['training'].get('images')} images seen" for s in summary if s.get("training")]
    if trained:
        lines += ["", "Trained by this script on this machine: " + "; ".join(trained) + "."]
    lines += ["", rows_table(rows)]
    write_results(args.name, {"environment": environment(), "n": args.n, "eps": args.eps, "rows": rows,
                              "summary": summary}, "\n".join(lines))


if __name__ == "__main__":
    main()
