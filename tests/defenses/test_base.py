import numpy as np
import pytest
import tensorflow as tf

from tests.toys import BrightnessDetector, RoundingPurifier
from tfpurify import data
from tfpurify.defenses import REGISTRY, DefendedClassifier, get_defense
from tfpurify.defenses.denoising_ae import DenoisingAEConfig, DenoisingAutoencoder
from tfpurify.errors import RunFolderError


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
