"""`toy_blur`: a purifier that mixes each image with its 3x3 average (no weights to train)."""

import dataclasses

import tensorflow as tf

from tfpurify.defenses import DefenseConfig, Purifier, register


@dataclasses.dataclass(frozen=True)
class ToyBlurConfig(DefenseConfig):
    """Toy blur: purified = (1 - strength) * x + strength * avg3x3(x)."""

    strength: float = 0.5


@register("toy_blur", ToyBlurConfig)
class ToyBlur(Purifier):
    def __init__(self, config, input_shape=(28, 28, 1), **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.pool = tf.keras.layers.AveragePooling2D(3, strides=1, padding="same")

    def purify(self, x, training=False):
        return (1.0 - self.config.strength) * x + self.config.strength * self.pool(x)

    def compile_for_training(self):
        self.compile()

    def train_step(self, x):
        return {}

    def get_config(self):
        return dataclasses.asdict(self.config)
