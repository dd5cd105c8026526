"""Layers shared by the defenses. The only module that imports tensorflow_addons.

tfa is end-of-life and breaks under Keras 3 (hence TensorFlow 2.15): keeping every use here makes
a later move one file.
"""

import warnings


with warnings.catch_warnings():  # tfa's end-of-life notice is known (see above)
    warnings.simplefilter("ignore", UserWarning)
    import tensorflow_addons as tfa

__all__ = ["weight_norm"]


def weight_norm(layer):
    """Wraps a Dense/Conv layer in weight normalization (Salimans & Kingma 2016).

    Unlike batch norm, the output for one example depends only on that example (FBGAN 3.3).
    Data-dependent initialization is off: with it tfa breaks on `Conv2DTranspose` (bias shape
    mismatch) and it assigns variables in the first call, which replica contexts forbid.
    """
    return tfa.layers.WeightNormalization(layer, data_init=False)
