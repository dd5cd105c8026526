import numpy as np
import pytest
import tensorflow as tf

from tests.toys import BrightnessDetector, RoundingPurifier, brightness_images, threshold_classifier
from tfpurify import data
from tfpurify.defenses import REGISTRY, DefendedClassifier, get_defense
from tfpurify.defenses.denoising_ae import DenoisingAEConfig, DenoisingAutoencoder
from tfpurify.defenses.base import Purifier, adversarial_scores, apply_gradients, make_optimizer
from tfpurify.errors import InputValidationError, RunFolderError


def test_registry_dispatch():
    assert REGISTRY["denoising_ae"] == (DenoisingAutoencoder, DenoisingAEConfig)
    assert get_defense("denoising_ae")[0].registry_name == "denoising_ae"
    with pytest.raises(RunFolderError, match="unknown defense"):
        get_defense("magic")


def test_defended_classifier_composes_purifier_and_classifier(cnn, fmnist_test):
    x, _ = fmnist_test
    x = x[:16]
    bare = DefendedClassifier(cnn)
    np.testing.assert_allclose(bare(x), cnn(x), atol=1e-6)
    rounding = RoundingPurifier(levels=2)
    defended = DefendedClassifier(cnn, purifier=rounding)
    np.testing.assert_allclose(defended(x), cnn(rounding.purify(x)), atol=1e-6)
    out = defended.predict_outputs(x)
    assert set(out) == {"probabilities", "classes"}
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out["classes"], np.argmax(cnn(rounding.purify(x)), axis=1))


def test_defended_classifier_with_detector_flags_inputs(cnn, fmnist_test):
    x, _ = fmnist_test
    detector = BrightnessDetector()
    detector.threshold.assign(0.5)
    defended = DefendedClassifier(cnn, purifier=detector, detector=detector)
    bright = np.clip(x[:4] + 0.9, 0, 1)
    out = defended.predict_outputs(np.concatenate([x[:4] * 0.1, bright]))
    assert out["is_adversarial"].numpy().tolist() == [False] * 4 + [True] * 4
    assert out["adversarial_score"].shape == (8,)


def test_calibration_hits_target_fpr_on_held_out_clean_data():
    x_train, _ = data.load_dataset("fashion_mnist", "train", limit=4000)
    calibration, held_out = x_train[:2000], x_train[2000:]
    detector = BrightnessDetector()
    result = detector.calibrate(calibration, target_fpr=0.1, x_adv=np.clip(held_out + 0.3, 0, 1))
    assert result["fpr"] == pytest.approx(0.1, abs=0.01)
    held_out_fpr = float(np.mean(detector.is_adversarial(held_out).numpy()))
    assert held_out_fpr == pytest.approx(0.1, abs=0.03)
    assert result["tpr"] > 0.5 and result["roc_auc"] > 0.8
    assert float(detector.threshold.numpy()) == pytest.approx(result["threshold"])


def test_calibrate_rejects_bad_fpr():
    with pytest.raises(ValueError):
        BrightnessDetector().calibrate(np.zeros((4, 28, 28, 1), np.float32), target_fpr=1.5)


def test_threshold_is_saved_with_the_weights(tmp_path):
    detector = BrightnessDetector()
    detector(tf.zeros((1, 28, 28, 1)))
    detector.threshold.assign(0.25)
    detector.save_weights(str(tmp_path / "d.weights.h5"))
    again = BrightnessDetector()
    again(tf.zeros((1, 28, 28, 1)))
    again.load_weights(str(tmp_path / "d.weights.h5"))
    assert float(again.threshold.numpy()) == pytest.approx(0.25)


# ---------------------------------------------------------------- fast tests on toys (make mutation)

_toy_logits = threshold_classifier(0.45)


def test_detector_calibration_by_hand():
    detector = BrightnessDetector()
    assert not detector.is_calibrated and float(detector.threshold.numpy()) == np.inf
    threshold = detector.threshold  # saved with the weights, never moved by an optimiser
    assert not threshold.trainable and threshold.dtype == tf.float32 and threshold.name.startswith("threshold")
    assert threshold not in detector.trainable_weights
    np.testing.assert_array_equal(detector.is_adversarial(brightness_images()), [False] * 8)  # +inf flags nothing
    result = detector.calibrate(brightness_images(), target_fpr=0.25)
    # scores 0.0 ... 0.7; the 0.75 quantile rounded up to a score that occurs: 0.6; flagged above it: 0.7
    assert result == {"threshold": pytest.approx(0.6), "target_fpr": 0.25, "fpr": 0.125, "n": 8}
    assert detector.is_calibrated and float(detector.threshold.numpy()) == pytest.approx(0.6)
    assert detector.calibration is result
    np.testing.assert_array_equal(detector.is_adversarial(brightness_images()), [False] * 7 + [True])
    with_adv = detector.calibrate(brightness_images(), target_fpr=0.25, x_adv=brightness_images() + 0.25)
    # attacked scores 0.25 ... 0.95: above 0.6 are 0.65 ... 0.95 (4 of 8); ranked against the clean ones
    assert with_adv["tpr"] == 0.5 and with_adv["roc_auc"] == pytest.approx(49 / 64)  # 3 + 4 + ... + 8 + 8 + 8 pairs
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(InputValidationError, match="target_fpr"):
            detector.calibrate(brightness_images(), target_fpr=bad)
    assert detector.calibrate(brightness_images())["target_fpr"] == 0.05  # the default


def test_adversarial_scores_in_batches():
    detector = BrightnessDetector()
    for batch_size in (3, 8, 256):
        np.testing.assert_allclose(adversarial_scores(detector, brightness_images(), batch_size=batch_size),
                                   np.arange(8) / 10, atol=1e-6)
    np.testing.assert_allclose(adversarial_scores(detector, brightness_images()), np.arange(8) / 10, atol=1e-6)


def test_defended_classifier_outputs_on_toys():
    x = brightness_images()
    bare = DefendedClassifier(_toy_logits)
    assert not bare.robust_classifier and bare.purify(x) is x
    np.testing.assert_allclose(bare(x), _toy_logits(x))
    assert set(bare.predict_outputs(x)) == {"probabilities", "classes"}
    detector = BrightnessDetector()
    detector.threshold.assign(0.35)
    rounding = RoundingPurifier(levels=2)
    defended = DefendedClassifier(_toy_logits, purifier=rounding, detector=detector)
    purified = rounding.purify(x)
    np.testing.assert_allclose(defended.purify(x), purified)
    np.testing.assert_allclose(defended(x), _toy_logits(purified))
    out = defended.predict_outputs(x)
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(_toy_logits(purified)), atol=1e-6)
    np.testing.assert_array_equal(out["classes"], np.argmax(_toy_logits(purified), axis=1))
    np.testing.assert_allclose(out["adversarial_score"], np.arange(8) / 10, atol=1e-6)  # of the input, not purified
    np.testing.assert_array_equal(out["is_adversarial"], np.arange(8) / 10 > 0.35)
    assert defended.undefended is None and "undefended" not in [v.name for v in defended.variables]
    detector.threshold.assign(0.5)  # image 5's score is exactly 0.5: flagged only above the threshold
    np.testing.assert_array_equal(defended.predict_outputs(x)["is_adversarial"], np.arange(8) / 10 > 0.5)
    assert DefendedClassifier(_toy_logits, undefended=_toy_logits).undefended is _toy_logits


def test_purifier_defaults_and_trackers():
    rounding = RoundingPurifier(levels=2)
    x = tf.constant(brightness_images())
    purified, surrogate = rounding.purify_and_surrogate(x)
    np.testing.assert_allclose(purified, rounding.purify(x))
    np.testing.assert_allclose(surrogate, x)  # its BPDA surrogate: the identity
    np.testing.assert_allclose(rounding(x), rounding.purify(x))
    assert not rounding.stochastic and not rounding.has_code
    with pytest.raises(NotImplementedError, match="RoundingPurifier has no latent code"):
        rounding.encode(x)
    pictures = rounding.pictures(brightness_images())
    assert list(pictures) == ["reconstruction"] and list(pictures["reconstruction"]) == ["input", "purified"]
    np.testing.assert_allclose(pictures["reconstruction"]["purified"], rounding.purify(x))
    np.testing.assert_array_equal(pictures["reconstruction"]["input"], brightness_images())
    plain = Purifier()
    with pytest.raises(NotImplementedError):
        plain.purify(x)
    identity = BrightnessDetector()
    np.testing.assert_allclose(identity.attack_surrogate(x), x)  # default surrogate: purify itself
    identity.trackers = {"d_loss": tf.keras.metrics.Mean(name="d_loss")}
    identity.track({"d_loss": 1.0})
    assert {k: float(v) for k, v in identity.track({"d_loss": 3.0}).items()} == {"d_loss": 2.0}


def test_make_optimizer_names_defaults_and_decay():
    plain = make_optimizer("sgd", 0.1)
    assert isinstance(plain, tf.keras.optimizers.SGD) and plain.momentum == 0.0 and plain.weight_decay is None
    assert float(plain.learning_rate) == pytest.approx(0.1)
    sgd = make_optimizer("sgd", 0.01, momentum=0.9, weight_decay=1e-5)
    assert sgd.momentum == 0.9 and sgd.weight_decay == 1e-5
    adam = make_optimizer("adam", 1e-3)
    assert isinstance(adam, tf.keras.optimizers.Adam) and adam.weight_decay is None
    assert make_optimizer("adam", 1e-3, weight_decay=0.1).weight_decay == 0.1
    variable = tf.Variable([1.0, -2.0])  # decoupled decay: w - lr * wd * w, then the gradient's step
    sgd_decay = make_optimizer("sgd", 0.5, weight_decay=0.2)
    sgd_decay.apply_gradients([(tf.constant([0.0, 1.0]), variable)])
    np.testing.assert_allclose(variable.numpy(), [1.0 - 0.1, -2.0 + 0.2 - 0.5], rtol=1e-6)


def test_apply_gradients_dense_and_sparse():
    dense, table = tf.Variable([1.0, 2.0]), tf.Variable([[1.0], [2.0], [3.0]])
    optimizer = tf.keras.optimizers.SGD(0.5)
    with tf.GradientTape(persistent=True) as tape:
        loss = tf.reduce_sum(3.0 * dense) + tf.reduce_sum(tf.gather(table, [2, 0]))  # a gather: sparse gradient
    apply_gradients(optimizer, loss, tape, [dense, table])
    np.testing.assert_allclose(dense.numpy(), [-0.5, 0.5])  # 1 - 0.5 * 3, 2 - 0.5 * 3
    np.testing.assert_allclose(table.numpy().ravel(), [0.5, 2.0, 2.5])  # rows 0 and 2 moved by 0.5


def test_robust_classifier_config_takes_its_architecture(tmp_path):
    from tfpurify.defenses.base import RobustClassifierConfig
    from tfpurify.runs import write_config

    assert RobustClassifierConfig().arch == "cnn"
    assert RobustClassifierConfig(arch="mlp").arch == "mlp"
    write_config(tmp_path, {"kind": "classifier", "arch": "lenet5", "dataset": "fashion_mnist"})
    assert RobustClassifierConfig(classifier=str(tmp_path)).arch == "lenet5"  # from the run it starts from
    write_config(tmp_path, {"kind": "classifier", "dataset": "fashion_mnist"})
    assert RobustClassifierConfig(classifier=str(tmp_path)).arch == "cnn"
    with pytest.raises(InputValidationError, match="unknown architecture 'vgg'; choose one of cnn"):
        RobustClassifierConfig(arch="vgg")


def test_make_dataset_feeds_labels_only_where_the_defense_takes_them():
    rounding = RoundingPurifier()
    x, y = brightness_images(), np.arange(8) % 3
    (images,) = [b for b in rounding.make_dataset(x, y, 8)]
    assert isinstance(images, tf.Tensor) and images.shape == (8, 2, 2, 1)
    labelled = RoundingPurifier()
    labelled.labelled = True
    (pair,) = [b for b in labelled.make_dataset(x, y, 8)]
    np.testing.assert_array_equal(pair[1], y)
    batches = [b.numpy() for b in rounding.make_dataset(x, y, 3)]
    assert [len(b) for b in batches] == [3, 3, 2]
    np.testing.assert_array_equal(np.concatenate(batches), x)  # in order unless shuffled
    shuffled = [np.concatenate([b.numpy() for b in rounding.make_dataset(x, y, 8, shuffle=True, seed=s)])
                for s in (1, 1, 2)]
    np.testing.assert_array_equal(shuffled[0], shuffled[1])  # the seed fixes the order
    assert not np.array_equal(shuffled[0], x) and not np.array_equal(shuffled[0], shuffled[2])
    with pytest.raises(NotImplementedError):
        rounding.compile_for_training()
    assert rounding.training_callbacks() == []


class _PhasePurifier(Purifier):
    """Brightens by 0.25 in training only: shows which phase it was called in."""

    def purify(self, x, training=False):
        return x + (0.25 if training else 0.0)


def _phase_logits(images, training=False):
    return _toy_logits(images) + (100.0 if training else 0.0)


def test_inference_is_the_default_phase_and_training_passes_through():
    """Served outputs come from the inference phase (no dropout, batch statistics frozen) unless asked."""
    x = tf.constant(brightness_images())
    purifier = _PhasePurifier()
    np.testing.assert_allclose(purifier(x), x)
    np.testing.assert_allclose(purifier(x, training=True), x + 0.25)
    defended = DefendedClassifier(_phase_logits, purifier=purifier)
    np.testing.assert_allclose(defended.purify(x), x)
    np.testing.assert_allclose(defended.purify(x, training=True), x + 0.25)
    np.testing.assert_allclose(defended(x), _toy_logits(x))
    np.testing.assert_allclose(defended(x, training=True), _toy_logits(x + 0.25) + 100.0)
    np.testing.assert_allclose(defended.predict_outputs(x)["probabilities"], tf.nn.softmax(_toy_logits(x)),
                               atol=1e-6)
