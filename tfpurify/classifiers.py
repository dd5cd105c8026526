"""Reference target classifiers (all return logits) and their training runs.

A classifier run folder holds `config.json` (a `ClassifierConfig`), `classifier.weights.h5`,
`history.csv` and, while training, `backup/` (Keras `BackupAndRestore`), so a killed run resumes
where its last finished epoch left off when started again with the same folder.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tfpurify import data as data_lib
from tfpurify.config import TrainingConfig
from tfpurify.errors import InputValidationError
from tfpurify.runs import finish_run, read_run, restore_weights, run_callbacks, start_run, weights_digest

__all__ = [
    "ARCHITECTURES",
    "ClassifierConfig",
    "build_classifier",
    "penultimate",
    "train_classifier",
    "load_classifier",
    "accuracy",
    "predict_logits",
]

keras = tf.keras
layers = tf.keras.layers


def _cnn(input_shape, num_classes):
    """The Madry et al. MNIST-challenge CNN."""
    inputs = keras.Input(input_shape)
    h = layers.Conv2D(32, 5, padding="same", activation="relu")(inputs)
    h = layers.MaxPooling2D(2)(h)
    h = layers.Conv2D(64, 5, padding="same", activation="relu")(h)
    h = layers.MaxPooling2D(2)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(1024, activation="relu")(h)
    return keras.Model(inputs, layers.Dense(num_classes)(h), name="cnn")


def _lenet5(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    h = layers.Conv2D(6, 5, padding="same", activation="relu")(inputs)
    h = layers.AveragePooling2D(2)(h)
    h = layers.Conv2D(16, 5, activation="relu")(h)
    h = layers.AveragePooling2D(2)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(120, activation="relu")(h)
    h = layers.Dense(84, activation="relu")(h)
    return keras.Model(inputs, layers.Dense(num_classes)(h), name="lenet5")


def _mlp(input_shape, num_classes):
    """Fully connected, like AAA's model C."""
    inputs = keras.Input(input_shape)
    h = layers.Flatten()(inputs)
    for units in (512, 256):
        h = layers.Dense(units, activation="relu")(h)
        h = layers.Dropout(0.2)(h)
    return keras.Model(inputs, layers.Dense(num_classes)(h), name="mlp")


def _resnet20(input_shape, num_classes):
    """He et al.'s ResNet-20 for 32x32 colour images (works on any size)."""

    def block(h, filters, stride):
        shortcut = h
        h = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False)(h)
        h = layers.BatchNormalization()(h)
        h = layers.ReLU()(h)
        h = layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = layers.BatchNormalization()(h)
        if stride != 1 or shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, stride, use_bias=False)(shortcut)
            shortcut = layers.BatchNormalization()(shortcut)
        return layers.ReLU()(layers.add([h, shortcut]))

    inputs = keras.Input(input_shape)
    h = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    for stage, filters in enumerate((16, 32, 64)):
        for i in range(3):
            h = block(h, filters, 2 if stage > 0 and i == 0 else 1)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, layers.Dense(num_classes)(h), name="resnet20")


WEIGHTS = "classifier.weights.h5"
ARCHITECTURES = {"cnn": _cnn, "lenet5": _lenet5, "mlp": _mlp, "resnet20": _resnet20}


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(TrainingConfig):
    """Everything needed to rebuild and retrain a reference classifier."""

    arch: str = "cnn"
    epochs: int = 3
    patience: int = 3  # EarlyStopping on validation loss

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise InputValidationError(
                f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        super().__post_init__()
        self.require_positive("patience")

    def to_dict(self):
        return {"kind": "classifier", **dataclasses.asdict(self)}


def penultimate(classifier):
    """images -> the features a classifier's last (Dense) layer reads: a Keras model, or None where the
    classifier is no Keras model ending in a Dense layer."""
    if not isinstance(classifier, keras.Model) or not classifier.layers:
        return None
    last = classifier.layers[-1]
    if not isinstance(last, layers.Dense):
        return None
    return keras.Model(classifier.inputs, last.input)


def build_classifier(arch="cnn", input_shape=(28, 28, 1), num_classes=10):
    """Builds an uncompiled reference classifier that returns logits."""
    if arch not in ARCHITECTURES:
        raise InputValidationError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](tuple(input_shape), num_classes)


def train_classifier(config, out_dir, callbacks=(), verbose=1):
    """Trains a reference classifier with Keras `fit` and writes its run folder.

    Validation data come from the training split only. EarlyStopping watches validation loss and
    keeps the best weights; BackupAndRestore makes a killed run resume from its last epoch.

    Args:
      config: a `ClassifierConfig`.
      out_dir: the run folder to write (created; an existing unfinished run there resumes).
      callbacks: extra Keras callbacks.
      verbose: Keras progress-bar verbosity.

    Returns:
      (model, history dict)
    """
    out_dir = start_run(out_dir, config.to_dict())
    tf.keras.utils.set_random_seed(config.seed)

    (x_train, y_train), (x_val, y_val) = data_lib.load_train_val(
        config.dataset, config.limit, config.val_fraction, config.seed)
    model = build_classifier(config.arch, config.input_shape, config.num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        data_lib.to_tf_dataset(x_train, y_train, config.batch_size, shuffle=True, seed=config.seed),
        validation_data=data_lib.to_tf_dataset(x_val, y_val, config.batch_size),
        epochs=config.epochs,
        callbacks=[*run_callbacks(out_dir),
                   keras.callbacks.EarlyStopping(patience=config.patience, restore_best_weights=True),
                   *callbacks],
        verbose=verbose,
    )
    finish_run(model, out_dir, WEIGHTS)
    return model, history.history


def load_classifier(run_dir):
    """Rebuilds a classifier from its run folder's config and restores its weights.

    Returns:
      (model, ClassifierConfig)
    """
    config = ClassifierConfig.from_dict(read_run(run_dir, "classifier"))
    model = restore_weights(build_classifier(config.arch, config.input_shape, config.num_classes), run_dir, WEIGHTS)
    # what `evaluation.evaluate` records when it is not told: names, data set, the weights' digest (set
    # past Keras' attribute tracking: a plain record, no part of the model's state)
    object.__setattr__(model, "tfpurify_run", {
        "defense": "none", "classifier": config.arch, "dataset": config.dataset,
        "runs": {"classifier": {"path": str(run_dir), "weights_sha256": weights_digest(run_dir, WEIGHTS)}}})
    return model, config


def predict_logits(model_fn, x, batch_size=256):
    """Runs `model_fn` over `x` in batches and returns numpy logits."""
    outs = [np.asarray(model_fn(tf.constant(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def accuracy(model_fn, x, y, batch_size=256):
    """Top-1 accuracy of a logits callable on (x, y)."""
    return float(np.mean(np.argmax(predict_logits(model_fn, x, batch_size), axis=1) == y))
