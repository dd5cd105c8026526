"""Numbers from scores and verdicts, and their one terminal format: numpy only, no model code.

What detectors, the Cowboy threshold and `tfpurify.evaluation` compute from arrays they already
hold: ROC-AUC, the rate of scores above a threshold (TPR on adversarial inputs, FPR on clean
ones), a threshold calibrated to a target false-positive rate, the per-example worst case over
attacks, the binomial tolerance that says what "within noise" means, an accuracy's 95 % interval
(scipy's Wilson interval), and a detector's metrics for one attack.
"""

import math

import numpy as np

__all__ = ["roc_auc", "flag_rate", "calibrate_threshold", "worst_case_accuracy", "binomial_tolerance",
           "accuracy_interval", "detection_metrics", "percent", "human_metrics"]


def roc_auc(clean_scores, attacked_scores):
    """ROC-AUC of telling adversarial (positive) from clean (negative) inputs by score.

    Args:
      clean_scores: [N] scores of clean inputs.
      attacked_scores: [M] scores of adversarial inputs; higher = more likely adversarial.
    """
    from sklearn.metrics import roc_auc_score  # scikit-learn loads slowly; only detectors need it

    labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(attacked_scores))]
    return float(roc_auc_score(labels, np.r_[clean_scores, attacked_scores]))


def flag_rate(scores, threshold):
    """Fraction of `scores` above `threshold`: the TPR on adversarial inputs, the FPR on clean ones."""
    return float(np.mean(np.asarray(scores) > threshold))


def calibrate_threshold(clean_scores, target_fpr):
    """The threshold that flags about `target_fpr` of `clean_scores` (a score flags when above it).

    The (1 - target_fpr) quantile, rounded up to a score that occurs, so the measured false-positive
    rate never exceeds the target on these scores.
    """
    return float(np.quantile(np.asarray(clean_scores), 1.0 - target_fpr, method="higher"))


def worst_case_accuracy(correct_columns):
    """Mean over examples of the per-example minimum over columns of booleans.

    Args:
      correct_columns: sequence of [N] boolean arrays (clean and one per attack).

    Returns:
      float: the fraction of examples correct in every column (not the minimum of the means).
    """
    stacked = np.stack([np.asarray(c, dtype=bool) for c in correct_columns])
    return float(np.mean(np.all(stacked, axis=0)))


def percent(value):
    """tfpurify's one terminal format for a fraction (accuracy, probability, rate): "84.0 %" ("-" for None).
    Files keep full precision."""
    return "-" if value is None else f"{100 * float(value):.1f} %"


def human_metrics(logs):
    """Training logs for the terminal: accuracies (names ending in accuracy) in percent, the rest with 4
    significant digits: "loss 0.1699, val_accuracy 84.2 %"."""
    return ", ".join(f"{k} {percent(v)}" if k.endswith("accuracy") else f"{k} {float(v):.4g}" for k, v in logs.items())


def accuracy_interval(correct, n, confidence=0.95):
    """The Wilson score interval (low, high) of an accuracy of `correct` out of `n` (scipy's `binomtest`):
    what a leaderboard's column means beside its point value. (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    interval = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def binomial_tolerance(p, n):
    """Two binomial standard errors of an accuracy `p` on `n` examples, at least 2 points.

    What "clearly" means in the sanity checks: a difference within it is noise.
    """
    return max(0.02, 2.0 * math.sqrt(max(p * (1 - p), 1e-4) / max(n, 1)))


def detection_metrics(clean_scores, clean_correct, adv_scores, correct, threshold, **labels):
    """Detector metrics for one attack, by the standard definitions.

    Args:
      clean_scores: [N] adversarial scores of the clean inputs.
      clean_correct: [N] bool, the defended pipeline classifies the clean input correctly.
      adv_scores: [N] scores of the attacked inputs.
      correct: [N] bool, correct clean and under the attack (the robust-accuracy column).
      threshold: the detector flags scores above it.
      **labels: keys copied into the row (threat_model, attack, eps).

    Returns:
      dict: `roc_auc` and `tpr` over the successful adversarial examples of clean-correct inputs
      (`n_adversarial` of them) against the clean-correct clean inputs (`n_clean`); `fpr` over
      all clean inputs; `detected_or_correct` (each attacked input flagged or classified right);
      `system_accuracy` (clean input accepted and right, and attacked input flagged or right:
      rejected clean inputs count as errors); `accuracy_on_accepted` (accuracy on attacked inputs
      the detector lets through). A metric with no example to compute it on is None.
    """
    clean_scores, adv_scores = np.asarray(clean_scores), np.asarray(adv_scores)
    clean_correct, correct = np.asarray(clean_correct, bool), np.asarray(correct, bool)
    success = clean_correct & ~correct
    clean_flagged, adv_flagged = clean_scores > threshold, adv_scores > threshold
    n_adv, n_clean = int(success.sum()), int(clean_correct.sum())
    return {**labels, "threshold": float(threshold), "n_adversarial": n_adv, "n_clean": n_clean,
            "roc_auc": roc_auc(clean_scores[clean_correct], adv_scores[success]) if n_adv and n_clean else None,
            "tpr": flag_rate(adv_scores[success], threshold) if n_adv else None,
            "fpr": flag_rate(clean_scores, threshold),
            "detected_or_correct": float(np.mean(adv_flagged | correct)),
            "system_accuracy": float(np.mean(clean_correct & ~clean_flagged & (adv_flagged | correct))),
            "accuracy_on_accepted": float(np.mean(correct[~adv_flagged])) if np.any(~adv_flagged) else None}
