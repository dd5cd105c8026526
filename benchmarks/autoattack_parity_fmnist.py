"""AutoAttack parity: tfpurify's `autoattack` against the original implementation (fra31/auto-attack, PyTorch)
on the same classifier, the same images and the same eps, example by example.

The Fashion-MNIST `cnn` is copied weight for weight into PyTorch (its logits are checked equal), the
original's `AutoAttack(version="standard")` (APGD-CE, APGD-T, FAB-T, Square 5000) runs in a separate
Python with PyTorch, and tfpurify's standard AutoAttack (the same four stages) runs here. Both
adversarial batches are scored on the Keras classifier. Reported per eps: each robust accuracy, the
examples on which the two disagree in each direction (those the original breaks and tfpurify does
not are the ones that matter: they would make tfpurify's number too high), and the time of each on
this machine, side by side in one run.

The original's attacks start from random points: a few examples near the boundary may fall either
way in either implementation; a systematic gap shows up as a one-sided disagreement count.

Needs a Python with PyTorch (CPU) and a checkout of github.com/fra31/auto-attack:
  python -m venv torchenv && torchenv/bin/pip install 'numpy<2' torch==2.13.0
  git clone https://github.com/fra31/auto-attack
Usage: python benchmarks/autoattack_parity_fmnist.py --classifier runs/bench-cnn --torch-python
       torchenv/bin/python --autoattack-src auto-attack [--n 500] [--eps 0.03,0.1]
(runs/bench-cnn: `tfpurify train classifier --arch cnn --epochs 3 --batch-size 128 --out runs/bench-cnn`)
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import environment, machine, rows_table, write_results  # noqa: E402

from tfpurify import attacks, classifiers, data  # noqa: E402

# Runs under the PyTorch Python: the Keras cnn in PyTorch, the original AutoAttack, its adversarial images.
_TORCH_SIDE = textwrap.dedent('''
    import json, subprocess, sys, time
    import numpy as np
    import torch
    from torch import nn

    src, npz, out = sys.argv[1:4]
    sys.path.insert(0, src)
    from autoattack import AutoAttack

    torch.set_num_threads(2)
    d = np.load(npz)

    class CNN(nn.Module):  # the Keras cnn: conv 5x5 (same) 32, pool, conv 5x5 64, pool, dense 1024, dense 10
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 32, 5, padding=2), nn.Conv2d(32, 64, 5, padding=2)
            self.f1, self.f2 = nn.Linear(7 * 7 * 64, 1024), nn.Linear(1024, 10)

        def forward(self, x):
            h = torch.max_pool2d(torch.relu(self.c1(x)), 2)
            h = torch.max_pool2d(torch.relu(self.c2(h)), 2)
            h = h.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # Keras flattens channels last
            return self.f2(torch.relu(self.f1(h)))

    model = CNN()
    with torch.no_grad():
        for conv, k, b in ((model.c1, "k1", "b1"), (model.c2, "k2", "b2")):
            conv.weight.copy_(torch.from_numpy(d[k].transpose(3, 2, 0, 1)))
            conv.bias.copy_(torch.from_numpy(d[b]))
        for dense, k, b in ((model.f1, "k3", "b3"), (model.f2, "k4", "b4")):
            dense.weight.copy_(torch.from_numpy(d[k].T))
            dense.bias.copy_(torch.from_numpy(d[b]))
    model.eval()
    x = torch.from_numpy(d["x"].transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(d["y"])
    with torch.no_grad():
        logits = model(x).numpy()
    result = {"logits": logits.tolist(), "runs": []}
    for eps in d["eps"]:
        adversary = AutoAttack(model, norm="Linf", eps=float(eps), version="standard", device="cpu", seed=0,
                               verbose=False)
        start = time.perf_counter()
        x_adv = adversary.run_standard_evaluation(x, y, bs=len(x))
        seconds = time.perf_counter() - start
        np.save(f"{out}_{float(eps):g}.npy", x_adv.numpy().transpose(0, 2, 3, 1))
        result["runs"].append({"eps": float(eps), "seconds": seconds})
    result["torch"] = torch.__version__
    result["autoattack_commit"] = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True,
                                                 text=True).stdout.strip() or None
    print(json.dumps(result))
''')


def _weights(model):
    kernels = [layer for layer in model.layers if layer.weights]
    out = {}
    for i, layer in enumerate(kernels, start=1):
        kernel, bias = layer.get_weights()
        out[f"k{i}"], out[f"b{i}"] = kernel, bias
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", default="runs/bench-cnn")
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--autoattack-src", required=True)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--eps", default="0.03,0.1")
    parser.add_argument("--autoattack-commit", help="the original's commit, where --autoattack-src is no git checkout")
    args = parser.parse_args()
    eps_list = [float(e) for e in args.eps.split(",")]

    model, config = classifiers.load_classifier(args.classifier)
    if config.arch != "cnn":
        sys.exit("the PyTorch copy is of the cnn architecture only")
    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    y = y.astype(np.int64)
    clean = np.argmax(classifiers.predict_logits(model, x), axis=1) == y

    with tempfile.TemporaryDirectory() as tmp:
        npz = pathlib.Path(tmp) / "inputs.npz"
        np.savez(npz, x=x, y=y, eps=np.array(eps_list, np.float32), **_weights(model))
        script = pathlib.Path(tmp) / "torch_side.py"
        script.write_text(_TORCH_SIDE)
        print(f"running the original AutoAttack on {args.n} images ...", flush=True)
        done = subprocess.run([args.torch_python, str(script), args.autoattack_src, str(npz), f"{tmp}/adv"],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        original = json.loads(done.stdout.strip().splitlines()[-1])
        x_originals = {run["eps"]: np.load(f"{tmp}/adv_{run['eps']:g}.npy") for run in original["runs"]}

    keras_logits = classifiers.predict_logits(model, x)
    logit_gap = float(np.max(np.abs(np.array(original["logits"]) - keras_logits)))
    assert logit_gap < 1e-3, f"the PyTorch copy differs from the Keras cnn by {logit_gap}"

    rows, comparisons = [], []
    for run in original["runs"]:
        eps = run["eps"]
        tf.keras.utils.set_random_seed(0)
        start = time.perf_counter()
        x_ours = np.asarray(attacks.run_attack("autoattack", model, x, y, eps=eps, batch_size=len(x)))
        ours_seconds = time.perf_counter() - start
        x_orig = x_originals[eps]
        robust = {}
        for name, x_adv in (("tfpurify", x_ours), ("original", x_orig)):
            assert np.abs(x_adv - x).max() <= eps + 1e-5 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0, name
            robust[name] = clean & (np.argmax(classifiers.predict_logits(model, x_adv), axis=1) == y)
        only_ours_broken = int(np.sum(robust["original"] & ~robust["tfpurify"]))
        only_original_broken = int(np.sum(robust["tfpurify"] & ~robust["original"]))
        comparisons.append({"eps": eps, "n": args.n, "clean": float(clean.mean()),
                            "robust_tfpurify": float(robust["tfpurify"].mean()),
                            "robust_original": float(robust["original"].mean()),
                            "broken_only_by_original": only_original_broken,
                            "broken_only_by_tfpurify": only_ours_broken,
                            "seconds_tfpurify": round(ours_seconds, 1), "seconds_original": round(run["seconds"], 1)})
        for name, key, seconds in (("autoattack", "tfpurify", ours_seconds),
                                   ("autoattack (fra31 original, PyTorch)", "original", run["seconds"])):
            rows.append({"defense": "none", "classifier": "cnn", "threat_model": "none", "attack": name, "eps": eps,
                         "params": {"version": "standard", "n_images": args.n}, "accuracy": float(robust[key].mean()),
                         "seconds": round(seconds, 1)})

    original["autoattack_commit"] = original["autoattack_commit"] or args.autoattack_commit
    results = {"environment": {**environment(), "torch": original["torch"]},
               "autoattack_commit": original["autoattack_commit"], "classifier": args.classifier,
               "logit_gap": logit_gap, "rows": rows, "comparisons": comparisons}
    lines = [f"# AutoAttack parity: tfpurify vs the original (fra31/auto-attack), Fashion-MNIST cnn", "",
             f"Machine: {machine()}; PyTorch {original['torch']} for the original"
             f" (commit {original['autoattack_commit'] or 'unknown'}). The first {args.n} test images; the cnn"
             f" copied into PyTorch (largest logit difference {logit_gap:.1e}); both adversarial batches scored on"
             f" the Keras cnn. Standard version, L-inf: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square"
             f" (5000 queries). Script: `benchmarks/autoattack_parity_fmnist.py`.", "",
             "| eps | clean | robust, tfpurify | robust, original | broken only by the original | "
             "broken only by tfpurify | time tfpurify | time original |", "|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c['eps']:g} | {100 * c['clean']:.1f} % | {100 * c['robust_tfpurify']:.1f} % | "
                     f"{100 * c['robust_original']:.1f} % | {c['broken_only_by_original']} | "
                     f"{c['broken_only_by_tfpurify']} | {c['seconds_tfpurify']:.0f} s | {c['seconds_original']:.0f} s |")
    lines += ["", "\"Broken only by the original\": robust under tfpurify's AutoAttack, broken by the original's; "
              "these would make tfpurify's robust accuracy too high.", "", rows_table(rows)]
    write_results("autoattack_parity_fmnist", results, "\n".join(lines))


if __name__ == "__main__":
    main()
