import numpy as np
import pytest
import tensorflow as tf

from tests.toys import BrightnessDetector, NoisyPurifier, RoundingPurifier
from tfpurify import adaptive, attacks, classifiers, evaluation
from tfpurify.defenses import DefendedClassifier
from tfpurify.errors import AttackConfigError


def test_bpda_gives_nonzero_gradients_through_rounding(cnn, fmnist_test):
    x, y = fmnist_test
    defended = DefendedClassifier(cnn, purifier=RoundingPurifier(levels=4))
    target = adaptive.whitebox_target(defended)
    xt = tf.constant(x[:8])
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y[:8], target(xt)))
    grad = tape.gradient(loss, xt)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0
    # forward pass is the real (rounded) purifier
    np.testing.assert_allclose(target(xt), defended(xt), atol=1e-5)


def test_whitebox_pgd_defeats_rounding_while_direct_gradients_fail(cnn, fmnist_test):
    x, y = fmnist_test
    defended = DefendedClassifier(cnn, purifier=RoundingPurifier(levels=4))
    with pytest.raises(AttackConfigError, match="BPDA"):
        attacks.run_attack("pgd", defended, x[:8], y[:8], eps=0.1)
    clean = classifiers.accuracy(defended, x, y)
    x_adv = attacks.run_attack("pgd", adaptive.whitebox_target(defended), x, y, eps=0.1, nb_iter=20)
    assert classifiers.accuracy(defended, x_adv, y) < clean - 0.3


def test_eot_averages_softmax_over_draws():
    n, samples = 3, 2

    def alternating(x):  # draw 0 says class 0, draw 1 says class 1, with certainty
        row = tf.range(tf.shape(x)[0])
        first = tf.reshape(row < n, [-1, 1])
        return tf.where(first, tf.constant([[20.0, -20.0]]), tf.constant([[-20.0, 20.0]]))

    out = adaptive.eot(alternating, samples)(tf.zeros((n, 2, 2, 1)))
    np.testing.assert_allclose(tf.nn.softmax(out), 0.5, atol=1e-4)
    assert adaptive.eot(alternating, 1) is alternating


def test_eot_reduces_gradient_variance(cnn, fmnist_test):
    x, y = fmnist_test
    defended = DefendedClassifier(cnn, purifier=NoisyPurifier())
    xt = tf.constant(x[:4])

    def grad(samples):
        target = adaptive.whitebox_target(defended, eot_samples=samples)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y[:4], target(xt)))
        return tape.gradient(loss, xt).numpy()

    spread = lambda s: np.mean(np.std([grad(s) for _ in range(4)], axis=0))  # noqa: E731
    assert spread(32) < 0.6 * spread(1)


def test_detector_aware_attack_evades_the_detector(cnn, fmnist_test):
    x, y = fmnist_test
    detector = BrightnessDetector()
    defended = DefendedClassifier(cnn, purifier=detector, detector=detector)
    plain = attacks.run_attack("pgd", adaptive.whitebox_target(defended, detector_weight=0), x[:64], y[:64],
                               eps=0.1, nb_iter=10)
    aware = attacks.run_attack("pgd", adaptive.whitebox_target(defended, detector_weight=50.0), x[:64], y[:64],
                               eps=0.1, nb_iter=10)
    assert float(np.mean(detector.adversarial_score(aware))) < float(np.mean(detector.adversarial_score(plain))) - 0.01
    with pytest.raises(AttackConfigError, match="mim"):
        attacks.run_attack("mim", adaptive.whitebox_target(defended), x[:4], y[:4], eps=0.1)


def test_evaluate_graybox_whitebox_and_detection_metrics(cnn, fmnist_test):
    x, y = fmnist_test
    detector = BrightnessDetector()
    detector.calibrate(x[128:], target_fpr=0.1)
    defended = DefendedClassifier(cnn, purifier=detector, detector=detector)
    report = evaluation.evaluate(
        defended, x[:64], y[:64], evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=5),
        threat_model=["none", "graybox", "whitebox"], pipelines=adaptive.threat_model_pipelines(defended),
        sanity_checks=False, detector=detector, defense="toy")
    assert [r.threat_model for r in report.results] == ["none", "graybox", "whitebox"]
    det = report.detection
    assert [d["threat_model"] for d in det] == ["graybox", "whitebox"]
    for d in det:
        assert 0.0 <= d["roc_auc"] <= 1.0 and 0.0 <= d["tpr"] <= 1.0
        assert d["detected_or_correct"] >= next(r.accuracy for r in report.results if r.threat_model == d["threat_model"])
    rows = report.rows()
    assert {r["defense"] for r in rows if r["threat_model"] == "none"} == {"none"}
    assert {r["defense"] for r in rows if r["threat_model"] == "whitebox"} == {"toy"}


def test_spsa_sanity_check_runs_and_records(cnn, fmnist_test):
    x, y = fmnist_test
    report = evaluation.evaluate(cnn, x[:32], y[:32], evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=10),
                                 sanity_n=32, spsa_check_n=4)
    check4 = [c for c in report.sanity if c["check"] == 4]
    assert len(check4) == 1 and check4[0]["n"] == 4 and check4[0]["passed"]
