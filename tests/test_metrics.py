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
