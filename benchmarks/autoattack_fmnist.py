"""AutoAttack: tfpurify's graph-loop `autoattack` against IBM ART's `AutoAttack`, on the same images.

Ours runs twice: standard (APGD-CE -> APGD-T -> FAB-T -> Square, as the original) and with the three stages
ART's standard configuration runs (no FAB-T, which ART does not have): the same work side by side.
Targets: (a) the undefended `cnn`, (b) the denoising AE + `cnn` attacked end to end (white-box; the
AE is differentiable, so no BPDA is needed), (c) optionally FBGAN + `cnn` end to end through BPDA. ART runs twice: with its defaults (what a user gets:
APGD-CE and APGD-DLR with 5 random starts each, DeepFool, Square with 5 restarts x 5000 queries;
DeepFool is left out on the defended pipeline, where it crashes: it needs a second-order gradient
of UpSampling2D that TensorFlow does not register) and configured as the standard AutoAttack
(APGD-CE, 100 iterations, initial step 2 eps, 1 start; targeted APGD-DLR over the other classes,
which ART's AutoAttack runs after one untargeted DLR pass; Square, 1 restart x 5000 queries),
each stage on the examples still robust. Also PGD-40 with and without the per-example early exit.
Robust accuracy counts an example only if it is correct clean and under the attack.

Usage: python benchmarks/autoattack_fmnist.py [--n-cnn 200] [--n-defense 100] [--skip-art-default]
       [--fbgan-run RUN] [--targets fbgan]   (--targets: rerun only these; other rows are kept)
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RESULTS, environment, rows_table, write_results  # noqa: E402

from tfpurify import adaptive, attacks, classifiers, data  # noqa: E402
from tfpurify.defenses.denoising_ae import DenoisingAEConfig  # noqa: E402
from tfpurify.training import load_defended, train_defense  # noqa: E402

EPS = 0.1
ART_STAGES = "apgd-ce,apgd-t,square"  # what ART's AutoAttack configured as standard runs


def _robust(model, x, x_adv, y):
    clean = np.argmax(classifiers.predict_logits(model, x), axis=1) == y
    adv = np.argmax(classifiers.predict_logits(model, x_adv), axis=1) == y
    return float(np.mean(clean & adv))


def _estimator(model, x):
    from art.estimators.classification import TensorFlowV2Classifier

    def forward(images, training=False):  # ART passes `training`; a BPDA target takes images only
        return model(images)

    return TensorFlowV2Classifier(forward, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
                                  loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _art_default(model, x, y, deepfool=True):
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, DeepFool, SquareAttack

    est = _estimator(model, x)
    if deepfool:
        attack = AutoAttack(est, norm=np.inf, eps=EPS, batch_size=128)
    else:  # ART's default list without DeepFool
        attack = AutoAttack(est, norm=np.inf, eps=EPS, batch_size=128, attacks=[
            AutoProjectedGradientDescent(est, norm=np.inf, eps=EPS, eps_step=0.1, max_iter=100, nb_random_init=5,
                                         batch_size=128, loss_type="cross_entropy", verbose=False),
            AutoProjectedGradientDescent(est, norm=np.inf, eps=EPS, eps_step=0.1, max_iter=100, nb_random_init=5,
                                         batch_size=128, loss_type="difference_logits_ratio", verbose=False),
            SquareAttack(est, norm=np.inf, max_iter=5000, eps=EPS, p_init=0.8, nb_restarts=5, verbose=False)])
    del DeepFool
    return attack.generate(x, y)


def _art_standard(model, x, y):
    """ART's pieces in the standard AutoAttack order and budgets, each on what is still robust."""
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

    est = _estimator(model, x)
    apgd = dict(norm=np.inf, eps=EPS, eps_step=2 * EPS, max_iter=100, nb_random_init=1, batch_size=128,
                verbose=False)
    stages = [
        AutoAttack(est, norm=np.inf, eps=EPS, batch_size=128, targeted=False, attacks=[
            AutoProjectedGradientDescent(est, loss_type="cross_entropy", **apgd)]),
        AutoAttack(est, norm=np.inf, eps=EPS, batch_size=128, targeted=True, attacks=[
            AutoProjectedGradientDescent(est, loss_type="difference_logits_ratio", targeted=True, **apgd)]),
        SquareAttack(est, norm=np.inf, max_iter=5000, eps=EPS, p_init=0.8, nb_restarts=1, batch_size=128,
                     verbose=False),
    ]
    x_adv = x.copy()
    for stage in stages:
        robust = np.argmax(classifiers.predict_logits(model, x_adv), axis=1) == y
        if not robust.any():
            break
        x_adv[robust] = stage.generate(x[robust], y[robust])
    return x_adv


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(label, model, x, y, skip_art_default, deepfool, scored=None):
    """Rows for one target: ours, ART default, ART standard-configured, PGD-40 with/without early exit.

    `model` is what the attacks differentiate (a BPDA target for FBGAN), `scored` what classifies
    the result (default: `model`).
    """
    scored = model if scored is None else scored
    rows, base = [], {"threat_model": "none" if label == "cnn" else "whitebox", "eps": EPS}
    attacks.run_attack("autoattack", model, x[:8], y[:8], eps=EPS, n_queries=10)  # warm-up (tracing)
    (ours, cost), t_ours = _timed(lambda: attacks.run_attack("autoattack", model, x, y, eps=EPS, return_cost=True))
    # the same work as ART's standard configuration: its three stages, without FAB-T (which ART does not have)
    (three, cost3), t_three = _timed(lambda: attacks.run_attack("autoattack", model, x, y, eps=EPS, return_cost=True,
                                                                version=ART_STAGES))
    art_std, t_std = _timed(lambda: _art_standard(model, x, y))
    acc_ours, acc_std = _robust(scored, x, ours, y), _robust(scored, x, art_std, y)
    ours_row = {**base, "attack": "autoattack", "params": {"implementation": "tfpurify", "version": "standard"},
                "accuracy": acc_ours, "seconds": round(t_ours, 1), "grad_evals_per_example": round(float(cost.mean()), 1),
                "speedup_vs_art_standard": round(t_std / t_ours, 2), "art_standard_accuracy": acc_std}
    three_row = {**base, "attack": "autoattack", "params": {"implementation": "tfpurify", "version": ART_STAGES},
                 "accuracy": _robust(scored, x, three, y), "seconds": round(t_three, 1),
                 "grad_evals_per_example": round(float(cost3.mean()), 1),
                 "speedup_vs_art_standard": round(t_std / t_three, 2)}
    rows.append({**base, "attack": "autoattack", "params": {"implementation": "art", "config": "standard"},
                 "accuracy": acc_std, "seconds": round(t_std, 1)})
    if not skip_art_default:
        art_def, t_def = _timed(lambda: _art_default(model, x, y, deepfool))
        acc_def = _robust(scored, x, art_def, y)
        ours_row.update(speedup_vs_art_default=round(t_def / t_ours, 2), art_default_accuracy=acc_def)
        three_row.update(speedup_vs_art_default=round(t_def / t_three, 2))
        rows.append({**base, "attack": "autoattack",
                     "params": {"implementation": "art", "config": "default" + ("" if deepfool else " without DeepFool")},
                     "accuracy": acc_def, "seconds": round(t_def, 1)})
    rows[:0] = [ours_row, three_row]
    for early in (True, False):
        attacks.run_attack("pgd", model, x[:8], y[:8], eps=EPS, nb_iter=40, early_exit=early)  # warm-up
        (x_pgd, cost), t = _timed(lambda: attacks.run_attack("pgd", model, x, y, eps=EPS, nb_iter=40,
                                                             early_exit=early, return_cost=True))
        rows.append({**base, "attack": "pgd", "params": {"nb_iter": 40, "eps_iter": EPS / 4, "early_exit": early},
                     "accuracy": _robust(scored, x, x_pgd, y), "seconds": round(t, 2),
                     "grad_evals_per_example": round(float(cost.mean()), 1)})
    clean = float(np.mean(np.argmax(classifiers.predict_logits(scored, x), axis=1) == y))
    rows.insert(0, {**base, "threat_model": "clean", "attack": "none", "eps": 0, "params": {}, "accuracy": clean})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier-run", default="runs/bench-cnn")
    parser.add_argument("--defense-run", default="runs/bench-denoising_ae")
    parser.add_argument("--n-cnn", type=int, default=200)
    parser.add_argument("--n-defense", type=int, default=100)
    parser.add_argument("--skip-art-default", action="store_true", help="ART's defaults take ~20 min / 100 images")
    parser.add_argument("--fbgan-run", default=None, help="also an FBGAN run, attacked end to end through BPDA")
    parser.add_argument("--targets", default=None,
                        help="comma list of cnn, denoising_ae, fbgan to (re)measure; rows of the others are kept "
                             "from the results file [default: all given]")
    args = parser.parse_args()
    targets = (args.targets or "cnn,denoising_ae" + (",fbgan" if args.fbgan_run else "")).split(",")

    clf_run, dae_run = pathlib.Path(args.classifier_run), pathlib.Path(args.defense_run)
    if not (clf_run / "classifier.weights.h5").exists():
        classifiers.train_classifier(classifiers.ClassifierConfig(arch="cnn", epochs=3), clf_run, verbose=2)
    if not (dae_run / "defense.weights.h5").exists():
        train_defense("denoising_ae", DenoisingAEConfig(epochs=5), dae_run, verbose=2)
    cnn, _ = classifiers.load_classifier(clf_run)
    defended, _ = load_defended(dae_run, clf_run)
    x, y = data.load_dataset("fashion_mnist", "test", limit=max(args.n_cnn, args.n_defense))

    old_file = RESULTS / "autoattack_fmnist.json"
    old = json.loads(old_file.read_text()) if old_file.exists() else {"rows": [], "n_examples": {}}
    rows = [r for r in old["rows"] if (r["defense"] if r["defense"] != "none" else "cnn") not in targets]
    n_examples = {k: v for k, v in old["n_examples"].items() if k not in targets}
    # when each target was last measured, and with which code (rows of targets not re-run are kept)
    measured = {k: v for k, v in old.get("measured", {}).items() if k not in targets}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    measured.update({t: {"date": time.strftime("%Y-%m-%d"), "commit": commit or "unknown"} for t in targets})
    if "cnn" in targets:
        rows += [{"defense": "none", "classifier": "cnn", **r}
                 for r in compare("cnn", cnn, x[:args.n_cnn], y[:args.n_cnn], args.skip_art_default, True)]
        n_examples["cnn"] = args.n_cnn
    if "denoising_ae" in targets:
        rows += [{"defense": "denoising_ae", "classifier": "cnn", **r}
                 for r in compare("dae", defended, x[:args.n_defense], y[:args.n_defense], args.skip_art_default,
                                  False)]
        n_examples["denoising_ae"] = args.n_defense
    if "fbgan" in targets:  # FBGAN's argmax/clipping are not differentiable: every attack goes through BPDA
        fbgan, _ = load_defended(args.fbgan_run, clf_run)
        rows += [{"defense": "fbgan", "classifier": "cnn", **r, "params": {**r["params"], "bpda": True}}
                 for r in compare("fbgan", adaptive.whitebox_target(fbgan), x[:args.n_defense], y[:args.n_defense],
                                  args.skip_art_default, False, scored=fbgan)]
        n_examples["fbgan"] = args.n_defense
    order = {"none": 0, "denoising_ae": 1, "fbgan": 2}
    rows.sort(key=lambda r: order.get(r["defense"], 3))  # stable: each target's rows keep their order
    results = {"benchmark": "autoattack_fmnist", "dataset": "fashion_mnist", "n_examples": n_examples, "seed": 0,
               "rows": rows, "detection": [], "measured": measured, "notes": old.get("notes", []),
               "environment": environment()}
    write_results("autoattack_fmnist", results, markdown(results))


def _label(row):
    p = row["params"]
    if row["attack"] == "pgd":
        return "tfpurify, early exit" if p["early_exit"] else "tfpurify, fixed 40 steps"
    if row["attack"] == "none":
        return ""
    if p["implementation"] == "tfpurify":
        return "tfpurify" if p.get("version", "standard") == "standard" else "tfpurify, ART's stages (no FAB-T)"
    return f"ART, {p['config']}"


def markdown(results):
    """The Markdown twin of the results (also rebuilt from a saved JSON: markdown(json.load(...)))."""
    rows, n = results["rows"], results["n_examples"]
    lines = [f"| {r['defense']} | {r['threat_model']} | {_label(r)} | {r['attack']} | {100 * r['accuracy']:.1f} % | "
             f"{r.get('seconds', '-')} | {r.get('grad_evals_per_example', '-')} | "
             f"{r.get('speedup_vs_art_default', '-')} | {r.get('speedup_vs_art_standard', '-')} |" for r in rows]
    return (f"# AutoAttack on Fashion-MNIST: tfpurify vs IBM ART (eps {EPS}, L-inf)\n\n"
            f"First {n.get('cnn')} test images for the undefended `cnn` (threat model none), first "
            f"{n.get('denoising_ae')} for the denoising AE + `cnn` attacked end to end (white-box)"
            + (f", first {n['fbgan']} for FBGAN + `cnn` attacked end to end through BPDA (its one-hot argmax and "
               "clipped codes are not differentiable; ART gets the same BPDA-wrapped model)" if "fbgan" in n else "")
            + ". Robust accuracy = correct clean and under attack. Speed-up = ART wall time / ours, in one process, same model and images; our time "
            "includes tracing the graph."
            + ("" if not results.get("measured") else " Measured: " + "; ".join(
                f"{target} on {m['date']} at commit {m['commit']}" for target, m in results["measured"].items())
               + " (targets measured earlier ran tfpurify's AutoAttack as it was then).")
            + "\n\n"
            "| defense | threat model | implementation | attack | robust accuracy | seconds | evals/example | "
            "speed-up vs ART default | speed-up vs ART standard |\n|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(lines) + "".join(f"\n\n{note}" for note in results.get("notes", []))
            + f"\n\nAll rows in the results schema:\n\n{rows_table(rows)}\n\n"
            f"Environment: {results['environment']}.\n")


if __name__ == "__main__":
    main()
