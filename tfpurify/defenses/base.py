"""What every defense plugs into: `Purifier`, the `Detector` mixin, `RobustClassifier` and `DefendedClassifier`.

A purifier maps images in [0, 1] to images in [0, 1] of the same shape. A robust classifier is a
defense that *is* the classifier (adversarial training): it returns logits and has no purifier. An adaptive attacker
differentiates `attack_surrogate` (BPDA hook: override it where `purify` is not differentiable)
and, for `stochastic` purifiers, averages gradients over draws (EOT). A detector scores inputs
(higher = more likely adversarial) against a `threshold` variable saved with the model.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tfpurify import metrics
from tfpurify.classifiers import ARCHITECTURES, build_classifier, load_classifier
from tfpurify.config import TrainingConfig
from tfpurify.data import to_tf_dataset
from tfpurify.errors import InputValidationError, RunFolderError
from tfpurify.runs import read_run

__all__ = ["DefenseConfig", "RobustClassifierConfig", "Purifier", "Detector", "RobustClassifier",
           "DefendedClassifier", "make_optimizer", "apply_gradients", "adversarial_scores"]

keras = tf.keras


@dataclasses.dataclass(frozen=True)
class DefenseConfig(TrainingConfig):
    """Fields every defense's config shares (data and training schedule)."""


def make_optimizer(name, learning_rate, momentum=0.0, weight_decay=0.0, clip_norm=0.0):
    """`sgd` (with `momentum`) or `adam`, with decoupled `weight_decay` (0: none) and the gradient clipped to
    global norm `clip_norm` (0: not clipped; under `tf.distribute` after the replicas' sum), as a config names it."""
    decay, clip = weight_decay or None, clip_norm or None
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate, momentum=momentum, weight_decay=decay, global_clipnorm=clip)
    return tf.keras.optimizers.Adam(learning_rate, weight_decay=decay, global_clipnorm=clip)


def apply_gradients(optimizer, loss, tape, variables):
    """One player's update in a custom `train_step`, correct under `tf.distribute`.

    The loss is a per-replica mean and the optimizer sums gradients over replicas, so the
    gradient is divided by the number of replicas.
    """
    replicas = float(tf.distribute.get_strategy().num_replicas_in_sync)

    def scaled(g):  # a gather (class-conditional batch norm) has a sparse gradient
        if isinstance(g, tf.IndexedSlices):
            return tf.IndexedSlices(g.values / replicas, g.indices, g.dense_shape)
        return g / replicas

    gradients = tape.gradient(loss, variables)
    optimizer.apply_gradients((scaled(g), v) for g, v in zip(gradients, variables))


@dataclasses.dataclass(frozen=True)
class RobustClassifierConfig(DefenseConfig):
    """Fields of defenses that train the classifier itself.

    `classifier`: a classifier run folder to start from (its weights are fine-tuned; its
    architecture and data set must match); None trains `arch` from scratch. `arch` defaults to the
    classifier run's architecture, else `cnn`.
    """

    classifier: str = None
    arch: str = None

    def __post_init__(self):
        super().__post_init__()
        if self.arch is None:  # read once, when the run is configured; a saved config names the arch
            arch = "cnn"
            if self.classifier is not None:
                arch = read_run(self.classifier, "classifier").get("arch", "cnn")
            object.__setattr__(self, "arch", arch)
        if self.arch not in ARCHITECTURES:
            raise InputValidationError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")


class _TrainingHooks:
    """What `training.train_defense` asks of every defense model: its data pipeline, optimizers, callbacks."""

    labelled = False  # True: `fit` gets (image, label) batches; False: image batches only

    def make_dataset(self, x, y, batch_size, shuffle=False, seed=0):
        """The `tf.data` pipeline `fit` consumes."""
        return to_tf_dataset(x, y if self.labelled else None, batch_size, shuffle=shuffle, seed=seed)

    def compile_for_training(self):
        """Compiles with the defense's own optimizers from its config (one per player)."""
        raise NotImplementedError

    def training_callbacks(self, validation=None):
        """Keras callbacks the defense's own schedule (and its training diagnostics) need during `fit`
        (none by default). `validation`: (x, y) of the validation split, where the trainer has it."""
        return []


class Purifier(_TrainingHooks, keras.Model):
    """Base class of purifiers: images in [0, 1] -> images in [0, 1], same shape.

    Subclasses implement `purify`; they train with plain `fit` (their own `compile` and
    `train_step` where the paper defines a game) and return their config from `get_config`.
    """

    stochastic = False  # True: evaluate white-box attacks with EOT
    # True: `purify` is differentiable end to end although it has a BPDA surrogate (an iterative search
    # whose gradient is exact but costly): white-box evaluations attack with both by default
    exact_gradient = False
    has_code = False    # True: `encode` gives a latent code (the `latent` attack pulls it)

    def encode(self, x, training=False):
        """The purifier's latent code of `x` (purifiers with `has_code`)."""
        raise NotImplementedError(f"{type(self).__name__} has no latent code")

    def purify(self, x, training=False):
        raise NotImplementedError

    def call(self, x, training=False):
        return self.purify(x, training=training)

    def track(self, values):
        """Updates the Mean trackers in `self.trackers` from {name: value}; returns every tracker's result
        (what a custom `train_step` / `test_step` returns)."""
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def attack_surrogate(self, x):
        """What an adaptive attacker differentiates; defaults to `purify` itself."""
        return self.purify(x)

    def purify_and_surrogate(self, x):
        """(purify(x), attack_surrogate(x)) for BPDA; override where both can share work (one search)."""
        return self.purify(x), self.attack_surrogate(x)

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
        scores = adversarial_scores(self, x_clean)
        threshold = metrics.calibrate_threshold(scores, target_fpr)
        self.threshold.assign(threshold)
        result = {"threshold": threshold, "target_fpr": float(target_fpr), "fpr": metrics.flag_rate(scores, threshold),
                  "n": int(len(scores))}
        if x_adv is not None:
            adv_scores = adversarial_scores(self, x_adv)
            result.update(tpr=metrics.flag_rate(adv_scores, threshold), roc_auc=metrics.roc_auc(scores, adv_scores))
        self.calibration = result
        return result


class RobustClassifier(_TrainingHooks, keras.Model):
    """Base class of defenses that are a classifier (adversarial training): images -> logits.

    Holds a reference classifier (`classifier`, built from `config.arch`) and trains it in the
    subclass's `train_step`; `compile_for_training` first copies the weights of the classifier run
    named in the config, if any. Its `DefendedClassifier` has no purifier.
    """

    def __init__(self, config, input_shape=(28, 28, 1), loss_names=(), **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.arch = config.arch
        self.image_shape = tuple(input_shape)
        self.classifier = build_classifier(config.arch, self.image_shape, config.num_classes)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in loss_names}
        self.accuracies = {name: keras.metrics.SparseCategoricalAccuracy(name=name)
                           for name in ("accuracy", "adv_accuracy")}

    @property
    def metrics(self):
        return [*self.trackers.values(), *self.accuracies.values()]

    def update_metrics(self, values, y, logits, y_adv, adv_logits):
        """Updates the loss trackers from `values` and the clean and adversarial accuracies."""
        for name, value in values.items():
            self.trackers[name].update_state(value)
        self.accuracies["accuracy"].update_state(y, logits)
        self.accuracies["adv_accuracy"].update_state(y_adv, adv_logits)
        return {m.name: m.result() for m in self.metrics}

    def call(self, x, training=False):
        return self.classifier(x, training=training)

    def start_from_classifier_run(self):
        """Copies the weights of `config.classifier` (a classifier run), checking that it fits."""
        if self.config.classifier is None:
            return
        start, start_config = load_classifier(self.config.classifier)
        if start_config.arch != self.arch or start_config.dataset != self.config.dataset:
            raise RunFolderError(f"{self.config.classifier} is a {start_config.arch} on {start_config.dataset}; this "
                                 f"run trains a {self.arch} on {self.config.dataset}")
        self.classifier.set_weights(start.get_weights())

    labelled = True

    def get_config(self):
        return dataclasses.asdict(self.config)


class DefendedClassifier(keras.Model):
    """classifier(purifier(x)), optionally with a detector; what eval and export consume.

    Args:
      classifier: a Keras model (or callable) returning logits; for adversarial training, the
        `RobustClassifier` itself.
      purifier: a `Purifier`, or None (the bare or adversarially trained classifier).
      detector: a `Detector`, or None; may be the purifier itself.
      undefended: the plain classifier behind the `none` rows of a report when `classifier` is a
        `RobustClassifier` (the run it started from), or None; a purifier's undefended classifier
        is `classifier` itself. Not part of the model: an export leaves it out.
    """

    def __init__(self, classifier, purifier=None, detector=None, undefended=None, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.purifier = purifier
        self.detector = detector
        object.__setattr__(self, "undefended", undefended)  # untracked: not saved or exported

    @property
    def robust_classifier(self):
        """True when the defense is the classifier itself (adversarial training)."""
        return isinstance(self.classifier, RobustClassifier)

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


def adversarial_scores(detector, x, batch_size=256):
    """A detector's adversarial scores over `x`, computed in batches, as a numpy array [N]."""
    return np.concatenate([np.asarray(detector.adversarial_score(tf.constant(x[i:i + batch_size])))
                           for i in range(0, len(x), batch_size)])
