"""MagNet-style convolutional denoising autoencoder (Meng & Chen 2017): the baseline purifier.

Trained on clean training images corrupted with Gaussian noise to reconstruct the clean image,
with Keras' default `train_step` (the dataset yields (noisy, clean) pairs) and a mean squared
error. It is the comparison row every paper defense must beat, under gray-box and white-box.
With `detector=True` it is also MagNet's reconstruction-error detector: the adversarial score is
the mean absolute difference between an input and its reconstruction (MagNet's detector I with
p = 1), thresholded at a false positive rate on validation images when training ends.
"""

import dataclasses

import tensorflow as tf

from tfpurify.defenses.base import DefenseConfig, Detector, Purifier
from tfpurify.defenses.registry import register
from tfpurify.errors import InputValidationError

__all__ = ["DenoisingAEConfig", "DenoisingAutoencoder"]

layers = tf.keras.layers


@dataclasses.dataclass(frozen=True)
class DenoisingAEConfig(DefenseConfig):
    """MagNet-style denoising autoencoder: `filters` per conv layer, Gaussian `noise_std` in training.

    `detector`: also flag inputs whose reconstruction error is high (MagNet's detector).
    """

    filters: int = 32
    noise_std: float = 0.3
    epochs: int = 5
    detector: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.filters < 1:
            raise InputValidationError(f"filters must be >= 1, got {self.filters}")
        if self.noise_std < 0:
            raise InputValidationError(f"noise_std must be >= 0, got {self.noise_std}")


@register("denoising_ae", DenoisingAEConfig)
class DenoisingAutoencoder(Purifier, Detector):
    """conv-pool-conv / conv-upsample-conv autoencoder with a sigmoid output in [0, 1]."""

    def __init__(self, config=DenoisingAEConfig(), input_shape=(28, 28, 1), **kwargs):
        super().__init__(**kwargs)
        self.config = config
        if config.detector:
            self._init_detector()
        self.image_shape = tuple(input_shape)
        f = config.filters
        self.autoencoder = tf.keras.Sequential([
            layers.InputLayer(self.image_shape),
            layers.Conv2D(f, 3, padding="same", activation="relu"),
            layers.AveragePooling2D(2),
            layers.Conv2D(f, 3, padding="same", activation="relu"),
            layers.Conv2D(f, 3, padding="same", activation="relu"),
            layers.UpSampling2D(2),
            layers.Conv2D(f, 3, padding="same", activation="relu"),
            layers.Conv2D(self.image_shape[-1], 3, padding="same", activation="sigmoid"),
        ], name="autoencoder")
        # the bottleneck (after pooling and the second convolution), sharing the autoencoder's layers
        object.__setattr__(self, "_encoder", tf.keras.Model(self.autoencoder.inputs,
                                                            self.autoencoder.layers[2].output))

    @property
    def detector_enabled(self):
        return self.config.detector

    def purify(self, x, training=False):
        return self.autoencoder(x, training=training)

    has_code = True

    def encode(self, x, training=False):
        """The autoencoder's bottleneck activations (half resolution)."""
        return self._encoder(x, training=training)

    def adversarial_score(self, x):
        """Mean absolute reconstruction error per image (MagNet detector I, p = 1)."""
        error = tf.abs(x - self.autoencoder(x, training=False))
        return tf.reduce_mean(tf.reshape(error, [tf.shape(x)[0], -1]), axis=1)

    def compile_for_training(self):
        self.compile(optimizer=tf.keras.optimizers.Adam(self.config.learning_rate), loss="mse")

    def make_dataset(self, x, y, batch_size, shuffle=False, seed=0):
        std = self.config.noise_std

        def corrupt(clean):
            noisy = clean + tf.random.normal(tf.shape(clean), stddev=std)
            return tf.clip_by_value(noisy, 0.0, 1.0), clean

        return super().make_dataset(x, None, batch_size, shuffle, seed).map(corrupt)

    def get_config(self):
        return dataclasses.asdict(self.config)
