"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML), L-inf and L2, as AutoAttack's standard version runs it.

FAB follows no loss. Each iteration linearizes the logit difference f_t - f_y between the target
class t and the true class y at the current point, projects both the current point and the
original image onto the hyperplane where that linearization is zero (inside the [0, 1] box), and
moves to a convex combination of the two projections, overshot by `eta` and biased towards the
original by at most `alpha_max`. A point that is misclassified is recorded if it is the closest
so far and then pulled back towards the original by `beta`, so the search ends near the decision
boundary: FAB finds a minimally distorted adversarial example, and an example counts as broken at
eps when the one found lies within eps. It is the member of AutoAttack that helps where losses are
flat or gradients come from a surrogate (BPDA), since it needs the direction of a logit difference only.

Transcribed from the original implementation (github.com/fra31/auto-attack: `fab_base.py`,
`fab_pt.py` and the hyperplane projections of `fab_projections.py`): 100 iterations, alpha_max 0.1,
eta 1.05, beta 0.9, one restart (later restarts start at a random point at eps / 2), the 9 runner-up
classes of the clean logits as targets in turn, success judged by the prediction (any wrong class),
the box projections in closed form with a binary search. Every loop is a `tf.while_loop`; only
the still-active examples go through the model; cost is counted as one gradient evaluation (and
one forward pass) per iteration and example.
"""

import math

import numpy as np
import tensorflow as tf

from tfpurify.attacks.loop import Target, expand, misled, on_active, runner_up_classes
from tfpurify.attacks.registry import AttackDef, register_attack
from tfpurify.errors import AttackConfigError

__all__ = ["projection_linf", "projection_l2", "fab_run", "fab_targeted"]

_FAR = 1e10  # the original's "no adversarial example yet" distance


def _take(values, index):
    """values [M, K] at index [M] (per row)."""
    return tf.gather(values, index, batch_dims=1)


def _binary_search(holds, lower, upper, n):
    """The original's fixed-length bisection over positions: lb moves up while `holds(mid)`, else ub down."""
    for _ in range(max(int(math.ceil(math.log2(n))), 0)):
        mid = tf.floor((lower + upper) / 2.0)
        ok = holds(tf.cast(mid, tf.int32))
        lower, upper = tf.where(ok, mid, lower), tf.where(ok, upper, mid)
    return tf.cast(lower, tf.int32)


def projection_linf(t, w, b):
    """The smallest L-inf step d with <w, t + d> = b and t + d in [0, 1]^D, per row (`projection_linf`).

    Where the hyperplane does not meet the box, the step that goes furthest towards it. t, w [M, D], b [M].
    """
    d_dim = t.shape[1]
    side = tf.where(tf.reduce_sum(w * t, axis=1) - b >= 0, 1.0, -1.0)
    w, b = w * side[:, None], b * side
    a = tf.cast(w < 0, t.dtype)
    nonzero = tf.cast(tf.not_equal(w, 0.0), t.dtype)
    d = (a - t) * nonzero
    p = a - t * (2.0 * a - 1.0)
    order = tf.argsort(p, axis=1, stable=True)
    b = b - tf.reduce_sum(w * t, axis=1)
    b0 = tf.reduce_sum(w * d, axis=1)
    reverse = tf.reverse(order, axis=[1])
    ws = tf.gather(w, reverse, batch_dims=1)
    s = tf.cumsum(tf.abs(ws), axis=1)
    sb = tf.cumsum(-ws * tf.gather(d, reverse, batch_dims=1), axis=1) + b0[:, None]
    b2 = sb[:, -1] - s[:, -1] * _take(p, order[:, 0])
    c_l = b - b2 > 0
    c2 = tf.logical_and(b - b0 > 0, tf.logical_not(c_l))

    def holds(mid):
        return b - (_take(sb, mid) - _take(s, mid) * _take(p, _take(order, d_dim - 1 - mid))) > 0

    m = tf.shape(t)[0]
    lb = _binary_search(holds, tf.zeros([m]), tf.fill([m], float(d_dim - 1)), d_dim)
    lmbd_l = tf.maximum((b - sb[:, -1]) / (-s[:, -1]), 0.0)[:, None]
    lmbd_2 = tf.maximum((b - _take(sb, lb)) / (-_take(s, lb)), 0.0)[:, None]
    d_2 = tf.minimum(lmbd_2, d) * a + tf.maximum(-lmbd_2, d) * (1.0 - a)
    d = tf.where(c_l[:, None], (2.0 * a - 1.0) * lmbd_l, tf.where(c2[:, None], d_2, d))
    return d * nonzero


def projection_l2(t, w, b):
    """The smallest L2 step d with <w, t + d> = b and t + d in [0, 1]^D, per row (`projection_l2`)."""
    d_dim = t.shape[1]
    big = 1e12
    c = tf.reduce_sum(w * t, axis=1) - b
    side = tf.where(c >= 0, 1.0, -1.0)
    w, c = w * side[:, None], c * side
    used = tf.abs(w) > 1e-8
    r = tf.clip_by_value(tf.maximum(t / w, (t - 1.0) / w), -big, big)
    r = tf.where(used, r, big)
    r = tf.where(tf.equal(r, -big), big, r)
    order = tf.argsort(r, axis=1, stable=True)
    rs = tf.gather(r, order, batch_dims=1)
    rs2 = tf.concat([rs[:, 1:], tf.zeros_like(rs[:, :1])], axis=1)
    rs = tf.where(tf.equal(rs, big), 0.0, rs)
    rs2 = tf.where(tf.equal(rs2, big), 0.0, rs2)
    w3s = tf.gather(tf.square(w), order, batch_dims=1)
    w5 = tf.reduce_sum(w3s, axis=1, keepdims=True)
    ws = w5 - tf.cumsum(w3s, axis=1)
    d = -(r * w) * tf.cast(used, t.dtype)
    s = tf.concat([-w5 * rs[:, :1], tf.cumsum((-rs2 + rs) * ws, axis=1) - w5 * rs[:, :1]], axis=1)
    c4 = s[:, 0] + c < 0
    c3 = tf.reduce_sum(d * w, axis=1) + c > 0
    c2 = tf.logical_not(tf.logical_or(c4, c3))
    m = tf.shape(t)[0]
    lb = _binary_search(lambda mid: _take(s, mid) + c > 0, tf.zeros([m]), tf.fill([m], float(d_dim - 1)), d_dim)
    d_c4 = -(c / w5[:, 0])[:, None] * w
    ws_lb = _take(ws, lb)
    alpha = tf.where(tf.equal(ws_lb, 0.0), 0.0, (_take(s, lb) + c) / ws_lb + _take(rs, lb))[:, None]
    beyond = tf.cast(alpha > r, t.dtype)
    d_c2 = d * beyond - alpha * w * (1.0 - beyond)
    d = tf.where(c4[:, None], d_c4, tf.where(c2[:, None], d_c2, d))
    return d * tf.cast(used, t.dtype)


def _norm(v, norm):
    """Per-row norm of [M, D]."""
    return tf.reduce_max(tf.abs(v), axis=1) if norm == np.inf else tf.sqrt(tf.reduce_sum(tf.square(v), axis=1))


def fab_run(model_fn, x, y, y_target, eps, norm=np.inf, n_iter=100, alpha_max=0.1, eta=1.05, beta=0.9, active=None,
            random_start=False, early_exit=True):
    """One targeted FAB run (the original's `attack_single_run`) on the `active` examples.

    Returns:
      (closest adversarial example found [N, ...] (x where none), its distance [N] (1e10 where none),
      gradient evaluations [N] float). With `early_exit` an example stops once one within eps is found.
    """
    x = tf.convert_to_tensor(x)
    y, y_target = tf.cast(y, tf.int64), tf.cast(y_target, tf.int64)
    n = tf.shape(x)[0]
    shape = tf.shape(x)
    active = tf.ones([n], tf.bool) if active is None else active
    target = Target(model_fn)
    project = projection_linf if norm == np.inf else projection_l2
    flat = int(np.prod(x.shape[1:]))

    x1 = x
    if random_start:  # the original: a random direction, scaled to eps / 2 in the attack's norm
        if norm == np.inf:
            t = 2.0 * tf.random.uniform(shape) - 1.0
            scale = tf.reduce_max(tf.abs(tf.reshape(t, [n, -1])), axis=1)
        else:
            t = tf.random.normal(shape)
            scale = tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(t, [n, -1])), axis=1))
        x1 = tf.where(expand(active), tf.clip_by_value(x + eps * t / expand(scale) * 0.5, 0.0, 1.0), x)

    def iteration(x1, x0, labels, targets, adv, res):
        rows = tf.shape(x1)[0]
        with tf.GradientTape() as tape:
            tape.watch(x1)
            logits = target.parts(x1)[0]
            diff = _take(logits, targets) - _take(logits, labels)  # f_t - f_y
            total = tf.reduce_sum(diff)
        grad = tf.reshape(tape.gradient(total, x1), [rows, flat])
        x1_flat, x0_flat = tf.reshape(x1, [rows, flat]), tf.reshape(x0, [rows, flat])
        offset = -diff + tf.reduce_sum(grad * x1_flat, axis=1)
        d3 = project(tf.concat([x1_flat, x0_flat], 0), tf.concat([grad, grad], 0), tf.concat([offset, offset], 0))
        d1, d2 = d3[:rows], d3[rows:]
        a1 = tf.maximum(_norm(d1, norm), 1e-8)
        a2 = tf.maximum(_norm(d2, norm), 1e-8)
        alpha = tf.minimum(tf.maximum(a1 / (a1 + a2), 0.0), alpha_max)[:, None]
        moved = tf.clip_by_value((x1_flat + eta * d1) * (1.0 - alpha) + (x0_flat + eta * d2) * alpha, 0.0, 1.0)
        moved = tf.reshape(moved, tf.shape(x1))
        logits_moved, _, flagged = target.parts(moved)
        is_adv = misled(logits_moved, flagged, labels)
        dist = _norm(tf.reshape(moved - x0, [rows, flat]), norm)
        closer = tf.logical_and(is_adv, dist < res)
        adv = tf.where(expand(closer), moved, adv)
        res = tf.where(closer, dist, res)
        x1 = tf.where(expand(is_adv), x0 + (moved - x0) * beta, moved)  # back towards the original
        return x1, adv, res

    def cond(i, x1, adv, res, act, evals):
        return tf.logical_and(i < n_iter, tf.reduce_any(act))

    def body(i, x1, adv, res, act, evals):
        x1_a, adv_a, res_a = on_active(act, iteration, x1, x, y, y_target, adv, res)
        x1 = tf.where(expand(act), x1_a, x1)
        adv = tf.where(expand(act), adv_a, adv)
        res = tf.where(act, res_a, res)
        evals += tf.cast(act, tf.float32)
        if early_exit:
            act = tf.logical_and(act, res > eps)
        return i + 1, x1, adv, res, act, evals

    state = (tf.constant(0), x1, x, tf.fill([n], _FAR), active, tf.zeros([n]))
    _, _, adv, res, _, evals = tf.while_loop(cond, body, state)
    return adv, res, evals


def fab_targeted(model_fn, x, y, eps, norm=np.inf, n_iter=100, n_target_classes=9, n_restarts=1, alpha_max=0.1,
                 eta=1.05, beta=0.9, active=None, early_exit=True):
    """FAB-T: targeted FAB towards each of the top `n_target_classes` runner-up classes of the clean logits
    in turn, `n_restarts` runs each (the first from the image, later ones from a random start).

    An example is fooled when an adversarial example within eps was found; each target and restart
    runs only on the examples not fooled yet (`early_exit`; without it every example takes every
    run in full). Per example the closest adversarial example found is kept.

    Returns:
      (x_adv (x where no adversarial example within eps was found), fooled [N] bool, gradient evaluations [N],
      counting the forward pass that ranks the targets as one, as `apgd_targeted` does)
    """
    x = tf.convert_to_tensor(x)
    y = tf.cast(y, tf.int64)
    n = tf.shape(y)[0]
    active = tf.ones([n], tf.bool) if active is None else active
    ranking = tf.cast(active, tf.float32)  # the forward pass that ranks the targets, as APGD-T counts it
    logits, _, flagged = Target(model_fn).parts(x)
    if early_exit:  # as the original, only what the model gets right is attacked (the rest is returned as is)
        active = tf.logical_and(active, tf.logical_not(misled(logits, flagged, y)))
    targets = runner_up_classes(logits, n_target_classes)

    def todo(res):
        return tf.logical_and(active, res > eps) if early_exit else active

    def cond(rank, best, res, evals):
        return tf.logical_and(rank < targets.shape[1], tf.reduce_any(todo(res)))

    def body(rank, best, res, evals):  # a graph loop over targets: one copy of FAB's loop per restart
        for restart in range(n_restarts):
            adv, dist, cost = fab_run(model_fn, x, y, targets[:, rank], eps, norm, n_iter, alpha_max, eta, beta,
                                      todo(res), random_start=restart > 0, early_exit=early_exit)
            closer = dist < res
            best, res, evals = tf.where(expand(closer), adv, best), tf.where(closer, dist, res), evals + cost
        return rank + 1, best, res, evals

    _, best, res, evals = tf.while_loop(cond, body, [tf.constant(0), x, tf.fill([n], _FAR), ranking])
    fooled = tf.logical_and(active, res <= eps)
    return tf.where(expand(fooled), best, x), fooled, evals



# --------------------------------------------------------------------------- the registry's entry

def _check(p):  # the norm (inf or 2) is checked by the registry, as for every attack
    for key, low, high in (("alpha_max", 0.0, 1.0), ("beta", 0.0, 1.0)):
        if not isinstance(p[key], (int, float)) or isinstance(p[key], bool) or not low < p[key] <= high:
            raise AttackConfigError(f"{key} must be in ({low:g}, {high:g}], got {p[key]!r}")
    if not isinstance(p["eta"], (int, float)) or isinstance(p["eta"], bool) or not 1.0 <= p["eta"] <= 10.0:
        raise AttackConfigError(f"eta must be in [1, 10], got {p['eta']!r}")


def _fab_t(model_fn, x, y, p, loss_fn):
    x_adv, _, evals = fab_targeted(model_fn, x, y, p["eps"], p["norm"], p["nb_iter"], p["n_target_classes"],
                                   p["n_restarts"], p["alpha_max"], p["eta"], p["beta"], early_exit=p["early_exit"])
    return x_adv, evals


# early_exit: stop an example once an adversarial example within eps is found (False under gray-box and
# transfer: every target and iteration, the closest adversarial example kept)
register_attack("fab_t", AttackDef(
    _fab_t, {"eps": 0.1, "norm": np.inf, "clip_min": 0.0, "clip_max": 1.0, "nb_iter": 100, "n_target_classes": 9,
             "n_restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9, "early_exit": True},
    takes_loss=True, check=_check))
