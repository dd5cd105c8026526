"""MagNet-style convolutional denoising autoencoder (Meng & Chen 2017): the baseline purifier.

Trained on clean training images corrupted with Gaussian noise to reconstruct the clean image,
with Keras' default `train_step` (the dataset yields (noisy, clean) pairs) and a mean squared
error. It is the comparison row every paper defense must beat, under gray-box and white-box.
"""

import dataclasses

import tensorflow as tf

from tfpurify.defenses import register
from tfpurify.defenses.base import DefenseConfig, Purifier
from tfpurify.errors import InputValidationError

__all__ = ["DenoisingAEConfig", "DenoisingAutoencoder"]

layers = tf.keras.layers


@dataclasses.dataclass(frozen=True)
class DenoisingAEConfig(DefenseConfig):
    """MagNet-style denoising autoencoder: `filters` per conv layer, Gaussian `noise_std` in training."""

    filters: int = 32
    noise_std: float = 0.3
    epochs: int = 5

    def __post_init__(self):
        super().__post_init__()
        if self.filters < 1:
            raise InputValidationError(f"filters must be >= 1, got {self.filters}")
        if self.noise_std < 0:
            raise InputValidationError(f"noise_std must be >= 0, got {self.noise_std}")


@register("denoising_ae", DenoisingAEConfig)
class DenoisingAutoencoder(Purifier):
    """conv-pool-conv / conv-upsample-conv autoencoder with a sigmoid output in [0, 1]."""

    def __init__(self, config=DenoisingAEConfig(), input_shape=(28, 28, 1), **kwargs):
        super().__init__(**kwargs)
        self.config = config
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

    def purify(self, x, training=False):
        return self.autoencoder(x, training=training)

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
