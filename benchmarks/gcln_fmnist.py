"""GCLN on Fashion-MNIST: q 5, q 10 and the tuned (q, lambda), against the anchors of this family.

1. `tfpurify.tuning.tune` searches quant_step (4-40: the paper's q was chosen for eps 8/255; eps 0.1 is
   about 25/255, where the equivalent q is about 30) and perceptual_weight (lambda, 0.1-0.9) with
   random search; the objective is white-box PGD-10 accuracy at eps 0.1 on a validation slice of
   the *training* split (never the test split). Each trial trains on a slice for a few epochs.
2. Three models train on the same budget on this CPU (wall or CPU time, `--budget-clock`): q 5 and q 10 at the paper's
   lambda 0.5, and the tuned pair. Every cleaner (the trials' too) trains against PGD at each eps it
   is evaluated at (`attack_eps`, the examples of a batch split between them).
3. Each is evaluated on the first `--n` test images at eps 0.1 and 0.2: clean, gray-box (the
   classifier attacked alone) and white-box (BPDA: the quantizer's straight-through gradient;
   detector-aware: the attack loss subtracts the detector's score): FGSM, PGD-40, PGD-100 with 2
   restarts, CW-L2; the per-example worst case (with the sanity checks' attacks); the detector's
   ROC-AUC. Beside them: PGD adversarial training, the denoising AE and FBGAN from their own result
   files, and the anchor GCLN has on Fashion-MNIST (it reports only CIFAR-10 and SVHN): PGD
   adversarial training at eps 0.1, 71.7 % in FBGAN's Table 1.

Usage: python benchmarks/gcln_fmnist.py [--budget-minutes 20] [--budget-clock cpu] [--trials 8] [--n 500] [--tag T]
Training and tuning are cached in run folders (runs/bench-gcln-*): a rerun only evaluates.
"""

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RESULTS, environment, kept_json, machine, rows_table, train_on_budget, write_results  # noqa: E402

from tfpurify import adaptive, classifiers, data, evaluation, reports, tuning  # noqa: E402
from tfpurify.defenses.gcln import GCLNConfig  # noqa: E402
from tfpurify.training import load_defended  # noqa: E402

ANCHOR = 0.717  # FBGAN Table 1: PGD adversarial training, white-box PGD at eps 0.1
OTHERS = {"pgd_at (eps 0.1)": ("l2l_da_fmnist.json", "pgd_at"), "denoising_ae": ("denoising_ae_fmnist.json", None),
          "fbgan": ("fbgan_fmnist.json", None)}


def pct(value):
    return "-" if value is None else f"{100 * value:.1f}"


def tune_gcln(cnn_run, out, trials, limit, epochs, attack_eps):
    """Random search over (quant_step, perceptual_weight), the cleaner trained at `attack_eps`; returns (best
    config, trial rows)."""
    params = [tuning.parse_param(text, GCLNConfig) for text in ("quant_step=4:40", "perceptual_weight=0.1:0.9")]
    base = GCLNConfig(classifier=str(cnn_run), limit=limit, epochs=epochs, attack_eps=attack_eps)
    return tuning.tune("gcln", params, out, base_config=base, classifier_run=str(cnn_run), trials=trials,
                       eps=0.1, nb_iter=10, val_limit=500)


def evaluate_model(label, defended, x, y, eps_values):
    specs = evaluation.make_attack_specs(["fgsm"], eps_values)
    specs += evaluation.make_attack_specs(["pgd"], eps_values, nb_iter=40)
    specs += evaluation.make_attack_specs(["pgd"], eps_values, nb_iter=100, restarts=2)
    specs += evaluation.make_attack_specs(["cw_l2"], eps_values, binary_search_steps=5, max_iterations=100)
    report = evaluation.evaluate(defended, x, y, specs, threat_model=["none", "graybox", "whitebox"],
                                 pipelines=adaptive.threat_model_pipelines(defended), defense=label,
                                 classifier="cnn", dataset="fashion_mnist", detector=defended.detector,
                                 progress=True, cascade=False)
    return report.to_dict()


def other_rows(eps_values):
    """Clean, white-box PGD and worst-case rows of the other defenses, from their result files."""
    out = []
    for label, (file, defense) in OTHERS.items():
        path = RESULTS / file
        if not path.exists():
            continue
        for r in json.loads(path.read_text())["rows"]:
            if (defense or label) != r["defense"]:
                continue
            if r["threat_model"] == "clean" or (r["threat_model"] == "whitebox" and r["eps"] in eps_values
                                                and r["attack"] in ("pgd", "worst_case")):
                out.append({**r, "defense": label, "source": file})
    return out


def render(results):
    """The Markdown twin of a results dict (also `--render`: redo it from the committed JSON)."""
    rows, others, details, timings = results["rows"], results["other_defenses"], results["details"], results["timings"]
    eps_values, tuning_info = results["eps"], results["tuning"]

    def cell(model, tm, attack, eps, key="accuracy", nb_iter=None, table=rows):
        for r in table:
            if r["defense"] == model and r["threat_model"] == tm and r["attack"] == attack and r["eps"] == eps and \
                    (nb_iter is None or r["params"].get("nb_iter") == nb_iter):
                return pct(r.get(key))
        return "-"

    def both(model, tm, attack, eps, **kw):
        return f"{cell(model, tm, attack, eps, **kw)} ({cell(model, tm, attack, eps, key='plain_accuracy', **kw)})"

    def trained(timing):  # per CPU second: wall rates mean little beside other jobs
        if not timing.get("cpu_seconds"):
            return f"{timing.get('steady_images_per_second', '-')} per s"
        return f"{timing['images']} ({timing['images'] / timing['cpu_seconds']:.0f})"

    def auc(model, eps):
        aucs = [det["roc_auc"] for det in details.get(model, {}).get("detection", [])
                if det["threat_model"] == "whitebox" and det["eps"] == eps and det["roc_auc"] is not None]
        return f"{min(aucs):.2f}" if aucs else "-"

    table = ["| model | eps | clean | gray-box PGD-40 (plain) | FGSM | PGD-40 | PGD-100 x2 | CW-L2 | worst case (plain) | "
             "detector ROC-AUC (white-box, lowest) | training images (per CPU-s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in results["configs"]:
        for eps in eps_values:
            table.append(
                f"| {model} | {eps:g} | {cell(model, 'clean', 'none', 0)} | "
                f"{both(model, 'graybox', 'pgd', eps, nb_iter=40)} | {cell(model, 'whitebox', 'fgsm', eps)} | "
                f"{cell(model, 'whitebox', 'pgd', eps, nb_iter=40)} | {cell(model, 'whitebox', 'pgd', eps, nb_iter=100)} | "
                f"{cell(model, 'whitebox', 'cw_l2', None)} | **{cell(model, 'whitebox', 'worst_case', eps)}** "
                f"({cell(model, 'whitebox', 'worst_case', eps, key='plain_accuracy')}) | "
                f"{auc(model, eps)} | {trained(timings[model])} |")
    for label in OTHERS:
        for eps in eps_values:
            if cell(label, 'whitebox', 'worst_case', eps, table=others) != "-":
                table.append(f"| {label} (own results file) | {eps:g} | {cell(label, 'clean', 'none', 0, table=others)} | - | "
                             f"- | {cell(label, 'whitebox', 'pgd', eps, nb_iter=40, table=others)} | - | - | "
                             f"**{cell(label, 'whitebox', 'worst_case', eps, table=others)}** | - | - |")
    trials = tuning_info["trials"]
    trial_lines = ["| trial | quant_step | lambda | robust accuracy (val) |", "|---|---|---|---|"] + [
        f"| {t['trial']} | {t['quant_step']:.2f} | {t['perceptual_weight']:.2f} | {pct(t['robust_accuracy'])} |"
        for t in sorted(trials, key=lambda t: t["quant_step"] or 0)]
    budget, tune_seconds = results["budget_minutes"], results["tune_seconds"]
    trained_eps = ", ".join(f"{e:g}" for e in next(iter(results["configs"].values()))["attack_eps"])
    tune_time = tuning_info.get("note", "time not recorded") if tune_seconds is None else f"{tune_seconds:.0f} s"
    return (f"# GCLN on Fashion-MNIST ({results['n_examples']} test images, `cnn` classifier)\n\n"
            f"Each model trains {budget:g} minutes of {results.get('budget_clock', 'wall')} time on this CPU ({results.get('machine') or machine()}), "
            f"its cleaner against PGD at eps {trained_eps} (the examples of a batch split between them). "
            "Accuracy in %: correct clean and under the attack; in brackets the papers' plain metric (correct under "
            "the attack, whatever happened clean). White-box: end to end, BPDA through the "
            "quantizer (straight-through), detector-aware; gray-box: the classifier attacked alone. Worst case: "
            "per example over clean, every white-box attack at that eps and the sanity checks' attacks (CW-L2 is "
            "unbounded and reported apart). GCLN's paper reports only CIFAR-10 and SVHN: its anchor here is PGD "
            f"adversarial training at eps 0.1, {100 * ANCHOR:.1f} % in FBGAN's Table 1 (the goal: a white-box worst "
            "case at eps 0.1 at or above it).\n\n" + "\n".join(table) + "\n\n"
            f"## Tuning (`{results['benchmark']}_tuning.png`; {len(trials)} random-search trials, {tuning_info['epochs']} epochs on "
            f"{tuning_info['limit']} training images each, {tune_time})\n\nObjective: "
            f"{tuning_info['objective']}. The paper finds q 8-12 best (its Fig. 3).\n\n"
            + "\n".join(trial_lines) + "\n\n## Detection and sanity checks\n\n"
            + "\n".join(line for model, det in details.items() for line in
                        [f"### {model}", "", f"Evaluation: {det['eval_seconds']:.0f} s.", "", *reports.detection_lines(det["detection"]),
                         *reports.sanity_lines(det["sanity_checks"], det["warnings"]), ""])
            + "".join(f"\n{note}\n" for note in results.get("notes", []))
            + f"\n## All rows\n\n{rows_table(rows)}\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=20, help="training time per model")
    parser.add_argument("--budget-clock", choices=("wall", "cpu"), default="wall",
                        help="what the budget counts: wall time, or this process's CPU time (fair beside other jobs)")
    parser.add_argument("--trials", type=int, default=8, help="tuning trials (random search)")
    parser.add_argument("--tune-limit", type=int, default=6000, help="training images per tuning trial")
    parser.add_argument("--tune-epochs", type=int, default=3, help="the first trains only the detector")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--eps", default="0.1,0.2")
    parser.add_argument("--tag", default="", help="suffix of run folders and results")
    parser.add_argument("--render", action="store_true", help="only redo the Markdown from the results JSON")
    args = parser.parse_args()
    name = "gcln_fmnist" + (f"_{args.tag}" if args.tag else "")
    suffix = f"-{args.tag}" if args.tag else ""
    if args.render:
        results = json.loads((RESULTS / f"{name}.json").read_text())
        write_results(name, results, render(results))
        return
    eps_values = [float(e) for e in args.eps.split(",")]
    cnn_run = pathlib.Path("runs/bench-cnn")
    if not (cnn_run / "classifier.weights.h5").exists():
        classifiers.train_classifier(classifiers.ClassifierConfig(arch="cnn", epochs=3), cnn_run, verbose=2)

    start = time.perf_counter()
    tune_dir = pathlib.Path(f"runs/bench-gcln-tune{suffix}")
    tune_timing = tune_dir / "timing.json"
    tuned_before = (tune_dir / "trials.csv").exists()
    best, trials = tune_gcln(cnn_run, tune_dir, args.trials, args.tune_limit, args.tune_epochs, tuple(eps_values))
    if not tuned_before:
        tune_timing.write_text(json.dumps({"tune_seconds": round(time.perf_counter() - start, 1)}) + "\n")
    tune_seconds = json.loads(tune_timing.read_text())["tune_seconds"] if tune_timing.exists() else None
    shutil.copy(tune_dir / "objective.png", RESULTS / f"{name}_tuning.png")

    trained_at = dict(classifier=str(cnn_run), attack_eps=tuple(eps_values), epochs=200)  # every eps evaluated
    configs = {"gcln q5": GCLNConfig(quant_step=5.0, **trained_at),
               "gcln q10": GCLNConfig(quant_step=10.0, **trained_at),
               f"gcln tuned (q {best.quant_step:.1f}, lambda {best.perceptual_weight:.2f})":
                   dataclasses.replace(best, limit=None, epochs=200)}
    runs = {m: pathlib.Path(f"runs/bench-{'-'.join(m.split()[:2])}{suffix}") for m in configs}
    timings = {m: train_on_budget("gcln", c, runs[m], 60 * args.budget_minutes, args.budget_clock)
               for m, c in configs.items()}

    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    rows, details = [], {}
    for model, run in runs.items():
        def evaluate(model=model, run=run):
            defended, _ = load_defended(run, cnn_run)
            start = time.perf_counter()
            d = evaluate_model(model, defended, x, y, eps_values)
            return {**d, "eval_seconds": round(time.perf_counter() - start, 1)}

        # a rerun evaluates what is left
        d = kept_json(run / f"eval-n{len(x)}-eps{'-'.join(f'{e:g}' for e in eps_values)}.json", evaluate)
        rows += [r for r in d["rows"] if r["defense"] != "none" or model == next(iter(runs))]  # the bare cnn once
        details[model] = {"detection": d["detection"], "sanity_checks": d["sanity_checks"], "warnings": d["warnings"],
                          "eval_seconds": d["eval_seconds"]}
        print(model, [(r["threat_model"], r["attack"], r["eps"], r["accuracy"]) for r in d["rows"]], flush=True)
    others = other_rows(eps_values)
    results = {"benchmark": name, "dataset": "fashion_mnist", "n_examples": len(x), "eps": eps_values,
               "budget_minutes": args.budget_minutes, "budget_clock": args.budget_clock, "timings": timings,
               "tune_seconds": tune_seconds,
               "tuning": {"trials": trials, "limit": args.tune_limit, "epochs": args.tune_epochs,
                          "objective": "white-box PGD-10 accuracy at eps 0.1, 500 validation images of the train split",
                          "best": {"quant_step": best.quant_step, "perceptual_weight": best.perceptual_weight}},
               "configs": {k: dataclasses.asdict(c) for k, c in configs.items()}, "rows": rows,
               "other_defenses": others, "details": details, "anchor_pgd_at_fbgan_table_1": ANCHOR,
               "environment": environment(), "machine": machine()}
    write_results(name, results, render(results))


if __name__ == "__main__":
    main()
