"""PGD throughput: tfpurify's `run_attack` (cleverhans in tf.function) against IBM ART.

PGD-40, eps 0.1 (L-inf), step 0.025, one random start, on the first 1000 Fashion-MNIST test
images, the `cnn` classifier, same Keras model and batch size for both, in one process; each
timed `--repeats` times after a warm-up batch, the median reported.
Needs the `bench` extra (adversarial-robustness-toolbox): `make bench`.

Usage: python benchmarks/attack_throughput.py [--run runs/bench-cnn] [--n 1000] [--batch-size 256]
"""

import argparse
import pathlib
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import environment, machine, rows_table, write_results  # noqa: E402

from tfpurify import attacks, classifiers, data  # noqa: E402


def _art_pgd(model, x, y, eps, eps_iter, nb_iter, batch_size):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    estimator = TensorFlowV2Classifier(
        model, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    attack = ProjectedGradientDescent(estimator, norm=np.inf, eps=eps, eps_step=eps_iter, max_iter=nb_iter,
                                      num_random_init=1, batch_size=batch_size, verbose=False)
    return attack.generate(x, y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench-cnn")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    run = pathlib.Path(args.run)
    if not (run / "classifier.weights.h5").exists():
        classifiers.train_classifier(classifiers.ClassifierConfig(arch="cnn", epochs=args.epochs), run, verbose=2)
    model, _ = classifiers.load_classifier(run)
    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    eps, eps_iter, nb_iter = 0.1, 0.025, 40

    # One warm-up batch each, so tracing / graph building is not counted.
    attacks.run_attack("pgd", model, x[:args.batch_size], y[:args.batch_size], eps=eps, eps_iter=eps_iter,
                       nb_iter=nb_iter, batch_size=args.batch_size)
    _art_pgd(model, x[:args.batch_size], y[:args.batch_size], eps, eps_iter, nb_iter, args.batch_size)
    ours_times, art_times = [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        start = time.perf_counter()
        x_ours = attacks.run_attack("pgd", model, x, y, eps=eps, eps_iter=eps_iter, nb_iter=nb_iter,
                                    batch_size=args.batch_size)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        x_art = _art_pgd(model, x, y, eps, eps_iter, nb_iter, args.batch_size)
        art_times.append(time.perf_counter() - start)
    ours, art = float(np.median(ours_times)), float(np.median(art_times))

    params = {"nb_iter": nb_iter, "eps_iter": eps_iter, "rand_init": True, "batch_size": args.batch_size}
    base = {"defense": "none", "classifier": "cnn", "threat_model": "none"}
    rows = [
        {**base, "attack": "none", "eps": 0, "params": {}, "accuracy": classifiers.accuracy(model, x, y)},
        {**base, "attack": "pgd", "eps": eps, "params": {**params, "implementation": "tfpurify"},
         "accuracy": classifiers.accuracy(model, x_ours, y)},
        {**base, "attack": "pgd", "eps": eps, "params": {**params, "implementation": "art"},
         "accuracy": classifiers.accuracy(model, x_art, y)},
    ]
    results = {"benchmark": "attack_throughput", "dataset": "fashion_mnist", "n_examples": len(x), "seed": 0,
               "rows": rows, "detection": [],
               "timings": {"tfpurify_pgd_seconds": round(ours, 2), "art_pgd_seconds": round(art, 2),
                           "tfpurify_runs_seconds": [round(t, 2) for t in ours_times],
                           "art_runs_seconds": [round(t, 2) for t in art_times],
                           "speedup_vs_art": round(art / ours, 2),
                           "tfpurify_images_per_second": round(len(x) / ours, 1),
                           "art_images_per_second": round(len(x) / art, 1)},
               "environment": environment()}
    md = (f"# attack_throughput: PGD-40 eps 0.1, {len(x)} Fashion-MNIST test images, cnn, batch {args.batch_size}\n\n"
          f"| implementation | seconds | images/s |\n|---|---|---|\n"
          f"| tfpurify `run_attack` (cleverhans in tf.function) | {ours:.2f} | {len(x) / ours:.1f} |\n"
          f"| IBM ART `ProjectedGradientDescent` | {art:.2f} | {len(x) / art:.1f} |\n\n"
          f"Median of {args.repeats} interleaved runs each (tfpurify {[round(t, 2) for t in ours_times]} s, "
          f"ART {[round(t, 2) for t in art_times]} s). Speed-up: **{art / ours:.2f}x** (target >= 2x). "
          f"Environment: {machine()}.\n\n"
          f"Accuracy of the classifier (threat model none = attack on the bare classifier):\n\n{rows_table(rows)}\n")
    write_results("attack_throughput", results, md)


if __name__ == "__main__":
    main()
