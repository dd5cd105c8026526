"""Attacks aimed at the purifier itself (AAA's supplement; the "overpowered" latent attack of Jalal et al.).

Both run under the white-box threat model of a defense run, where the attacked callable carries
its purifier (`adaptive.whitebox_target` sets `purifier` and `purify`, the attacker's
differentiable view of it, BPDA included); elsewhere they are skipped with a warning.

- `pgd_recon`: PGD end to end whose loss also asks the purifier to leave the adversarial image
  alone: maximize xent(F(G(x')), y) - recon_weight * ||G(x') - x'||^2 (sum over pixels). Where
  G(x') = x', the perturbation passes through the purifier untouched. An autoencoder trained to
  pull inputs toward clean images (AAA's L_mse) resists it if it never reproduces such x'.
- `latent`: move x' in the eps-ball so that the purifier's code E(x') gets as close as it can to
  the code of the nearest input of another class in the batch (minimize ||E(x') - E(x_t)||^2);
  success is the classifier's mistake on the purified x', checked every step (first success
  kept). Needs a purifier with a code (`Purifier.encode`: aaa, denoising_ae, fbgan).

Both run on the shared graph loop (`tfpurify.attacks.loop.iterative_gradient`) and return
(x_adv, gradient evaluations per example) like the other attacks in `tfpurify.attacks`.
"""

import numpy as np
import tensorflow as tf

from tfpurify.attacks.loop import Target, iterative_gradient
from tfpurify.attacks.registry import AttackDef, register_attack
from tfpurify.errors import AttackConfigError

__all__ = ["ReconstructionAwareTarget", "nearest_other_class_codes"]


class ReconstructionAwareTarget:
    """[logits | weight * ||purify(x) - x||^2]; `attack_loss` = xent - that term (the `loop.Target` protocol)."""

    def __init__(self, logits_fn, purify, weight):
        self.logits_fn, self.purify, self.weight = logits_fn, purify, float(weight)

    def __call__(self, x):
        error = tf.reduce_sum(tf.reshape(tf.square(self.purify(x) - x), [tf.shape(x)[0], -1]), axis=1)
        return tf.concat([self.logits_fn(x), self.weight * error[:, None]], axis=1)

    @staticmethod
    def logits(outputs):
        return outputs[:, :-1]

    @staticmethod
    def attack_loss(labels, logits):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits[:, :-1]) - logits[:, -1]


def _logits_fn(model_fn):
    target = Target(model_fn)  # a detector-aware target: its logits (the detector term is dropped)
    return (lambda x: target.parts(x)[0]) if target.aware else model_fn


def _pgd_recon(model_fn, x, y, p, loss_fn):
    purifier = model_fn.purifier  # run_attack checked it is there
    target = ReconstructionAwareTarget(_logits_fn(model_fn), getattr(model_fn, "purify", purifier.purify),
                                       p["recon_weight"])
    x_adv, _, evals = iterative_gradient(target, x, y, p["eps"], p["eps_iter"], p["nb_iter"],
                                                    rand_init=p["rand_init"], early_exit=p["early_exit"])
    return x_adv, evals


def _flat_code(purifier, x):
    code = purifier.encode(x)
    return tf.reshape(code, [tf.shape(x)[0], -1])


def nearest_other_class_codes(codes, y):
    """Per example, the code of the nearest example of another class in the batch (its own if none)."""
    y = tf.cast(y, tf.int64)
    d = tf.reduce_sum(tf.square(codes[:, None, :] - codes[None, :, :]), axis=-1)
    same = tf.equal(y[:, None], y[None, :])
    d = tf.where(same, tf.fill(tf.shape(d), np.inf), d)
    nearest = tf.argmin(d, axis=1)
    has_other = tf.reduce_any(tf.logical_not(same), axis=1)
    return tf.where(has_other[:, None], tf.gather(codes, nearest), codes)


def _latent(model_fn, x, y, p, loss_fn):
    """Sign-gradient descent on ||E(x') - E(x_t)||^2 in the L-inf ball; keeps each example's first success."""
    purifier = model_fn.purifier  # run_attack checked it is there and has a code
    logits_fn = _logits_fn(model_fn)
    y = tf.cast(y, tf.int64)
    targets = tf.stop_gradient(nearest_other_class_codes(_flat_code(purifier, x), y))

    def objective(images, labels, target_codes):  # ascend -distance: the loop's sign step descends it
        distance = tf.reduce_sum(tf.square(_flat_code(purifier, images) - target_codes), axis=1)
        fooled = tf.not_equal(tf.argmax(logits_fn(images), axis=1), labels)
        return -distance, fooled

    x_adv, _, evals = iterative_gradient(model_fn, x, y, p["eps"], p["eps_iter"], p["nb_iter"],
                                         objective=objective, side=(targets,))
    return x_adv, evals


def _check(p):
    if p["norm"] != np.inf:
        raise AttackConfigError("pgd_recon and latent support only norm inf")
    if "recon_weight" in p and not (isinstance(p["recon_weight"], (int, float)) and p["recon_weight"] >= 0):
        raise AttackConfigError(f"recon_weight must be a number >= 0, got {p['recon_weight']!r}")


_COMMON = {"eps": 0.1, "norm": np.inf, "clip_min": 0.0, "clip_max": 1.0, "eps_iter": None, "nb_iter": 40}
register_attack("pgd_recon", AttackDef(
    _pgd_recon, {**_COMMON, "targeted": False, "rand_init": True, "early_exit": True, "recon_weight": 1.0},
    takes_loss=True, check=_check, needs_purifier=True))
register_attack("latent", AttackDef(
    _latent, {**_COMMON, "targeted": False}, takes_loss=True, check=_check, needs_purifier=True, needs_code=True))
