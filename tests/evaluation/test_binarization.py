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
    strong = binarization_test(binarize, np.concatenate([x, x[:5]]), "pgd", PGD)  # 25 given, the first 20 used
    assert strong["n"] == BINARIZATION["n"] == 20
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


def test_points_default_to_the_shrunk_ball_in_float32_with_random_corner_signs_inside_the_pixel_range():
    x = np.random.RandomState(0).uniform(0.0, 1.0, (4, 6, 6, 1)).astype(np.float32)
    x[:, 0] = 0.02  # near 0: points are clipped from below as from above
    points = binarization_points(x, 0.1, inner=9)
    assert points.dtype == np.float32 and points.min() >= 0.0 and points.max() <= 1.0
    delta = points - x[:, None]
    assert np.abs(delta[:, 1:-1]).max() <= 0.95 * 0.1 + 1e-6  # the default shrink
    signs = np.sign(delta[:, -1, 1:])  # the unclipped rows of the corner
    assert (signs > 0).any() and (signs < 0).any()  # random signs, not one direction


class _PixelFeatures:
    """A binarize handle on the pixels themselves (features = flattened images, identity purifier) that
    records the `training` flag it is called with; `head -> (head, head)`."""

    def __init__(self):
        self.training = []

        @tf.autograph.experimental.do_not_convert  # a plain function: recorded when traced, as when run
        def features(images, training=None):
            self.training.append(training)
            return tf.reshape(images, [tf.shape(images)[0], -1])

        self.features = features

    def purify(self, images):
        return images

    def __call__(self, head):
        return head, head


def _corner_readouts(separated):
    """A stand-in for fit_readouts on pixel features: per example, w = the corner's signs / D and the
    boundary just above the image, so the corner is class 1, the image class 0, and about half of the
    random points of the ball cross; `separated` as given."""

    def fit(features):
        d = features.shape[-1]
        w = np.sign(features[:, -1] - features[:, 0]) / d
        b = -np.einsum("nd,nd->n", features[:, 0], w) - 1e-7
        return w.astype(np.float32), b.astype(np.float32), np.asarray(separated)

    return fit


def test_the_record_counts_fitted_examples_and_the_random_control(images, monkeypatch):
    from tfpurify.evaluation import binarization

    x, _ = images
    handle, calls = _PixelFeatures(), []
    real_run = binarization.attacks_lib.run_attack

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(binarization.attacks_lib, "run_attack", spy)
    separated = np.array([False] + [True] * 5)
    monkeypatch.setattr(binarization, "fit_readouts", _corner_readouts(separated))
    record = binarization_test(handle, x, "pgd", {**PGD, "early_exit": True, "restarts": 3}, n=6, inner=5, seed=3,
                               progress=True, progress_label="check 5")
    assert set(record) == {"attack", "eps", "n", "inner_points", "fitted", "setup_failed", "attack_success",
                           "random_success", "min_success"}
    assert (record["n"], record["inner_points"], record["fitted"], record["setup_failed"]) == (6, 5, 5, 1)
    assert record["attack_success"] == 1.0  # a linear readout: PGD finds the corner's side
    assert record["random_success"] >= 0.8  # ten random points, each crossing about half the time
    assert all(t is False for t in handle.training)  # features at inference, in the fit and in the attack
    (args, kwargs), = calls  # one run: every example in one batch, in order, to the end, labels 0
    np.testing.assert_array_equal(args[3], np.zeros(6, np.int64))
    assert args[3].dtype == np.int64 and len(args[2]) == 6
    assert (kwargs["batch_size"], kwargs["seed"], kwargs["early_exit"], kwargs["restarts"]) == (6, 3, False, 1)
    assert kwargs["progress"] is True and kwargs["progress_label"] == "check 5"
    # no readout fitted: nothing to score
    monkeypatch.setattr(binarization, "fit_readouts", _corner_readouts(np.zeros(6, bool)))
    empty = binarization_test(handle, x, "pgd", PGD, n=6, inner=5)
    assert (empty["fitted"], empty["setup_failed"], empty["attack_success"], empty["random_success"]) == (
        0, 6, None, None)


def test_readouts_give_each_row_its_own_readout_with_logits_minus_and_plus_half_z():
    from tfpurify.evaluation.binarization import Readouts

    w = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)  # N = 2 readouts on D = 3 features
    b = np.array([0.5, -1.0], np.float32)
    handle = _PixelFeatures()
    readouts = Readouts(handle.features, w, b)
    f = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] * 2)  # an EOT-tiled batch: rows 2, 3 are examples 0, 1
    z = np.array([1.5, 9.0, 1.5, 9.0], np.float32)
    np.testing.assert_allclose(readouts(tf.reshape(f, [4, 3, 1, 1])), np.stack([-z / 2, z / 2], axis=1))
    assert handle.training == [False]


def test_readouts_are_fitted_to_a_unit_range_early_and_tell_separable_examples_apart():
    rng = np.random.RandomState(0)
    features = rng.randn(4, 12, 6).astype(np.float32)
    features[:, -1] += 3.0
    w, b, _ = fit_readouts(features, steps=1)  # one step: a small w, scaled up to the unit range all the same
    z = np.einsum("nmd,nd->nm", features, w) + b[:, None]
    np.testing.assert_allclose(z.max(1) - z.min(1), 1.0, rtol=1e-4)
    features[0] = features[0, :1]  # example 0: the corner indistinguishable from the image; the others separable
    np.testing.assert_array_equal(fit_readouts(features, steps=300)[2], [False, True, True, True])


def test_the_random_control_stays_inside_the_pixel_range(monkeypatch):
    from tfpurify.evaluation import binarization

    # all-black and all-white images: the corner can only move up (black) or down (white), so the readout
    # looks at those pixels alone; a random point clipped to [0, 1] moves them the same way or not at all
    # and always crosses, while an unclipped one would cross about half the time
    x = np.concatenate([np.zeros((4, 8, 8, 1), np.float32), np.ones((4, 8, 8, 1), np.float32)])
    monkeypatch.setattr(binarization, "fit_readouts", _corner_readouts(np.ones(8, bool)))
    monkeypatch.setitem(binarization.BINARIZATION, "random_points", 1)  # one point: half of them would not cross
    record = binarization_test(_PixelFeatures(), x, "pgd", PGD, n=8, inner=3)
    assert record["fitted"] == 8 and record["random_success"] == 1.0
