"""The graph loop every iterative gradient attack shares, and what the loops need.

- `Target`: what an attack needs from a callable: logits, a detector penalty, the attack's goal
  (plain logits, or a detector-aware target such as `adaptive.DetectorAwareTarget`).
- `on_active`: runs a function only on the still-active rows of a batch (gathered, then
  scattered back), so an example that reached its goal costs nothing more.
- `iterative_gradient`: PGD / BIM / MIM with cleverhans' update rules in one `tf.while_loop`,
  with a per-example early exit; an `objective` and per-example `side` inputs let an attack with
  a loss of its own (`tfpurify.attacks.purifier`'s `latent`) run on the same loop.
- `project`, `normalize`, `expand`: the eps-ball projection and per-example shapes.
"""

import numpy as np
import tensorflow as tf

__all__ = ["Target", "runner_up_classes", "on_active", "iterative_gradient", "project", "normalize", "expand",
           "misled"]


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


def misled(logits, flagged, labels):
    """An untargeted attack's goal per example: misclassified and, against a detector-aware target, not flagged."""
    return tf.logical_and(tf.not_equal(tf.argmax(logits, axis=1), tf.cast(labels, tf.int64)), tf.logical_not(flagged))


def runner_up_classes(logits, k=9):
    """The classes targeted attacks aim at (APGD-T, FAB-T): the k highest logits after the top one, best
    first ([N, k] int64)."""
    k = min(k, logits.shape[-1] - 1)
    return tf.cast(tf.math.top_k(logits, k=k + 1).indices[:, 1:], tf.int64)


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


def project(x_adv, x, eps, norm):
    """Into the eps-ball of `norm` around x and into [0, 1]."""
    if norm == np.inf:
        return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
    delta = x_adv - x
    norms = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=[1, 2, 3], keepdims=True) + 1e-12)
    return tf.clip_by_value(x + delta * tf.minimum(1.0, eps / norms), 0.0, 1.0)


def normalize(t, norm):
    """Per example: divided by its largest absolute value (L-inf) or its L2 norm."""
    if norm == np.inf:
        return t / (tf.reduce_max(tf.abs(t), axis=[1, 2, 3], keepdims=True) + 1e-12)
    return t / (tf.sqrt(tf.reduce_sum(tf.square(t), axis=[1, 2, 3], keepdims=True)) + 1e-12)


def expand(v):
    """[N] -> [N, 1, 1, 1], to select or scale whole images."""
    return tf.reshape(v, [-1, 1, 1, 1])


def iterative_gradient(model_fn, x, y, eps, eps_iter, nb_iter, norm=np.inf, rand_init=False, decay_factor=None,
                       early_exit=True, targeted=False, objective=None, side=(), eot_iter=1):
    """PGD (rand_init), BIM, or MIM (`decay_factor`) with cleverhans' update rules, in one graph loop.

    With `early_exit` an example stops at its first success and keeps that adversarial example
    (untargeted: misclassified and, against a detector-aware target, unflagged; targeted: the
    target class); without it, every example takes all `nb_iter` steps (cleverhans' behaviour)
    and returns its last iterate.

    Args:
      model_fn: callable images -> logits (or a detector-aware target).
      x, y: images [N, H, W, C] in [0, 1] and labels [N].
      eps, eps_iter, nb_iter, norm: the budget, the step, the number of steps, np.inf or 2.
      rand_init, decay_factor, early_exit, targeted: as above.
      objective: None (the model's cross-entropy, or a detector-aware target's own attack loss,
        with the goal above), or `(images, labels, *side) -> (loss [n], goal [n] bool)`: the loss
        each step ascends and whether an example has reached the attack's goal. `targeted` flips
        the sign of the default loss only.
      side: per-example tensors [N, ...] passed to `objective`, gathered with the active rows.
      eot_iter: Expectation over Transformation for a stochastic `model_fn`: each step's gradient
        is the mean of the gradients of `eot_iter` calls (fresh draws), and with `early_exit` an
        example stops only where every one of them reaches the goal. Each call counts as one
        gradient evaluation.

    Returns:
      (x_adv, goal reached [N] bool, gradient evaluations [N] float)
    """
    y = tf.cast(y, tf.int64)
    if objective is None:
        objective = _default_objective(model_fn, targeted)

    def one_draw(images, labels, *extra):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss, goal = objective(images, labels, *extra)
            total = tf.reduce_sum(loss)
        return tape.gradient(total, images), goal

    def step_fn(images, labels, *extra):
        if eot_iter == 1:
            return one_draw(images, labels, *extra)

        def draw(k, grad_sum, every):  # a graph loop: one copy of the model's graph, not eot_iter
            grad, goal = one_draw(images, labels, *extra)
            return k + 1, grad_sum + grad, tf.logical_and(every, goal)

        _, grad_sum, every = tf.while_loop(lambda k, *_: k < eot_iter, draw,
                                           (tf.constant(0), tf.zeros_like(images), tf.ones(tf.shape(labels), tf.bool)))
        return grad_sum / eot_iter, every

    def score_fn(images, labels, *extra):
        return (objective(images, labels, *extra)[1],)

    if rand_init:  # cleverhans: uniform in the L-inf ball, or uniform in the L2 ball
        if norm == np.inf:
            start = tf.random.uniform(tf.shape(x), -eps, eps)
        else:
            dim = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
            radius = eps * tf.pow(tf.random.uniform(tf.shape(x)[:1]), 1.0 / dim)
            start = normalize(tf.random.normal(tf.shape(x)), 2) * expand(radius)
        x_adv = project(x + start, x, eps, norm)
    else:
        x_adv = tf.identity(x)
    n = tf.shape(y)
    state = (tf.constant(0), x_adv, tf.zeros_like(x), tf.ones(n, tf.bool), tf.zeros(n, tf.bool), x_adv, tf.zeros(n))

    def cond(i, x_adv, momentum, active, done, x_first, evals):
        return tf.logical_and(i < nb_iter, tf.reduce_any(active))

    def body(i, x_adv, momentum, active, done, x_first, evals):
        grad, goal = on_active(active, step_fn, x_adv, y, *side)
        goal = tf.logical_and(active, goal)
        if early_exit:  # the current point already reaches the goal: keep it, stop this example
            x_first = tf.where(expand(goal), x_adv, x_first)
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
            update = normalize(grad, 2)
        stepped = project(x_adv + eps_iter * update, x, eps, norm)
        x_adv = tf.where(expand(moving), stepped, x_adv)
        return i + 1, x_adv, momentum, moving, done, x_first, evals + eot_iter * tf.cast(active, tf.float32)

    _, x_adv, _, active, done, x_first, evals = tf.while_loop(cond, body, state)
    if not early_exit:
        return x_adv, on_active(tf.ones(n, tf.bool), score_fn, x_adv, y, *side)[0], evals
    # the point after the last step is not scored yet: one forward pass, no gradient
    reached = tf.logical_and(active, on_active(active, score_fn, x_adv, y, *side)[0])
    return tf.where(expand(done), x_first, x_adv), tf.logical_or(done, reached), evals


def _default_objective(model_fn, targeted):
    """Cross-entropy (or a detector-aware target's `attack_loss`), negated when targeted, and the goal."""
    target = Target(model_fn)
    sign = -1.0 if targeted else 1.0

    def objective(images, labels):
        out = model_fn(images)
        if target.aware:
            loss = model_fn.attack_loss(labels=labels, logits=out)
        else:
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, out)
        logits, _, flagged = target.split(out)
        hit = tf.equal(tf.argmax(logits, axis=1), labels)
        return sign * loss, tf.logical_and(hit if targeted else tf.logical_not(hit), tf.logical_not(flagged))

    return objective
