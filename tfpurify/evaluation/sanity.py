"""Sanity checks 1-5 against gradient masking and weak attacks (Athalye et al. 2018; Carlini et al. 2019;
Zimmermann et al. 2022).

Run by `tfpurify.evaluation.evaluate` on the first examples of every threat model in which the
attacker differentiates the pipeline it is scored on. A failure becomes a warning in the report,
never hidden; the attacks a check runs join the worst case; a check that does not run is recorded
as skipped, with its reason.
"""

import math
import time

import numpy as np
import tqdm

from tfpurify import attacks as attacks_lib
from tfpurify.adaptive import binarizer
from tfpurify.classifiers import predict_logits
from tfpurify.evaluation.binarization import binarization_test
from tfpurify.evaluation.chunks import Chunks, chunk_key
from tfpurify.metrics import binomial_tolerance

__all__ = ["CHECKS", "GRADIENT_FREE_CHECK", "ANNOUNCE_SECONDS", "attack_and_score", "query_seconds", "run_sanity_checks",
           "skip_checks"]


def attack_and_score(name, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, progress=False,
                      judge=None, progress_label=None, **params):
    """Crafts x_adv on `attacked_fn`, classifies it with `scored_fn`; `judge`, `progress_label`: see
    `attacks.run_attack`.

    Returns:
      (x_adv, pred, robust per example, model evaluations per example)
    """
    x_adv, cost = attacks_lib.run_attack(name, attacked_fn, x, y, batch_size=batch_size, seed=seed,
                                         progress=progress, return_cost=True, judge=judge,
                                         progress_label=progress_label, **params)
    pred = np.argmax(predict_logits(scored_fn, x_adv, batch_size), axis=1)
    return x_adv, pred, clean_correct & (pred == y), cost


# Check 4's gradient-free attack: the Square Attack with AutoAttack's budget (5000 queries, p_init
# 0.8), stopping on an example once it is broken (`evaluate(sanity_queries=)` bounds the queries).
GRADIENT_FREE_CHECK = {"attack": "square", "n_queries": 5000, "p_init": 0.8}
CHECKS = {1: "PGD-2k vs PGD-k", 2: "PGD vs FGSM", 3: "PGD at eps 0.5", 4: "gradient-free vs gradient attacks",
          5: "binarization test"}


def skip_checks(report, tm, reason, checks=tuple(CHECKS)):
    for check in checks:
        report.sanity.append({"threat_model": tm, "check": check, "name": CHECKS[check], "status": "skipped",
                              "passed": None, "reason": reason})


# Check 4 announces what it will cost (with progress on) when its estimate exceeds this many seconds.
ANNOUNCE_SECONDS = 60.0


def run_sanity_checks(report, tm, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, progress=False,
                      n_queries=None, checkpoint=None, chunks=None):
    """Checks 1-5 against gradient masking and weak attacks on the first n examples; failures become warnings.

    1. PGD-2k vs PGD-k: 2k iterations clearly *above* k means more iterations helped the defense
       (masking or randomness); clearly *below* means PGD-k had not converged. Either fails, and
       PGD-2k joins the worst case.
    2. PGD must not be clearly weaker than FGSM.
    3. PGD at eps 0.5 must bring accuracy to ~0.
    4. A gradient-free attack (Square, 5000 queries), run on the examples every gradient attack
       left robust, must not break clearly more of them; what it breaks joins the worst case.
    5. The binarization test: PGD must find, on the first 20 examples, the adversarial example a binary
       readout on the pipeline's features has by construction (`evaluation.binarization`).
    "Clearly" is two binomial standard errors, at least 2 points (`metrics.binomial_tolerance`).

    With `progress`, every attack a check runs shows a bar labelled with its check; each record keeps
    the seconds since the record before it (`seconds`), and `checkpoint(report)` runs after each.
    `n_queries` bounds check 4's queries (default GRADIENT_FREE_CHECK's). `chunks`: a `Chunks` that runs the
    checks' attacks (in chunks, if it was made so) and keeps each finished one, so that checks run again from
    the start after a killed evaluation take their finished attacks from it and resume the unfinished one.
    """
    n = len(x)
    full = report.n_examples
    clock = [time.perf_counter()]
    chunks = Chunks({}) if chunks is None else chunks

    def correct_on_subset(check, name, **params):
        def attack(lo, hi):
            return attack_and_score(name, attacked_fn, scored_fn, x[lo:hi], y[lo:hi], clean_correct[lo:hi],
                                    batch_size, seed, progress, progress_label=f"[{tm}] check {check}: {name}",
                                    **params)
        key = chunk_key(f"[{tm}] check {check}: {name}", **params)
        return chunks.run(key, attack, n, keep=True, inputs=(f"seed {seed}", x, y, clean_correct))[2]

    def record(check, passed, detail, warning):
        now = time.perf_counter()
        report.sanity.append({"threat_model": tm, "check": check, "name": CHECKS[check],
                              "status": "passed" if passed else "failed", "passed": bool(passed), **detail,
                              "seconds": round(now - clock[0], 2)})
        clock[0] = now
        if not passed:
            report.warnings.append(f"[{tm}] sanity check {check} failed: {warning}")
        if checkpoint is not None:
            checkpoint(report)

    def fold(eps, name, subset_correct):
        column = np.ones(full, bool)
        column[:n] = subset_correct
        report.check_columns.append((tm, eps, name, column))

    pgd_results = [r for r in report.results if r.threat_model == tm and r.attack == "pgd"]
    if not pgd_results:
        skip_checks(report, tm, "no pgd attack in this evaluation", (1, 2))
    for r in pgd_results:
        base = {k: v for k, v in r.params.items() if k in ("eps_iter", "nb_iter", "restarts", "norm")}
        base["norm"] = attacks_lib.parse_norm(base["norm"])  # a row's params are resolved: norm is there
        k = base["nb_iter"]
        # A cascaded row counts the attacks before it too: the checks need PGD-k on its own.
        pgd_k = r.correct[:n] if not r.after else correct_on_subset(1, "pgd", eps=r.eps, **base)
        acc_k = float(np.mean(pgd_k))
        correct_2k = correct_on_subset(1, "pgd", eps=r.eps, **{**base, "nb_iter": 2 * k})
        fold(r.eps, f"pgd-{2 * k} on the first {n}", correct_2k)
        acc_2k = float(np.mean(correct_2k))
        tol = binomial_tolerance(acc_k, n)
        if acc_2k > acc_k + tol:
            why = (f"PGD-{2 * k} accuracy {acc_2k:.3f} > PGD-{k} {acc_k:.3f} at eps {r.eps} (more iterations "
                   "helped the defense: gradients are masked or the defense is random)")
        else:
            why = (f"PGD-{2 * k} accuracy {acc_2k:.3f} < PGD-{k} {acc_k:.3f} at eps {r.eps} (PGD-{k} had not "
                   f"converged: the numbers above overestimate robustness; the worst case includes PGD-{2 * k})")
        record(1, abs(acc_2k - acc_k) <= tol,
               {"eps": r.eps, f"pgd_{k}": acc_k, f"pgd_{2 * k}": acc_2k, "n": n, "tolerance": tol}, why)
        fgsm = [f for f in report.results if f.threat_model == tm and f.attack == "fgsm" and f.eps == r.eps
                and not f.after]
        acc_fgsm = float(np.mean(fgsm[0].correct[:n] if fgsm else correct_on_subset(2, "fgsm", eps=r.eps,
                                                                                      norm=base["norm"])))
        tol = binomial_tolerance(acc_fgsm, n)
        record(2, acc_k <= acc_fgsm + tol,
               {"eps": r.eps, "pgd": acc_k, "fgsm": acc_fgsm, "n": n, "tolerance": tol},
               f"PGD accuracy {acc_k:.3f} > FGSM {acc_fgsm:.3f} at eps {r.eps} "
               f"(an iterative attack should beat a single step: gradients may be masked)")
    large_eps = 0.5
    acc_large = float(np.mean(correct_on_subset(3, "pgd", eps=large_eps, eps_iter=large_eps / 10, nb_iter=40)))
    record(3, acc_large <= 0.05, {"eps": large_eps, "pgd": acc_large, "n": n, "threshold": 0.05},
           f"PGD accuracy {acc_large:.3f} at eps {large_eps} is not ~0 (gradients are masked)")
    _gradient_free_check(report, tm, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, record, fold,
                         progress, n_queries, chunks)
    _binarization_check(report, tm, attacked_fn, scored_fn, x, batch_size, seed, record, progress)


def _binarization_check(report, tm, attacked_fn, scored_fn, x, batch_size, seed, record, progress=False):
    """Check 5: PGD with the report's settings must find the adversarial example a binarized readout has
    by construction (`tfpurify.evaluation.binarization`) on at least BINARIZATION["min_success"] of them."""
    binarize = getattr(attacked_fn, "binarize", None)
    if binarize is None and attacked_fn is scored_fn:  # a bare classifier, attacked as it is scored
        binarize = binarizer(attacked_fn, None, lambda p: p.classifier)
    pgd = [r for r in report.results if r.threat_model == tm and r.attack == "pgd" and r.eps]
    if binarize is None:
        return skip_checks(report, tm, "the attacked pipeline's classifier has no last Dense layer to replace by "
                                       "a binary readout", (5,))
    if not pgd:
        return skip_checks(report, tm, "no pgd attack in this evaluation", (5,))
    params = {k: v for k, v in pgd[0].params.items() if k in ("eps_iter", "nb_iter", "norm")}
    params["norm"] = attacks_lib.parse_norm(params["norm"])
    result = binarization_test(binarize, x, "pgd", {**params, "eps": pgd[0].eps}, seed, batch_size,
                               progress=progress, progress_label=f"[{tm}] check 5: pgd")
    if result["attack_success"] is None:
        return skip_checks(report, tm, f"no binary readout could be fitted on the features of the first "
                                       f"{result['n']} examples", (5,))
    k = round(result["attack_success"] * result["fitted"])
    record(5, result["attack_success"] >= result["min_success"], result,
           f"PGD found the adversarial example that exists by construction on only {k} of {result['fitted']} "
           f"binarized problems at eps {result['eps']} (Zimmermann et al. 2022): the attack is too weak for this "
           "pipeline, and its robust accuracy overestimates robustness")


def query_seconds(model_fn, x, batch_size):
    """Seconds one query of every example in `x` costs (batches of `batch_size`; timed after a warm-up call)."""
    batch = x[:batch_size]
    model_fn(batch)
    start = time.perf_counter()
    model_fn(batch)
    return (time.perf_counter() - start) * math.ceil(len(x) / len(batch))


def _gradient_free_check(report, tm, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, record, fold,
                         progress, n_queries, chunks):
    """Check 4: a gradient-free attack on what the gradient attacks left robust must not break clearly more.

    With `progress`, its cost is estimated before it runs (queries x one timed query of the examples it
    attacks: an upper bound, since an example stops once broken) and an estimate above ANNOUNCE_SECONDS
    is printed with how to bound it."""
    n = len(x)
    name = GRADIENT_FREE_CHECK["attack"]
    eps_values = sorted({r.eps for r in report.results if r.threat_model == tm and r.eps
                         and attacks_lib.get_attack(r.attack).gradient})
    if not eps_values:
        skip_checks(report, tm, "no gradient attack with an eps budget in this evaluation", (4,))
    params = {k: v for k, v in GRADIENT_FREE_CHECK.items() if k != "attack"}
    if n_queries is not None:
        params["n_queries"] = int(n_queries)
    for eps in eps_values:
        columns = [r.correct[:n] for r in report.results if r.threat_model == tm and r.eps == eps
                   and attacks_lib.get_attack(r.attack).gradient]
        columns += [c[:n] for t, e, _, c in report.check_columns if t == tm and e == eps]
        robust = np.all(np.stack([clean_correct, *columns]), axis=0)
        after = robust.copy()
        estimate = None
        if robust.any():  # attack only what is left: the rest is already counted as broken
            if progress:
                estimate = params["n_queries"] * query_seconds(attacked_fn, x[robust], batch_size)
                if estimate > ANNOUNCE_SECONDS:
                    tqdm.tqdm.write(f"[{tm}] sanity check 4 at eps {eps:g}: {name}, {params['n_queries']} queries "
                                    f"on {int(robust.sum())} examples, up to {estimate / 60:.0f} min on this machine "
                                    "(bound it: tfpurify eval --check-queries N, evaluate(sanity_queries=N); or skip "
                                    "the checks: --no-sanity-checks)")
            idx = np.flatnonzero(robust)

            def attack(lo, hi):
                return attack_and_score(name, attacked_fn, scored_fn, x[idx[lo:hi]], y[idx[lo:hi]],
                                        clean_correct[idx[lo:hi]], batch_size, seed, progress,
                                        progress_label=f"[{tm}] check 4: {name}", eps=eps, **params)
            after[robust] = chunks.run(chunk_key(f"[{tm}] check 4: {name}", eps=eps, n=len(idx), **params), attack,
                                       len(idx), keep=True,
                                       inputs=(f"seed {seed}", x[idx], y[idx], clean_correct[idx]))[2]
        fold(eps, f"{name} on the first {n}", after)
        acc_grad, acc_after = float(np.mean(robust)), float(np.mean(after))
        broken = int(robust.sum() - after.sum())
        tol = binomial_tolerance(acc_grad, n)
        record(4, acc_grad - acc_after <= tol,
               {"eps": eps, "gradient_attacks": acc_grad, "with_gradient_free": acc_after,
                "broken_by_gradient_free_only": broken, "n": n, "tolerance": tol,
                "gradient_free_attack": {"attack": name, **params}, "estimated_seconds": None if estimate is None else round(estimate, 1)},
               f"{name} broke {broken} of the {int(robust.sum())} examples every gradient attack left robust at "
               f"eps {eps} (accuracy {acc_grad:.3f} -> {acc_after:.3f}): a gradient-free attack does clearly "
               f"better, so gradients are masked; the worst case includes {name}")
