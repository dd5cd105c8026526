"""The worst case with and without the cascade: same number, less compute?

`evaluate(cascade=True)` (the CLI default) runs each attack only on the examples the attacks before
it left robust; `cascade=False` runs every attack on every example. Both take the per-example
worst case over FGSM, PGD-40 and AutoAttack (standard) at eps 0.1 on the same Fashion-MNIST test
images, sanity checks off (they are the same in both modes), one after the other in one process:
(a) the undefended `cnn`, (b) the denoising AE + `cnn`, gray-box and white-box.

Usage: python benchmarks/cascade_fmnist.py [--n 200]
"""

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import environment, machine, rows_table, write_results  # noqa: E402

from tfpurify import adaptive, classifiers, data, evaluation  # noqa: E402
from tfpurify.training import load_defended  # noqa: E402

EPS = 0.1
ATTACKS = ("fgsm", "pgd", "autoattack")


def measure(model_fn, x, y, threat_models, pipelines, defense):
    """Worst-case rows for cascade on and off; time and model evaluations per example summed over attacks."""
    specs = evaluation.make_attack_specs(list(ATTACKS), [EPS], nb_iter=None)
    evaluation.evaluate(model_fn, x[:8], y[:8], specs, threat_model=threat_models, pipelines=pipelines,
                        sanity_checks=False)  # warm-up: tracing is not what is compared
    rows = []
    for cascade in (False, True):
        start = time.perf_counter()
        report = evaluation.evaluate(model_fn, x, y, specs, threat_model=threat_models, pipelines=pipelines,
                                     sanity_checks=False, cascade=cascade, defense=defense, classifier="cnn")
        seconds = time.perf_counter() - start
        for tm in threat_models:
            results = [r for r in report.results if r.threat_model == tm]
            rows.append({"defense": "none" if tm == "none" else defense, "classifier": "cnn", "threat_model": tm,
                         "attack": "worst_case", "eps": EPS, "params": {"attacks": list(ATTACKS), "cascade": cascade},
                         "accuracy": report.worst_case(tm, EPS),
                         "attack_seconds": round(sum(r.seconds for r in results), 1),
                         "grad_evals_per_example": round(sum(r.grad_evals or 0 for r in results), 1),
                         "per_attack": {r.attack: {"accuracy": r.accuracy, "seconds": round(r.seconds, 1),
                                                   "n_attacked": r.n_attacked} for r in results}})
        print(f"{defense} cascade={cascade}: {seconds:.1f} s")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier-run", default="runs/bench-cnn")
    parser.add_argument("--defense-run", default="runs/bench-denoising_ae")
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()

    cnn, _ = classifiers.load_classifier(args.classifier_run)
    defended, _ = load_defended(args.defense_run, args.classifier_run)
    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    rows = measure(cnn, x, y, ["none"], None, "none")
    rows += measure(defended, x, y, ["graybox", "whitebox"], adaptive.threat_model_pipelines(defended),
                    "denoising_ae")
    lines = []
    for on, off in zip([r for r in rows if r["params"]["cascade"]], [r for r in rows if not r["params"]["cascade"]]):
        speedup = off["attack_seconds"] / max(on["attack_seconds"], 1e-9)
        on["speedup_vs_no_cascade"] = round(speedup, 2)
        lines.append(f"| {on['defense']} | {on['threat_model']} | {100 * off['accuracy']:.1f} % | "
                     f"{100 * on['accuracy']:.1f} % | {off['attack_seconds']} | {on['attack_seconds']} | "
                     f"{off['grad_evals_per_example']} | {on['grad_evals_per_example']} | {speedup:.2f}x |")
    results = {"benchmark": "cascade_fmnist", "dataset": "fashion_mnist", "n_examples": args.n, "seed": 0,
               "rows": rows, "environment": environment()}
    md = (f"# Worst case over FGSM, PGD-40 and AutoAttack: cascade on vs off (Fashion-MNIST, eps {EPS})\n\n"
          f"First {args.n} test images, one process, same seed; seconds = attack time summed over the three "
          "attacks (tracing excluded by a warm-up); evals = gradient evaluations and queries per example, "
          "summed. Off: every attack on every example; on: each attack only on what the attacks before it "
          "left robust.\n\n"
          "| defense | threat model | worst case, off | worst case, on | seconds, off | seconds, on | "
          "evals, off | evals, on | speed-up |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines)
          + f"\n\nAll rows in the results schema:\n\n{rows_table(rows)}\n\nEnvironment: {machine()}.\n")
    write_results("cascade_fmnist", results, md)


if __name__ == "__main__":
    main()
