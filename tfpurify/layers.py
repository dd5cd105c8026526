"""Layers shared by the defenses. The only module that imports tensorflow_addons.

tfa is end-of-life and breaks under Keras 3 (hence TensorFlow 2.15): keeping every use here makes
a later move one file.
"""

import warnings


with warnings.catch_warnings():  # tfa's end-of-life notice is known (see above)
    warnings.simplefilter("ignore", UserWarning)
    import tensorflow_addons as tfa

import tensorflow as tf

__all__ = ["weight_norm", "ConditionalBatchNorm"]


def weight_norm(layer):
    """Wraps a Dense/Conv layer in weight normalization (Salimans & Kingma 2016).

    Unlike batch norm, the output for one example depends only on that example (FBGAN 3.3).
    Data-dependent initialization is off: with it tfa breaks on `Conv2DTranspose` (bias shape
    mismatch) and it assigns variables in the first call, which replica contexts forbid.
    """
    return tfa.layers.WeightNormalization(layer, data_init=False)


class ConditionalBatchNorm(tf.keras.layers.Layer):
    """Class-conditional batch normalization (de Vries et al. 2017; Dumoulin et al. 2017).

    Normalizes with the batch statistics (moving averages at inference) like `BatchNormalization`,
    then scales and shifts with a gamma and beta *per class*: out = gamma[y] * x_hat + beta[y], so
    the label steers every layer it sits in. Call it as `layer([x, y])` with integer labels y [N].
    gamma starts at 1 and beta at 0: before training it is plain batch norm.
    """

    def __init__(self, num_classes, momentum=0.99, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.norm = tf.keras.layers.BatchNormalization(center=False, scale=False, momentum=momentum, epsilon=epsilon)

    def build(self, input_shape):
        channels = input_shape[0][-1]
        self.gamma = self.add_weight(name="gamma", shape=(self.num_classes, channels), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(self.num_classes, channels), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, training=None):
        x, y = inputs
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        shape = tf.concat([tf.shape(y), tf.ones([tf.rank(x) - 2], tf.int32), [-1]], axis=0)
        gamma = tf.reshape(tf.gather(self.gamma, y), shape)
        beta = tf.reshape(tf.gather(self.beta, y), shape)
        return gamma * self.norm(x, training=training) + beta

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
