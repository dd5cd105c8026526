"""Robustness table of one registered defense on Fashion-MNIST, in the format every defense reuses.

Rows: undefended cnn (threat model none), the defense gray-box and white-box (BPDA/EOT, detector
aware), FGSM, PGD-40 (step eps/4) and AutoAttack at each eps, worst case per example, sanity
checks 1-4;
plus training wall time, purification throughput (batch 256) and the latency of the exported
SavedModel (batch 1 and 256, p50/p99) on this CPU.

Usage: python benchmarks/defense_fmnist.py --defense denoising_ae [--n 1000] [--eps 0.1,0.2]
       [--set epochs=5 --set noise_std=0.3]
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import environment, machine, rows_table, write_results  # noqa: E402
from fbgan_fmnist import paper_value  # noqa: E402

from tfpurify import adaptive, classifiers, data, evaluation, export, reports  # noqa: E402
from tfpurify.defenses import get_defense  # noqa: E402
from tfpurify.training import load_defended, train_defense  # noqa: E402
from tfpurify.tuning import parse_assignment  # noqa: E402


# Paper anchors on Fashion-MNIST, shown beside our rows.
PAPER_ANCHORS = {
    # GCLN reports only CIFAR-10 and SVHN: on Fashion-MNIST its anchor is PGD adversarial training
    "gcln": [{"source": "FBGAN Table 1 (PGD adversarial training at eps 0.1)", "threat_model": "whitebox",
              "attack": "pgd", "eps": 0.1,
              "accuracy": paper_value("adversarial training PGD 0.1 (white-box)", "pgd", 0.1)}],
    # FBGAN's white-box numbers are without BPDA (our whitebox_no_bpda); set beside our whitebox rows
    "fbgan": [{"source": "FBGAN Table 1", "threat_model": "clean", "attack": "none", "eps": 0,
               "accuracy": paper_value("FBGAN gray-box", "clean")}]
    + [{"source": "FBGAN Table 1", "threat_model": tm, "attack": attack, "eps": eps,
        "accuracy": paper_value(row, attack, eps)}
       for attack in ("fgsm", "pgd") for tm, row in (("graybox", "FBGAN gray-box"),
                                                     ("whitebox", "FBGAN white-box (no BPDA)"))
       for eps in (0.1, 0.3)]
    + [{"source": "FBGAN Table 1", "threat_model": "whitebox", "attack": "pgd adversarial training (eps 0.1)",
        "eps": 0.1, "accuracy": paper_value("adversarial training PGD 0.1 (white-box)", "pgd", 0.1)}],
}


def _comparison(defense, rows):
    """Markdown: paper anchors and the denoising-AE baseline next to this defense's rows."""
    baseline_path = pathlib.Path(__file__).resolve().parent / "results" / "denoising_ae_fmnist.json"
    baseline = json.loads(baseline_path.read_text())["rows"] if baseline_path.exists() and defense != "denoising_ae" else []
    anchors = PAPER_ANCHORS.get(defense, [])
    if not anchors and not baseline:
        return ""

    def find(table, tm, attack, eps):
        for r in table:
            if r["threat_model"] == tm and r["attack"] == attack and r["eps"] == eps and r.get("defense", defense) != "none":
                return f"{100 * r['accuracy']:.1f} %"
        return "-"

    keys = [(r["threat_model"], r["attack"], r["eps"]) for r in rows if r["defense"] != "none"]
    lines = [f"| threat model | attack | eps | {defense} (ours) | paper | denoising_ae (ours) |", "|---|---|---|---|---|---|"]
    for tm, attack, eps in keys:
        lines.append(f"| {tm} | {attack} | {eps:g} | {find(rows, tm, attack, eps)} | {find(anchors, tm, attack, eps)} | "
                     f"{find(baseline, tm, attack, eps)} |")
    extra = [a for a in anchors if (a["threat_model"], a["attack"], a["eps"]) not in keys]
    lines += [f"| {a['threat_model']} | {a['attack']} | {a['eps']:g} | - | {100 * a['accuracy']:.1f} % | - |" for a in extra]
    return "## Comparison\n\n" + "\n".join(lines) + "\n\n"


def _parse_sets(items, config_class):
    return dict(parse_assignment(item, config_class) for item in items)


def serving_latency(path, input_shape, batch_sizes=(1, 256), repeats=(200, 20)):
    """p50/p99 milliseconds of the exported serving_default signature, loaded fresh."""
    model = tf.saved_model.load(str(path))
    serve = model.signatures["serving_default"]
    out = {}
    for batch, n in zip(batch_sizes, repeats):
        x = tf.random.uniform((batch, *input_shape))
        for _ in range(5):
            serve(images=x)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            serve(images=x)["classes"].numpy()
            times.append(1000 * (time.perf_counter() - start))
        out[f"batch_{batch}"] = {"p50_ms": round(float(np.percentile(times, 50)), 2),
                                 "p99_ms": round(float(np.percentile(times, 99)), 2), "repeats": n}
    return out


def purify_throughput(defended, x, batch=256):
    fn = tf.function(defended.purify)
    fn(tf.constant(x[:batch]))
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        fn(tf.constant(x[i:i + batch])).numpy()
    return len(x) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defense", default="denoising_ae")
    parser.add_argument("--classifier-run", default="runs/bench-cnn")
    parser.add_argument("--run", default=None, help="defense run folder (default runs/bench-<defense>)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", default="0.1,0.2")
    parser.add_argument("--nb-iter", type=int, default=40)
    parser.add_argument("--eot-samples", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], help="config field=value")
    parser.add_argument("--tag", default="", help="suffix of the results name and run folder (a second config)")
    parser.add_argument("--no-autoattack", action="store_true", help="FGSM and PGD only (faster)")
    args = parser.parse_args()
    if args.defense == "fbgan" and not args.tag:  # fbgan_fmnist.{json,md} belong to benchmarks/fbgan_fmnist.py
        parser.error("FBGAN's own benchmark is benchmarks/fbgan_fmnist.py (its paper's Table 1 layout, with "
                     "fbgan_fmnist.json); give --tag T here to write fbgan_fmnist_T instead")

    _, config_class = get_defense(args.defense)
    clf_run = pathlib.Path(args.classifier_run)
    fields = _parse_sets(args.set, config_class)
    if "classifier" in {f.name for f in dataclasses.fields(config_class)}:  # the classifier it protects / starts from
        fields.setdefault("classifier", str(clf_run))
    config = config_class(**fields)
    if not (clf_run / "classifier.weights.h5").exists():
        classifiers.train_classifier(classifiers.ClassifierConfig(arch="cnn", epochs=3), clf_run, verbose=2)
    name = f"{args.defense}_fmnist" + (f"_{args.tag}" if args.tag else "")
    run = pathlib.Path(args.run or f"runs/bench-{args.defense}" + (f"-{args.tag}" if args.tag else ""))
    timing_file = run / "train_seconds.txt"
    if not (run / "defense.weights.h5").exists():
        start = time.perf_counter()
        train_defense(args.defense, config, run, verbose=2)
        timing_file.write_text(f"{time.perf_counter() - start:.1f}\n")
    train_seconds = float(timing_file.read_text()) if timing_file.exists() else None
    defended, info = load_defended(run, clf_run)
    config = get_defense(args.defense)[1].from_dict(info["config"])  # what the run was trained with

    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    eps_values = [float(e) for e in args.eps.split(",")]
    specs = evaluation.make_attack_specs(["fgsm", "pgd"], eps_values, nb_iter=args.nb_iter)
    if not args.no_autoattack:  # AutoAttack at its standard budgets (APGD 100 iterations, Square 5000 queries)
        specs += evaluation.make_attack_specs(["autoattack"], eps_values)
    start = time.perf_counter()
    report = evaluation.evaluate(
        defended, x, y, specs, threat_model=["none", "graybox", "whitebox"],
        pipelines=adaptive.threat_model_pipelines(defended, eot_samples=args.eot_samples),
        defense=args.defense, classifier="cnn", dataset="fashion_mnist", detector=defended.detector,
        progress=True, cascade=False)  # each attack's own number, to set beside the papers' rows
    eval_seconds = time.perf_counter() - start

    d = report.to_dict()
    write_results(name, {"partial": "evaluation only", "rows": d["rows"]}, rows_table(d["rows"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_saved_model(defended, tmp, args.defense, 1, x.shape[1:])
        latency = serving_latency(path, x.shape[1:])
    results = {
        "benchmark": name, "dataset": "fashion_mnist", "n_examples": len(x), "seed": 0,
        "config": dataclasses.asdict(config), "rows": d["rows"], "detection": d["detection"],
        "settings": d["settings"], "sanity_checks": d["sanity_checks"], "warnings": d["warnings"],
        "paper_anchors": PAPER_ANCHORS.get(args.defense, []),
        "timings": {"train_seconds": train_seconds, "eval_seconds": round(eval_seconds, 1),
                    "purify_images_per_second": round(purify_throughput(defended, x), 1),
                    "saved_model_latency": latency},
        "environment": environment(),
    }
    train_time = f"{train_seconds} s" if train_seconds is not None else "not timed (the run folder was trained by another script)"
    lat = "\n".join(f"| {k.replace('_', ' ')} | {v['p50_ms']} | {v['p99_ms']} |" for k, v in latency.items())
    md = (f"# {args.defense} on Fashion-MNIST ({len(x)} test images, cnn classifier)\n\n"
          f"Config: `{json.dumps(dataclasses.asdict(config))}`. PGD: {args.nb_iter} iterations, step eps/4, "
          f"EOT samples {args.eot_samples} (stochastic purifiers only); every attack on every example (no "
          f"cascade), so each row is that attack's own number. Threat model `none` = the bare "
          f"classifier; `graybox` = attack the classifier, classify through the defense; `whitebox` = attack "
          f"end to end (BPDA where not differentiable).\n\n{rows_table(d['rows'])}\n\n"
          + _comparison(args.defense, d["rows"])
          + "\n".join(reports.detection_lines(d["detection"]) + reports.sanity_lines(d["sanity_checks"],
                                                                                     d["warnings"])).strip()
          + f"\n\n| exported SavedModel latency | p50 ms | p99 ms |\n|---|---|---|\n{lat}\n\n"
          f"Training wall time: {train_time}; purification throughput (batch 256): "
          f"{results['timings']['purify_images_per_second']} images/s. Environment: {machine()}.\n")
    write_results(name, results, md)


if __name__ == "__main__":
    main()
