"""What every defense plugs into: `Purifier`, the `Detector` mixin and `DefendedClassifier`.

A purifier maps images in [0, 1] to images in [0, 1] of the same shape. An adaptive attacker
differentiates `attack_surrogate` (BPDA hook: override it where `purify` is not differentiable)
and, for `stochastic` purifiers, averages gradients over draws (EOT). A detector scores inputs
(higher = more likely adversarial) against a `threshold` variable saved with the model.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tfpurify.config import TrainingConfig
from tfpurify.errors import InputValidationError

__all__ = ["DefenseConfig", "Purifier", "Detector", "DefendedClassifier"]

keras = tf.keras


@dataclasses.dataclass(frozen=True)
class DefenseConfig(TrainingConfig):
    """Fields every defense's config shares (data and training schedule)."""


class Purifier(keras.Model):
    """Base class of purifiers: images in [0, 1] -> images in [0, 1], same shape.

    Subclasses implement `purify`; they train with plain `fit` (their own `compile` and
    `train_step` where the paper defines a game) and return their config from `get_config`.
    """

    stochastic = False  # True: evaluate white-box attacks with EOT

    def purify(self, x, training=False):
        raise NotImplementedError

    def call(self, x, training=False):
        return self.purify(x, training=training)

    def attack_surrogate(self, x):
        """What an adaptive attacker differentiates; defaults to `purify` itself."""
        return self.purify(x)

    def make_dataset(self, x, y, batch_size, shuffle=False, seed=0):
        """The `tf.data` pipeline `fit` consumes; the default yields image batches only."""
        from tfpurify.data import to_tf_dataset

        return to_tf_dataset(x, None, batch_size, shuffle=shuffle, seed=seed)

    def compile_for_training(self):
        """Compiles with the defense's own optimizers from its config (one per player)."""
        raise NotImplementedError

    def training_callbacks(self):
        """Keras callbacks the defense's own schedule needs during `fit` (none by default)."""
        return []

    def pictures(self, x):
        """{picture name: {row title: images}} for reports; rows become image-grid rows."""
        return {"reconstruction": {"input": np.asarray(x), "purified": self.purify(x).numpy()}}


class Detector:
    """Mixin for defenses that flag inputs; call `_init_detector()` in `__init__`.

    The threshold starts at +inf (never flags) and must be calibrated on validation data before
    the detector is evaluated or exported; `tfpurify train` does so when training ends.
    """

    calibration = None  # what `calibrate` measured, kept for reports (set again when a run loads)

    def _init_detector(self):
        self.threshold = tf.Variable(np.inf, dtype=tf.float32, trainable=False, name="threshold")

    @property
    def detector_enabled(self):
        """False where a defense's detector is optional and switched off in its config."""
        return True

    @property
    def is_calibrated(self):
        return bool(np.isfinite(float(self.threshold.numpy())))

    def adversarial_score(self, x):
        """Shape [N]; higher = more likely adversarial."""
        raise NotImplementedError

    def is_adversarial(self, x):
        return self.adversarial_score(x) > self.threshold

    def calibrate(self, x_clean, target_fpr=0.05, x_adv=None):
        """Sets `threshold` so that about `target_fpr` of clean (validation) inputs are flagged.

        Args:
          x_clean: clean images from the training/validation split, never the test split.
          target_fpr: wanted false positive rate on clean inputs.
          x_adv: optional adversarial images to report TPR and ROC-AUC on.

        Returns:
          dict with threshold, fpr on x_clean, and tpr / roc_auc when x_adv is given.
        """
        if not 0.0 < target_fpr < 1.0:
            raise InputValidationError(f"target_fpr must be in (0, 1), got {target_fpr}")
        from tfpurify.evaluation import adversarial_scores, roc_auc  # evaluation builds on this module

        scores = adversarial_scores(self, x_clean)
        threshold = float(np.quantile(scores, 1.0 - target_fpr, method="higher"))
        self.threshold.assign(threshold)
        result = {"threshold": threshold, "target_fpr": float(target_fpr), "fpr": float(np.mean(scores > threshold)),
                  "n": int(len(scores))}
        if x_adv is not None:
            adv_scores = adversarial_scores(self, x_adv)
            result.update(tpr=float(np.mean(adv_scores > threshold)), roc_auc=roc_auc(scores, adv_scores))
        self.calibration = result
        return result


class DefendedClassifier(keras.Model):
    """classifier(purifier(x)), optionally with a detector; what eval and export consume.

    Args:
      classifier: a Keras model (or callable) returning logits.
      purifier: a `Purifier`, or None (the bare or adversarially trained classifier).
      detector: a `Detector`, or None; may be the purifier itself.
    """

    def __init__(self, classifier, purifier=None, detector=None, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.purifier = purifier
        self.detector = detector

    def purify(self, x, training=False):
        return x if self.purifier is None else self.purifier.purify(x, training=training)

    def call(self, x, training=False):
        """Logits of classifier(purifier(x))."""
        return self.classifier(self.purify(x, training=training), training=training)

    def predict_outputs(self, x):
        """{probabilities, classes[, adversarial_score, is_adversarial]} for a batch (a graph-safe dict)."""
        logits = self(x)
        out = {"probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, axis=1)}
        if self.detector is not None:
            score = self.detector.adversarial_score(x)
            out["adversarial_score"] = score
            out["is_adversarial"] = score > self.detector.threshold
        return out
