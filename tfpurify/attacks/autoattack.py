"""AutoAttack-grade attacks as TensorFlow graph loops, with a per-example early exit.

- `apgd`: Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
  ensemble of diverse parameter-free attacks", ICML, Algorithm 1), cross-entropy or DLR loss (their
  eq. 6), untargeted or targeted (APGD-T: DLR-targeted towards each of the top-k runner-up
  classes), L-inf and L2, with the settings of the official code (github.com/fra31/auto-attack,
  `autopgd_base.py`): 100 iterations, initial step 2 eps, momentum 0.75, checkpoints every
  0.22 / 0.03 / 0.06 of the iterations, step halved and restarted from the best point when fewer
  than rho = 0.75 of the steps since the last checkpoint raised the loss or the best loss did not
  move.
- `square`: the Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient
  black-box adversarial attack via random search", ECCV), L-inf and L2, margin loss, p_init 0.8 and the
  official schedule of the square size, rescaled to the query budget (5000 by default) as the
  official SquareAttack does by default (`rescale_schedule`).
- `autoattack` / `AutoAttack`: the standard sequence APGD-CE -> APGD-T (9 targets) -> FAB-T (9 targets,
  `tfpurify.attacks.fab`) -> Square
  (5000 queries, the schedule not rescaled, as the original's AutoAttack builds it), each run only
  on the examples still robust after the previous ones, keeping per example the first successful
  adversarial example (confirmed on the scored pipeline where a judge is given), each stage traced
  on its own and skipped when nothing is left robust; `version="rand"` runs APGD-CE and APGD-DLR
  with EOT over 20 draws instead, for stochastic defenses; `version="custom"` the stages it is given
  (`attacks_to_run`, as the original; the registry's `version` takes them as a comma list).

Registered as `apgd_ce`, `apgd_dlr`, `apgd_t`, `square` and `autoattack`. Every loop is a `tf.while_loop` (no unrolled Python loop: the graph holds one copy of the model),
runs only the still-active examples through the model (gathered, then scattered back) and counts
gradient evaluations (or queries) per example. An example is active until the attack's goal is
reached: misclassified, and against a detector-aware target (`adaptive.DetectorAwareTarget`)
also not flagged by the detector; the target's own loss (cross-entropy minus the weighted
detector score) is what the attack ascends.
"""


import functools

import numpy as np
import tensorflow as tf

from tfpurify.attacks.fab import fab_targeted
from tfpurify.attacks.loop import Target, expand, misled, normalize, on_active, project, runner_up_classes
from tfpurify.attacks.registry import AUTOATTACK_STAGES, AUTOATTACK_VERSIONS, COMMON, AttackDef, register_attack

__all__ = ["dlr_loss", "dlr_targeted_loss", "apgd", "apgd_targeted", "square", "autoattack", "AutoAttack",
           "first_success", "apgd_checkpoints", "runner_up_classes"]


# --------------------------------------------------------------------------- losses

def dlr_loss(logits, y):
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 6): -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)."""
    top = tf.math.top_k(logits, k=3).values
    z_y = tf.gather(logits, y, batch_dims=1)
    other = tf.reduce_max(logits - 1e9 * tf.one_hot(y, tf.shape(logits)[1]), axis=1)
    return -(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits, y, y_target):
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    top = tf.math.top_k(logits, k=4).values
    z_y = tf.gather(logits, y, batch_dims=1)
    z_t = tf.gather(logits, y_target, batch_dims=1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _loss_fn(name):
    if name == "ce":
        return lambda logits, y, y_target: tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
    if name == "dlr":
        return lambda logits, y, y_target: dlr_loss(logits, y)
    if name == "dlr_targeted":
        return dlr_targeted_loss
    raise ValueError(f"unknown loss {name!r}")


def _grad_step(target, loss, eot_iter=1):
    """f(x, y, y_target) -> (loss [n], grad, fooled [n]); gradients averaged over `eot_iter` draws."""

    def fn(x, y, y_target):
        grads, losses = tf.zeros_like(x), tf.zeros(tf.shape(x)[:1])
        fooled = tf.zeros(tf.shape(x)[:1], tf.bool)
        for _ in range(eot_iter):
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits, penalty, flagged = target.parts(x)
                value = loss(logits, y, y_target) - penalty
                total = tf.reduce_sum(value)
            grads += tape.gradient(total, x)
            losses += value
            fooled = misled(logits, flagged, y)
        return losses / eot_iter, grads / eot_iter, fooled

    return fn


# --------------------------------------------------------------------------- APGD

def apgd_checkpoints(n_iter):
    """Iterations of the step-size checks: (first interval, decrement, minimum), as the official code."""
    return max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)


def apgd(model_fn, x, y, eps, norm=np.inf, n_iter=100, loss="ce", y_target=None, active=None, rho=0.75,
         eot_iter=1, early_exit=True):
    """One run of APGD on a batch (graph code: call inside `tf.function`).

    Args:
      model_fn: callable images -> logits (or a detector-aware target).
      x, y: images [N, H, W, C] in [0, 1] and true labels [N] (int64).
      eps, norm: the budget, np.inf or 2.
      n_iter: iterations (100 in AutoAttack).
      loss: "ce", "dlr" or "dlr_targeted" (then `y_target` [N] is the target class).
      active: [N] bool, examples to attack (default all); the others are returned unchanged.
      rho: the fraction of loss-raising steps a checkpoint asks for.
      eot_iter: gradients averaged over this many draws per iteration (stochastic defenses).
      early_exit: an example stops at its first success and returns it; False: every example takes
        all iterations and returns its point of highest loss (where the attacked model is not the
        one scored, gray-box and transfer: the most confident mistake transfers best).

    Returns:
      (x_adv, fooled [N] bool, gradient evaluations [N] float): x_adv is the first adversarial
      example found where fooled (with early_exit), else the point of highest loss.
    """
    x = tf.convert_to_tensor(x)
    y = tf.cast(y, tf.int64)
    y_target = y if y_target is None else tf.cast(y_target, tf.int64)
    active = tf.ones(tf.shape(y), tf.bool) if active is None else active
    target = Target(model_fn)
    step_fn = _grad_step(target, _loss_fn(loss), eot_iter)
    first, decrement, minimum = apgd_checkpoints(n_iter)

    t = tf.random.uniform(tf.shape(x), -1.0, 1.0) if norm == np.inf else tf.random.normal(tf.shape(x))
    x_adv = tf.where(expand(active), project(x + eps * normalize(t, norm), x, eps, norm), x)
    loss0, grad, fooled = on_active(active, step_fn, x_adv, y, y_target)
    evals = tf.cast(active, tf.float32) * eot_iter
    x_first = x_adv  # first successful adversarial example per example (valid where fooled)
    if early_exit:
        active = tf.logical_and(active, tf.logical_not(fooled))
    step = tf.fill(tf.shape(y), 2.0 * eps)
    state = dict(i=tf.constant(0), x_adv=x_adv, x_old=x_adv, grad=grad, step=step, x_best=x_adv, grad_best=grad,
                 loss_best=loss0, loss_prev=loss0, increases=tf.zeros_like(loss0), counter=tf.constant(0),
                 k=tf.constant(first), loss_best_last=loss0, reduced_last=tf.ones_like(loss0),
                 fooled=fooled, x_first=x_first, active=active, evals=evals)

    def cond(s):
        return tf.logical_and(s["i"] < n_iter, tf.reduce_any(s["active"]))

    def body(s):
        act = s["active"]
        a = tf.where(s["i"] > 0, 0.75, 1.0)
        x_adv, x_old = s["x_adv"], s["x_old"]
        if norm == np.inf:
            z = project(x_adv + expand(s["step"]) * tf.sign(s["grad"]), x, eps, norm)
        else:
            z = project(x_adv + expand(s["step"]) * normalize(s["grad"], norm), x, eps, norm)
        x_new = project(x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - x_old), x, eps, norm)
        x_new = tf.where(expand(act), x_new, x_adv)
        loss_i, grad, fooled_i = on_active(act, step_fn, x_new, y, y_target)
        newly = tf.logical_and(tf.logical_and(act, fooled_i), tf.logical_not(s["fooled"]))
        x_first = tf.where(expand(newly), x_new, s["x_first"])
        improved = tf.logical_and(act, loss_i > s["loss_best"])
        x_best = tf.where(expand(improved), x_new, s["x_best"])
        grad_best = tf.where(expand(improved), grad, s["grad_best"])
        loss_best = tf.where(improved, loss_i, s["loss_best"])
        increases = s["increases"] + tf.cast(tf.logical_and(act, loss_i > s["loss_prev"]), tf.float32)
        counter = s["counter"] + 1
        k = s["k"]

        # checkpoint: halve the step where too few steps raised the loss, or nothing improved
        at_check = tf.equal(counter, k)
        oscillating = increases <= tf.cast(k, tf.float32) * rho
        stalled = tf.logical_and(tf.equal(s["reduced_last"], 0.0), s["loss_best_last"] >= loss_best)
        reduce = tf.logical_and(tf.logical_and(at_check, act), tf.logical_or(oscillating, stalled))
        step = tf.where(reduce, s["step"] / 2.0, s["step"])
        x_next = tf.where(expand(reduce), x_best, x_new)
        grad_next = tf.where(expand(reduce), grad_best, grad)
        reduced_last = tf.where(at_check, tf.cast(reduce, tf.float32), s["reduced_last"])
        loss_best_last = tf.where(at_check, loss_best, s["loss_best_last"])
        increases = tf.where(at_check, tf.zeros_like(increases), increases)
        k = tf.where(at_check, tf.maximum(k - decrement, minimum), k)
        counter = tf.where(at_check, 0, counter)
        return [dict(i=s["i"] + 1, x_adv=x_next, x_old=tf.where(expand(act), x_adv, x_old), grad=grad_next,
                     step=step, x_best=x_best, grad_best=grad_best, loss_best=loss_best,
                     loss_prev=tf.where(act, loss_i, s["loss_prev"]), increases=increases, counter=counter, k=k,
                     loss_best_last=loss_best_last, reduced_last=reduced_last,
                     fooled=tf.logical_or(s["fooled"], newly), x_first=x_first,
                     active=tf.logical_and(act, tf.logical_not(fooled_i)) if early_exit else act,
                     evals=s["evals"] + tf.cast(act, tf.float32) * eot_iter)]

    s = tf.while_loop(cond, body, [state])[0]
    if not early_exit:
        return s["x_best"], s["fooled"], s["evals"]
    return tf.where(expand(s["fooled"]), s["x_first"], s["x_best"]), s["fooled"], s["evals"]


def apgd_targeted(model_fn, x, y, eps, norm=np.inf, n_iter=100, n_target_classes=9, active=None, early_exit=True):
    """APGD-T: targeted APGD-DLR towards each of the top `n_target_classes` runner-up classes in turn.

    The runner-up classes are ranked by the logits of the unperturbed input; each target class is
    tried only on the examples that are still robust. Without `early_exit`, each run takes all its
    iterations (see `apgd`) and an example no target fools keeps the last target's point of highest loss.

    Returns:
      (x_adv, fooled [N] bool, gradient evaluations [N] float)
    """
    y = tf.cast(y, tf.int64)
    active = tf.ones(tf.shape(y), tf.bool) if active is None else active
    targets = runner_up_classes(Target(model_fn).parts(x)[0], n_target_classes)

    def cond(rank, x_out, fooled, evals):
        return tf.logical_and(rank < targets.shape[1], tf.reduce_any(tf.logical_and(active, tf.logical_not(fooled))))

    def body(rank, x_out, fooled, evals):  # a graph loop over targets: one copy of APGD in the graph
        todo = tf.logical_and(active, tf.logical_not(fooled))
        x_t, fooled_t, evals_t = apgd(model_fn, x, y, eps, norm, n_iter, "dlr_targeted", targets[:, rank], todo,
                                      early_exit=early_exit)
        found = tf.logical_and(todo, fooled_t)
        take = found if early_exit else todo
        return rank + 1, tf.where(expand(take), x_t, x_out), tf.logical_or(fooled, found), evals + evals_t

    _, x_out, fooled, evals = tf.while_loop(
        cond, body, [tf.constant(0), tf.identity(x), tf.zeros(tf.shape(y), tf.bool), tf.cast(active, tf.float32)])
    return x_out, fooled, evals


# --------------------------------------------------------------------------- Square

_SQUARE_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _square_halvings(i, n_queries, rescale_schedule=True):
    """How often p_init is halved at query i: the official `p_selection`, after 10, 50, 200, 500, 1000, 2000,
    4000, 6000 and 8000 iterations, counted on a scale of 10000 queries where `rescale_schedule` (the
    official SquareAttack's default), as they come where not (AutoAttack's)."""
    it = tf.cast(i, tf.int32)
    if rescale_schedule:
        it = tf.cast(tf.cast(i, tf.float32) / n_queries * 10000.0, tf.int32)
    return tf.reduce_sum(tf.cast(it > tf.constant(_SQUARE_BOUNDS), tf.int32))


def _square_p(i, n_queries, p_init, rescale_schedule=True):
    """Fraction of pixels changed at query i (see `_square_halvings`)."""
    return p_init / tf.pow(2.0, tf.cast(_square_halvings(i, n_queries, rescale_schedule), tf.float32))


def _eta_rectangles(x, y):
    """The official `eta_rectangles`: nested rectangles around the centre, weight 1 / (k + 1)^2, unit L2 norm."""
    delta = np.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    c0, c1 = x_c - 1, y_c - 1
    for k in range(max(x_c, y_c)):
        delta[max(c0, 0):min(c0 + 2 * k + 1, x), max(0, c1):min(c1 + 2 * k + 1, y)] += 1.0 / (k + 1) ** 2
        c0, c1 = c0 - 1, c1 - 1
    return delta / np.sqrt(np.sum(delta ** 2))


def square_eta(s):
    """The official `eta(s)` [s, s] before its random transpose: +rectangles on top, -rectangles below, unit L2."""
    delta = np.zeros([s, s])
    delta[:s // 2] = _eta_rectangles(s // 2, s)
    delta[s // 2:] = -_eta_rectangles(s - s // 2, s)
    return (delta / np.sqrt(np.sum(delta ** 2))).astype(np.float32)


def _random_transpose(e):
    return tf.cond(tf.random.uniform([]) > 0.5, lambda: tf.transpose(e), lambda: e)


def _window(block, top, left, h, w):
    """[N, s, s, C] (or [s, s]) block padded with zeros into [N, h, w, C] (or [h, w]) at (top, left)."""
    s = tf.shape(block)[-3] if block.shape.rank == 4 else tf.shape(block)[0]
    pads = [[top, h - top - s], [left, w - left - s]]
    return tf.pad(block, [[0, 0], *pads, [0, 0]] if block.shape.rank == 4 else pads)


def square(model_fn, x, y, eps, n_queries=5000, p_init=0.8, active=None, rescale_schedule=True, early_exit=True,
           norm=np.inf):
    """Square Attack, L-inf or L2, margin loss: random search over square-shaped updates (no gradients).

    As the official `square.py`. L-inf: vertical stripes of +-eps as the start, one square of side
    round(sqrt(p * pixels)) per query moved to +-eps around x with one sign per channel. L2: a 5 x 5 grid
    of `square_eta` windows with random signs as the start (cut at the border where the image's side is not
    a multiple of the window's), scaled to norm eps; per query, a window's perturbation redrawn from
    `square_eta` plus its old one, a second window's set to zero, and their mass rescaled per channel so
    the whole perturbation keeps norm eps (side at least 3, made odd, at most the image's).
    A candidate is kept where the loss falls or the example is fooled, p from `_square_p`. An example
    is fooled when the argmax of its logits is not its label (and a detector-aware target does not flag
    it): a tie with the true class, which the official margin counts as success, is not one where the
    argmax still says the true class. Without `early_exit`, every example takes all queries, keeping
    each update that lowers its margin loss (past success too: the most confident mistake, for
    gray-box and transfer).

    Returns:
      (x_adv, fooled [N] bool, queries [N] float)
    """
    y = tf.cast(y, tf.int64)
    active = tf.ones(tf.shape(y), tf.bool) if active is None else active
    target = Target(model_fn)
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    n_features = h * w * c
    n = tf.shape(x)[0]

    def margin_and_loss(images, labels):
        logits, penalty, flagged = target.parts(images)
        z_y = tf.gather(logits, labels, batch_dims=1)
        other = tf.reduce_max(logits - 1e9 * tf.one_hot(labels, tf.shape(logits)[1]), axis=1)
        margin = z_y - other
        right = tf.equal(tf.argmax(logits, axis=1), labels)  # a tie won by the true class is no success
        margin = tf.where(tf.logical_or(right, flagged), tf.maximum(margin, 1e-6), margin)  # <= 0: fooled
        return margin, margin + penalty

    def l2_norm(t, axis=(1, 2, 3)):
        """Per example over `axis` (the default: the whole image; (1, 2): per example and channel, as the
        original's sums over the two spatial axes)."""
        return tf.sqrt(tf.reduce_sum(tf.square(t), axis=list(axis), keepdims=True))

    if norm == np.inf:
        signs = tf.sign(tf.random.uniform([n, 1, w, c], -1.0, 1.0))
        start = x + eps * signs
    else:  # a 5 x 5 grid of eta windows of side h // 5, centred, one random sign per example, channel and window
        s0 = h // 5
        if s0 < 1:
            raise ValueError(f"the L2 Square Attack needs images of at least 5 x 5 pixels, got {h} x {w}")
        top0 = (h - s0 * 5) // 2
        delta = tf.zeros_like(x)
        for row in range(h // s0):
            for col in range(w // s0):
                block = _random_transpose(tf.constant(square_eta(s0)))[None, :, :, None] * tf.sign(
                    tf.random.uniform([n, 1, 1, c], -1.0, 1.0))
                top, left = top0 + row * s0, top0 + col * s0
                rows_in, cols_in = min(s0, h - top), min(s0, w - left)  # the original cuts a window at the border
                delta += tf.pad(block[:, :rows_in, :cols_in], [[0, 0], [top, h - top - rows_in],
                                                               [left, w - left - cols_in], [0, 0]])
        start = x + normalize(delta, 2) * eps
    x_best = tf.where(expand(active), tf.clip_by_value(start, 0.0, 1.0), x)
    margin, loss = on_active(active, margin_and_loss, x_best, y)
    queries = tf.cast(active, tf.float32)
    margin = tf.where(active, margin, -1.0)  # inactive examples count as done
    rows, cols = tf.range(h)[:, None, None], tf.range(w)[None, :, None]
    if norm != np.inf:  # side per halving of p: at least 3, made odd, at most the image's; the eta of each side
        sides = []
        for k in range(len(_SQUARE_BOUNDS) + 1):
            side = max(int(round(np.sqrt(p_init / 2 ** k * n_features / c))), 3)
            sides.append(min(side + 1 if side % 2 == 0 else side, min(h, w)))
        big = max(sides)
        etas = tf.constant(np.stack([np.pad(square_eta(v), [[0, big - v], [0, big - v]]) for v in sides]))
        sides = tf.constant(sides, tf.int32)

    def working(margin):
        return margin > 0.0 if early_exit else active

    def linf_candidate(i, x_best):
        p = _square_p(i, n_queries, p_init, rescale_schedule)
        s = tf.cast(tf.round(tf.sqrt(p * n_features / c)), tf.int32)
        s = tf.clip_by_value(s, 1, min(h, w) - 1)
        vh = tf.random.uniform([], 0, h - s, dtype=tf.int32)
        vw = tf.random.uniform([], 0, w - s, dtype=tf.int32)
        window = tf.logical_and(tf.logical_and(rows >= vh, rows < vh + s), tf.logical_and(cols >= vw, cols < vw + s))
        sign = tf.sign(tf.random.uniform([1, 1, c], -1.0, 1.0))
        delta = tf.cast(window, tf.float32) * 2.0 * eps * sign
        return tf.clip_by_value(tf.clip_by_value(x_best + delta[None], x - eps, x + eps), 0.0, 1.0)

    def l2_candidate(i, x_best):
        k = _square_halvings(i, n_queries, rescale_schedule)
        s = sides[k]
        e = _random_transpose(etas[k][:s, :s])
        vh = tf.random.uniform([], 0, tf.maximum(h - s, 1), dtype=tf.int32)
        vw = tf.random.uniform([], 0, tf.maximum(w - s, 1), dtype=tf.int32)
        vh2 = tf.random.uniform([], 0, tf.maximum(h - s, 1), dtype=tf.int32)
        vw2 = tf.random.uniform([], 0, tf.maximum(w - s, 1), dtype=tf.int32)
        delta = x_best - x
        old = tf.slice(delta, [0, vh, vw, 0], [-1, s, s, -1])
        norm_old = l2_norm(old, (1, 2))
        mask_1 = _window(tf.ones([s, s]), vh, vw, h, w)[None, :, :, None]
        mask_2 = _window(tf.ones([s, s]), vh2, vw2, h, w)[None, :, :, None]
        norm_image = l2_norm(delta)
        norm_windows = l2_norm(delta * tf.maximum(mask_1, mask_2), (1, 2))
        new = e[None, :, :, None] * tf.sign(tf.random.uniform([n, 1, 1, c], -1.0, 1.0))
        new += old / (1e-12 + norm_old)
        new = new / (1e-12 + l2_norm(new, (1, 2))) * tf.sqrt(
            tf.maximum(eps ** 2 - tf.square(norm_image), 0.0) / c + tf.square(norm_windows))
        delta = delta * (1.0 - mask_2)
        delta = delta * (1.0 - mask_1) + _window(new, vh, vw, h, w)
        x_new = tf.clip_by_value(x + normalize(delta, 2) * eps, 0.0, 1.0)
        return tf.ensure_shape(x_new, x.shape)  # the windows' dynamic sides hide the static shape in a graph

    candidate = linf_candidate if norm == np.inf else l2_candidate

    def cond(i, x_best, margin, loss, queries):
        return tf.logical_and(i < n_queries, tf.reduce_any(working(margin)))

    def body(i, x_best, margin, loss, queries):
        act = working(margin)
        x_new = candidate(i, x_best)
        margin_new, loss_new = on_active(act, margin_and_loss, x_new, y)
        improved = tf.logical_and(act, loss_new < loss)
        loss = tf.where(improved, loss_new, loss)
        take = tf.logical_or(improved, tf.logical_and(act, margin_new <= 0.0)) if early_exit else improved
        margin = tf.where(take, margin_new, margin)
        x_best = tf.where(expand(take), x_new, x_best)
        return i + 1, x_best, margin, loss, queries + tf.cast(act, tf.float32)

    _, x_best, margin, _, queries = tf.while_loop(cond, body, [tf.constant(0), x_best, margin, loss, queries])
    return x_best, tf.logical_and(active, margin <= 0.0), queries


# --------------------------------------------------------------------------- AutoAttack

def first_success(stages, x, fooled, cost, keep_last=False, judge=None):
    """Runs `stages` in turn, each only on the examples the ones before it left robust.

    Args:
      stages: callables `active [N] bool -> (x_adv, fooled [N] bool, cost [N] float)`.
      x: the clean images; `fooled` [N] bool: already fooled before the first stage; `cost` [N]
        float: evaluations spent so far.
      keep_last: examples no stage fools get the last stage's result (its highest-loss point, as
        APGD's restarts return) instead of x (AutoAttack's convention).
      judge: None, or `x_adv -> [N] bool`: whether the pipeline that is *scored* is fooled. A stage's
        own verdict is on the callable it attacks (under EOT an average over draws, behind BPDA a
        surrogate); the original AutoAttack re-checks every stage's output on the model. With a judge,
        an example leaves the sequence only when the judge confirms a stage's result; a result the
        stage claims but the judge does not confirm is kept (unless a later stage's is confirmed) and
        the example stays for the next stages.

    Returns:
      (x_adv, fooled, cost), keeping per example the first confirmed adversarial example. Run
      eagerly, the sequence stops as soon as no example is left robust: a later stage then costs
      nothing, not even its tracing.
    """
    x_out = tf.identity(x)
    claimed = tf.zeros_like(fooled)  # a stage said fooled, the judge did not confirm
    for run in stages:
        todo = tf.logical_not(fooled)
        if tf.executing_eagerly() and not bool(tf.reduce_any(todo)):
            break
        x_a, fooled_a, cost_a = run(todo)
        says = tf.logical_and(todo, fooled_a)
        confirmed = says if judge is None else tf.logical_and(todo, judge(x_a))
        first_claim = tf.logical_and(says, tf.logical_not(claimed))
        take = tf.logical_or(confirmed, first_claim)
        if keep_last:
            take = tf.logical_or(take, tf.logical_and(todo, tf.logical_not(tf.logical_or(claimed, says))))
        x_out = tf.where(expand(take), x_a, x_out)
        claimed = tf.logical_or(claimed, says)
        fooled = tf.logical_or(fooled, confirmed)
        cost += cost_a
    return x_out, fooled, cost


# the original's versions (`autoattack.py`, `AutoAttack.__init__`): the stages, in order
VERSIONS = AUTOATTACK_VERSIONS


class AutoAttack:
    """AutoAttack with each stage traced on its own: build once, call on batches of one shape.

    `version="standard"`: APGD-CE -> APGD-T -> FAB-T -> Square (L-inf and L2), as the original's standard
    version. `version="rand"`:
    APGD-CE -> APGD-DLR, each with gradients averaged over `eot_iter` draws (stochastic defenses).
    `version="custom"`: the stages named in `attacks_to_run` (of "apgd-ce", "apgd-dlr", "apgd-t", "fab-t",
    "square"), in that order, as the original's custom version; no EOT (the original's attacks default to one
    draw).
    Each stage runs only on the examples the stages before it left robust. Called eagerly, every
    stage is its own `tf.function`, traced the first time a batch reaches it: when APGD-CE already
    fools every example (a broken defense), APGD-T and Square are neither traced nor run, which
    through a large purifier saves most of the attack's time. Called inside a `tf.function`, the
    stages are inlined into the caller's graph (all of them run).

    `judge`: None, or `(images, labels) -> [N] bool`, whether the pipeline that is scored is fooled
    (see `first_success`): the clean check and every stage's result are confirmed on it. `early_exit`
    False (gray-box, transfer): every example is attacked, those the attacked model already gets
    wrong too, with every stage's iterations in full (see `apgd`, `square`).
    """

    def __init__(self, model_fn, eps, norm=np.inf, version="standard", n_iter=100, n_target_classes=9,
                 n_queries=5000, eot_iter=20, early_exit=True, judge=None, attacks_to_run=None):
        ee = early_exit
        eot = eot_iter if version == "rand" else 1  # as the original: EOT only in the rand version
        builders = {
            "apgd-ce": lambda x, y, act: apgd(model_fn, x, y, eps, norm, n_iter, "ce", active=act, eot_iter=eot,
                                              early_exit=ee),
            "apgd-dlr": lambda x, y, act: apgd(model_fn, x, y, eps, norm, n_iter, "dlr", active=act, eot_iter=eot,
                                               early_exit=ee),
            "apgd-t": lambda x, y, act: apgd_targeted(model_fn, x, y, eps, norm, n_iter, n_target_classes, act, ee),
            "fab-t": lambda x, y, act: fab_targeted(model_fn, x, y, eps, norm, n_iter, n_target_classes, active=act,
                                                    early_exit=ee),
            # as the original's AutoAttack builds it: resc_schedule=False (L-inf and L2)
            "square": lambda x, y, act: square(model_fn, x, y, eps, n_queries, active=act, rescale_schedule=False,
                                               early_exit=ee, norm=norm)}
        if version in VERSIONS:
            names = VERSIONS[version]
        elif version == "custom":
            names = tuple(attacks_to_run or ())
            if not names or not set(names) <= set(AUTOATTACK_STAGES):
                raise ValueError(f"version custom needs attacks_to_run, some of {', '.join(AUTOATTACK_STAGES)}; "
                                 f"got {attacks_to_run!r}")
        else:
            raise ValueError(f"unknown AutoAttack version {version!r}")
        stages = [builders[name] for name in names]
        target = Target(model_fn)

        def goal(x, y):  # what every stage aims at
            logits, _, flagged = target.parts(x)
            return misled(logits, flagged, y)

        # without early exit nothing ends an example's attack early, so there is nothing to judge
        self.early_exit, self._judge = early_exit, judge if early_exit else None
        self._goal = tf.function(goal)
        self._stages = [tf.function(stage) for stage in stages]

    def __call__(self, x, y):
        """(x_adv, fooled [N] bool, gradient evaluations or queries [N] float) of a batch.

        `fooled` is the judge's verdict where one was given, else the stages' own."""
        y = tf.cast(y, tf.int64)
        stages = [functools.partial(stage, x, y) for stage in self._stages]
        judge = None if self._judge is None else (lambda images: self._judge(images, y))
        if not self.early_exit:  # every example is attacked, also those the attacked model gets wrong clean
            done = tf.zeros(tf.shape(y), tf.bool)
        else:  # already fooled clean: nothing to do
            done = judge(x) if judge is not None else self._goal(x, y)
        return first_success(stages, x, done, tf.ones(tf.shape(y)), judge=judge)


def autoattack(model_fn, x, y, eps, norm=np.inf, version="standard", n_iter=100, n_target_classes=9,
               n_queries=5000, eot_iter=20, early_exit=True, judge=None, attacks_to_run=None):
    """AutoAttack on one batch (see `AutoAttack`, which to build once for many batches).

    Returns:
      (x_adv, fooled [N] bool, gradient evaluations or queries [N] float)
    """
    return AutoAttack(model_fn, eps, norm, version, n_iter, n_target_classes, n_queries, eot_iter, early_exit,
                      judge, attacks_to_run)(x, y)


# --------------------------------------------------------------------------- the registry's entries

def _apgd(loss, model_fn, p, judge=None):
    """Staged APGD: one traced run, called once per restart on what the restarts before left robust.

    (A module-level function bound with functools.partial, not a closure built at import time, so that
    `make mutation` can reach it.)"""
    once = tf.function(lambda x, y, active: apgd(
        model_fn, x, y, p["eps"], p["norm"], p["nb_iter"], loss, active=active, eot_iter=p["eot_iter"],
        early_exit=p["early_exit"]))

    def run(x, y):
        n = tf.shape(x)[:1]
        check = None if judge is None else (lambda images: judge(images, y))
        x_adv, _, cost = first_success([functools.partial(once, x, y)] * p["n_restarts"], x,
                                       tf.zeros(n, tf.bool), tf.zeros(n), keep_last=True, judge=check)
        return x_adv, cost

    return run


def _apgd_t(model_fn, x, y, p, loss_fn):
    x_adv, _, cost = apgd_targeted(model_fn, x, y, p["eps"], p["norm"], p["nb_iter"], p["n_target_classes"],
                                   early_exit=p["early_exit"])
    return x_adv, cost


def _square(model_fn, x, y, p, loss_fn):
    x_adv, _, queries = square(model_fn, x, y, p["eps"], p["n_queries"], p["p_init"],
                               rescale_schedule=p["rescale_schedule"], early_exit=p["early_exit"], norm=p["norm"])
    return x_adv, queries


def _autoattack(model_fn, p, judge=None):
    """`version`: standard, rand, or a comma list of stages (the original's custom version)."""
    version, stages = (p["version"], None) if p["version"] in VERSIONS else ("custom", p["version"].split(","))
    run = AutoAttack(model_fn, p["eps"], p["norm"], version, p["nb_iter"], p["n_target_classes"],
                     p["n_queries"], p["eot_iter"], p["early_exit"], judge, stages)
    return lambda x, y: run(x, y)[::2]  # (x_adv, cost)


# early_exit: stop an example at its first success (False under gray-box and transfer: all iterations)
_APGD = {"eps": 0.1, "norm": np.inf, "clip_min": 0.0, "clip_max": 1.0, "nb_iter": 100, "n_restarts": 1,
         "eot_iter": 1, "early_exit": True}

register_attack("apgd_ce", AttackDef(None, dict(_APGD), takes_loss=True, staged=functools.partial(_apgd, "ce"),
                                     takes_judge=True))
register_attack("apgd_dlr", AttackDef(None, dict(_APGD), takes_loss=True, staged=functools.partial(_apgd, "dlr"),
                                      takes_judge=True))
register_attack("apgd_t", AttackDef(_apgd_t, {**_APGD, "n_target_classes": 9}, takes_loss=True))
register_attack("square", AttackDef(
    _square, {**COMMON, "n_queries": 5000, "p_init": 0.8, "rescale_schedule": True, "early_exit": True},
    gradient=False, takes_loss=True))
register_attack("autoattack", AttackDef(
    None, {**_APGD, "version": "standard", "n_target_classes": 9, "n_queries": 5000, "eot_iter": 20},
    takes_loss=True, staged=_autoattack, takes_judge=True))
