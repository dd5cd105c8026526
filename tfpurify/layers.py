"""Layers shared by the defenses. The only module that imports tensorflow_addons.

tfa is end-of-life and breaks under Keras 3 (hence TensorFlow 2.15): keeping every use here makes
a later move one file.
"""

import contextlib
import warnings


with warnings.catch_warnings():  # tfa's end-of-life notice is known (see above)
    warnings.simplefilter("ignore", UserWarning)
    import tensorflow_addons as tfa

import numpy as np
import tensorflow as tf

__all__ = ["weight_norm", "LeakyReLU", "ConditionalBatchNorm", "dct_matrix", "BlockDCTQuantize"]


def weight_norm(layer):
    """Wraps a Dense/Conv layer in weight normalization (Salimans & Kingma 2016).

    Unlike batch norm, the output for one example depends only on that example (FBGAN 3.3).
    Data-dependent initialization is off: with it tfa breaks on `Conv2DTranspose` (bias shape
    mismatch) and it assigns variables in the first call, which replica contexts forbid.
    """
    return WeightNormalization(layer, data_init=False)


class WeightNormalization(tfa.layers.WeightNormalization):
    """tfa's weight normalization without data-dependent initialization, initialized when built.

    tfa sets g = ||v|| in the first call, through a `tf.cond` on an `initialized` flag that every call then
    carries: the cond and its gradient were a third of the time to trace FBGAN's training step. Here g is
    set to ||v|| once, eagerly, when the layer is built (what tfa's first call would do, as v has not moved
    by then), and a call only computes the kernel v / ||v|| * g. The variables and their order are tfa's (and
    the class keeps tfa's name, so that layer names do not change): weights saved by either load into
    either.
    """

    def build(self, input_shape):
        super().build(input_shape)
        if self.data_init:
            raise ValueError("data-dependent initialization is not supported here (see weight_norm)")
        with tf.init_scope():
            self._init_norm()
            self._initialized.assign(True)

    def call(self, inputs):
        self.layer.kernel = tf.nn.l2_normalize(self.v, axis=self.kernel_norm_axes) * self.g
        return self.layer(inputs)


class LeakyReLU(tf.keras.layers.LeakyReLU):
    """Keras' LeakyReLU computed as max(x, alpha x) (the same function for 0 < alpha < 1).

    TensorFlow's grappler fuses Conv2D + BiasAdd + LeakyRelu, and in a graph that also holds the
    gradient of that LeakyRelu the fusion fails with an error line in the log ("remapper failed ...
    LeakyReluGrad"); the discriminators and detectors, differentiated in every training step, use this.
    """

    def call(self, inputs):
        return tf.maximum(inputs, self.alpha * inputs)


class ConditionalBatchNorm(tf.keras.layers.Layer):
    """Class-conditional batch normalization (de Vries et al. 2017; Dumoulin et al. 2017).

    Normalizes with the batch statistics (moving averages at inference) like `BatchNormalization`
    (of the global batch under `tf.distribute`: synchronized over replicas),
    then scales and shifts with a gamma and beta *per class*: out = gamma[y] * x_hat + beta[y], so
    the label steers every layer it sits in. Call it as `layer([x, y])` with integer labels y [N].
    gamma starts at 1 and beta at 0: before training it is plain batch norm.
    """

    def __init__(self, num_classes, momentum=0.99, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.norm = tf.keras.layers.BatchNormalization(center=False, scale=False, momentum=momentum, epsilon=epsilon,
                                                       synchronized=True)

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


def dct_matrix(m):
    """The orthonormal DCT-II matrix C [m, m]: a block's 2-D coefficients are C x C^T (scipy's norm="ortho")."""
    n = np.arange(m)
    c = np.sqrt(2.0 / m) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * m))
    c[0] /= np.sqrt(2.0)
    return c.astype(np.float32)


class BlockDCTQuantize(tf.keras.layers.Layer):
    """GCLN's quantized nonlinear transform (paper 003, section 3.2, eqs. 1-2).

    Each channel is cut into `block` x `block` blocks (padded at the bottom and right by
    reflection as needed, cropped back after), each block goes through the orthonormal 2-D DCT,
    its coefficients are quantized to round(X / step) * step with `step` on the 0-255 pixel scale
    (the paper's Q, 5-12), and the inverse DCT gives the image back in [0, 1]. `step` 0 is the
    identity. The forward pass is exact. The gradient is straight-through (the identity) while
    `straight_through` is on (the default: how the cleaning network trains through it, and the BPDA
    an adaptive attacker uses), and otherwise the true one, zero almost everywhere (rounding), which
    is what plain gradients through the served transform see. The attribute is read when the layer
    is called (or traced): `with quantizer.gradient(straight_through=False): ...`.
    """

    def __init__(self, step=8.0, block=8, **kwargs):
        super().__init__(**kwargs)
        if step < 0 or block < 1:
            raise ValueError(f"BlockDCTQuantize needs step >= 0 and block >= 1, got {step}, {block}")
        self.step, self.block = float(step), int(block)
        self.c = tf.constant(dct_matrix(self.block))
        self.straight_through = True

    @contextlib.contextmanager
    def gradient(self, straight_through):
        """Calls inside the block use the straight-through (True) or the true (False) gradient."""
        before, self.straight_through = self.straight_through, bool(straight_through)
        try:
            yield self
        finally:
            self.straight_through = before

    def _blocks(self, x):
        """[N, H, W, C] -> ([N, C, H', W', b, b] blocks of 0-255 pixels, padding (ph, pw))."""
        b = self.block
        h, w, channels = x.shape[1], x.shape[2], x.shape[3]
        ph, pw = -h % b, -w % b
        if ph or pw:
            x = tf.pad(x, [[0, 0], [0, ph], [0, pw], [0, 0]], mode="SYMMETRIC")
        t = tf.reshape(255.0 * x, [-1, (h + ph) // b, b, (w + pw) // b, b, channels])
        return tf.transpose(t, [0, 5, 1, 3, 2, 4]), (ph, pw)

    def coefficients(self, x):
        """The 2-D DCT coefficients of every block, [N, C, H', W', b, b] (0-255 scale)."""
        blocks, _ = self._blocks(x)
        return tf.einsum("ij,...jk,lk->...il", self.c, blocks, self.c)

    def quantize(self, x):
        """The exact forward transform (no straight-through gradient)."""
        if self.step == 0:
            return x
        h, w, channels = x.shape[1], x.shape[2], x.shape[3]
        blocks, (ph, pw) = self._blocks(x)
        coeffs = tf.einsum("ij,...jk,lk->...il", self.c, blocks, self.c)
        quantized = tf.round(coeffs / self.step) * self.step
        restored = tf.einsum("ji,...jk,kl->...il", self.c, quantized, self.c)  # C^T Q C
        t = tf.transpose(restored, [0, 2, 4, 3, 5, 1])
        t = tf.reshape(t, [-1, h + ph, w + pw, channels])[:, :h, :w, :]
        return tf.clip_by_value(t / 255.0, 0.0, 1.0)

    def call(self, x):
        x = tf.convert_to_tensor(x, tf.float32)
        if not self.straight_through:
            return self.quantize(x)
        return x + tf.stop_gradient(self.quantize(x) - x)

    def get_config(self):
        return {**super().get_config(), "step": self.step, "block": self.block}
