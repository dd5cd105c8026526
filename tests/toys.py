"""Tiny purifiers and detectors with known behaviour, for testing the defense plumbing."""

import numpy as np
import tensorflow as tf

from tfpurify.defenses.base import Detector, Purifier


class RoundingPurifier(Purifier):
    """Quantizes pixels to `levels` values: not differentiable; BPDA surrogate = identity."""

    def __init__(self, levels=4, **kwargs):
        super().__init__(**kwargs)
        self.levels = float(levels)

    def purify(self, x, training=False):
        return tf.round(x * self.levels) / self.levels

    def attack_surrogate(self, x):
        return x


class NoisyPurifier(Purifier):
    """Adds Gaussian noise: a stochastic purifier, attacked with EOT."""

    stochastic = True

    def purify(self, x, training=False):
        return tf.clip_by_value(x + tf.random.normal(tf.shape(x), stddev=0.2), 0.0, 1.0)


class BrightnessDetector(Purifier, Detector):
    """Identity purifier whose adversarial score is the mean pixel value (differentiable)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._init_detector()

    def purify(self, x, training=False):
        return x

    def adversarial_score(self, x):
        return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def brightness_images(n=8):
    """n 2x2 grey images, image i filled with i / 10: its mean pixel (the toys' score) is i / 10."""
    v = np.arange(n, dtype=np.float32) / 10
    return np.repeat(v[:, None, None, None], 2, axis=1).repeat(2, axis=2)


def threshold_classifier(threshold):
    """Logits of class 0 while an image's mean pixel stays below `threshold`, else class 1 (differentiable)."""

    def logits(images, training=False):
        m = tf.reduce_mean(tf.reshape(images, [tf.shape(images)[0], -1]), axis=1)
        return tf.stack([threshold - m, m - threshold], axis=1)

    return logits


def layer_specs(model):
    """A model's layers in order: (filters/units, kernel, strides, padding, activation) for layers with weights,
    LeakyReLU with its slope, a wrapper's name before what it wraps, other layers by name (inputs left out)."""
    out = []
    for layer in model.layers:
        kind, c = type(layer).__name__, layer.get_config()
        if kind == "InputLayer":
            continue
        if "layer" in c and isinstance(c["layer"], dict):  # a wrapper (spectral normalization)
            out.append(kind)
            c = c["layer"]["config"]
        if kind == "LeakyReLU":
            out.append((kind, round(float(c["alpha"]), 6)))
        elif kind == "Dropout":
            out.append((kind, c["rate"]))
        elif kind == "BlockDCTQuantize":
            out.append((kind, layer.step, layer.block))
        elif layer.weights:
            out.append((c.get("filters", c.get("units")), tuple(c.get("kernel_size", ())), tuple(c.get("strides", ())),
                        c.get("padding"), c.get("activation")))
        else:
            out.append(kind)
    return out
