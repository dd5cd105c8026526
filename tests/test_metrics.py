import numpy as np
import pytest

from tfpurify import metrics


def test_worst_case_is_mean_of_per_example_minimum():
    clean = np.array([1, 1, 1, 1, 0], bool)
    fgsm = np.array([1, 0, 1, 1, 1], bool)
    pgd = np.array([1, 1, 0, 1, 1], bool)
    # per-attack means are 0.8 and 0.8, but only examples 0 and 3 survive everything
    assert metrics.worst_case_accuracy([clean, fgsm, pgd]) == pytest.approx(0.4)


def test_detection_metrics_on_hand_made_scores():
    clean_scores = np.array([0.1, 0.2, 0.3, 0.9, 0.4])
    clean_correct = np.array([1, 1, 1, 1, 0], bool)
    adv_scores = np.array([0.35, 0.8, 0.05, 0.95, 0.99])
    correct = np.array([0, 1, 0, 0, 0], bool)  # examples 0, 2, 3 are successful attacks; 4 was wrong clean
    m = metrics.detection_metrics(clean_scores, clean_correct, adv_scores, correct, threshold=0.5)
    assert m["n_adversarial"] == 3 and m["n_clean"] == 4
    # positives {0.35, 0.05, 0.95} vs negatives {0.1, 0.2, 0.3, 0.9}: 3 + 0 + 4 of 12 pairs ranked right
    assert m["roc_auc"] == pytest.approx(7 / 12)
    assert m["tpr"] == pytest.approx(1 / 3)  # only 0.95 of the successful ones is above 0.5
    assert m["fpr"] == pytest.approx(1 / 5)  # 0.9 among all five clean inputs
    # flagged attacked inputs: 1, 3, 4; correct: 1 -> detected or correct on 1, 3, 4
    assert m["detected_or_correct"] == pytest.approx(3 / 5)
    # the system also needs the clean input accepted and right: example 3's clean input is rejected
    assert m["system_accuracy"] == pytest.approx(1 / 5)
    assert m["accuracy_on_accepted"] == pytest.approx(0.0)  # accepted: 0 and 2, both fooled
    none = metrics.detection_metrics(clean_scores, clean_correct, adv_scores, clean_correct, threshold=0.5)
    assert none["n_adversarial"] == 0 and none["roc_auc"] is None and none["tpr"] is None


def test_flag_rate_counts_scores_strictly_above_the_threshold():
    assert metrics.flag_rate([0.1, 0.5, 0.7, 0.9], 0.5) == 0.5  # 0.5 itself is not flagged
    assert metrics.flag_rate(np.array([0.5, 0.5]), 0.5) == 0.0


def test_calibrate_threshold_flags_at_most_the_target_fraction():
    scores = np.arange(1, 101, dtype=float)  # 1..100
    threshold = metrics.calibrate_threshold(scores, 0.05)
    assert threshold == 96.0 and metrics.flag_rate(scores, threshold) == 0.04  # a score that occurs, rounded up
    assert metrics.calibrate_threshold(scores, 0.5) == 51.0
    assert metrics.calibrate_threshold([3.0, 1.0, 2.0], 0.5) == 2.0  # order does not matter


@pytest.mark.parametrize("p,n,expected", [
    (0.5, 100, 0.1),          # 2 * sqrt(0.25 / 100)
    (0.9, 400, 0.03),         # 2 * sqrt(0.09 / 400)
    (0.5, 10000, 0.02),       # at least 2 points
    (1.0, 100, 0.02),         # p(1 - p) floored at 1e-4: 2 * sqrt(1e-4 / 100) = 0.002, then the 2-point floor
    (0.5, 0, 1.0),            # no examples: n taken as 1
])
def test_binomial_tolerance(p, n, expected):
    assert metrics.binomial_tolerance(p, n) == pytest.approx(expected)


def test_binomial_tolerance_floor_of_the_variance():
    # p(1 - p) = 0 gives no tolerance; floored at 1e-4 it is 2 points on one example (the 2-point floor)
    assert metrics.binomial_tolerance(0.0, 1) == pytest.approx(0.02)


def test_detection_metrics_on_integer_verdicts_and_other_scores():
    """0/1 integers count as booleans; a clean input flagged is a system error; None where nothing to count."""
    clean_scores = [0.1, 0.6, 0.2, 0.5]          # 0.6 flagged at 0.5; 0.5 itself not
    clean_correct = [1, 1, 0, 1]
    adv_scores = [0.9, 0.3, 0.5, 0.2]             # only 0.9 flagged
    correct = [0, 0, 0, 1]                        # attacks succeeded on examples 0 and 1 (2 was wrong clean)
    m = metrics.detection_metrics(clean_scores, clean_correct, adv_scores, correct, threshold=0.5, attack="pgd")
    assert m["attack"] == "pgd" and m["threshold"] == 0.5
    assert m["n_adversarial"] == 2 and m["n_clean"] == 3
    assert m["tpr"] == 0.5 and m["fpr"] == 0.25
    assert m["roc_auc"] == pytest.approx(4 / 6)     # positives {0.9, 0.3} vs negatives {0.1, 0.6, 0.5}: 4 of 6
    assert m["detected_or_correct"] == 0.5          # example 0 flagged, example 3 correct
    assert m["system_accuracy"] == 0.5              # examples 0 (attack flagged) and 3 (right); example 1's clean
    #                                                 input (0.6) is rejected, example 2 was wrong clean
    assert m["accuracy_on_accepted"] == pytest.approx(1 / 3)  # accepted attacked inputs 1, 2, 3: only 3 right
    everything_flagged = metrics.detection_metrics(clean_scores, clean_correct, [0.9] * 4, correct, threshold=0.5)
    assert everything_flagged["accuracy_on_accepted"] is None and everything_flagged["tpr"] == 1.0
    nothing_flagged = metrics.detection_metrics(clean_scores, clean_correct, [0.0] * 4, correct, threshold=0.5)
    assert nothing_flagged["accuracy_on_accepted"] == 0.25 and nothing_flagged["tpr"] == 0.0
    no_clean = metrics.detection_metrics(clean_scores, [0, 0, 0, 0], adv_scores, correct, threshold=0.5)
    assert no_clean["n_clean"] == 0 and no_clean["roc_auc"] is None


def test_roc_auc_by_ranks():
    assert metrics.roc_auc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert metrics.roc_auc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert metrics.roc_auc([0.5, 0.5], [0.5, 0.5]) == 0.5  # ties count half


def test_worst_case_accuracy_of_integer_columns():
    assert metrics.worst_case_accuracy([[1, 1, 0], [1, 0, 1]]) == pytest.approx(1 / 3)
    assert metrics.worst_case_accuracy([np.array([2, 1, 0])]) == pytest.approx(2 / 3)  # nonzero is correct
