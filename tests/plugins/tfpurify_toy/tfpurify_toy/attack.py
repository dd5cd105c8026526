"""`toy_noise`: every pixel moved by +-eps at random (a gradient-free attack)."""

import tensorflow as tf

from tfpurify.attacks import COMMON, AttackDef, register_attack


def _toy_noise(model_fn, x, y, p, loss_fn):
    return tf.clip_by_value(x + p["eps"] * tf.sign(tf.random.uniform(tf.shape(x), -1.0, 1.0)), 0.0, 1.0)


register_attack("toy_noise", AttackDef(_toy_noise, dict(COMMON), gradient=False, cost=lambda p: 1))
