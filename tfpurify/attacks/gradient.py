"""Gradient attacks after cleverhans: FGSM, PGD, PGD-EOT, BIM, MIM, CW-L2 and SPSA.

FGSM, CW-L2 and SPSA are `cleverhans.tf2.attacks` itself; PGD, BIM and MIM run cleverhans' update
rules on tfpurify's graph loop (`tfpurify.attacks.loop.iterative_gradient`) with a per-example
early exit. `pgd_eot` is PGD for stochastic pipelines: 200 steps, each gradient the mean over 20
calls of the attacked callable (`eot_iter`), an example leaving only when all 20 are fooled.
Registered under those names (`fgsm`, `pgd`, `pgd_eot`, `bim`, `mim`, `cw_l2`, `spsa`).
"""

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.carlini_wagner_l2 import carlini_wagner_l2
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.spsa import SPSAAdam, margin_logit_loss, projected_optimization

from tfpurify.attacks.loop import iterative_gradient
from tfpurify.attacks.registry import COMMON, AttackDef, register_attack

__all__ = []  # the attacks are used by name, through `tfpurify.attacks.run_attack`


def _fgsm(model_fn, x, y, p, loss_fn):
    return fast_gradient_method(model_fn, x, p["eps"], p["norm"], loss_fn, clip_min=p["clip_min"],
                                clip_max=p["clip_max"], y=y, targeted=p["targeted"])


def _iterative(model_fn, x, y, p, loss_fn):
    """PGD / BIM / MIM (cleverhans' rules) on tfpurify's graph loop; returns (x_adv, gradient evaluations)."""
    x_adv, _, evals = iterative_gradient(
        model_fn, x, y, p["eps"], p["eps_iter"], p["nb_iter"], p["norm"], rand_init=p.get("rand_init", False),
        decay_factor=p.get("decay_factor"), early_exit=p["early_exit"], targeted=p["targeted"],
        eot_iter=p.get("eot_iter", 1))
    return x_adv, evals


def _cw_l2(model_fn, x, y, p, loss_fn):
    # cleverhans 4.0.0's CW-L2 misbehaves when given true labels for an untargeted attack (it
    # raised accuracy in our tests); untargeted it attacks the predictions, which for robust
    # accuracy is equivalent: an already misclassified example counts as wrong either way.
    adv = carlini_wagner_l2(
        model_fn, x, y=y.numpy() if p["targeted"] else None, targeted=p["targeted"], batch_size=len(x),
        clip_min=p["clip_min"], clip_max=p["clip_max"],
        binary_search_steps=p["binary_search_steps"], max_iterations=p["max_iterations"],
        abort_early=True, confidence=p["confidence"], initial_const=p["initial_const"],
        learning_rate=p["learning_rate"])
    return tf.convert_to_tensor(adv)


def _spsa_optimizer(p):
    """cleverhans' SPSA optimizer, built outside any `tf.function` (it is a Keras optimizer).

    cleverhans 4.0.0's `SPSAAdam.__init__` passes `lr=` to Keras 2.15's Adam, which ignores it:
    its step would stay at Adam's 0.001 whatever `learning_rate` is asked for. We set it after
    construction, so `learning_rate` means what it says.
    """
    optimizer = SPSAAdam(lr=p["learning_rate"], delta=p["delta"], num_samples=p["spsa_samples"], num_iters=1)
    optimizer.learning_rate = p["learning_rate"]
    return optimizer


def _spsa(model_fn, x, y, p, loss_fn):
    """cleverhans' SPSA (Uesato et al. 2018): `spsa()`'s margin loss and `projected_optimization`.

    Run through cleverhans' own pieces rather than `spsa()`, which builds its Keras optimizer inside
    the call and so cannot be traced: traced, SPSA runs about 3x faster than eagerly. The search
    stops on an example once it is misclassified (cleverhans' `early_stop_loss_threshold=0`), which
    keeps the first successful adversarial example.
    """
    sign = 1.0 if p["targeted"] else -1.0

    def margin(images, labels):
        logits = model_fn(images)
        return sign * margin_logit_loss(logits, labels, nb_classes=logits.shape[-1])

    return projected_optimization(margin, x, y, p["eps"], p["nb_iter"], p["optimizer"], p["clip_min"],
                                  p["clip_max"], early_stop_loss_threshold=0.0)


_ITERATIVE = {**COMMON, "eps_iter": None, "nb_iter": 40, "early_exit": True}

register_attack("fgsm", AttackDef(_fgsm, dict(COMMON), takes_loss=True, cost=lambda p: 1))
register_attack("pgd", AttackDef(_iterative, {**_ITERATIVE, "rand_init": True, "restarts": 1}, takes_loss=True))
# PGD-EOT (Athalye et al. 2018) with the budget later work found necessary against stochastic purifiers
# (Lee & Kim 2023: 200 steps, gradients averaged over 20 draws per step).
register_attack("pgd_eot", AttackDef(
    _iterative, {**_ITERATIVE, "nb_iter": 200, "rand_init": True, "restarts": 1, "eot_iter": 20}, takes_loss=True))
register_attack("bim", AttackDef(_iterative, dict(_ITERATIVE), takes_loss=True))
register_attack("mim", AttackDef(_iterative, {**_ITERATIVE, "decay_factor": 1.0}, takes_loss=True))
register_attack("cw_l2", AttackDef(
    _cw_l2,
    {"eps": None, "norm": 2, "clip_min": 0.0, "clip_max": 1.0, "targeted": False,
     "binary_search_steps": 5, "max_iterations": 100, "confidence": 0.0,
     "initial_const": 1.0, "learning_rate": 0.01},
    bounded=False, graph=False))
register_attack("spsa", AttackDef(
    _spsa,
    {**COMMON, "nb_iter": 100, "learning_rate": 0.01, "delta": 0.01, "spsa_samples": 128},
    batch_size=1, gradient=False, prepare=lambda p: {"optimizer": _spsa_optimizer(p)},
    cost=lambda p: p["nb_iter"] * p["spsa_samples"]))
