"""An independent attacker on the exported SavedModel against tfpurify's own white-box report.

IBM ART's PGD differentiates the `serving_default` signature of `tfpurify export`, loaded in a fresh
process (`tf.saved_model.load`: no tfpurify object in sight, just the graph TF Serving would run);
tfpurify's white-box evaluation (`--bpda auto`: the BPDA surrogate and the exact gradient where the
purifier is differentiable end to end) attacks the same run on the same images at the same eps.
The claim under test: the independent attacker never finds a lower accuracy than tfpurify's report.
Both sides run the same PGD (40 steps of eps/4, one random start; ART's cross-entropy on the served
probabilities, ours on the logits). Reported: both accuracies, and the images ART fooled that
tfpurify's report counts robust (should be none).

Usage: python benchmarks/art_savedmodel_fmnist.py --run runs/cowboy --classifier runs/bench-cnn
       [--override cleaning_seed=0 --override clean_only_detected=false] [--n 100] [--eps 0.1]
       [--label cowboy] [--name art_savedmodel_fmnist]
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import environment, machine, rows_table, write_results  # noqa: E402

from tfpurify import adaptive, data, evaluation  # noqa: E402
from tfpurify.training import load_defended  # noqa: E402

PGD = {"nb_iter": 40, "rand_init": True, "restarts": 1}

# Runs in a fresh interpreter: loads the SavedModel and attacks it with ART, nothing of tfpurify imported.
_ART = r"""
import json, sys
import numpy as np
import tensorflow as tf
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import TensorFlowV2Classifier

path, images, eps, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
loaded = tf.saved_model.load(path)  # kept: a signature holds its variables only weakly
served = loaded.signatures["serving_default"]
batch = np.load(images)
x, y = batch["x"], batch["y"]
onehot = np.eye(10, dtype=np.float32)[y]  # ART's estimators take one-hot labels

def forward(images, training=False):  # ART passes `training`
    return served(images=images)["probabilities"]

estimator = TensorFlowV2Classifier(forward, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
                                   loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=False))
attack = ProjectedGradientDescent(estimator, norm=np.inf, eps=eps, eps_step=eps / 4, max_iter=40, num_random_init=1,
                                  batch_size=len(x), verbose=False)
x_adv = attack.generate(x, onehot)
clean = np.argmax(forward(tf.constant(x)).numpy(), axis=1) == y
robust = clean & (np.argmax(forward(tf.constant(x_adv)).numpy(), axis=1) == y)
gradient = estimator.loss_gradient(x[:8], onehot[:8])
json.dump({"clean": clean.tolist(), "robust": robust.tolist(),
           "gradient_l1_per_image": float(np.abs(gradient).sum() / len(gradient)),
           "max_perturbation": float(np.abs(x_adv - x).max())}, open(out, "w"))
"""


def _parse_override(text):
    """key=value -> (key, value as text): `load_defended` reads it as the field's type."""
    key, _, value = text.partition("=")
    return key, value


def _export(args, folder):
    """`tfpurify export` in its own process, the run's runtime overrides passed as its options."""
    command = [sys.executable, "-c", "from cli.main import cli; cli()", "export", args.run, "--classifier", args.classifier,
               "--name", "under-attack", "--out", str(folder)]
    for text in args.override:
        key, value = _parse_override(text)
        command += [f"--{key.replace('_', '-')}", str(value)]
    subprocess.run(command, check=True, cwd=pathlib.Path(__file__).resolve().parents[1])
    return folder / "under-attack" / "1"


def _art(saved_model, x, y, eps, folder):
    images, out = folder / "images.npz", folder / "art.json"
    np.savez(images, x=x, y=y)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _ART, str(saved_model), str(images), str(eps), str(out)], check=True)
    result = json.loads(out.read_text())
    result["seconds"] = time.perf_counter() - start
    return result


def _ours(args, x, y):
    overrides = dict(_parse_override(text) for text in args.override)
    defended, info = load_defended(args.run, args.classifier, overrides)
    specs = evaluation.make_attack_specs(["pgd"], [args.eps], **PGD)
    pipelines = adaptive.threat_model_pipelines(defended, eot_samples=1, bpda="auto")
    start = time.perf_counter()
    report = evaluation.evaluate(defended, x, y, specs, threat_model="whitebox", pipelines=pipelines,
                                 sanity_checks=False, cascade=True, defense=args.label, classifier="cnn",
                                 dataset="fashion_mnist", progress=True, detector=defended.detector)
    return report, time.perf_counter() - start, info["runs"]["defense"].get("runtime", {})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--classifier", default="runs/bench-cnn")
    parser.add_argument("--override", action="append", default=[], help="a runtime field, key=value (repeatable)")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--label", default=None, help="the defense's name in the results (default: the run's folder)")
    parser.add_argument("--name", default="art_savedmodel_fmnist")
    args = parser.parse_args()
    args.label = args.label or pathlib.Path(args.run).name
    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        art = _art(_export(args, folder), x, y, args.eps, folder)
    report, seconds, overrides = _ours(args, x, y)  # the overrides as the config holds them
    clean = report.clean_by_threat_model.get("whitebox", report.clean_correct)
    ours = np.logical_and.reduce([clean] + [r.correct for r in report.results if r.threat_model == "whitebox"])
    art_robust = np.asarray(art["robust"])
    missed = int(np.sum(ours & ~art_robust))
    rows = [r for r in report.rows() if r["threat_model"] == "whitebox"]
    rows.append({"defense": args.label, "classifier": "cnn", "threat_model": "whitebox (ART on the SavedModel)",
                 "attack": "pgd (ART)", "eps": args.eps, "accuracy": float(art_robust.mean()),
                 "params": {"norm": "inf", "eps_iter": args.eps / 4, **PGD, "loss": "cross-entropy on probabilities"}})
    summary = {"defense": args.label, "run": args.run, "overrides": overrides,
               "n": args.n, "eps": args.eps, "clean_served": float(np.mean(art["clean"])),
               "clean_ours": report.clean_accuracy, "art_pgd": float(art_robust.mean()),
               "ours_worst_case": report.worst_case("whitebox", args.eps), "fooled_by_art_but_robust_in_ours": missed,
               "art_gradient_l1_per_image": art["gradient_l1_per_image"],
               "art_max_perturbation": art["max_perturbation"], "art_seconds": art["seconds"], "ours_seconds": seconds,
               "holds": bool(ours.mean() <= art_robust.mean() + 1e-9)}
    lines = ["# An independent attacker on the exported SavedModel (Fashion-MNIST)", "",
             f"Machine: {machine()}. IBM ART's PGD (40 x eps/4, one random start) differentiates the "
             "`serving_default` signature of `tfpurify export`, loaded in a fresh process; tfpurify's white-box "
             "evaluation (`--bpda auto`, the same PGD, detector-aware) attacks the same run on the same images. "
             "Script: `benchmarks/art_savedmodel_fmnist.py`.", "",
             "| defense | runtime options | images | eps | clean (served) | ART PGD on the SavedModel | "
             "tfpurify white-box | fooled by ART, robust in tfpurify's report | holds | "
             "ART gradient L1 per image | seconds ART / tfpurify |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {args.label} | {', '.join(f'{k}={v}' for k, v in summary['overrides'].items()) or '-'} | {args.n} | "
             f"{args.eps:g} | {100 * summary['clean_served']:.1f} % | {100 * summary['art_pgd']:.1f} % | "
             f"{100 * summary['ours_worst_case']:.1f} % | {missed} | {'yes' if summary['holds'] else 'NO'} | "
             f"{summary['art_gradient_l1_per_image']:.3g} | {art['seconds']:.0f} / {seconds:.0f} |", "",
             rows_table(rows)]
    write_results(args.name, {"environment": environment(), "summary": summary, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
