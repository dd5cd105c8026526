"""Sanity check 5: the binarization test (Zimmermann et al. 2022, "Increasing confidence in
adversarial robustness evaluations", NeurIPS).

An attack that reports a defense robust may simply be too weak for that pipeline. The test gives
the attack a problem whose answer is known: for each of a few examples, the classifier's last layer
is replaced by a binary linear readout on its features (its penultimate layer, behind the same
purifier, with the same gradients: BPDA, EOT), fitted so that the clean image and `inner` random
points within 0.95 eps of it are class 0 and a corner of the eps-ball (every pixel moved by eps,
clipped to [0, 1]) is class 1. An adversarial example inside eps then exists by construction: the
corner. The same attack (PGD with the report's settings) is run against each readout; it should
find an example of class 1 on (almost) every one. Where it does not, it is too weak for this
pipeline, and its robust accuracy says little: the report says so.

Examples whose readout cannot separate its own training points (features that do not tell the
corner from the inner points) are left out and counted. For a stochastic purifier the features
are one draw's, as the attack's scoring.
"""

import numpy as np
import tensorflow as tf

from tfpurify import attacks as attacks_lib
from tfpurify.classifiers import predict_logits

__all__ = ["BINARIZATION", "binarization_points", "fit_readouts", "Readouts", "binarization_test"]

# How many examples (the first of the sanity subset), inner points per example, the success rate the
# attack must reach on the examples whose readout was fitted, and the random points of the control.
BINARIZATION = {"n": 20, "inner": 49, "shrink": 0.95, "min_success": 0.9, "random_points": 10}


def binarization_points(x, eps, inner, shrink=0.95, seed=0):
    """Per image: itself and `inner` points uniform within shrink * eps (class 0), then the corner of
    random signs at eps (class 1), each clipped to [0, 1]. Returns [N, inner + 2, H, W, C]."""
    rng = np.random.RandomState(seed)
    x = np.asarray(x, np.float32)
    noise = rng.uniform(-shrink * eps, shrink * eps, (len(x), inner, *x.shape[1:])).astype(np.float32)
    corner = (rng.randint(0, 2, (len(x), 1, *x.shape[1:])) * 2 - 1).astype(np.float32) * eps
    points = np.concatenate([x[:, None], x[:, None] + noise, x[:, None] + corner], axis=1)
    return np.clip(points, 0.0, 1.0)


def fit_readouts(features, steps=3000, learning_rate=0.05):
    """One logistic regression per example: its points [N, M, D], the last of class 1, the rest class 0.

    Balanced classes, standardized features, Adam until every example's points are separated (or
    `steps`); then the boundary is moved halfway between the highest class-0 point and the corner.
    Returns (w [N, D], b [N], separated [N] bool), with logit z = f.w + b > 0 for class 1, scaled so
    that z spans a range of 1 over each example's own points (Zimmermann et al.'s "fixed").
    """
    f = tf.constant(features, tf.float32)
    n, m, d = f.shape
    mu = tf.reduce_mean(f, axis=1, keepdims=True)
    sd = tf.math.reduce_std(f, axis=1, keepdims=True) + 1e-6
    s = (f - mu) / sd
    labels = tf.constant([0.0] * (m - 1) + [1.0])
    weights = tf.constant([0.5 / (m - 1)] * (m - 1) + [0.5])
    w, b = tf.Variable(tf.zeros([n, d])), tf.Variable(tf.zeros([n]))
    optimizer = tf.keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            z = tf.einsum("nmd,nd->nm", s, w) + b[:, None]
            loss = tf.reduce_sum(tf.reduce_mean(
                weights * tf.nn.sigmoid_cross_entropy_with_logits(tf.broadcast_to(labels, z.shape), z), axis=1))
        optimizer.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
        return tf.reduce_all(tf.equal(z > 0, labels > 0.5), axis=1)

    for i in range(steps):
        separated = step()
        if i % 50 == 49 and bool(tf.reduce_all(separated)):
            break
    z = tf.einsum("nmd,nd->nm", s, w) + b[:, None]
    separated = tf.reduce_all(tf.equal(z > 0, labels > 0.5), axis=1).numpy()
    # the boundary halfway between the highest inner point and the corner along w (the largest margin
    # this w allows): neither hugging the inner points, where random noise would cross it, nor the corner
    shift = (tf.reduce_max(z[:, :-1], axis=1) + z[:, -1]) / 2
    b = b - shift
    z = z - shift[:, None]
    scale = tf.maximum(tf.reduce_max(z, axis=1) - tf.reduce_min(z, axis=1), 1e-12)
    w_raw = w / sd[:, 0] / scale[:, None]
    b_raw = (b - tf.reduce_sum(mu[:, 0] / sd[:, 0] * w, axis=1)) / scale
    return w_raw.numpy(), b_raw.numpy(), separated


class Readouts:
    """images -> binary logits [-z/2, z/2] of readout k = row position mod N on the features.

    Row i of a batch is example i (the attack runs every example in one batch, in order, without
    early exit; an EOT average tiles the batch, hence the modulo)."""

    def __init__(self, features, w, b):
        self.features, self.w, self.b = features, tf.constant(w), tf.constant(b)

    def __call__(self, images, training=False):
        f = self.features(images, training=False)
        k = tf.range(tf.shape(f)[0]) % tf.shape(self.w)[0]
        z = tf.reduce_sum(f * tf.gather(self.w, k), axis=1) + tf.gather(self.b, k)
        return tf.stack([-z / 2, z / 2], axis=1)


def binarization_test(binarize, x, attack, params, seed=0, batch_size=256, n=None, inner=None, progress=False,
                      progress_label=None):
    """Runs the test on the first `n` images of x; returns the check's record (see the module).
    `progress`, `progress_label`: the attack's progress bar (see `attacks.run_attack`).

    Args:
      binarize: an attacked callable's `binarize` (set by `tfpurify.adaptive`): `head -> (attacked,
        scored)`, the same pipeline with `head` in its classifier's place, with `features` (images ->
        the classifier's penultimate features) and `purify` (the served purifier, or the identity).
      attack, params: the attack to test and its parameters (eps included).
    """
    n = BINARIZATION["n"] if n is None else n
    inner = BINARIZATION["inner"] if inner is None else inner
    x = np.asarray(x[:n], np.float32)
    eps = params["eps"]
    points = binarization_points(x, eps, inner, BINARIZATION["shrink"], seed)
    flat = points.reshape(-1, *x.shape[1:])
    features = np.concatenate([
        np.asarray(binarize.features(binarize.purify(tf.constant(flat[i:i + batch_size])), training=False))
        for i in range(0, len(flat), batch_size)]).reshape(len(x), inner + 2, -1)
    w, b, separated = fit_readouts(features)
    attacked, scored = binarize(Readouts(binarize.features, w, b))
    accepted = attacks_lib.get_attack(attack).defaults  # every example in one batch, in order, to the end
    run = {**params, **{k: v for k, v in (("early_exit", False), ("restarts", 1)) if k in accepted}}
    x_adv = attacks_lib.run_attack(attack, attacked, x, np.zeros(len(x), np.int64), batch_size=len(x), seed=seed,
                                   progress=progress, progress_label=progress_label, **run)

    def says_one(images):
        return np.argmax(predict_logits(scored, np.ascontiguousarray(images), len(x)), axis=1) == 1

    # fitted: the readout separates its own points, and the served pipeline agrees on the image and the corner
    valid = separated & says_one(points[:, -1]) & ~says_one(x)
    found = says_one(x_adv)
    # the control: random points of the eps-ball; where they already cross, the problem is no test
    rng = np.random.RandomState(seed + 1)
    random_hits = np.zeros(len(x), bool)
    for _ in range(BINARIZATION["random_points"]):
        noise = rng.uniform(-eps, eps, x.shape).astype(np.float32)
        random_hits |= says_one(np.clip(x + noise, 0.0, 1.0))
    return {"attack": attack, "eps": eps, "n": int(len(x)), "inner_points": inner, "fitted": int(valid.sum()),
            "setup_failed": int(len(x) - valid.sum()),
            "attack_success": float(np.mean(found[valid])) if valid.any() else None,
            "random_success": float(np.mean(random_hits[valid])) if valid.any() else None,
            "min_success": BINARIZATION["min_success"]}
