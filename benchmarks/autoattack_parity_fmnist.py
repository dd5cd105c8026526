"""AutoAttack parity: tfpurify's `autoattack` against the original implementation (fra31/auto-attack, PyTorch)
on the same classifier, the same images and the same eps, example by example.

The Fashion-MNIST `cnn` is copied weight for weight into PyTorch (its logits are checked equal); the
original's attacks with its standard version's settings (APGD-CE, APGD-T, FAB-T, Square 5000, and the
four in turn as AutoAttack) run in a separate Python with PyTorch, tfpurify's here, for each eps and
seed. Both adversarial batches are scored on the Keras classifier. Reported per attack and eps: each
robust accuracy with its binomial standard error, the examples on which the two disagree in each
direction (those the original breaks and tfpurify does not are the ones that matter: they would make
tfpurify's number too high), and the time of each on this machine, side by side in one run.

The original's attacks start from random points: a few examples near the boundary may fall either
way in either implementation; a systematic gap shows up as a one-sided disagreement count.

Needs PyTorch (CPU build) and a checkout of github.com/fra31/auto-attack. The original runs in a second
process, by default this Python (`pip install -e ".[parity]"`; PyPI's Linux wheel of torch brings CUDA
libraries of several GB: on a CPU-only machine take the CPU build, `pip install torch==2.13.0 --index-url
https://download.pytorch.org/whl/cpu`), or any other Python with torch and numpy<2 (`--torch-python`):
  git clone https://github.com/fra31/auto-attack
Usage: python benchmarks/autoattack_parity_fmnist.py --classifier runs/bench-cnn --autoattack-src auto-attack
       [--torch-python PYTHON] [--n 500] [--eps 0.1,0.2] [--seeds 3]
       [--attacks apgd_ce,apgd_t,fab_t,square,autoattack] [--quick] [--name autoattack_parity_fmnist]
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
    names = {"apgd_ce": ["apgd-ce"], "apgd_t": ["apgd-t"], "fab_t": ["fab-t"], "square": ["square"],
             "autoattack": ["apgd-ce", "apgd-t", "fab-t", "square"]}
    for eps in d["eps"]:
        for attack in d["attacks"]:
            for seed in d["seeds"]:
                adversary = AutoAttack(model, norm="Linf", eps=float(eps), version="standard", device="cpu",
                                       seed=int(seed), verbose=False)
                adversary.attacks_to_run = names[str(attack)]  # one attack with the standard version's settings
                if d["quick"]:
                    adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = adversary.fab.n_iter = 5
                    adversary.square.n_queries = 50
                start = time.perf_counter()
                x_adv = adversary.run_standard_evaluation(x, y, bs=len(x))
                seconds = time.perf_counter() - start
                key = f"{float(eps):g}_{attack}_{int(seed)}"
                np.save(f"{out}_{key}.npy", x_adv.numpy().transpose(0, 2, 3, 1))
                result["runs"].append({"eps": float(eps), "attack": str(attack), "seed": int(seed), "key": key,
                                       "seconds": seconds})
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


ATTACKS = ("apgd_ce", "apgd_t", "fab_t", "square", "autoattack")
# tfpurify's parameters for the original's standard settings (Square unrescaled, as the original's AutoAttack)
OURS = {"apgd_ce": {}, "apgd_t": {}, "fab_t": {}, "square": {"rescale_schedule": False}, "autoattack": {}}
QUICK = {"apgd_ce": {"nb_iter": 5}, "apgd_t": {"nb_iter": 5}, "fab_t": {"nb_iter": 5},
         "square": {"n_queries": 50}, "autoattack": {"nb_iter": 5, "n_queries": 50}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", default="runs/bench-cnn")
    parser.add_argument("--torch-python", default=sys.executable, help="a Python with torch (default: this one)")
    parser.add_argument("--autoattack-src", required=True)
    parser.add_argument("--autoattack-commit", help="the original's commit, where --autoattack-src is no git checkout")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--eps", default="0.1,0.2")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 iterations and 50 queries: checks the script only")
    parser.add_argument("--name", default="autoattack_parity_fmnist")
    args = parser.parse_args()
    eps_list = [float(e) for e in args.eps.split(",")]
    names = args.attacks.split(",")
    if set(names) - set(ATTACKS):
        sys.exit(f"--attacks: choose from {', '.join(ATTACKS)}")

    model, config = classifiers.load_classifier(args.classifier)
    if config.arch != "cnn":
        sys.exit("the PyTorch copy is of the cnn architecture only")
    x, y = data.load_dataset("fashion_mnist", "test", limit=args.n)
    y = y.astype(np.int64)
    clean = np.argmax(classifiers.predict_logits(model, x), axis=1) == y

    with tempfile.TemporaryDirectory() as tmp:
        npz = pathlib.Path(tmp) / "inputs.npz"
        np.savez(npz, x=x, y=y, eps=np.array(eps_list, np.float64), attacks=np.array(names),
                 seeds=np.arange(args.seeds), quick=args.quick, **_weights(model))
        script = pathlib.Path(tmp) / "torch_side.py"
        script.write_text(_TORCH_SIDE)
        print(f"running the original on {args.n} images ...", flush=True)
        done = subprocess.run([args.torch_python, str(script), args.autoattack_src, str(npz), f"{tmp}/adv"],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        original = json.loads(done.stdout.strip().splitlines()[-1])
        x_originals = {run["key"]: np.load(f"{tmp}/adv_{run['key']}.npy") for run in original["runs"]}

    keras_logits = classifiers.predict_logits(model, x)
    logit_gap = float(np.max(np.abs(np.array(original["logits"]) - keras_logits)))
    assert logit_gap < 1e-3, f"the PyTorch copy differs from the Keras cnn by {logit_gap}"
    original["autoattack_commit"] = original["autoattack_commit"] or args.autoattack_commit

    def robust_of(x_adv, eps):
        assert np.abs(x_adv - x).max() <= eps + 1e-5 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        return clean & (np.argmax(classifiers.predict_logits(model, x_adv), axis=1) == y)

    runs = []
    for run in original["runs"]:
        eps, attack, seed = run["eps"], run["attack"], run["seed"]
        print(f"tfpurify {attack} eps {eps:g} seed {seed} ...", flush=True)
        params = {**OURS[attack], **(QUICK[attack] if args.quick else {})}
        start = time.perf_counter()
        x_ours = np.asarray(attacks.run_attack(attack, model, x, y, eps=eps, batch_size=len(x), seed=seed, **params))
        ours_seconds = time.perf_counter() - start
        ours, theirs = robust_of(x_ours, eps), robust_of(x_originals[run["key"]], eps)
        runs.append({"eps": eps, "attack": attack, "seed": seed, "robust_tfpurify": float(ours.mean()),
                     "robust_original": float(theirs.mean()),
                     "broken_only_by_original": int(np.sum(ours & ~theirs)),
                     "broken_only_by_tfpurify": int(np.sum(theirs & ~ours)),
                     "seconds_tfpurify": round(ours_seconds, 1), "seconds_original": round(run["seconds"], 1)})

    rows, summary = [], []
    for eps in eps_list:
        for attack in names:
            mine = [r for r in runs if abs(r["eps"] - eps) < 1e-9 and r["attack"] == attack]
            line = {"eps": eps, "attack": attack, "seeds": len(mine)}
            for who in ("tfpurify", "original"):
                acc = float(np.mean([r[f"robust_{who}"] for r in mine]))
                line[who] = acc
                line[f"se_{who}"] = float(np.sqrt(acc * (1 - acc) / args.n))  # binomial, one run's n images
                line[f"seconds_{who}"] = float(np.mean([r[f"seconds_{who}"] for r in mine]))
            line["broken_only_by_original"] = int(sum(r["broken_only_by_original"] for r in mine))
            line["broken_only_by_tfpurify"] = int(sum(r["broken_only_by_tfpurify"] for r in mine))
            line["weaker_by_more_than_one_se"] = line["tfpurify"] > line["original"] + line["se_original"]
            summary.append(line)
            for who, label in (("tfpurify", attack), ("original", f"{attack} (fra31 original, PyTorch)")):
                rows.append({"defense": "none", "classifier": "cnn", "threat_model": "none", "attack": label,
                             "eps": eps, "params": {"n_images": args.n, "seeds": len(mine), "quick": args.quick},
                             "accuracy": line[who], "seconds": line[f"seconds_{who}"]})

    results = {"environment": {**environment(), "torch": original["torch"]},
               "autoattack_commit": original["autoattack_commit"], "classifier": args.classifier,
               "clean": float(clean.mean()), "logit_gap": logit_gap, "rows": rows, "summary": summary, "runs": runs}
    lines = ["# AutoAttack parity: tfpurify vs the original (fra31/auto-attack), Fashion-MNIST cnn", "",
             f"Machine: {machine()}; PyTorch {original['torch']} (CPU) for the original, commit"
             f" {original['autoattack_commit'] or 'unknown'}. The first {args.n} test images (clean accuracy"
             f" {100 * clean.mean():.1f} %); the cnn copied into PyTorch (largest logit difference {logit_gap:.1e});"
             f" both adversarial batches scored on the Keras cnn. L-inf, each attack with the original's standard"
             f" settings (APGD-CE 100 iterations; APGD-T and FAB-T 9 targets x 100; Square 5000 queries, schedule"
             f" not rescaled; AutoAttack all four in turn), {args.seeds} seed(s) each, the mean shown; se: the"
             f" binomial standard error of one run. Script: `benchmarks/autoattack_parity_fmnist.py`"
             + (" (--quick: 5 iterations, 50 queries; checks the script, not the attacks)." if args.quick else "."),
             "", "| attack | eps | robust, tfpurify | robust, original | broken only by the original | "
             "broken only by tfpurify | time tfpurify | time original |", "|---|---|---|---|---|---|---|---|"]
    for c in summary:
        lines.append(f"| {c['attack']} | {c['eps']:g} | {100 * c['tfpurify']:.1f} % (se {100 * c['se_tfpurify']:.1f}) | "
                     f"{100 * c['original']:.1f} % (se {100 * c['se_original']:.1f}) | {c['broken_only_by_original']} | "
                     f"{c['broken_only_by_tfpurify']} | {c['seconds_tfpurify']:.0f} s | {c['seconds_original']:.0f} s |")
    weaker = ", ".join(f"{c['attack']} at {c['eps']:g}" for c in summary if c["weaker_by_more_than_one_se"])
    lines += ["", "\"Broken only by\": examples one implementation breaks and the other does not, summed over the"
              " seeds; those broken only by the original would make tfpurify's robust accuracy too high. "
              + (f"Rows where tfpurify is weaker by more than one standard error: {weaker}." if weaker else
                 "No row where tfpurify is weaker than the original by more than one standard error."),
              "", rows_table(rows)]
    write_results(args.name, results, "\n".join(lines))


if __name__ == "__main__":
    main()
