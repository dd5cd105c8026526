"""Sanity check 5, the binarization test: the problem is built as Zimmermann et al. build it, and the
check tells a strong attack from a weak one and from gradients that are masked."""

import numpy as np
import pytest
import tensorflow as tf

from tests.toys import RoundingPurifier
from tfpurify import adaptive, data, evaluation
from tfpurify.defenses import DefendedClassifier
from tfpurify.evaluation.binarization import BINARIZATION, binarization_points, binarization_test, fit_readouts

PGD = {"eps": 0.1, "eps_iter": 0.025, "nb_iter": 40}


@pytest.fixture(scope="module")
def tiny():
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((28, 28, 1))
    h = tf.keras.layers.Dense(32, activation="relu")(tf.keras.layers.Flatten()(inputs))
    return tf.keras.Model(inputs, tf.keras.layers.Dense(10)(h))


@pytest.fixture(scope="module")
def images():
    return data.load_dataset("fashion_mnist", "test", limit=20)


def test_points_are_the_image_inner_points_and_a_corner():
    x = np.full((3, 4, 4, 1), 0.5, np.float32)
    x[0] = 0.98  # the corner is clipped where it leaves [0, 1]
    points = binarization_points(x, 0.1, inner=7, shrink=0.95, seed=1)
    assert points.shape == (3, 9, 4, 4, 1)
    np.testing.assert_array_equal(points[:, 0], x)
    delta = points - x[:, None]
    assert np.abs(delta[:, 1:-1]).max() <= 0.095 + 1e-6 and np.abs(delta[1:, 1:-1]).max() > 0.05
    np.testing.assert_allclose(np.abs(delta[1:, -1]), 0.1, atol=1e-6)  # every pixel at eps: a corner
    assert points.max() <= 1.0 and np.all(points[0, -1] >= 0.88 - 1e-6)


def test_readouts_separate_with_the_boundary_halfway_and_a_unit_logit_range():
    rng = np.random.RandomState(0)
    features = rng.randn(4, 12, 6).astype(np.float32)
    features[:, -1] += 3.0  # the corner's features stand apart
    w, b, separated = fit_readouts(features)
    assert separated.all()
    z = np.einsum("nmd,nd->nm", features, w) + b[:, None]
    assert np.all(z[:, :-1] < 0) and np.all(z[:, -1] > 0)
    np.testing.assert_allclose(z.max(1) - z.min(1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(z[:, :-1].max(1), -z[:, -1], rtol=1e-4, atol=1e-5)  # halfway
    same = np.repeat(features[:, :1], 12, axis=1)  # the corner indistinguishable from the image
    assert not fit_readouts(same, steps=100)[2].any()


def test_a_strong_attack_passes_and_weak_or_blinded_ones_fail(tiny, images):
    x, _ = images
    binarize = adaptive.threat_model_pipelines(DefendedClassifier(tiny))["none"][0].binarize
    strong = binarization_test(binarize, x, "pgd", PGD)
    assert strong["fitted"] == 20 and strong["attack_success"] >= BINARIZATION["min_success"]
    assert strong["random_success"] < 0.5  # the control: random points of the ball mostly do not cross
    weak = binarization_test(binarize, x, "pgd", {"eps": 0.1, "eps_iter": 1e-4, "nb_iter": 1})
    assert weak["attack_success"] < BINARIZATION["min_success"]
    # a quantizer attacked with its own (zero) gradients fails; through its BPDA surrogate it passes
    rounding = DefendedClassifier(tiny, purifier=RoundingPurifier(levels=16))
    exact, surrogate = adaptive.threat_model_pipelines(rounding, bpda="exact,surrogate")["whitebox"][0]
    assert binarization_test(exact.binarize, x, "pgd", PGD)["attack_success"] < BINARIZATION["min_success"]
    assert binarization_test(surrogate.binarize, x, "pgd", PGD)["attack_success"] >= BINARIZATION["min_success"]


def test_check_5_in_the_report_fails_with_a_warning_or_is_skipped_with_its_reason(tiny, images):
    x, y = images
    rounding = DefendedClassifier(tiny, purifier=RoundingPurifier(levels=16))
    pipelines = adaptive.threat_model_pipelines(rounding, bpda="exact")
    report = evaluation.evaluate(rounding, x, y, evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=10),
                                 threat_model="whitebox", pipelines=pipelines, sanity_n=20)
    check = next(c for c in report.sanity if c["check"] == 5)
    assert check["status"] == "failed" and check["fitted"] == 20 and check["attack"] == "pgd"
    assert any("sanity check 5 failed" in w and "too weak for this pipeline" in w for w in report.warnings)
    report = evaluation.evaluate(lambda images: tiny(images), x, y, ["pgd"], sanity_n=20)  # a plain callable
    check = next(c for c in report.sanity if c["check"] == 5)
    assert check["status"] == "skipped" and "last Dense layer" in check["reason"]
    described = adaptive.threat_model_pipelines(DefendedClassifier(tiny))
    report = evaluation.evaluate(tiny, x, y, ["fgsm"], pipelines=described, sanity_n=20)
    check = next(c for c in report.sanity if c["check"] == 5)
    assert check["status"] == "skipped" and "no pgd attack" in check["reason"]
