"""Running a registered attack on many images: batched, seeded, inside `tf.function`.

`run_attack(name, model_fn, x, y=None, **params)` accepts any callable returning logits, so a
whole purifier -> classifier pipeline can be attacked end to end. Parameter names are
cleverhans' own (`eps, eps_iter, nb_iter, norm, clip_min, clip_max, y, targeted, rand_init`).
Results always lie in [clip_min, clip_max] and, for norm-bounded attacks, inside the eps-ball.
`y=None` attacks the model's own predictions (no label leaking).
"""

import logging

import numpy as np
import tensorflow as tf
import tqdm

from tfpurify.attacks.loop import Target
from tfpurify.attacks.registry import ATTACKS, resolve_params
from tfpurify.data import validate_batch_size, validate_images
from tfpurify.errors import AttackConfigError

__all__ = ["run_attack"]


def _project(x_adv, x, p):
    """Puts results back into the eps-ball and the pixel range (guards numerical drift)."""
    x_adv = np.clip(x_adv, p["clip_min"], p["clip_max"])
    eps = p.get("eps")
    if eps is None:
        return x_adv
    delta = x_adv - x
    if p["norm"] == np.inf:
        delta = np.clip(delta, -eps, eps)
    else:
        norms = np.sqrt(np.sum(delta.reshape(len(x), -1) ** 2, axis=1)).reshape((-1,) + (1,) * (x.ndim - 1))
        delta = delta * np.minimum(1.0, eps / np.maximum(norms, 1e-12))
    return np.clip(x + delta, p["clip_min"], p["clip_max"]).astype(np.float32)


def _check_differentiable(model_fn, x):
    """Fails clearly when the attacked pipeline has no input gradient (a non-differentiable op)."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model_fn(x)
    if tape.gradient(logits, x) is None:
        raise AttackConfigError(
            "the attacked model has no gradient with respect to its input (a non-differentiable op "
            "such as rounding); attack it through a BPDA surrogate (Purifier.attack_surrogate) or use spsa")


def _batch_runner(attack, model_fn, p, judge=None):
    """Returns f(x, y) -> (x_adv, cost, per-example attack loss, hit, flagged) for one batch.

    `hit`: the prediction equals y; `flagged`: a detector-aware target's detector fires (else all
    False). Loss, hit and flagged are only computed when restarts need comparing.
    """

    # A target with `attack_loss` (adaptive.DetectorAwareTarget) returns more than logits: its
    # own loss goes to cleverhans; attacks that take no loss see its logits only.
    loss_fn = getattr(model_fn, "attack_loss", None)
    target = Target(model_fn)
    logits_fn = model_fn if not target.aware else (lambda images: target.parts(images)[0])
    attacked_fn = model_fn if attack.takes_loss else logits_fn
    if attack.prepare is not None:
        p = {**p, **attack.prepare(p)}
    if attack.staged is None:
        staged = None
    elif attack.takes_judge and judge is not None and p.get("early_exit", True):  # no early exit: nothing to judge
        staged = attack.staged(attacked_fn, p, judge=tf.function(judge))
    else:
        staged = attack.staged(attacked_fn, p)

    def step(x, y):
        y_used = y if y is not None else tf.argmax(logits_fn(x), axis=1)
        result = staged(x, y_used) if staged is not None else attack.fn(attacked_fn, x, y_used, p, loss_fn)
        x_adv, cost = result if isinstance(result, tuple) else (result, None)
        if cost is None:
            cost = tf.fill(tf.shape(x)[:1], float(attack.cost(p)) if attack.cost else float("nan"))
        none = tf.zeros(tf.shape(x)[:1], tf.bool)
        if p.get("restarts", 1) == 1:  # nothing to compare: skip the extra forward pass
            return x_adv, cost, tf.zeros(tf.shape(x)[:1]), none, none
        outputs = model_fn(x_adv)
        logits, _, flagged = target.split(outputs)
        if loss_fn is None:
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y_used, logits)
        else:
            loss = loss_fn(labels=y_used, logits=outputs)
        hit = tf.equal(tf.argmax(logits, axis=1), tf.cast(y_used, tf.int64))
        return x_adv, cost, loss, hit, flagged

    return tf.function(step) if attack.graph and staged is None else step


class _IntendedRetracing(logging.Filter):
    """Drops TensorFlow's retracing warning for the attack step: `run_attack` traces a fresh step function
    on purpose (so its seed takes effect), which TensorFlow takes for a function made in a loop by mistake."""

    def filter(self, record):
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "_batch_runner.<locals>.step" in message)


tf.get_logger().addFilter(_IntendedRetracing())


def run_attack(name, model_fn, x, y=None, batch_size=256, seed=0, progress=False, return_cost=False, judge=None,
               progress_label=None, **params):
    """Crafts adversarial examples for `x` against `model_fn`.

    Args:
      name: attack name in `ATTACKS` (fgsm, pgd, bim, mim, cw_l2, spsa, ...).
      model_fn: callable mapping a float32 image batch to logits (a classifier, or a whole
        purifier -> classifier pipeline).
      x: images [N, H, W, C] in [0, 1].
      y: true labels [N] (untargeted) or target labels (targeted=True); None attacks the model's
        own predictions.
      batch_size: examples per attack batch (the last batch is padded, so one trace serves all).
      seed: seeds TensorFlow's random ops (random starts) for reproducibility.
      progress: show a tqdm progress bar over examples (advanced a batch at a time), labelled
        `progress_label` (default: the attack's name).
      return_cost: also return the model evaluations spent per example (gradient evaluations for
        gradient attacks, queries for Square and SPSA; NaN where an attack does not count them).
      judge: None, or `(images, labels) -> [N] bool`: whether the pipeline that will be *scored* is
        fooled, when it is not `model_fn` itself (an EOT average or a BPDA surrogate is attacked; one
        draw of the served pipeline is scored). Staged attacks (AutoAttack, APGD's restarts) then let
        an example leave only when the judge confirms its adversarial example, and keep attacking the
        rest; the judge's calls are not counted as cost. Ignored where `early_exit` is off.
      **params: attack parameters, see `resolve_params`. `restarts` (pgd) keeps, per example, the
        restart that reaches the attack's goal (fools the model, and against a detector-aware
        target also evades the detector), or else the one with the highest attack loss.

    Returns:
      float32 numpy array like `x`, inside the eps-ball (bounded attacks) and [clip_min, clip_max];
      with `return_cost`, the pair (x_adv, cost [N]).
    """
    p = resolve_params(name, **params)
    validate_batch_size(batch_size)
    x = validate_images(x)
    if y is not None:
        y = np.asarray(y, dtype=np.int64).reshape(-1)
        if len(y) != len(x):
            raise AttackConfigError(f"x has {len(x)} examples but y has {len(y)} labels")
    if p.get("targeted") and y is None:
        raise AttackConfigError("a targeted attack needs target labels y")
    if len(x) == 0 or (p.get("eps") == 0.0 and ATTACKS[name].bounded):
        return (x.copy(), np.zeros(len(x), np.float32)) if return_cost else x.copy()
    attack = ATTACKS[name]
    if attack.needs_purifier and getattr(model_fn, "purifier", None) is None:
        raise AttackConfigError(f"{name} attacks a purifier: use it under the whitebox threat model of a defense run "
                                "(tfpurify eval DEFENSE_RUN --classifier RUN --threat-model whitebox)")
    if attack.needs_code and not getattr(model_fn.purifier, "has_code", False):
        raise AttackConfigError(f"{name} needs a purifier with a latent code (aaa, denoising_ae, fbgan); "
                                f"{type(model_fn.purifier).__name__} has none")
    if attack.gradient:
        _check_differentiable(model_fn, x[:1])
    batch_size = attack.batch_size or min(int(batch_size), len(x))  # never pad beyond the data
    tf.random.set_seed(seed)
    step = _batch_runner(attack, model_fn, p, judge)  # traced afresh, so `seed` takes effect
    restarts = p.get("restarts", 1)
    out = np.empty_like(x)
    cost = np.zeros(len(x), np.float32)
    starts = range(0, len(x), batch_size)
    bar = tqdm.tqdm(total=len(x), desc=progress_label or name, disable=not progress, unit="img")
    for start in starts:
        xb = x[start:start + batch_size]
        n = len(xb)
        yb = None if y is None else y[start:start + batch_size]
        if n < batch_size and attack.graph:  # pad so the traced graph keeps one shape
            pad = batch_size - n
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            yb = None if yb is None else np.concatenate([yb, np.repeat(yb[-1:], pad)])
        xt = tf.constant(xb)
        yt = None if yb is None else tf.constant(yb)
        best, best_loss, best_goal = None, None, None
        for _ in range(restarts):
            adv, spent, loss, hit, flagged = (t.numpy() for t in step(xt, yt))
            cost[start:start + n] += spent[:n]
            goal = (hit if p.get("targeted") else ~hit) & ~flagged  # fooled and, if watched, not flagged
            loss = -loss if p.get("targeted") else loss  # higher is better for the attacker
            if best is None:
                best, best_loss, best_goal = adv, loss, goal
                continue
            better = (goal & ~best_goal) | ((goal == best_goal) & (loss > best_loss))
            best[better], best_loss[better], best_goal[better] = adv[better], loss[better], goal[better]
        out[start:start + n] = best[:n]
        bar.update(n)
    bar.close()
    out = _project(out, x, p)
    return (out, cost) if return_cost else out
