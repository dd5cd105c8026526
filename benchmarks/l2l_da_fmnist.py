"""Plain vs PGD adversarial training vs L2L-DA on Fashion-MNIST, each training on the same wall-clock budget.

The paper's Table 2 columns: Natural, FGSM, PGD-10, PGD-100, a margin-loss attack (the paper's
C&W inside the eps-ball; here APGD-DLR, the same kind of margin loss with AutoAttack's step
schedule), MIM, the learned `l2l_da` attack (the L2L-DA run's generator, 10 z draws), and Min
(our per-example worst case over all of them and the sanity checks' attacks), plus AutoAttack.
Robust classifiers are attacked directly (white-box; gray-box is the same thing). Both defenses
fine-tune the plain `cnn` and stop when the budget is spent; training images/s is reported, since
one L2L-DA step costs several PGD-k steps. (The paper makes no claim about cost and does not state
its baselines' training budgets; equal wall clock is this benchmark's own question.)

With `--equal-updates N` the question is the paper's instead: both defenses take N classifier updates with
the same optimiser, schedule and loss (L2L-DA's: SGD 0.01, momentum 0.9, weight decay 1e-5, batch 100,
L(x) + L(x_adv)), the weights kept are those of the epoch with the best PGD-10 accuracy on a validation
slice of the training split (the same attack for both), once per seed (`--seeds 0,1,2`). Each seed's training
and evaluation are kept in its run folders: a rerun with more seeds only adds them.

Usage: python benchmarks/l2l_da_fmnist.py [--budget-minutes 45] [--eps 0.1] [--n 1000] [--tag T] [--train-only pgd_at]
       [--equal-updates N --seeds 0,1,2]
"""

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time

import numpy as np
import tensorflow as tf


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RESULTS, environment, kept_json, machine, rows_table, train_on_budget, write_results  # noqa: E402

from tfpurify import adaptive, attacks, classifiers, data, evaluation  # noqa: E402
from tfpurify.defenses.adversarial_training import PGDATConfig  # noqa: E402
from tfpurify.defenses.l2l_da import L2LDAConfig  # noqa: E402
from tfpurify.runs import weights_digest  # noqa: E402
from tfpurify.training import load_defended, train_defense  # noqa: E402

PAPER = {  # Table 2 (MNIST, eps 0.3): Min column, the claim to reproduce on Fashion-MNIST
    "pgd_at": {"Natural": 98.52, "FGSM": 96.14, "PGD10": 92.21, "PGD100": 90.22, "C&W1000": 88.92, "L2L-DA": 89.49,
               "Min": 88.92},
    "l2l_da": {"Natural": 98.47, "FGSM": 97.87, "PGD10": 95.70, "PGD100": 95.15, "C&W1000": 95.26, "L2L-DA": 94.61,
               "Min": 94.61},
}


class EqualUpdates(tf.keras.callbacks.Callback):
    """Stops after `updates` classifier updates and keeps the weights of the epoch with the best PGD-10
    accuracy on (x_val, y_val) (the same attack for every defense), restored when training ends."""

    def __init__(self, updates, x_val, y_val, eps):
        super().__init__()
        self.updates, self.x_val, self.y_val, self.eps = updates, x_val, y_val, eps
        self.best, self.best_weights, self.history = -1.0, None, []

    def _optimizer(self):
        return getattr(self.model, "c_optimizer", None) or self.model.optimizer

    def on_train_batch_end(self, batch, logs=None):
        if int(self._optimizer().iterations) >= self.updates:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        classifier = self.model.classifier
        x_adv = attacks.run_attack("pgd", classifier, self.x_val, self.y_val, eps=self.eps, nb_iter=10)
        accuracy = classifiers.accuracy(classifier, x_adv, self.y_val)
        self.history.append({"epoch": epoch + 1, "updates": int(self._optimizer().iterations),
                             "val_pgd10": accuracy})
        if accuracy > self.best:
            self.best, self.best_weights = accuracy, self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def equal_update_configs(clf_run, eps, updates, seed):
    """Both defenses with L2L-DA's optimiser, schedule, batch and loss, for `updates` classifier updates."""
    epochs = math.ceil(updates / (54000 // 100))  # the training split minus 10 % validation, batch 100
    same = dict(classifier=str(clf_run), eps=eps, epochs=epochs, batch_size=100, learning_rate=0.01, seed=seed)
    return {"pgd_at": PGDATConfig(**same, nb_iter=10, optimizer="sgd", momentum=0.9, weight_decay=1e-5,
                                  clean_weight=1.0, adv_weight=1.0),
            "l2l_da": L2LDAConfig(**same, momentum=0.9, weight_decay=1e-5)}


def train_equal_updates(name, config, run, updates, x_val, y_val):
    """Trains `name` for `updates` classifier updates with model selection on the validation slice, unless the
    run exists; returns its record (seconds, the selected epoch, the validation curve)."""
    record = run / "selection.json"
    if not (run / "defense.weights.h5").exists():
        selection = EqualUpdates(updates, x_val, y_val, config.eps)
        start, cpu = time.perf_counter(), time.process_time()
        train_defense(name, config, run, callbacks=[selection], verbose=2)
        best = max(selection.history, key=lambda h: h["val_pgd10"])
        record.write_text(json.dumps({"train_seconds": round(time.perf_counter() - start, 1),
                                      "cpu_seconds": round(time.process_time() - cpu, 1), "updates": updates,
                                      "selected": best, "history": selection.history}, indent=2) + "\n")
    return json.loads(record.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier-run", default="runs/bench-cnn")
    parser.add_argument("--budget-minutes", type=float, default=45)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--tag", default="", help="suffix of run folders and results (another eps or budget)")
    parser.add_argument("--train-only", default=None,
                        help="train only these models (comma-separated from pgd_at,l2l_da) and stop; a later run "
                             "reuses them")
    parser.add_argument("--equal-updates", type=int, default=0,
                        help="N > 0: both take N classifier updates with L2L-DA's optimiser, schedule and loss, "
                             "model selection on validation (see the module); 0: equal wall clock")
    parser.add_argument("--seeds", default="0", help="comma list of seeds (with --equal-updates)")
    parser.add_argument("--n-val", type=int, default=500, help="validation images for model selection")
    args = parser.parse_args()
    if args.equal_updates:
        return equal_updates_main(args)
    only = args.train_only.split(",") if args.train_only else []
    if not set(only) <= {"pgd_at", "l2l_da"}:
        parser.error(f"--train-only takes pgd_at and/or l2l_da, got {args.train_only!r}")

    clf_run = pathlib.Path(args.classifier_run)
    if not (clf_run / "classifier.weights.h5").exists():
        classifiers.train_classifier(classifiers.ClassifierConfig(arch="cnn", epochs=3), clf_run, verbose=2)
    suffix = f"-{args.tag}" if args.tag else ""
    seconds = 60 * args.budget_minutes
    configs = {"pgd_at": PGDATConfig(classifier=str(clf_run), eps=args.eps, nb_iter=10, epochs=100),
               "l2l_da": L2LDAConfig(classifier=str(clf_run), eps=args.eps, epochs=100)}
    runs = {name: pathlib.Path(f"runs/bench-{name}{suffix}") for name in configs}
    timings = {name: train_on_budget(name, configs[name], runs[name], seconds) for name in only or configs}
    if only:
        return

    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    specs = _specs(args.eps, runs["l2l_da"])
    rows, reports = [], {}
    for name in ("none", "pgd_at", "l2l_da"):
        defended, info = load_defended(clf_run if name == "none" else runs[name])
        tm = "none" if name == "none" else "whitebox"
        start = time.perf_counter()
        report = evaluation.evaluate(defended, x, y, specs, threat_model=tm,
                                     pipelines=adaptive.threat_model_pipelines(defended), defense=name,
                                     classifier="cnn", dataset="fashion_mnist", progress=True, cascade=False)
        seconds_eval = time.perf_counter() - start
        d = report.to_dict()
        for row in d["rows"]:
            row.setdefault("training", None if name == "none" else
                           {**timings[name], "budget_minutes": args.budget_minutes})
        rows += [r for r in d["rows"] if not (name != "none" and r["threat_model"] == "clean" and r["defense"] == "none")]
        reports[name] = {"sanity_checks": d["sanity_checks"], "warnings": d["warnings"], "settings": d["settings"],
                         "eval_seconds": round(seconds_eval, 1)}

    def cell(name, tm, attack, nb_iter=None):
        for r in rows:
            if r["defense"] == name and r["threat_model"] == tm and r["attack"] == attack and \
                    (nb_iter is None or r["params"].get("nb_iter") == nb_iter):
                return f"{100 * r['accuracy']:.1f}"
        return "-"

    lines = []
    for name in ("none", "pgd_at", "l2l_da"):
        tm = "none" if name == "none" else "whitebox"
        speed = "-" if name == "none" else f"{timings[name]['images_per_second']}"
        lines.append(f"| {name} | {cell(name, 'clean', 'none')} | {cell(name, tm, 'fgsm')} | "
                     f"{cell(name, tm, 'pgd', 10)} | {cell(name, tm, 'pgd', 100)} | {cell(name, tm, 'apgd_dlr')} | "
                     f"{cell(name, tm, 'mim')} | {cell(name, tm, 'l2l_da')} | {cell(name, tm, 'autoattack')} | "
                     f"**{cell(name, tm, 'worst_case')}** | {speed} |")
    paper = "\n".join(f"| {name} (paper, MNIST eps 0.3) | {p['Natural']} | {p['FGSM']} | {p['PGD10']} | {p['PGD100']} | "
                      f"{p['C&W1000']} (C&W) | - | {p['L2L-DA']} | - | **{p['Min']}** | - |" for name, p in PAPER.items())
    results = {"benchmark": f"l2l_da_fmnist{suffix.replace('-', '_')}", "dataset": "fashion_mnist",
               "n_examples": len(x), "eps": args.eps, "budget_minutes": args.budget_minutes, "timings": timings,
               "configs": {k: dataclasses.asdict(v) for k, v in configs.items()}, "rows": rows, "reports": reports,
               "paper_table_2": PAPER, "environment": environment()}
    md = (f"# Plain vs PGD-10 adversarial training vs L2L-DA (Fashion-MNIST, eps {args.eps}, {len(x)} test images)\n\n"
          f"Each defense fine-tunes the plain `cnn` for {args.budget_minutes:g} minutes of wall time on this CPU "
          f"({machine()}). Accuracy in % (correct clean and under the attack), robust classifiers attacked "
          "directly (white-box = gray-box). Min = per-example worst case over every column and the sanity "
          "checks' attacks. APGD-DLR stands in for the paper's C&W (a margin loss inside the eps-ball).\n\n"
          "| model | Natural | FGSM | PGD-10 | PGD-100 | APGD-DLR | MIM | l2l_da | AutoAttack | Min | train images/s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n" + paper
          + f"\n\nAll rows in the results schema:\n\n{rows_table(rows)}\n")
    write_results(results["benchmark"], results, md)


def _specs(eps, generator_run):
    return (evaluation.make_attack_specs(["fgsm"], [eps])
            + [evaluation.AttackSpec("pgd", {"eps": eps, "nb_iter": k}) for k in (10, 100)]
            + evaluation.make_attack_specs(["apgd_dlr", "mim", "autoattack"], [eps])
            + evaluation.make_attack_specs(["l2l_da"], [eps], generator_run=str(generator_run)))


COLUMNS = (("none", "clean", None), ("fgsm", None, None), ("pgd", None, 10), ("pgd", None, 100), ("apgd_dlr", None, None),
           ("mim", None, None), ("l2l_da", None, None), ("autoattack", None, None), ("worst_case", None, None))


def published_seeds(path, clf_run, args):
    """{seed: {"training": ..., "rows": ...}} of the equal-updates results published at `path`, if they were
    measured as `args` asks (updates, eps, test images, every config field but the seed); else {}."""
    if not path.exists():
        return {}
    published = json.loads(path.read_text())
    configs = equal_update_configs(clf_run, args.eps, args.equal_updates, 0)
    wanted = {name: dataclasses.asdict(config) for name, config in configs.items()}
    # a config field added since the results were published counts with its default: what trained before it existed
    defaults = {name: {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
                for name, config in configs.items()}

    def same(name, a, b):
        return ({k: v for k, v in {**defaults[name], **a}.items() if k != "seed"}
                == {k: v for k, v in b.items() if k != "seed"})

    if (published.get("updates"), published.get("eps"), published.get("n_examples")) != (
            args.equal_updates, args.eps, args.n) or published.get("configs", {}).keys() != wanted.keys() \
            or not all(same(name, published["configs"][name], wanted[name]) for name in wanted):
        return {}
    return {seed: {"training": {k: v for k, v in published["training"].items() if k.endswith(f" seed {seed}")},
                   "rows": [r for r in published["rows"] if r["seed"] == seed]} for seed in published["seeds"]}


def equal_updates_main(args):
    """The paper's comparison: equal classifier updates, one optimiser, schedule and loss, model selection on
    validation, per seed; rows carry `seed` and `comparison`."""
    clf_run = pathlib.Path(args.classifier_run)
    seeds = [int(s) for s in args.seeds.split(",")]
    (_, _), (x_val, y_val) = data.load_train_val("fashion_mnist", None, 0.1, 0)
    x_val, y_val = x_val[:args.n_val], y_val[:args.n_val]
    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    rows, records, configs = [], {}, {}
    results_name = f"l2l_da_fmnist_equal_updates{args.equal_updates}"
    published, kept_seeds = published_seeds(RESULTS / f"{results_name}.json", clf_run, args), []
    for seed in seeds:
        seed_configs = equal_update_configs(clf_run, args.eps, args.equal_updates, seed)
        runs = {name: pathlib.Path(f"runs/bench-{name}-eq{args.equal_updates}-s{seed}") for name in seed_configs}
        if seed in published and not any((run / "defense.weights.h5").exists() for run in runs.values()):
            print(f"seed {seed}: its run folders are gone; its rows are kept from the published results")
            kept_seeds.append(seed)
            records.update(published[seed]["training"])
            rows += published[seed]["rows"]
            configs.update({name: dataclasses.asdict(config) for name, config in seed_configs.items()})
            continue
        for name, config in seed_configs.items():
            records[f"{name} seed {seed}"] = train_equal_updates(name, config, runs[name], args.equal_updates,
                                                                x_val, y_val)
            configs[name] = dataclasses.asdict(config)
        only = args.train_only.split(",") if args.train_only else []
        if only:
            continue
        specs = _specs(args.eps, runs["l2l_da"])
        for name in ("pgd_at", "l2l_da"):
            def evaluate(name=name):
                defended, _ = load_defended(runs[name])
                return evaluation.evaluate(defended, x, y, specs, threat_model="whitebox",
                                           pipelines=adaptive.threat_model_pipelines(defended), defense=name,
                                           classifier="cnn", dataset="fashion_mnist", progress=True,
                                           cascade=False).to_dict()["rows"]

            # a seed evaluated once, a rerun adds seeds
            seed_rows = kept_json(runs[name] / f"eval-eps{args.eps:g}-n{len(x)}.json", evaluate)
            rows += [{**r, "seed": seed, "comparison": f"equal updates ({args.equal_updates})",
                      "selection": records[f"{name} seed {seed}"]["selected"]} for r in seed_rows]
    if args.train_only:
        return

    def value(name, seed, attack, tm, nb_iter):
        for r in rows:
            if (r["defense"], r["seed"], r["attack"]) == (name, seed, attack) and r["threat_model"] == (tm or "whitebox") \
                    and (nb_iter is None or r["params"].get("nb_iter") == nb_iter):
                return 100 * r["accuracy"]
        return float("nan")

    lines = []
    for name in ("pgd_at", "l2l_da"):
        table = np.array([[value(name, seed, *column) for column in COLUMNS] for seed in seeds])
        for seed, values in zip(seeds, table):
            record = records[f"{name} seed {seed}"]
            selected, cpu = record["selected"], record.get("cpu_seconds")
            lines.append(f"| {name} | {seed} | {selected['epoch']} ({selected['updates']}) | "
                         + " | ".join(f"{v:.1f}" for v in values)
                         + f" | {record['train_seconds']:.0f} ({'-' if cpu is None else f'{cpu:.0f}'}) |")
        if len(seeds) > 1:
            lines.append(f"| **{name} mean ± sd** | {len(seeds)} seeds | - | "
                         + " | ".join(f"{m:.1f} ± {sd:.1f}" for m, sd in zip(table.mean(0), table.std(0, ddof=1)))
                         + " | - |")
    kept = (f" Seed{'s' if len(kept_seeds) > 1 else ''} {', '.join(map(str, kept_seeds))}: rows kept from these "
            "results as published before (their run folders are gone; `classifier_sha256` in the JSON names the "
            "classifier the other seeds fine-tuned).") if kept_seeds else ""
    md = (f"# PGD-10 adversarial training vs L2L-DA at equal classifier updates (Fashion-MNIST, eps {args.eps}, "
          f"{len(x)} test images)\n\n"
          f"Both fine-tune the plain `cnn` for {args.equal_updates} classifier updates with L2L-DA's optimiser, "
          "schedule and loss (SGD 0.01, momentum 0.9, weight decay 1e-5, batch 100, L(x) + L(x_adv)); the weights "
          f"kept are those of the epoch with the best PGD-10 accuracy on {len(x_val)} validation images of the "
          f"training split (the same attack for both); seeds {args.seeds}. This is the paper's kind of comparison "
          "(it states no budget for its baselines); the wall-clock one is `l2l_da_fmnist.md`. Machine: "
          f"{machine()}. Accuracy in % (correct clean and under the attack), white-box (= gray-box for a robust "
          "classifier); Min = the per-example worst case over every column and the sanity checks' attacks."
          + kept + "\n\n"
          "Training seconds: wall (CPU, every thread; other jobs shared the machine, so compare CPU).\n\n"
          "| model | seed | selected epoch (updates) | Natural | FGSM | PGD-10 | PGD-100 | APGD-DLR | MIM | l2l_da | "
          "AutoAttack | Min | training s (CPU s) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
          + "\n".join(lines)
          + f"\n\nAll rows in the results schema:\n\n{rows_table(rows)}\n")
    write_results(results_name, {
        "benchmark": results_name, "dataset": "fashion_mnist", "n_examples": len(x), "eps": args.eps,
        "updates": args.equal_updates, "seeds": seeds, "kept_from_published": kept_seeds,
        "classifier_sha256": weights_digest(clf_run, classifiers.WEIGHTS), "training": records, "configs": configs,
        "rows": rows, "environment": environment()}, md)


if __name__ == "__main__":
    main()
