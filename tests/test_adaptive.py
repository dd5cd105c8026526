import numpy as np
import pytest
import tensorflow as tf

from tests.toys import BrightnessDetector, NoisyPurifier, RoundingPurifier
from tfpurify import adaptive, attacks, classifiers, evaluation
from tfpurify.defenses import DefendedClassifier, Detector
from tfpurify.errors import AttackConfigError, InputValidationError


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
    # MIM runs on tfpurify's loop now, so it takes the detector-aware loss too
    mim = attacks.run_attack("mim", adaptive.whitebox_target(defended, detector_weight=50.0), x[:64], y[:64],
                             eps=0.1, nb_iter=10)
    assert float(np.mean(detector.adversarial_score(mim))) < float(np.mean(detector.adversarial_score(plain))) - 0.01


def test_evaluate_graybox_whitebox_and_detection_metrics(cnn, fmnist_test, fmnist_train_slice):
    x, y = fmnist_test
    detector = BrightnessDetector()
    detector.calibrate(fmnist_train_slice[0], target_fpr=0.1)  # validation data, never the test split
    defended = DefendedClassifier(cnn, purifier=detector, detector=detector)
    report = evaluation.evaluate(
        defended, x[:64], y[:64], evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=5),
        threat_model=["none", "graybox", "whitebox"], pipelines=adaptive.threat_model_pipelines(defended),
        sanity_checks=False, detector=detector, defense="toy")
    assert [r.threat_model for r in report.results] == ["none", "graybox", "whitebox"]
    det = report.detection
    assert [d["threat_model"] for d in det] == ["graybox", "whitebox"]
    clean = report.clean_by_threat_model["graybox"]
    for d, result in zip(det, report.results[1:]):
        # counted over successful adversarial examples of clean-correct inputs only
        assert d["n_adversarial"] == int(np.sum(clean & ~result.correct)) < 64
        assert d["n_clean"] == int(clean.sum())
    rows = report.rows()
    assert {r["defense"] for r in rows if r["threat_model"] == "none"} == {"none"}
    assert {r["defense"] for r in rows if r["threat_model"] == "whitebox"} == {"toy"}
    assert report.settings["detector"]["threshold"] == pytest.approx(float(detector.threshold.numpy()))
    assert report.settings["threat_models"]["whitebox"]["detector_weight"] == 1.0


def test_uncalibrated_detector_is_refused(cnn, fmnist_test):
    x, y = fmnist_test
    detector = BrightnessDetector()
    defended = DefendedClassifier(cnn, purifier=detector, detector=detector)
    with pytest.raises(InputValidationError, match="never calibrated"):
        evaluation.evaluate(defended, x[:8], y[:8], ["fgsm"], detector=detector)


def test_restarts_pick_fooled_and_unflagged_over_higher_loss(monkeypatch):
    """Against a detector-aware target, a restart that fools the model unflagged beats a flagged one."""
    counter = tf.Variable(0.0)

    def brighten(model_fn, x, y, p, loss_fn):  # restart r returns x + 0.01 r
        return x + 0.01 * counter.assign_add(1.0)

    monkeypatch.setitem(attacks.ATTACKS, "brighten",
                        attacks.AttackDef(brighten, {"eps": 0.1, "norm": np.inf, "clip_min": 0.0, "clip_max": 1.0,
                                                     "targeted": False, "restarts": 1}, takes_loss=True))

    def brightness(x):
        return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)

    def logits(x):  # brighter = more confidently class 1: the loss on label 0 grows with brightness
        m = brightness(x)[:, None]
        return tf.concat([-10.0 * m, 10.0 * m], axis=1)

    target = adaptive.DetectorAwareTarget(logits, brightness, weight=1e-3, threshold=tf.constant(0.015))
    x = np.zeros((4, 28, 28, 1), np.float32)
    x_adv = attacks.run_attack("brighten", target, x, np.zeros(4, np.int64), restarts=2)
    # restart 1 (brightness 0.01) fools, unflagged; restart 2 (0.02) has the higher loss but is flagged
    np.testing.assert_allclose(x_adv, 0.01, atol=1e-6)


def test_whitebox_no_bpda_is_the_served_pipeline_with_its_own_gradients(cnn, fmnist_test):
    x, y = fmnist_test
    defended = DefendedClassifier(cnn, purifier=RoundingPurifier(levels=4))  # tf.round: no gradient at all
    pipelines = adaptive.threat_model_pipelines(defended)
    plain, scored = pipelines["whitebox_no_bpda"]
    assert scored is defended
    assert plain.settings["bpda"].startswith("off: plain gradients")
    xt = tf.constant(x[:8])
    np.testing.assert_allclose(plain(xt), defended(xt), atol=1e-5)
    grads = {}
    for name in ("whitebox", "whitebox_no_bpda"):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y[:8], pipelines[name][0](xt)))
        grads[name] = tape.gradient(loss, xt)
    # plain backpropagation gives zeros (not None, which would stop the attack): without BPDA the
    # attacker is blind, with it it is not
    assert float(tf.reduce_max(tf.abs(grads["whitebox_no_bpda"]))) == 0
    assert float(tf.reduce_max(tf.abs(grads["whitebox"]))) > 0
    report = evaluation.evaluate(defended, x[:64], y[:64], evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=10),
                                 threat_model=["whitebox", "whitebox_no_bpda"], pipelines=pipelines, sanity_n=64)
    acc = {r.threat_model: r.accuracy for r in report.results}
    assert acc["whitebox_no_bpda"] > acc["whitebox"] + 0.2, acc  # the masked gradient leaves it "robust"
    failed = {tm: [c["check"] for c in report.sanity if c["threat_model"] == tm and c["status"] == "failed"]
              for tm in ("whitebox", "whitebox_no_bpda")}
    # the checks flag the masked gradient (eps 0.5 and Square find what PGD cannot), not the BPDA attack
    assert failed["whitebox_no_bpda"] and not failed["whitebox"], report.sanity


def test_whitebox_target_records_its_settings(cnn):
    rounding = adaptive.whitebox_target(DefendedClassifier(cnn, purifier=RoundingPurifier()))
    assert rounding.settings["bpda"] == "RoundingPurifier.attack_surrogate"
    noisy = adaptive.whitebox_target(DefendedClassifier(cnn, purifier=NoisyPurifier()), eot_samples=4)
    assert noisy.settings["eot_samples"] == 4 and noisy.settings["detector_weight"] == 0.0
    with pytest.raises(AttackConfigError, match="eot_samples"):
        adaptive.threat_model_pipelines(DefendedClassifier(cnn, purifier=NoisyPurifier()), eot_samples=0)
    with pytest.raises(AttackConfigError, match="detector_weight"):
        adaptive.threat_model_pipelines(DefendedClassifier(cnn, purifier=NoisyPurifier()), detector_weight=-1)


def test_whitebox_is_below_graybox_on_a_trained_denoising_ae(defended_dae, fmnist_test):
    x, y = fmnist_test
    report = evaluation.evaluate(
        defended_dae, x, y, evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=10),
        threat_model=["graybox", "whitebox"], pipelines=adaptive.threat_model_pipelines(defended_dae),
        sanity_checks=False)
    acc = {r.threat_model: r.accuracy for r in report.results}
    assert acc["whitebox"] < acc["graybox"] - 0.05, acc  # 256 examples: more than 12 examples apart
    early = {r.threat_model: r.params["early_exit"] for r in report.results}
    assert early == {"graybox": False, "whitebox": True}  # gray-box PGD takes all its steps
    assert report.settings["threat_models"]["whitebox"]["bpda"] == "off (purifier differentiable)"


def test_briefly_trained_magnet_detector_flags_successful_pgd(defended_dae, fmnist_test, fmnist_train_slice):
    from tfpurify.defenses.denoising_ae import DenoisingAEConfig, DenoisingAutoencoder

    x, y = fmnist_test
    magnet = DenoisingAutoencoder(DenoisingAEConfig(detector=True))
    magnet(tf.zeros((1, 28, 28, 1)))
    magnet.autoencoder.set_weights(defended_dae.purifier.autoencoder.get_weights())  # 3 epochs on 3000 images
    magnet.calibrate(fmnist_train_slice[0], target_fpr=0.05)
    defended = DefendedClassifier(defended_dae.classifier, purifier=magnet, detector=magnet)
    report = evaluation.evaluate(
        defended, x[:128], y[:128], evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=10),
        threat_model=["graybox"], pipelines=adaptive.threat_model_pipelines(defended), detector=magnet)
    det = report.detection[0]
    assert det["n_adversarial"] >= 10 and det["roc_auc"] > 0.5, det


def test_detector_with_a_threshold_set_by_hand_is_evaluated(cnn, fmnist_test):
    x, y = fmnist_test
    detector = BrightnessDetector()
    detector.threshold.assign(0.5)  # no calibrate() call, so no calibration record
    defended = DefendedClassifier(cnn, purifier=detector, detector=detector)
    report = evaluation.evaluate(defended, x[:16], y[:16], ["fgsm"], threat_model=["graybox"],
                                 pipelines=adaptive.threat_model_pipelines(defended), sanity_checks=False,
                                 detector=detector)
    assert report.settings["detector"] == {"threshold": 0.5}
    assert report.detection[0]["threshold"] == 0.5


def test_eot_keeps_each_example_to_itself():
    """Distinct inputs with known per-draw outputs: EOT averages each example's own draws, never another's."""
    n, samples = 3, 4
    x = tf.constant(np.arange(1, n + 1, dtype=np.float32).reshape(n, 1, 1, 1) / 10.0)  # 0.1, 0.2, 0.3

    def drawn(images):  # row r of the tiled batch is draw r // n of example r % n
        draw = tf.cast(tf.range(tf.shape(images)[0]) // n, tf.float32)
        value = tf.reshape(images, [-1])
        return tf.stack([10.0 * value + draw, -10.0 * value, tf.zeros_like(value)], axis=1)

    out = adaptive.eot(drawn, samples)(x).numpy()
    expected = []
    for i in range(n):
        v = (i + 1) / 10.0
        logits = np.array([[10 * v + d, -10 * v, 0.0] for d in range(samples)])
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        expected.append(np.log(probs.mean(axis=0) + 1e-12))
    np.testing.assert_allclose(out, np.array(expected), rtol=1e-5, atol=1e-5)
    # the gradient of one example's output reaches its own input only
    with tf.GradientTape() as tape:
        tape.watch(x)
        first = adaptive.eot(drawn, samples)(x)[0, 0]
    grad = tape.gradient(first, x).numpy().ravel()
    assert grad[0] != 0 and np.all(grad[1:] == 0), grad


# ---------------------------------------------------------------- fast tests on toy models (make mutation)

def _toy_classifier():
    """A fixed linear classifier on 2x2 images: logits = flattened pixels @ W (no training)."""
    weights = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0 - 0.5)
    return lambda x: tf.reshape(x, [-1, 4]) @ weights


def _toy_images():
    return tf.constant(np.array([0.0, 0.4, 0.6, 0.9, 0.3, 0.2, 0.8, 0.7], np.float32).reshape(2, 2, 2, 1))


def _gradient(fn, x, column=0):
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(fn(x)[:, column])
    return tape.gradient(out, x)


def test_bpda_is_the_purifier_forward_and_its_surrogate_backward():
    x, rounding = _toy_images(), RoundingPurifier(levels=2)
    through = adaptive.bpda(rounding)
    np.testing.assert_array_equal(through(x), rounding.purify(x))  # forward: the real purifier
    np.testing.assert_array_equal(_gradient(lambda v: through(v)[:, 0, 0], x), _gradient(lambda v: v[:, 0, 0], x))
    noisy = NoisyPurifier()
    tf.random.set_seed(0)
    first = adaptive.bpda(noisy)(x)
    tf.random.set_seed(0)
    np.testing.assert_array_equal(first, noisy.purify(x))  # no surrogate: the purifier itself


class _Squaring(RoundingPurifier):
    """purify = round(x^2 * 2) / 2 forward; surrogate x^2 (a gradient 2x, unlike the identity's 1); it unrolls:
    `purify_and_surrogate(x, unroll=K)` records K and returns K * x^2 as its surrogate."""

    def __init__(self):
        super().__init__(levels=2)
        self.unrolled = []

    def purify(self, x, training=False):
        return tf.round(tf.square(x) * 2.0) / 2.0

    def attack_surrogate(self, x):
        return tf.square(x)

    def purify_and_surrogate(self, x, unroll=None):
        self.unrolled.append(unroll)
        return self.purify(x), (1.0 if unroll is None else float(unroll)) * tf.square(x)


def test_every_bpda_mode_is_the_served_forward_with_its_own_backward():
    x, purifier = _toy_images(), _Squaring()
    served = purifier.purify(x).numpy()
    gradients = {}
    for mode in ("surrogate", "identity", "unroll:3", "exact"):
        through = adaptive.bpda(purifier, mode)
        np.testing.assert_allclose(through(x).numpy(), served, atol=1e-6, err_msg=mode)  # the served forward
        g = _gradient(lambda v: through(v)[:, 0, 0], x)  # None where no op passes a gradient
        gradients[mode] = np.zeros(len(x)) if g is None else g.numpy()[:, 0, 0, 0]
    pixel = x.numpy()[:, 0, 0, 0]
    np.testing.assert_allclose(gradients["surrogate"], 2 * pixel, rtol=1e-6)  # d(x^2)
    np.testing.assert_allclose(gradients["identity"], np.ones_like(pixel))
    np.testing.assert_allclose(gradients["unroll:3"], 3 * 2 * pixel, rtol=1e-6)  # K reaches the purifier
    np.testing.assert_allclose(gradients["exact"], np.zeros_like(pixel))  # rounding passes none
    assert purifier.unrolled[-1] == 3 and None in purifier.unrolled
    rounding = RoundingPurifier(levels=2)  # a surrogate-free mode on a purifier with one
    np.testing.assert_allclose(_gradient(lambda v: adaptive.bpda(rounding, "identity")(v)[:, 0, 0], x).numpy(),
                               _gradient(lambda v: v[:, 0, 0], x).numpy())
    with pytest.raises(AttackConfigError, match="RoundingPurifier has no descent steps"):
        adaptive.bpda(RoundingPurifier(), "unroll:1")  # no descent steps to unroll
    with pytest.raises(AttackConfigError, match="unroll:K needs an integer K >= 1"):
        adaptive.parse_bpda("unroll:0")
    assert tuple(adaptive.parse_bpda("unroll:1")) == ("unroll:1",)  # K = 1 is the smallest allowed


def test_whitebox_targets_and_their_settings_on_toys():
    classifier, x = _toy_classifier(), _toy_images()
    rounding = DefendedClassifier(classifier, purifier=RoundingPurifier(levels=2))
    target = adaptive.whitebox_target(rounding)
    np.testing.assert_allclose(target(x), classifier(rounding.purifier.purify(x)), atol=1e-6)
    assert target.purifier is rounding.purifier and target.settings == {
        "attacked": "end to end (purifier and classifier)", "bpda": "RoundingPurifier.attack_surrogate",
        "eot_samples": 1, "detector_weight": 0.0}
    plain = adaptive.whitebox_target(rounding, use_bpda=False)
    np.testing.assert_array_equal(plain(x), target(x))  # the same served function (a zero pixel included)
    assert float(tf.reduce_max(tf.abs(_gradient(plain, x)))) == 0.0  # rounding passes no gradient
    assert float(tf.reduce_max(tf.abs(_gradient(target, x)))) > 0.0
    assert plain.settings["bpda"] == (
        "off: plain gradients of the served pipeline, no surrogate (the papers' protocol; where a non-differentiable "
        "part carries the decision, the sanity checks should flag masking)")
    noisy = adaptive.whitebox_target(DefendedClassifier(classifier, purifier=NoisyPurifier()), eot_samples=3,
                                     detector_weight=2.0)
    assert noisy.settings == {"attacked": "end to end (purifier and classifier)", "bpda": "off (purifier differentiable)",
                              "eot_samples": 3, "detector_weight": 0.0}  # no detector: its weight is not used
    # EOT: log of the mean softmax over draws, so each row's probabilities sum to 1 (raw logits do not)
    np.testing.assert_allclose(tf.reduce_logsumexp(noisy(x), axis=1), 0.0, atol=1e-5)
    assert float(tf.reduce_max(tf.abs(tf.reduce_logsumexp(classifier(x), axis=1)))) > 0.1
    single = adaptive.whitebox_target(DefendedClassifier(classifier, purifier=NoisyPurifier()))  # one draw: no EOT
    assert single.settings["eot_samples"] == 1
    assert float(tf.reduce_max(tf.abs(tf.reduce_logsumexp(single(x), axis=1)))) > 0.1
    bare = adaptive.whitebox_target(DefendedClassifier(classifier), eot_samples=3)
    assert bare.settings == {"attacked": "classifier", "bpda": "none", "eot_samples": 1, "detector_weight": 0.0}
    assert not hasattr(bare, "purifier")
    np.testing.assert_allclose(bare(x), classifier(x))


def test_detector_aware_target_on_a_toy():
    classifier, x = _toy_classifier(), _toy_images()
    detector = BrightnessDetector()
    detector.threshold.assign(0.5)
    defended = DefendedClassifier(classifier, purifier=detector, detector=detector)
    assert adaptive.whitebox_target(defended).settings["detector_weight"] == 1.0  # aware by default, weight 1
    target = adaptive.whitebox_target(defended, detector_weight=2.0)
    assert target.settings["detector_weight"] == 2.0 and target.settings["eot_samples"] == 1
    out = target(x).numpy()
    scores = detector.adversarial_score(x).numpy()  # mean pixel: 0.5 and 0.5 -> 0.5, 0.5
    np.testing.assert_allclose(out[:, :-1], classifier(x), atol=1e-6)
    np.testing.assert_allclose(out[:, -1], 2.0 * scores, atol=1e-6)
    labels = tf.constant([1, 2])
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, classifier(x)) - 2.0 * scores
    np.testing.assert_allclose(target.attack_loss(labels=labels, logits=target(x)), expected, atol=1e-6)
    np.testing.assert_array_equal(target.logits(target(x)), out[:, :-1])
    brighter = tf.constant(np.full((2, 2, 2, 1), 0.6, np.float32))
    np.testing.assert_array_equal(target.flagged(target(x)), scores > 0.5)
    np.testing.assert_array_equal(target.flagged(target(brighter)), [True, True])
    never = adaptive.DetectorAwareTarget(classifier, detector.adversarial_score, 1.0)  # no threshold: never flags
    np.testing.assert_array_equal(never.flagged(never(brighter)), [False, False])
    for weight in (0.0, -1.0):
        with pytest.raises(AttackConfigError, match="must be > 0"):
            adaptive.DetectorAwareTarget(classifier, detector.adversarial_score, weight)
    ignored = adaptive.whitebox_target(defended, detector_weight=0.0)  # weight 0: the attack ignores it
    assert ignored.settings["detector_weight"] == 0.0 and not hasattr(ignored, "attack_loss")


def test_threat_model_pipelines_on_toys():
    classifier, surrogate = _toy_classifier(), _toy_classifier()
    bare = adaptive.threat_model_pipelines(DefendedClassifier(classifier), surrogate)
    assert sorted(bare) == ["none", "transfer"] and bare["none"][1] is classifier
    assert bare["none"][0].settings == {"attacked": "classifier"}
    assert bare["transfer"][0].settings == {"attacked": "surrogate classifier"}
    defended = DefendedClassifier(classifier, purifier=RoundingPurifier())
    pipelines = adaptive.threat_model_pipelines(defended, eot_samples=2)
    assert sorted(pipelines) == ["graybox", "none", "whitebox", "whitebox_no_bpda"]
    assert pipelines["graybox"][0] is pipelines["none"][0] and pipelines["graybox"][1] is defended
    assert pipelines["whitebox"][1] is defended and pipelines["whitebox_no_bpda"][1] is defended
    assert pipelines["whitebox"][0].settings["bpda"] == "RoundingPurifier.attack_surrogate"
    assert pipelines["whitebox_no_bpda"][0].settings["bpda"].startswith("off: plain gradients")
    for bad in (0, True, 1.5):
        with pytest.raises(AttackConfigError, match="eot_samples"):
            adaptive.threat_model_pipelines(defended, eot_samples=bad)
    with pytest.raises(AttackConfigError, match="detector_weight"):
        adaptive.threat_model_pipelines(defended, detector_weight=-0.5)


def test_threat_model_pipelines_of_an_adversarially_trained_classifier():
    import types

    robust, plain, surrogate = _toy_classifier(), _toy_classifier(), _toy_classifier()
    # what threat_model_pipelines reads of a DefendedClassifier around a RobustClassifier
    defended = types.SimpleNamespace(robust_classifier=True, classifier=robust, undefended=plain)
    pipelines = adaptive.threat_model_pipelines(defended, surrogate)
    assert sorted(pipelines) == ["graybox", "none", "transfer", "whitebox"]
    assert pipelines["whitebox"] == pipelines["graybox"] and pipelines["whitebox"][1] is defended
    assert pipelines["whitebox"][0].settings == {
        "attacked": "the adversarially trained classifier itself (gray-box = white-box: no purifier)"}
    assert pipelines["none"][1] is plain and pipelines["none"][0].settings == {"attacked": "plain classifier"}
    assert pipelines["transfer"][1] is defended
    x = _toy_images()
    np.testing.assert_allclose(pipelines["whitebox"][0](x), robust(x))
    np.testing.assert_allclose(pipelines["none"][0](x), plain(x))
    np.testing.assert_allclose(pipelines["transfer"][0](x), surrogate(x))
    alone = adaptive.threat_model_pipelines(types.SimpleNamespace(robust_classifier=True, classifier=robust,
                                                                  undefended=None))
    assert alone["none"] is None and "transfer" not in alone


class _NoisyBrightness(NoisyPurifier, Detector):
    """A stochastic purifier that is its own detector (score: mean pixel)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._init_detector()

    def adversarial_score(self, x):
        return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def test_pipelines_hand_their_settings_to_both_white_box_targets():
    import types

    classifier, x = _toy_classifier(), _toy_images()
    noisy = _NoisyBrightness()
    defended = DefendedClassifier(classifier, purifier=noisy, detector=noisy)
    defaults = adaptive.threat_model_pipelines(defended)
    for tm in ("whitebox", "whitebox_no_bpda"):
        assert (defaults[tm][0].settings["eot_samples"], defaults[tm][0].settings["detector_weight"]) == (1, 1.0)
    chosen = adaptive.threat_model_pipelines(defended, eot_samples=3, detector_weight=2.0)
    for tm in ("whitebox", "whitebox_no_bpda"):
        assert (chosen[tm][0].settings["eot_samples"], chosen[tm][0].settings["detector_weight"]) == (3, 2.0)
    for weight in (0.0, 0.5):  # 0: the attack ignores the detector; any weight >= 0 is allowed
        assert adaptive.threat_model_pipelines(defended, detector_weight=weight)["whitebox"][0].settings[
            "detector_weight"] == weight
    np.testing.assert_allclose(defaults["none"][0](x), classifier(x))
    without_flag = types.SimpleNamespace(classifier=classifier, purifier=None, detector=None)  # no robust_classifier
    assert sorted(adaptive.threat_model_pipelines(without_flag)) == ["none"]


def test_transfer_pipelines_attack_the_surrogate():
    import types

    classifier, surrogate, x = _toy_classifier(), lambda images: -_toy_classifier()(images), _toy_images()
    for defended in (DefendedClassifier(classifier),
                     types.SimpleNamespace(robust_classifier=True, classifier=classifier, undefended=None)):
        attacked, scored = adaptive.threat_model_pipelines(defended, surrogate)["transfer"]
        assert attacked.settings == {"attacked": "surrogate classifier"} and scored is defended
        np.testing.assert_allclose(attacked(x), surrogate(x))


def test_eot_of_a_vanishing_probability_stays_finite_and_the_default_weight_is_one():
    certain = adaptive.eot(lambda images: tf.tile(tf.constant([[100.0, -100.0]]), [tf.shape(images)[0], 1]), 2)
    out = certain(tf.zeros((3, 2, 2, 1))).numpy()  # class 1's probability underflows to 0 in every draw
    np.testing.assert_allclose(out[:, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 1], np.log(1e-12), rtol=1e-5)
    classifier, x = _toy_classifier(), _toy_images()
    scores = tf.reduce_mean(tf.reshape(x, [2, -1]), axis=1)
    target = adaptive.DetectorAwareTarget(classifier, lambda images: tf.reduce_mean(tf.reshape(images, [2, -1]), axis=1))
    np.testing.assert_allclose(target(x)[:, -1], scores, atol=1e-6)  # weight 1 unless given
    assert target.flagged(target(x)).dtype == tf.bool


def test_bpda_modes_are_parsed_and_chosen_per_purifier():
    assert adaptive.parse_bpda("surrogate, exact") == ("surrogate", "exact")
    for bad, match in (("", "one or more"), ("fast", "unknown bpda mode"), ("unroll:0", "K >= 1"),
                       ("unroll:x", "K >= 1")):
        with pytest.raises(AttackConfigError, match=match):
            adaptive.parse_bpda(bad)
    classifier = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(2, 2, 1)), tf.keras.layers.Dense(2)])
    rounding = DefendedClassifier(classifier, purifier=RoundingPurifier())
    # auto: the surrogate alone where exact gradients are not declared; a list where several are asked
    assert adaptive.threat_model_pipelines(rounding)["whitebox"][0].variant == "surrogate"
    both = adaptive.threat_model_pipelines(rounding, bpda="surrogate,exact,exact")["whitebox"][0]
    assert [t.variant for t in both] == ["surrogate", "exact"]
    assert both[1].settings["bpda"].startswith("off: plain gradients")
    with pytest.raises(AttackConfigError, match="no descent steps to unroll"):
        adaptive.threat_model_pipelines(rounding, bpda="unroll:3")["whitebox"][0][0](tf.zeros([1, 2, 2, 1]))
    # a differentiable purifier: surrogate and exact are one and the same
    detector = DefendedClassifier(classifier, purifier=BrightnessDetector())
    assert not isinstance(adaptive.threat_model_pipelines(detector, bpda="surrogate,exact")["whitebox"][0], list)
    x = tf.constant(np.random.RandomState(0).rand(3, 2, 2, 1).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        identity = tf.reduce_sum(adaptive.bpda(RoundingPurifier(), "identity")(x))
        exact = tf.reduce_sum(adaptive.bpda(RoundingPurifier(), "exact")(x))
    np.testing.assert_array_equal(tape.gradient(identity, x), np.ones((3, 2, 2, 1)))
    assert tape.gradient(exact, x) is None  # tf.round passes none: the exact gradient is blind there


class _Search(RoundingPurifier):
    """A purifier differentiable end to end (purify = x^2, gradient 2x) that declares `exact_gradient`, as
    Cowboy's search does, and keeps a BPDA surrogate of its own (the identity, gradient 1)."""

    exact_gradient = True

    def purify(self, x, training=False):
        return tf.square(x)

    def attack_surrogate(self, x):
        return x


def test_auto_adds_the_exact_gradient_where_the_purifier_declares_one():
    classifier = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(2, 2, 1)), tf.keras.layers.Dense(3),
                                      tf.keras.layers.Dense(2)])
    x = _toy_images()
    variants = adaptive.threat_model_pipelines(DefendedClassifier(classifier, purifier=_Search()))["whitebox"][0]
    assert [t.variant for t in variants] == ["surrogate", "exact"]  # auto: the surrogate, and the exact gradient
    assert [t.settings["bpda"] for t in variants] == [
        "_Search.attack_surrogate", "exact: plain gradients through the served purifier, every step of its search"]
    for target in variants:  # both serve the real purifier forward
        np.testing.assert_allclose(target(x), classifier(tf.square(x)), atol=1e-6)
    pixel = x.numpy()
    surrogate, exact = (_gradient(lambda v, t=t: t(v), x).numpy() for t in variants)
    np.testing.assert_allclose(exact, 2 * pixel * surrogate, rtol=1e-5, atol=1e-7)  # chain rule through x^2
    assert np.abs(surrogate).sum() > 0
    # without the declaration (RoundingPurifier: a surrogate, no exact_gradient) auto is the surrogate alone
    rounding = adaptive.threat_model_pipelines(DefendedClassifier(classifier, purifier=RoundingPurifier()))
    assert rounding["whitebox"][0].variant == "surrogate" and not isinstance(rounding["whitebox"][0], list)
    # a purifier without a surrogate: any asked mode among surrogate/exact is the one plain gradient, tagged so
    noisy = adaptive.threat_model_pipelines(DefendedClassifier(classifier, purifier=NoisyPurifier()), bpda="exact",
                                            eot_samples=3)["whitebox"][0]
    assert noisy.variant == "surrogate" and noisy.settings["bpda"] == "off (purifier differentiable)"
    # the identity on a purifier without a surrogate is still the identity, and says so
    identity = adaptive.whitebox_target(DefendedClassifier(classifier, purifier=NoisyPurifier()), bpda_mode="identity")
    assert identity.settings["bpda"] == "identity (straight through the purifier)"
    unrolled = adaptive.whitebox_target(DefendedClassifier(classifier, purifier=_Squaring()), bpda_mode="unroll:4")
    assert unrolled.settings["bpda"] == "_Squaring.attack_surrogate, 4 descent steps unrolled"
    # sanity check 5's pipeline keeps the attacked pipeline's EOT (its own head in the classifier's place)
    head = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(2, 2, 1)), tf.keras.layers.Dense(2)])
    attacked, _ = noisy.binarize(head)
    assert attacked.settings["eot_samples"] == 3 and attacked.settings["detector_weight"] == 0.0
