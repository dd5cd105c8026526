"""AAA on Fashion-MNIST in the layout of the paper's Table 5: native and transfer classifiers, eps 0.2.

Models, each trained on the same wall-clock budget on this CPU: natural training (the bare
classifiers), PGD adversarial training of the `cnn` (`pgd_at`, the same k PGD steps as AAA), and
AAA with the losses `xent`, `mse` and `xent+mse`. The paper's Fashion-MNIST setting is the default:
one native classifier (`cnn`; `--natives cnn,lenet5` trains against an ensemble, its MNIST and
CIFAR-10 setting), PGD 40 x 0.01 inside training, PGD-100 with step 0.01 and 50 restarts in the
evaluation; the `mlp` is never seen in training: the transfer classifier. Columns: Natural, PGD-100
with `--restarts` (white-box, end to end through the autoencoder), CW-L2 (c starts
at the paper's 100, then cleverhans' binary search lowers it; a success only if L2 < 3, as the paper), the two attacks on the autoencoder itself (`pgd_recon`, `latent`), gray-box PGD-100 (the
classifier attacked alone), and Min, the per-example worst case over the white-box columns and
the sanity checks' attacks. The paper's PGD-AT transfer column comes from a transfer classifier
adversarially trained itself; here PGD-AT hardens only the `cnn`, so it has no transfer row. Plus training images/s of AAA against PGD-AT at the same k, and the
common-corruption table (bare classifier vs AAA xent+mse) with its grid picture.

Usage: python benchmarks/aaa_fmnist.py [--budget-minutes 60] [--nb-iter 40 --eps-iter 0.01] [--natives cnn]
       [--restarts 50 --pgd-step 0.01] [--models natural,pgd_at,aaa-xent,aaa-mse,aaa-xent+mse] [--n 1000] [--tag TAG]
Training and each (model, classifier) evaluation are cached in run folders (runs/bench-aaa-*; the bare
classifiers' in theirs): a rerun does only what is missing.
"""

import argparse
import dataclasses
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RESULTS, environment, kept_json, machine, rows_table, train_on_budget, write_results  # noqa: E402

from tfpurify import adaptive, attacks, classifiers, corruptions, data, evaluation, metrics, reports  # noqa: E402
from tfpurify.defenses.aaa import AAAConfig  # noqa: E402
from tfpurify.defenses.adversarial_training import PGDATConfig  # noqa: E402
from tfpurify.training import load_defended  # noqa: E402

# Paper Table 5 (Fashion-MNIST, eps 0.2): (Natural, PGD-100, CW-L2) per model, native and transfer.
PAPER = {"natural": {"native": (92.55, 5.40, 0.0), "transfer": (89.74, 4.33, 0.0)},
         "pgd_at": {"native": (87.73, 62.16, 49.43), "transfer": (79.11, 61.28, 24.50)},
         "aaa xent": {"native": (87.59, 68.29, 65.36), "transfer": (33.60, 22.54, 31.32)},
         "aaa mse": {"native": (89.26, 21.87, 55.67), "transfer": (88.38, 28.71, 54.83)},
         "aaa xent+mse": {"native": (87.40, 63.98, 69.35), "transfer": (74.44, 49.67, 62.67)}}
CW_MAX_L2 = 3.0


def classifier_run(arch, path):
    if not (path / "classifier.weights.h5").exists():
        classifiers.train_classifier(classifiers.ClassifierConfig(arch=arch, epochs=3), path, verbose=2)
    return path


def cw_rows(target, scored, x, y, clean_correct, labels):
    """CW-L2 (cleverhans), counted as a success only below L2 = 3: beyond it the clean image stands."""
    start = time.perf_counter()
    x_adv = attacks.run_attack("cw_l2", target, x, y, batch_size=100, initial_const=100.0)
    l2 = np.sqrt(np.sum((x_adv - x) ** 2, axis=(1, 2, 3)))
    pred = np.argmax(classifiers.predict_logits(scored, x_adv), axis=1)
    within = l2 < CW_MAX_L2
    plain = np.where(within, pred == y, clean_correct)
    robust = clean_correct & plain
    return robust, {**labels, "attack": "cw_l2", "eps": None,
                    "params": {"max_l2": CW_MAX_L2, "initial_const": 100.0, "binary_search_steps": 5,
                               "max_iterations": 100},
                    "accuracy": float(robust.mean()), "plain_accuracy": float(plain.mean()),
                    "median_l2": float(np.median(l2)), "seconds": round(time.perf_counter() - start, 1)}


def evaluate_model(model, defended, scored_name, role, x, y, eps, restarts=50, step=0.01):
    """White-box (and gray-box for purifiers) rows of one model with one classifier, plus CW and Min."""
    pipelines = adaptive.threat_model_pipelines(defended)
    purifier = defended.purifier is not None
    tm = "whitebox" if (purifier or defended.robust_classifier) else "none"
    specs = [evaluation.AttackSpec("pgd", {"eps": eps, "eps_iter": step, "nb_iter": 100, "restarts": restarts})]
    if purifier:
        specs += evaluation.make_attack_specs(["pgd_recon", "latent"], [eps])
    threat_models = [tm, "graybox"] if purifier else [tm]
    report = evaluation.evaluate(defended, x, y, specs, threat_model=threat_models, pipelines=pipelines,
                                 defense=model, classifier=scored_name, dataset="fashion_mnist", progress=True,
                                 cascade=False)
    labels = {"defense": model, "classifier": scored_name, "threat_model": tm, "role": role}
    attacked, scored = pipelines[tm]
    clean = report.clean_by_threat_model[tm]
    cw_robust, cw_row = cw_rows(attacked, scored, x, y, clean, labels)
    rows = [dict(r, role=role, defense=model if model == "natural" else r["defense"]) for r in report.to_dict()["rows"]
            if not (r["threat_model"] == "clean" and r["defense"] == "none")]  # the bare classifier: its own row
    columns = [r.correct for r in report.results if r.threat_model == tm]
    columns += [c for t, _, _, c in report.check_columns if t == tm]
    minimum = metrics.worst_case_accuracy([clean, *columns, cw_robust])
    rows += [cw_row, {**labels, "attack": "min (white-box columns, CW-L2, checks)", "eps": eps, "params": {},
                      "accuracy": minimum, "plain_accuracy": None}]
    return rows, report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=60, help="training time per model")
    parser.add_argument("--budget-clock", choices=("wall", "cpu"), default="wall",
                        help="what the budget counts: wall time, or this process's CPU time (fair beside other jobs)")
    parser.add_argument("--nb-iter", type=int, default=40, help="PGD steps inside training (paper: 40)")
    parser.add_argument("--eps-iter", type=float, default=0.01, help="their step (paper: 0.01)")
    parser.add_argument("--natives", default="cnn", help="native classifiers, comma-separated from cnn,lenet5 "
                        "(paper on Fashion-MNIST: one)")
    parser.add_argument("--restarts", type=int, default=50, help="PGD-100's random restarts (paper: 50)")
    parser.add_argument("--pgd-step", type=float, default=0.01, help="PGD-100's step (paper: 0.01)")
    parser.add_argument("--models", default="natural,pgd_at,aaa-xent,aaa-mse,aaa-xent+mse",
                        help="the rows to train and evaluate (a subset when the budget is short)")
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--n-corruptions", type=int, default=1000)
    parser.add_argument("--tag", default="", help="suffix of run folders and results")
    args = parser.parse_args()
    suffix = f"-{args.tag}" if args.tag else ""
    seconds = 60 * args.budget_minutes
    eps_iter = args.eps_iter
    models = [m.replace("-", " ", 1) if m.startswith("aaa-") else m for m in args.models.split(",")]
    known = ("natural", "pgd_at", "aaa xent", "aaa mse", "aaa xent+mse")
    natives_asked = args.natives.split(",")
    if not set(models) <= set(known) or not set(natives_asked) <= {"cnn", "lenet5"}:
        parser.error(f"--models takes {','.join(m.replace(' ', '-') for m in known)}; --natives cnn and/or lenet5")

    cnn_run = classifier_run("cnn", pathlib.Path("runs/bench-cnn"))
    mlp_run = classifier_run("mlp", pathlib.Path("runs/bench-mlp"))
    natives = tuple(str(classifier_run(a, pathlib.Path(f"runs/bench-{a}"))) for a in natives_asked)
    configs = {"pgd_at": ("pgd_at", PGDATConfig(classifier=str(cnn_run), eps=args.eps, nb_iter=args.nb_iter,
                                                eps_iter=eps_iter, epochs=200))}
    for loss in ("xent", "mse", "xent+mse"):
        configs[f"aaa {loss}"] = ("aaa", AAAConfig(classifier=natives, loss=loss, eps=args.eps, eps_iter=eps_iter,
                                                   nb_iter=args.nb_iter, epochs=200))
    configs = {m: c for m, c in configs.items() if m in models}
    runs = {m: pathlib.Path(f"runs/bench-{m.replace(' ', '-').replace('+', '_')}{suffix}") for m in configs}
    timings = {m: train_on_budget(name, config, runs[m], seconds, args.budget_clock)
               for m, (name, config) in configs.items()}

    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    rows, reports_out = [], {}
    for model in [m for m in ("natural", *configs) if m in models]:
        for scored_name, scored_run, role in (("cnn", cnn_run, "native"), ("mlp", mlp_run, "transfer")):
            if model == "pgd_at" and role == "transfer":
                continue  # an adversarially trained cnn protects nothing else
            folder = scored_run if model == "natural" else runs[model]  # the evaluation goes with what it measured

            def evaluate(model=model, scored_name=scored_name, scored_run=scored_run, role=role):
                if model == "natural":
                    defended, _ = load_defended(scored_run)
                else:
                    defended, _ = load_defended(runs[model], scored_run if model.startswith("aaa") else None)
                start = time.perf_counter()
                model_rows, report = evaluate_model(model, defended, scored_name, role, x, y, args.eps,
                                                    args.restarts, args.pgd_step)
                return {"rows": model_rows, "report": {
                    "sanity_checks": report.to_dict()["sanity_checks"], "warnings": list(report.warnings),
                    "settings": report.to_dict()["settings"], "eval_seconds": round(time.perf_counter() - start, 1)}}

            kept = kept_json(folder / (f"aaa-eval-{model.replace(' ', '-').replace('+', '_')}-{scored_name}-n{len(x)}-"
                                       f"eps{args.eps:g}-pgd100x{args.restarts}-step{args.pgd_step:g}.json"), evaluate)
            rows += [r for i, r in enumerate(kept["rows"]) if r not in kept["rows"][:i]]  # kept before: twice
            reports_out[f"{model} / {scored_name}"] = kept["report"]
            print(model, scored_name, [(r["attack"], r["threat_model"], r["accuracy"]) for r in kept["rows"]], flush=True)

    # common corruptions: bare classifiers vs AAA xent+mse
    xc, yc = x[:args.n_corruptions], y[:args.n_corruptions]
    corruption_rows = []
    for scored_name, scored_run in (("cnn", cnn_run), ("mlp", mlp_run)) if "aaa xent+mse" in configs else ():
        defended, _ = load_defended(runs["aaa xent+mse"], scored_run)
        corruption_rows += corruptions.evaluate_corruptions(
            {"none": defended.classifier, "aaa xent+mse": defended}, xc, yc, corruptions.CORRUPTIONS,
            classifier=scored_name)
    grid = corruptions.corruption_grid(x[0], corruptions.CORRUPTIONS)
    reports.save_image_grid(RESULTS / f"aaa_fmnist{suffix.replace('-', '_')}_corruptions.png", grid, None,
                            title="one test image under each corruption, severity 0 (left) to 5")

    def cell(model, scored, attack, tm="whitebox", key="accuracy"):
        for r in rows:
            if r["defense"] == model and r["classifier"] == scored and r["attack"] == attack and \
                    (r["threat_model"] == tm or (model == "natural" and r["threat_model"] in ("none", "clean"))):
                return "-" if r.get(key) is None else f"{100 * r[key]:.1f}"
        return "-"

    table = ["| model | classifier | Natural | PGD-100 | CW-L2 (L2 < 3) | pgd_recon | latent | gray-box PGD-100 | Min | "
             "paper Natural / PGD-100 / CW-L2 | train images/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in [m for m in ("natural", *configs) if m in models]:
        for scored, role in (("cnn", "native"), ("mlp", "transfer")):
            if model == "pgd_at" and role == "transfer":
                continue
            nat = cell(model, scored, "none", "clean")
            paper = PAPER[model][role]
            speed = timings.get(model, {}).get("steady_images_per_second", "-")
            table.append(
                f"| {model} | {scored} ({role}) | {nat} | {cell(model, scored, 'pgd')} | {cell(model, scored, 'cw_l2')} | "
                f"{cell(model, scored, 'pgd_recon')} | {cell(model, scored, 'latent')} | "
                f"{cell(model, scored, 'pgd', 'graybox')} | "
                f"**{cell(model, scored, 'min (white-box columns, CW-L2, checks)')}** | "
                f"{' / '.join(f'{v:.2f}' for v in paper) if paper else '-'} | {speed} |")
    results = {"benchmark": f"aaa_fmnist{suffix.replace('-', '_')}", "dataset": "fashion_mnist",
               "n_examples": len(x), "eps": args.eps, "budget_minutes": args.budget_minutes,
               "budget_clock": args.budget_clock,
               "train_nb_iter": args.nb_iter, "train_eps_iter": eps_iter, "natives": natives_asked,
               "pgd_restarts": args.restarts, "pgd_step": args.pgd_step, "timings": timings,
               "configs": {k: dataclasses.asdict(c) for k, (_, c) in configs.items()}, "rows": rows + corruption_rows,
               "reports": reports_out, "paper_table_5": PAPER, "environment": environment()}
    md = (f"# AAA on Fashion-MNIST (eps {args.eps:g}, {len(x)} test images), the paper's Table 5 layout\n\n"
          f"Each model trains {args.budget_minutes:g} minutes of {args.budget_clock} time on this CPU ({machine()}); "
          f"PGD inside training: {args.nb_iter} steps of {eps_iter:.3g} (paper: 40 of 0.01). AAA's "
          f"native classifiers: {' + '.join(f'`{a}`' for a in natives_asked)} (paper: one); `mlp` never seen "
          f"(transfer). PGD-100: step {args.pgd_step:g}, {args.restarts} random restarts, an example counted "
          "robust only if every restart fails (paper: step 0.01, 50 restarts). Accuracy in %: correct clean and under the attack "
          "(white-box, end to end through the autoencoder); natural rows attack the bare classifier. CW-L2 counts "
          f"only adversarial examples with L2 < {CW_MAX_L2:g}. Min: the per-example worst case over the white-box "
          "columns, CW-L2 and the sanity checks' attacks. Paper numbers use the plain metric; ours in the JSON as "
          "`plain_accuracy`.\n\n" + "\n".join(table) + "\n\n"
          f"## Common corruptions (bare / AAA xent+mse; `aaa_fmnist{suffix.replace('-', '_')}_corruptions.png`)\n\n"
          + "\n".join(line for scored in ("cnn", "mlp")
                      for line in [f"### {scored}", *reports.corruption_lines(
                          [r for r in corruption_rows if r["classifier"] == scored])[2:], ""])
          + f"\n## All rows\n\n{rows_table(rows)}\n")
    write_results(results["benchmark"], results, md)


if __name__ == "__main__":
    main()
