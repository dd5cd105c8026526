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
  black-box adversarial attack via random search", ECCV), L-inf, margin loss, p_init 0.8 and the
  official schedule of the square size rescaled to the query budget (5000 by default).
- `autoattack` / `AutoAttack`: the standard sequence APGD-CE -> APGD-T (9 targets) -> Square
  (5000 queries), each run only on the examples still robust after the previous ones, keeping per
  example the first successful adversarial example, each stage traced on its own and skipped when
  nothing is left robust; `version="rand"` runs APGD-CE and APGD-DLR with EOT over
  20 draws instead, for stochastic defenses.
- `iterative_gradient`: PGD / BIM / MIM on the same loop (cleverhans' update rules), so they stop
  on an example as soon as it is fooled.

Every loop is a `tf.while_loop` (no unrolled Python loop: the graph holds one copy of the model),
runs only the still-active examples through the model (gathered, then scattered back) and counts
gradient evaluations (or queries) per example. An example is active until the attack's goal is
reached: misclassified, and against a detector-aware target (`adaptive.DetectorAwareTarget`)
also not flagged by the detector; the target's own loss (cross-entropy minus the weighted
detector score) is what the attack ascends.
"""


import functools

import numpy as np
import tensorflow as tf

__all__ = ["dlr_loss", "dlr_targeted_loss", "apgd", "apgd_targeted", "square", "autoattack", "AutoAttack",
           "first_success", "on_active", "iterative_gradient", "apgd_checkpoints", "runner_up_classes", "Target"]


# --------------------------------------------------------------------------- target and losses

class Target:
    """What an attack needs from a callable: logits, a detector penalty, the attack's goal."""

    def __init__(self, model_fn):
        self.model_fn = model_fn
        self.to_logits = getattr(model_fn, "logits", None)
        self.is_flagged = getattr(model_fn, "flagged", None)
        self.aware = self.to_logits is not None

    def parts(self, x):
        """(logits, penalty [N], flagged [N] bool) of a batch."""
        return self.split(self.model_fn(x))

    def split(self, out):
        """(logits, penalty [N], flagged [N] bool) of the callable's outputs."""
        n = tf.shape(out)[:1]
        if not self.aware:
            return out, tf.zeros(n), tf.zeros(n, tf.bool)
        flagged = self.is_flagged(out) if self.is_flagged is not None else tf.zeros(n, tf.bool)
        return self.to_logits(out), out[:, -1], flagged


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


def on_active(active, fn, *tensors):
    """Runs `fn` on the rows of `tensors` where `active`, scattering its outputs back to full rows.

    Inactive rows get zeros (booleans: False). Only active examples go through the model.
    """
    idx = tf.where(active)[:, 0]
    n_active = tf.size(idx)
    # An empty batch never reaches the model (oneDNN convolutions fail on one): with no active
    # row, run row 0 and scatter nothing.
    idx_run = tf.cond(n_active > 0, lambda: idx, lambda: tf.zeros([1], tf.int64))
    outs = fn(*[tf.gather(t, idx_run) for t in tensors])
    n = tf.shape(active, out_type=tf.int64)[0]

    def scatter(o):
        shape = tf.concat([[n], tf.shape(o, out_type=tf.int64)[1:]], axis=0)
        return tf.scatter_nd(idx_run[:n_active, None], o[:n_active], shape)

    return tuple(scatter(o) for o in outs)


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
            fooled = tf.logical_and(tf.not_equal(tf.argmax(logits, axis=1), y), tf.logical_not(flagged))
        return losses / eot_iter, grads / eot_iter, fooled

    return fn


def _project(x_adv, x, eps, norm):
    """Into the eps-ball of `norm` around x and into [0, 1]."""
    if norm == np.inf:
        return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
    delta = x_adv - x
    norms = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=[1, 2, 3], keepdims=True) + 1e-12)
    return tf.clip_by_value(x + delta * tf.minimum(1.0, eps / norms), 0.0, 1.0)


def _normalize(t, norm):
    if norm == np.inf:
        return t / (tf.reduce_max(tf.abs(t), axis=[1, 2, 3], keepdims=True) + 1e-12)
    return t / (tf.sqrt(tf.reduce_sum(tf.square(t), axis=[1, 2, 3], keepdims=True)) + 1e-12)


def _expand(v):
    return tf.reshape(v, [-1, 1, 1, 1])


# --------------------------------------------------------------------------- APGD

def apgd_checkpoints(n_iter):
    """Iterations of the step-size checks: (first interval, decrement, minimum), as the official code."""
    return max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)


def apgd(model_fn, x, y, eps, norm=np.inf, n_iter=100, loss="ce", y_target=None, active=None, rho=0.75,
         eot_iter=1):
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

    Returns:
      (x_adv, fooled [N] bool, gradient evaluations [N] float): x_adv is the first adversarial
      example found where fooled, else the point of highest loss.
    """
    x = tf.convert_to_tensor(x)
    y = tf.cast(y, tf.int64)
    y_target = y if y_target is None else tf.cast(y_target, tf.int64)
    active = tf.ones(tf.shape(y), tf.bool) if active is None else active
    target = Target(model_fn)
    step_fn = _grad_step(target, _loss_fn(loss), eot_iter)
    first, decrement, minimum = apgd_checkpoints(n_iter)

    t = tf.random.uniform(tf.shape(x), -1.0, 1.0) if norm == np.inf else tf.random.normal(tf.shape(x))
    x_adv = tf.where(_expand(active), _project(x + eps * _normalize(t, norm), x, eps, norm), x)
    loss0, grad, fooled = on_active(active, step_fn, x_adv, y, y_target)
    evals = tf.cast(active, tf.float32) * eot_iter
    x_first = x_adv  # first successful adversarial example per example (valid where fooled)
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
            z = _project(x_adv + _expand(s["step"]) * tf.sign(s["grad"]), x, eps, norm)
        else:
            z = _project(x_adv + _expand(s["step"]) * _normalize(s["grad"], norm), x, eps, norm)
        x_new = _project(x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - x_old), x, eps, norm)
        x_new = tf.where(_expand(act), x_new, x_adv)
        loss_i, grad, fooled_i = on_active(act, step_fn, x_new, y, y_target)
        newly = tf.logical_and(act, fooled_i)
        x_first = tf.where(_expand(newly), x_new, s["x_first"])
        improved = tf.logical_and(act, loss_i > s["loss_best"])
        x_best = tf.where(_expand(improved), x_new, s["x_best"])
        grad_best = tf.where(_expand(improved), grad, s["grad_best"])
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
        x_next = tf.where(_expand(reduce), x_best, x_new)
        grad_next = tf.where(_expand(reduce), grad_best, grad)
        reduced_last = tf.where(at_check, tf.cast(reduce, tf.float32), s["reduced_last"])
        loss_best_last = tf.where(at_check, loss_best, s["loss_best_last"])
        increases = tf.where(at_check, tf.zeros_like(increases), increases)
        k = tf.where(at_check, tf.maximum(k - decrement, minimum), k)
        counter = tf.where(at_check, 0, counter)
        return [dict(i=s["i"] + 1, x_adv=x_next, x_old=tf.where(_expand(act), x_adv, x_old), grad=grad_next,
                     step=step, x_best=x_best, grad_best=grad_best, loss_best=loss_best,
                     loss_prev=tf.where(act, loss_i, s["loss_prev"]), increases=increases, counter=counter, k=k,
                     loss_best_last=loss_best_last, reduced_last=reduced_last,
                     fooled=tf.logical_or(s["fooled"], newly), x_first=x_first,
                     active=tf.logical_and(act, tf.logical_not(fooled_i)),
                     evals=s["evals"] + tf.cast(act, tf.float32) * eot_iter)]

    s = tf.while_loop(cond, body, [state])[0]
    return tf.where(_expand(s["fooled"]), s["x_first"], s["x_best"]), s["fooled"], s["evals"]


def apgd_targeted(model_fn, x, y, eps, norm=np.inf, n_iter=100, n_target_classes=9, active=None):
    """APGD-T: targeted APGD-DLR towards each of the top `n_target_classes` runner-up classes in turn.

    The runner-up classes are ranked by the logits of the unperturbed input; each target class is
    tried only on the examples that are still robust.

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
        x_t, fooled_t, evals_t = apgd(model_fn, x, y, eps, norm, n_iter, "dlr_targeted", targets[:, rank], todo)
        found = tf.logical_and(todo, fooled_t)
        return rank + 1, tf.where(_expand(found), x_t, x_out), tf.logical_or(fooled, found), evals + evals_t

    _, x_out, fooled, evals = tf.while_loop(
        cond, body, [tf.constant(0), tf.identity(x), tf.zeros(tf.shape(y), tf.bool), tf.cast(active, tf.float32)])
    return x_out, fooled, evals


def runner_up_classes(logits, k=9):
    """The classes APGD-T aims at: the k highest logits after the top one, best first ([N, k] int64)."""
    k = min(k, logits.shape[-1] - 1)
    return tf.cast(tf.math.top_k(logits, k=k + 1).indices[:, 1:], tf.int64)


# --------------------------------------------------------------------------- Square

def _square_p(i, n_queries, p_init):
    """Fraction of pixels changed at query i (official schedule, rescaled to 10000 queries)."""
    it = tf.cast(tf.cast(i, tf.float32) / n_queries * 10000.0, tf.int32)
    bounds = tf.constant([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])
    halvings = tf.reduce_sum(tf.cast(it > bounds, tf.int32))
    return p_init / tf.pow(2.0, tf.cast(halvings, tf.float32))


def square(model_fn, x, y, eps, n_queries=5000, p_init=0.8, active=None):
    """Square Attack, L-inf, margin loss: random search over square-shaped updates (no gradients).

    Returns:
      (x_adv, fooled [N] bool, queries [N] float)
    """
    y = tf.cast(y, tf.int64)
    active = tf.ones(tf.shape(y), tf.bool) if active is None else active
    target = Target(model_fn)
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    n_features = h * w * c

    def margin_and_loss(images, labels):
        logits, penalty, flagged = target.parts(images)
        z_y = tf.gather(logits, labels, batch_dims=1)
        other = tf.reduce_max(logits - 1e9 * tf.one_hot(labels, tf.shape(logits)[1]), axis=1)
        margin = z_y - other  # <= 0: misclassified
        margin = tf.where(flagged, tf.maximum(margin, 1e-6), margin)  # flagged is not success
        return margin, margin + penalty

    signs = tf.sign(tf.random.uniform([tf.shape(x)[0], 1, w, c], -1.0, 1.0))
    x_best = tf.where(_expand(active), tf.clip_by_value(x + eps * signs, 0.0, 1.0), x)
    margin, loss = on_active(active, margin_and_loss, x_best, y)
    queries = tf.cast(active, tf.float32)
    margin = tf.where(active, margin, -1.0)  # inactive examples count as done
    rows, cols = tf.range(h)[:, None, None], tf.range(w)[None, :, None]

    def cond(i, x_best, margin, loss, queries):
        return tf.logical_and(i < n_queries, tf.reduce_any(margin > 0.0))

    def body(i, x_best, margin, loss, queries):
        act = margin > 0.0
        p = _square_p(i, n_queries, p_init)
        s = tf.cast(tf.round(tf.sqrt(p * n_features / c)), tf.int32)
        s = tf.clip_by_value(s, 1, min(h, w) - 1)
        vh = tf.random.uniform([], 0, h - s, dtype=tf.int32)
        vw = tf.random.uniform([], 0, w - s, dtype=tf.int32)
        window = tf.logical_and(tf.logical_and(rows >= vh, rows < vh + s), tf.logical_and(cols >= vw, cols < vw + s))
        sign = tf.sign(tf.random.uniform([1, 1, c], -1.0, 1.0))
        delta = tf.cast(window, tf.float32) * 2.0 * eps * sign
        x_new = tf.clip_by_value(tf.clip_by_value(x_best + delta[None], x - eps, x + eps), 0.0, 1.0)
        margin_new, loss_new = on_active(act, margin_and_loss, x_new, y)
        improved = tf.logical_and(act, loss_new < loss)
        loss = tf.where(improved, loss_new, loss)
        take = tf.logical_or(improved, tf.logical_and(act, margin_new <= 0.0))
        margin = tf.where(take, margin_new, margin)
        x_best = tf.where(_expand(take), x_new, x_best)
        return i + 1, x_best, margin, loss, queries + tf.cast(act, tf.float32)

    _, x_best, margin, _, queries = tf.while_loop(cond, body, [tf.constant(0), x_best, margin, loss, queries])
    return x_best, tf.logical_and(active, margin <= 0.0), queries


# --------------------------------------------------------------------------- AutoAttack

def first_success(stages, x, fooled, cost, keep_last=False):
    """Runs `stages` in turn, each only on the examples the ones before it left robust.

    Args:
      stages: callables `active [N] bool -> (x_adv, fooled [N] bool, cost [N] float)`.
      x: the clean images; `fooled` [N] bool: already fooled before the first stage; `cost` [N]
        float: evaluations spent so far.
      keep_last: examples no stage fools get the last stage's result (its highest-loss point, as
        APGD's restarts return) instead of x (AutoAttack's convention).

    Returns:
      (x_adv, fooled, cost), keeping per example the first successful adversarial example. Run
      eagerly, the sequence stops as soon as no example is left robust: a later stage then costs
      nothing, not even its tracing.
    """
    x_out = tf.identity(x)
    for run in stages:
        todo = tf.logical_not(fooled)
        if tf.executing_eagerly() and not bool(tf.reduce_any(todo)):
            break
        x_a, fooled_a, cost_a = run(todo)
        take = todo if keep_last else tf.logical_and(todo, fooled_a)
        x_out = tf.where(_expand(take), x_a, x_out)
        fooled = tf.logical_or(fooled, tf.logical_and(todo, fooled_a))
        cost += cost_a
    return x_out, fooled, cost


class AutoAttack:
    """AutoAttack with each stage traced on its own: build once, call on batches of one shape.

    `version="standard"`: APGD-CE -> APGD-T -> Square (Square only for L-inf). `version="rand"`:
    APGD-CE -> APGD-DLR, each with gradients averaged over `eot_iter` draws (stochastic defenses).
    Each stage runs only on the examples the stages before it left robust. Called eagerly, every
    stage is its own `tf.function`, traced the first time a batch reaches it: when APGD-CE already
    fools every example (a broken defense), APGD-T and Square are neither traced nor run, which
    through a large purifier saves most of the attack's time. Called inside a `tf.function`, the
    stages are inlined into the caller's graph (all of them run).
    """

    def __init__(self, model_fn, eps, norm=np.inf, version="standard", n_iter=100, n_target_classes=9,
                 n_queries=5000, eot_iter=20):
        if version == "standard":
            stages = [lambda x, y, act: apgd(model_fn, x, y, eps, norm, n_iter, "ce", active=act),
                      lambda x, y, act: apgd_targeted(model_fn, x, y, eps, norm, n_iter, n_target_classes, act)]
            if norm == np.inf:
                stages.append(lambda x, y, act: square(model_fn, x, y, eps, n_queries, active=act))
        elif version == "rand":
            stages = [lambda x, y, act: apgd(model_fn, x, y, eps, norm, n_iter, "ce", active=act, eot_iter=eot_iter),
                      lambda x, y, act: apgd(model_fn, x, y, eps, norm, n_iter, "dlr", active=act, eot_iter=eot_iter)]
        else:
            raise ValueError(f"unknown AutoAttack version {version!r}")
        target = Target(model_fn)
        self._misclassified = tf.function(
            lambda x, y: tf.not_equal(tf.argmax(target.parts(x)[0], axis=1), y))  # already wrong: nothing to do
        self._stages = [tf.function(stage) for stage in stages]

    def __call__(self, x, y):
        """(x_adv, fooled [N] bool, gradient evaluations or queries [N] float) of a batch."""
        y = tf.cast(y, tf.int64)
        stages = [functools.partial(stage, x, y) for stage in self._stages]
        return first_success(stages, x, self._misclassified(x, y), tf.ones(tf.shape(y)))


def autoattack(model_fn, x, y, eps, norm=np.inf, version="standard", n_iter=100, n_target_classes=9,
               n_queries=5000, eot_iter=20):
    """AutoAttack on one batch (see `AutoAttack`, which to build once for many batches).

    Returns:
      (x_adv, fooled [N] bool, gradient evaluations or queries [N] float)
    """
    return AutoAttack(model_fn, eps, norm, version, n_iter, n_target_classes, n_queries, eot_iter)(x, y)


# --------------------------------------------------------------------------- PGD / BIM / MIM

def iterative_gradient(model_fn, x, y, eps, eps_iter, nb_iter, norm=np.inf, rand_init=False, decay_factor=None,
                       early_exit=True, targeted=False):
    """PGD (rand_init), BIM, or MIM (`decay_factor`) with cleverhans' update rules, in one graph loop.

    With `early_exit` an example stops at its first success and keeps that adversarial example
    (untargeted: misclassified and, against a detector-aware target, unflagged; targeted: the
    target class); without it, every example takes all `nb_iter` steps (cleverhans' behaviour)
    and returns its last iterate.

    Returns:
      (x_adv, goal reached [N] bool, gradient evaluations [N] float)
    """
    y = tf.cast(y, tf.int64)
    target = Target(model_fn)
    if target.aware:
        loss_of = lambda out, labels: model_fn.attack_loss(labels=labels, logits=out)  # noqa: E731
    else:
        loss_of = lambda out, labels: tf.nn.sparse_softmax_cross_entropy_with_logits(labels, out)  # noqa: E731
    sign = -1.0 if targeted else 1.0

    def goal_of(out, labels):
        logits, _, flagged = target.split(out)
        hit = tf.equal(tf.argmax(logits, axis=1), labels)
        return tf.logical_and(hit if targeted else tf.logical_not(hit), tf.logical_not(flagged))

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            out = model_fn(images)
            total = tf.reduce_sum(sign * loss_of(out, labels))
        return tape.gradient(total, images), goal_of(out, labels)

    def score_fn(images, labels):
        return (goal_of(model_fn(images), labels),)

    if rand_init:  # cleverhans: uniform in the L-inf ball, or uniform in the L2 ball
        if norm == np.inf:
            start = tf.random.uniform(tf.shape(x), -eps, eps)
        else:
            dim = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
            radius = eps * tf.pow(tf.random.uniform(tf.shape(x)[:1]), 1.0 / dim)
            start = _normalize(tf.random.normal(tf.shape(x)), 2) * _expand(radius)
        x_adv = _project(x + start, x, eps, norm)
    else:
        x_adv = tf.identity(x)
    n = tf.shape(y)
    state = (tf.constant(0), x_adv, tf.zeros_like(x), tf.ones(n, tf.bool), tf.zeros(n, tf.bool), x_adv, tf.zeros(n))

    def cond(i, x_adv, momentum, active, done, x_first, evals):
        return tf.logical_and(i < nb_iter, tf.reduce_any(active))

    def body(i, x_adv, momentum, active, done, x_first, evals):
        grad, goal = on_active(active, step_fn, x_adv, y)
        goal = tf.logical_and(active, goal)
        if early_exit:  # the current point already reaches the goal: keep it, stop this example
            x_first = tf.where(_expand(goal), x_adv, x_first)
            done = tf.logical_or(done, goal)
            moving = tf.logical_and(active, tf.logical_not(goal))
        else:
            moving = active
        if decay_factor is not None:  # MIM: cleverhans normalizes by the mean absolute gradient
            mean_abs = tf.reduce_mean(tf.abs(grad), axis=[1, 2, 3], keepdims=True)
            momentum = decay_factor * momentum + grad / tf.maximum(mean_abs, 1e-12)
            grad = momentum
        if norm == np.inf:
            update = tf.sign(grad)
        else:
            update = _normalize(grad, 2)
        stepped = _project(x_adv + eps_iter * update, x, eps, norm)
        x_adv = tf.where(_expand(moving), stepped, x_adv)
        return i + 1, x_adv, momentum, moving, done, x_first, evals + tf.cast(active, tf.float32)

    _, x_adv, _, active, done, x_first, evals = tf.while_loop(cond, body, state)
    if not early_exit:
        return x_adv, on_active(tf.ones(n, tf.bool), score_fn, x_adv, y)[0], evals
    # the point after the last step is not scored yet: one forward pass, no gradient
    reached = tf.logical_and(active, on_active(active, score_fn, x_adv, y)[0])
    return tf.where(_expand(done), x_first, x_adv), tf.logical_or(done, reached), evals
