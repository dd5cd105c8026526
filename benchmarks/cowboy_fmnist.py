"""Cowboy vs Defense-GAN on Fashion-MNIST: detection, cleaned accuracy per threat model, cleaning speed.

1. Trains Cowboy's GAN on clean training images for a wall-clock budget (its paper threshold:
   FGSM at eps 0.1 on the `cnn`, validation images).
2. Cleaning sweep on validation images of the *training* split (never the test split): settings
   of the latent search (optimizer, steps, restarts, warm start, early stopping, pruning, sigma,
   mode) -> accuracy of the `cnn` on cleaned clean images and on cleaned FGSM examples (the
   paper's metric), generator passes per image, cleaning images/s; a plot of accuracy against
   passes. The best Cowboy setting within 200 passes per image is used below, and Defense-GAN
   mode at the same setting.
3. Test images: gray-box (FGSM, PGD-40, BIM, MIM crafted on the `cnn`) and white-box (PGD-40
   through BPDA identity + EOT over the random starts, detector-aware) for both modes, the worst
   case per example, plain (paper) and robust accuracy; detection metrics at both thresholds and
   the violin plot of the scores (paper Fig. 3).

Usage: python benchmarks/cowboy_fmnist.py [--budget-minutes 60 | --epochs N] [--train-steps N] [--n 1000]
       [--n-sweep 200] [--n-whitebox 200] [--eps 0.1,0.2] [--unroll 5] [--whitebox-checks] [--train-only]
       [--clean-everything] [--score-draws 10] [--name cowboy_fmnist]
The GAN trains the paper's 2K generator steps unless `--train-steps` says otherwise (0: the whole budget
or `--epochs`; the GAN of the committed results trained about 16.9K steps). Test images go through the
paper's detect-then-clean pipeline unless `--clean-everything` (every input cleaned, our earlier default).
Each phase is cached (the run folder, results/<name>_sweep.json, which is redone when the
GAN is retrained; each mode's gray-box and white-box evaluation in the run folder, refused where the sweep
chose another setting since): a rerun continues. `--epochs` trains a fixed number of epochs instead of a
wall-clock budget (for training beside another job: the time is then not a budget); `--train-only`
stops after training.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RESULTS, environment, kept_evaluation, kept_json, machine, rows_table, train_on_budget, write_results  # noqa: E402

from tfpurify import adaptive, attacks, classifiers, data, evaluation, metrics, reports  # noqa: E402
from tfpurify.defenses.cowboy import CowboyConfig  # noqa: E402
from tfpurify.training import load_defended  # noqa: E402

# Paper Table 2 (Fashion-MNIST, 5000 cleaning steps): accuracy on cleaned adversarial examples.
PAPER_TABLE_2 = {"fgsm": (0.43, 0.44), "pgd": (0.48, 0.48), "bim": (0.11, 0.13), "mim": (0.27, 0.32)}
PAPER_TABLE_1 = {"fgsm": (0.89, 0.11, 0.44), "pgd": (0.89, 0.07, 0.48), "bim": (0.89, 0.07, 0.13),
                 "mim": (0.89, 0.08, 0.32)}  # (original, adversarial, cleaned)
SGD_LR = 10.0 / 784  # Defense-GAN's lr 10 on a per-pixel mean; our loss sums over 784 pixels

SWEEP = {  # name -> runtime overrides
    "defense_gan paper (sgd, 200 x 10)": dict(mode="defense_gan", z_optimizer="sgd", z_learning_rate=SGD_LR,
                                              clean_steps=200, clean_restarts=10, warm_start=0),
    "cowboy sgd 200 x 10": dict(z_optimizer="sgd", z_learning_rate=SGD_LR, clean_steps=200, clean_restarts=10,
                                warm_start=0),
    "cowboy sgd 50 x 4": dict(z_optimizer="sgd", z_learning_rate=SGD_LR, clean_steps=50, clean_restarts=4,
                              warm_start=0),
    "cowboy adam 50 x 4": dict(clean_steps=50, clean_restarts=4, warm_start=0),
    "cowboy adam 50 x 3 + warm 16 (default)": dict(),
    "cowboy adam 50 x 3 + warm 16, sigma 0.5 (the paper's 1 on [-1, 1])": dict(sigma=0.5),
    "cowboy adam 50 x 3 + warm 16, sigma 3": dict(sigma=3.0),
    "cowboy adam 50 x 3 + warm 16, sigma 10": dict(sigma=10.0),
    "cowboy adam 60 x 3 + warm 16, patience 5": dict(clean_steps=60, patience=5),
    "cowboy adam 100 x 3 + warm 16, prune after 10": dict(clean_steps=100, prune_after=10),
    "cowboy adam 20 x 4 + warm 32": dict(clean_steps=20, clean_restarts=4, warm_start=32),
    "defense_gan adam 50 x 3 + warm 16": dict(mode="defense_gan"),
}


def sweep(run, clf_run, x, y, x_fgsm, path, gan):
    """Cleaned accuracy, passes and images/s for every SWEEP setting (cached in `path` for the GAN
    whose training record is `gan`; another GAN's cache is redone)."""
    cached = json.loads(path.read_text()) if path.exists() else {}
    results = cached.get("settings", {}) if cached.get("gan") == gan else {}
    for name, overrides in SWEEP.items():
        if name in results:
            continue
        defended, _ = load_defended(run, clf_run, overrides)
        cowboy = defended.purifier
        search = tf.function(cowboy.search)
        search(x[:100])  # trace once (batches of 100), outside the timing

        def cleaned_and_passes(images):
            outs = [search(images[i:i + 100]) for i in range(0, len(images), 100)]
            return (np.concatenate([cowboy.generator(z).numpy() for z, _, _ in outs]),
                    np.concatenate([p.numpy() for _, _, p in outs]))

        start = time.perf_counter()
        cleaned, passes = cleaned_and_passes(x_fgsm)
        seconds = time.perf_counter() - start
        passes = float(np.mean(passes))
        clean_cleaned, _ = cleaned_and_passes(x)
        results[name] = {"overrides": overrides, "passes_per_image": round(passes, 1),
                         "images_per_second": round(len(x) / seconds, 2),
                         "fgsm_cleaned_accuracy": classifiers.accuracy(defended.classifier, cleaned, y),
                         "clean_cleaned_accuracy": classifiers.accuracy(defended.classifier, clean_cleaned, y)}
        print(name, results[name], flush=True)
        path.write_text(json.dumps({"gan": gan, "settings": results}, indent=2) + "\n")
    return results


def graybox_part(run, clf_run, overrides, x, y, gray, eot_samples, partial, score_draws=10):
    """Clean and gray-box rows of one mode on the test images, with the detector's scores and thresholds
    (a JSON value: `kept_json` keeps it in the run folder, so a rerun skips it; `partial`, a path where the
    unfinished evaluation is kept after every attack, so a stopped one continues; `score_draws`: cleanings per
    example, scored as `evaluation.evaluate` says)."""
    defended, _ = load_defended(run, clf_run, overrides)
    kept = kept_evaluation(partial, {"overrides": overrides, "n": len(x), "attacks": repr(gray)})
    report = evaluation.evaluate(defended, x, y, gray, threat_model=["none", "graybox"],
                                 pipelines=adaptive.threat_model_pipelines(defended, eot_samples=eot_samples),
                                 defense=f"cowboy ({overrides['mode']})", classifier="cnn", dataset="fashion_mnist",
                                 progress=True, cascade=False, detector=defended.detector, score_draws=score_draws,
                                 checkpoint=kept.checkpoint, resume=kept.resume)
    calibration = defended.detector.calibration or {}
    return {**_part(report, kept.seconds()), "overrides": overrides, "settings": report.to_dict()["settings"],
            "thresholds": {"fpr": calibration.get("threshold_fpr"), "paper": calibration.get("threshold_paper")}}


def whitebox_part(args, run, clf_run, overrides, x, y, white):
    """White-box rows of one mode on the first `args.n_whitebox` test images (BPDA identity, and unrolled
    descent steps where `args.unroll`), with the detector's scores on them (a JSON value, as above)."""
    n = args.n_whitebox
    defended, _ = load_defended(run, clf_run, overrides)
    start = time.perf_counter()
    wb = evaluation.evaluate(defended, x[:n], y[:n], white, threat_model="whitebox",
                             pipelines=adaptive.threat_model_pipelines(defended, eot_samples=args.eot_samples),
                             defense=f"cowboy ({overrides['mode']})", classifier="cnn", dataset="fashion_mnist",
                             progress=True, cascade=False, detector=defended.detector,
                             sanity_checks=args.whitebox_checks, sanity_n=min(100, n))
    part = {**_part(wb, time.perf_counter() - start), "overrides": overrides}
    part["rows"] = [dict(r, n_examples=n) for r in part["rows"] if r["threat_model"] != "clean"]
    part["scores"] = {k: v for k, v in part["scores"].items() if k != "clean"}
    if args.unroll:
        part["rows"] = unrolled_whitebox(args, run, clf_run, overrides, x, y, white, wb, part["rows"])
    part["seconds"] = time.perf_counter() - start
    return part


def _part(report, seconds):
    d = report.to_dict()
    return {"rows": d["rows"], "sanity_checks": d["sanity_checks"], "warnings": list(report.warnings),
            "detection": d["detection"], "seconds": seconds,
            "scores": {k: np.asarray(v).tolist() for k, v in report.detector_scores.items()}}


def unrolled_whitebox(args, run, clf_run, overrides, x, y, white, wb, wb_rows):
    """PGD-40 again with BPDA through `args.unroll` unrolled descent steps (`bpda_unroll`) on the
    white-box images; the worst-case rows become the per-example worst case over both surrogates."""
    n = args.n_whitebox
    defended, _ = load_defended(run, clf_run, {**overrides, "bpda_unroll": args.unroll})
    pgd40 = [s for s in white if s.name == "pgd" and s.params.get("nb_iter", 40) == 40]
    unrolled = evaluation.evaluate(defended, x[:n], y[:n], pgd40, threat_model="whitebox",
                                   pipelines=adaptive.threat_model_pipelines(defended, eot_samples=args.eot_samples),
                                   defense=wb.defense, classifier="cnn", dataset="fashion_mnist", progress=True,
                                   cascade=False, detector=defended.detector, sanity_checks=False)
    rows = [r for r in wb_rows if r["attack"] != "worst_case"]
    rows += [dict(r, n_examples=n, params={**r["params"], "bpda_unroll": args.unroll})
             for r in unrolled.to_dict()["rows"] if r["threat_model"] == "whitebox" and r["attack"] != "worst_case"]
    both = dataclasses.replace(wb, results=wb.results + unrolled.results)  # the report's own worst case over both
    for r in wb_rows:
        if r["attack"] != "worst_case":
            continue
        if r["eps"] is None:  # CW-L2's row: no PGD-40 at "no eps"
            rows.append(r)
            continue
        rows.append(dict(r, accuracy=both.worst_case("whitebox", r["eps"]),
                         plain_accuracy=both.plain_worst_case("whitebox", r["eps"]),
                         params={**r["params"], "attacks": r["params"]["attacks"] + [f"pgd-40 (bpda_unroll {args.unroll})"]}))
    return rows


def plot_passes(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, r in results.items():
        marker = "s" if r["overrides"].get("mode") == "defense_gan" else "o"
        ax.scatter(r["passes_per_image"], 100 * r["fgsm_cleaned_accuracy"], marker=marker)
        ax.annotate(name, (r["passes_per_image"], 100 * r["fgsm_cleaned_accuracy"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("generator passes per image (log)")
    ax.set_ylabel("accuracy on cleaned FGSM examples (%)")
    ax.set_title("Cowboy (o) and Defense-GAN (s): accuracy vs cleaning cost, validation images", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier-run", default="runs/bench-cnn")
    parser.add_argument("--run", default="runs/bench-cowboy")
    parser.add_argument("--budget-minutes", type=float, default=60)
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs, no wall-clock budget")
    parser.add_argument("--train-only", action="store_true", help="stop after training the GAN")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="generator steps (default: the paper's 2K; 0: the whole budget or --epochs)")
    parser.add_argument("--clean-everything", action="store_true",
                        help="clean every test input (default: only what the detector flags, the paper's pipeline)")
    parser.add_argument("--name", default="cowboy_fmnist", help="results/<name>.{json,md} and its pictures")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--n-sweep", type=int, default=200)
    parser.add_argument("--n-whitebox", type=int, default=200)
    parser.add_argument("--eps", default="0.1,0.2")
    parser.add_argument("--eot-samples", type=int, default=4)
    parser.add_argument("--score-draws", type=int, default=10,
                        help="gray-box: cleanings per test example, scored over the draws (1: the paper's one cleaning)")
    parser.add_argument("--unroll", type=int, default=5,
                        help="also attack white-box through this many unrolled descent steps (0: BPDA identity only)")
    parser.add_argument("--no-pgd80", action="store_true", help="without the white-box PGD-80 row (time)")
    parser.add_argument("--whitebox-checks", action="store_true",
                        help="run sanity checks 1-4 white-box too (check 4, Square with 5000 queries, costs 5000 "
                             "cleanings per robust example: hours on a CPU); off: PGD-80 joins the white-box attacks")
    args = parser.parse_args()
    eps = [float(e) for e in args.eps.split(",")]

    clf_run, run = pathlib.Path(args.classifier_run), pathlib.Path(args.run)
    if not (clf_run / "classifier.weights.h5").exists():
        classifiers.train_classifier(classifiers.ClassifierConfig(arch="cnn", epochs=3), clf_run, verbose=2)
    config = CowboyConfig(classifier=str(clf_run), epochs=args.epochs or 200, train_steps=args.train_steps)
    timing = train_on_budget("cowboy", config, run, float("inf") if args.epochs else 60 * args.budget_minutes)
    if args.train_only:
        return

    # 2. the sweep, on validation images (the train split)
    (_, _), (x_val, y_val) = data.load_train_val("fashion_mnist", None, config.val_fraction, config.seed)
    x_val, y_val = x_val[:args.n_sweep], y_val[:args.n_sweep]
    cnn, _ = classifiers.load_classifier(clf_run)
    x_val_fgsm = attacks.run_attack("fgsm", cnn, x_val, y_val, eps=0.1)
    sweep_results = sweep(run, clf_run, x_val, y_val, x_val_fgsm, RESULTS / f"{args.name}_sweep.json", timing)
    plot_passes(sweep_results, RESULTS / f"{args.name}_passes.png")
    within = {k: r for k, r in sweep_results.items()
              if r["passes_per_image"] <= 200 and r["overrides"].get("mode", "cowboy") == "cowboy"}
    best = max(within, key=lambda k: within[k]["fgsm_cleaned_accuracy"])
    chosen = {k: v for k, v in sweep_results[best]["overrides"].items() if k != "mode"}
    chosen["clean_only_detected"] = not args.clean_everything

    # 3. test images: both modes at the chosen setting
    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    gray = evaluation.make_attack_specs(["fgsm", "pgd", "bim", "mim"], eps)
    white = evaluation.make_attack_specs(["pgd"], eps)
    if not args.whitebox_checks and not args.no_pgd80:  # check 1's longer PGD as an attack row, in the worst case
        white += [evaluation.AttackSpec("pgd", {"eps": e, "nb_iter": 80}) for e in eps]
    rows, reports_out, detection = [], {}, {}
    for mode in ("cowboy", "defense_gan"):
        overrides = {**chosen, "mode": mode}
        stem = (f"eval-{mode}-{'all' if args.clean_everything else 'flagged'}-n{len(x)}-"
                f"eps{'-'.join(f'{e:g}' for e in eps)}")
        gray_stem = f"{stem}-graybox{'' if args.score_draws == 10 else f'-draws{args.score_draws}'}"
        gray_part = kept_json(run / f"{gray_stem}.json",
                              lambda: graybox_part(run, clf_run, overrides, x, y, gray, args.eot_samples,
                                                   run / f"{gray_stem}.partial.npz", args.score_draws))
        (run / f"{gray_stem}.partial.npz").unlink(missing_ok=True)  # kept whole now
        white_part = kept_json(run / f"{stem}-whitebox{args.n_whitebox}-eot{args.eot_samples}-unroll{args.unroll}"
                                     f"{'-checks' if args.whitebox_checks else ''}-{len(white)}attacks.json",
                               lambda: whitebox_part(args, run, clf_run, overrides, x, y, white))
        for part in (gray_part, white_part):  # kept by an earlier process: made at this setting?
            if part.get("overrides", overrides) != json.loads(json.dumps(overrides)):
                sys.exit(f"{run}: its kept evaluations were made at another setting ({part['overrides']}, now "
                         f"{overrides}); delete {run}/eval-*.json to redo them")
        rows += [r for r in gray_part["rows"] if mode == "cowboy" or r["defense"] != "none"] + white_part["rows"]
        reports_out[mode] = {"sanity_checks": gray_part["sanity_checks"] + white_part["sanity_checks"],
                             "warnings": gray_part["warnings"] + white_part["warnings"],
                             "settings": gray_part["settings"],
                             "eval_seconds": round(gray_part["seconds"] + white_part["seconds"], 1)}
        if mode == "cowboy":
            thresholds = gray_part["thresholds"]
            scores = {k: np.asarray(v) for k, v in {**gray_part["scores"], **white_part["scores"]}.items()}
            clean_scores = scores["clean"]
            for label, s in scores.items():
                if label == "clean":
                    continue
                detection[label] = {rule: {"tpr": float(np.mean(s > t)), "fpr": float(np.mean(clean_scores > t))}
                                    for rule, t in thresholds.items() if t is not None}
                detection[label]["roc_auc"] = metrics.roc_auc(clean_scores, s)
            reports.save_score_violins(RESULTS / f"{args.name}_scores.png", scores, thresholds["fpr"],
                                       title="Cowboy: -log D(x), clean vs each attack (test images)")
            detection_metrics = gray_part["detection"] + white_part["detection"]

    lines = ["| setting | passes / image | images/s | cleaned FGSM (val) | cleaned clean (val) |", "|---|---|---|---|---|"]
    for name, r in sweep_results.items():
        lines.append(f"| {name}{' **(chosen)**' if name == best else ''} | {r['passes_per_image']:g} | "
                     f"{r['images_per_second']:g} | {100 * r['fgsm_cleaned_accuracy']:.1f} % | "
                     f"{100 * r['clean_cleaned_accuracy']:.1f} % |")
    det_lines = ["| attack | ROC-AUC | TPR (FPR threshold) | TPR (paper threshold) | FPR (paper threshold) |",
                 "|---|---|---|---|---|"]
    for label, d in detection.items():
        auc = "-" if d["roc_auc"] is None else f"{d['roc_auc']:.3f}"
        det_lines.append(f"| {label} | {auc} | {100 * d['fpr']['tpr']:.1f} % | "
                         f"{100 * d.get('paper', {}).get('tpr', float('nan')):.1f} % | "
                         f"{100 * d.get('paper', {}).get('fpr', float('nan')):.1f} % |")

    def cell(defense, tm, attack, e, key="plain_accuracy"):
        for r in rows:
            if r["defense"] == defense and r["threat_model"] == tm and r["attack"] == attack and r["eps"] == e:
                return "-" if r.get(key) is None else f"{100 * r[key]:.1f}"
        return "-"

    cmp_lines = ["| attack | eps | none | Defense-GAN gray-box | Cowboy gray-box | paper Defense-GAN | paper Cowboy |",
                 "|---|---|---|---|---|---|---|"]
    for e in eps:
        for attack in ("fgsm", "pgd", "bim", "mim"):
            paper = PAPER_TABLE_2[attack]
            cmp_lines.append(f"| {attack} | {e:g} | {cell('none', 'none', attack, e)} | "
                             f"{cell('cowboy (defense_gan)', 'graybox', attack, e)} | "
                             f"{cell('cowboy (cowboy)', 'graybox', attack, e)} | {100 * paper[0]:.0f} | {100 * paper[1]:.0f} |")
    results = {"benchmark": args.name, "dataset": "fashion_mnist", "n_examples": len(x),
               "n_whitebox": args.n_whitebox, "eps": eps, "training": {**timing, "budget_minutes": None if args.epochs else args.budget_minutes,
                                                         "epochs": args.epochs},
               "config": dataclasses.asdict(config), "chosen_setting": {"name": best, "overrides": chosen},
               "sweep": sweep_results, "detection": detection, "detection_metrics": detection_metrics,
               "rows": rows, "reports": reports_out, "paper_table_1": PAPER_TABLE_1, "paper_table_2": PAPER_TABLE_2,
               "environment": environment()}
    steps = timing.get("images", 0) // config.batch_size  # the run's own, also for a run trained earlier
    steps_text = f", {steps} generator steps (the paper: 2K)" if steps else ""
    md = (f"# Cowboy vs Defense-GAN (Fashion-MNIST, cnn, {len(x)} test images; white-box on the first "
          f"{args.n_whitebox})\n\n"
          f"GAN trained {timing.get('train_seconds', '?')} s, {timing.get('images', '?')} images "
          f"({f'{args.epochs} epochs' if args.epochs else f'{args.budget_minutes:g}-minute budget'}"
          f"{steps_text}) "
          f"on this CPU ({machine()}). Test images: "
          + ("every input cleaned." if args.clean_everything else
             "detect, then clean only what the detector flags (the paper's pipeline).")
          + (" Gray-box: each test example cleaned once (the paper's protocol)." if args.score_draws == 1 else
             f" Gray-box: each test example cleaned {args.score_draws} times, scored over the draws.") + "\n\n"
          f"White-box: PGD-40{'' if args.whitebox_checks or args.no_pgd80 else ' and PGD-80'} end to end, BPDA through the latent "
          f"search (the identity{f', and PGD-40 again through {args.unroll} unrolled descent steps from the found code' if args.unroll else ''}), "
          f"EOT over {args.eot_samples} draws of its random starts, detector-aware; the worst case is over all of them; "
          + ("sanity checks 1-4 on." if args.whitebox_checks else
             "white-box sanity checks off: check 4 (Square, 5000 queries) costs 5000 latent searches per robust "
             f"example, hours on this CPU{'' if args.no_pgd80 else '; PGD-80 stands in for check 1 in the worst case'}. Gray-box rows have no "
             "gradient checks (the attacker does not differentiate the scored pipeline).") + "\n\n"
          "## Cleaning sweep (validation images of the training split)\n\n" + "\n".join(lines) + "\n\n"
          f"Accuracy vs passes: `{args.name}_passes.png`.\n\n"
          + ("## Cleaned accuracy, the paper's metric (plain: correct after cleaning), gray-box\n\n"
             if args.clean_everything else
             "## Accuracy of the detect-then-clean pipeline (plain), gray-box\n\nOnly the flagged inputs are "
             "cleaned, in both modes (Defense-GAN mode: Defense-GAN's search inside Cowboy's pipeline); the paper's "
             "Table 2 cleans every adversarial example: its metric is the `--clean-everything` run's.\n\n")
          + "\n".join(cmp_lines) + "\n\n"
          f"## Detection (-log D(x), test images; violins in `{args.name}_scores.png`)\n\n" + "\n".join(det_lines)
          + f"\n\n## All rows (robust accuracy = correct clean and attacked; plain = the papers' metric)\n\n"
          f"{rows_table(rows)}\n")
    write_results(args.name, results, md)


if __name__ == "__main__":
    main()
