"""APGD's schedule, iterate by iterate, against a reference written from the official code.

The reference below transcribes `attack_single_run` of fra31/auto-attack (`autoattack/autopgd_base.py`,
L-inf and L2) in numpy: the start, the first step of 2 eps, momentum 0.75 from the second step on, the
checkpoints (0.22 / 0.03 / 0.06 of the iterations), the oscillation test with rho and the "no
improvement since the last reduction" test, halving the step and restarting from the best point. It
differs from the official code where tfpurify's docstring says so: the first step's loss is compared
with the loss at the random start (the official code compares it with a zero, its `loss_steps[-1]`),
and an example stops at its first success. The toy models run eagerly (the schedule's arithmetic is
what is tested, on models that do not get fooled within 100 iterations, so every example takes all of
them), fast enough for `make mutation`: each of the schedule's planted bugs (the step, the halving, the
checkpoints, the restore, the momentum, rho) moves some iterate.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfpurify.attacks.autoattack import apgd, apgd_checkpoints

W1 = np.random.default_rng(3).normal(0, 3.0, (8, 12)).astype(np.float32)
W2 = np.random.default_rng(4).normal(0, 1.0, (12, 3)).astype(np.float32)


class Toy:
    """A wiggly 3-class function of 2x2x2 images whose class 0 leads by a margin no perturbation closes:
    logits [margin, rise * call, 0] + amplitude * (sin(x W1) W2) on classes 1 and 2.

    `rise` lifts class 1's logit at every call: with a small `amplitude` the loss then rises at every
    step (whatever the step does; the gradient's direction is the wiggle's), and APGD must never halve
    its step. `offsets` scripts that lift call by call instead. Calls are counted (eager calls: the
    attack's every evaluation) and their points kept."""

    def __init__(self, margin=8.0, amplitude=0.3, rise=0.0, wiggle=1.0, offsets=None):
        self.margin, self.amplitude, self.w1 = margin, amplitude, W1 * wiggle
        self.offsets = rise * np.arange(1, 200) if offsets is None else offsets  # class 1's lift at call 1, 2, ...
        self.calls = []

    def _logits(self, x, call):  # not `logits`: a target with one is detector-aware
        h = tf.sin(tf.reshape(x, [-1, 8]) @ self.w1) @ W2 * self.amplitude
        return h * tf.constant([0.0, 1.0, 1.0]) + tf.constant([self.margin, self.offsets[call - 1], 0.0], tf.float32)

    def __call__(self, x):
        self.calls.append(x.numpy().copy())
        return self._logits(x, len(self.calls))

    def loss_and_grad(self, x, y, loss, call):
        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = self._logits(x, call)
            if loss == "ce":
                value = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            else:  # DLR, eq. 6
                top = tf.math.top_k(logits, k=3).values
                z_y = tf.gather(logits, y, batch_dims=1)
                other = tf.reduce_max(logits - 1e9 * tf.one_hot(y, 3), axis=1)
                value = -(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)
            total = tf.reduce_sum(value)
        return value.numpy(), tape.gradient(total, x).numpy()


def _l2(v):
    return np.sqrt(np.sum(v ** 2, axis=(1, 2, 3), keepdims=True))


def reference_apgd(toy, x, y, x0, eps, norm, n_iter, loss, rho=0.75):
    """fra31/auto-attack's attack_single_run (L-inf, L2), transcribed; returns every point it evaluates
    and the step size of every step."""
    n_iter_2, size_decr, n_iter_min = max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)

    def project_l2(x1):
        delta = x1 - x
        norms = _l2(delta)
        return np.clip(x + delta / (norms + 1e-12) * np.minimum(eps, norms), 0.0, 1.0)

    x_adv = x0.copy()
    loss_indiv, grad = toy.loss_and_grad(x_adv, y, loss, 1)
    points = [x_adv.copy()]
    x_best, grad_best, loss_best = x_adv.copy(), grad.copy(), loss_indiv.copy()
    step_size = np.full((len(x), 1, 1, 1), 2.0 * eps, np.float32)
    x_adv_old = x_adv.copy()
    k, counter3 = n_iter_2, 0
    sizes = []
    loss_steps = [loss_indiv.copy()]  # tfpurify: the first step is compared with the start's loss
    loss_best_last_check = loss_best.copy()
    reduced_last_check = np.ones(len(x), bool)
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv.copy()
        a = 0.75 if i > 0 else 1.0
        if norm == np.inf:
            x_adv_1 = np.clip(np.clip(x_adv + step_size * np.sign(grad), x - eps, x + eps), 0.0, 1.0)
            x_adv_1 = np.clip(np.clip(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), x - eps, x + eps), 0.0, 1.0)
        else:
            x_adv_1 = project_l2(x_adv + step_size * grad / (_l2(grad) + 1e-12))
            x_adv_1 = project_l2(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a))
        x_adv = x_adv_1
        loss_indiv, grad = toy.loss_and_grad(x_adv, y, loss, i + 2)
        sizes.append(step_size.ravel().copy())
        points.append(x_adv.copy())
        loss_steps.append(loss_indiv.copy())
        better = loss_indiv > loss_best
        x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss_indiv[better]
        counter3 += 1
        if counter3 == k:
            steps = np.array(loss_steps[-k - 1:])
            fl_oscillation = np.sum(steps[1:] > steps[:-1], axis=0) <= k * rho
            fl_reduce_no_impr = ~reduced_last_check & (loss_best_last_check >= loss_best)
            fl_oscillation = fl_oscillation | fl_reduce_no_impr
            reduced_last_check = fl_oscillation.copy()
            loss_best_last_check = loss_best.copy()
            step_size[fl_oscillation] /= 2.0
            x_adv[fl_oscillation] = x_best[fl_oscillation]
            grad[fl_oscillation] = grad_best[fl_oscillation]
            k = max(k - size_decr, n_iter_min)
            counter3 = 0
    return points, x_best, np.array(sizes)


# L2 steps follow the gradient's direction: on a wiggly toy, float rounding (the official projection's
# formula differs from ours in the last bits) grows by a factor at every step, so L2 runs on a smoother one
CASES = {"linf-ce": (np.inf, 0.2, "ce", {}), "l2-ce": (2, 0.6, "ce", {"wiggle": 0.5}),
         "linf-dlr": (np.inf, 0.2, "dlr", {}),
         "linf-ce-rising": (np.inf, 0.2, "ce", {"margin": 5.0, "amplitude": 0.001, "rise": 0.02}),
         "l2-dlr-rising": (2, 0.6, "dlr", {"margin": 5.0, "amplitude": 0.001, "rise": 0.02, "wiggle": 0.5}),
         # rising to the first checkpoint (after 11 steps: kept); then twice a drop and rises that stay
         # below the best: not oscillating, but no improvement since a checkpoint that did not halve, so
         # the second checkpoint (10 steps later) halves, and the third (9 later) does not, as the second
         # halved; then rising again
         "linf-dlr-stalled": (np.inf, 0.2, "dlr", {"margin": 5.0, "amplitude": 0.001, "offsets": np.concatenate([
             0.02 * np.arange(1, 13), 0.01 * np.arange(0, 10), 0.01 * np.arange(0, 9), 0.3 + 0.02 * np.arange(40)])}),
         # rising through three checkpoints (after 11, 21, 30 steps), then 6 rises in the 8 steps to the
         # fourth, each past the best: 6 <= rho * 8 exactly, so the fourth checkpoint halves; rising again
         "linf-dlr-rho": (np.inf, 0.2, "dlr", {"margin": 5.0, "amplitude": 0.001, "offsets": np.concatenate([
             0.02 * np.arange(1, 32), [0.64, 0.66, 0.65, 0.67, 0.69, 0.68, 0.70, 0.72], 0.74 + 0.02 * np.arange(20)])})}


@pytest.mark.parametrize("case", sorted(CASES))
def test_apgd_takes_the_official_codes_steps(case):
    norm, eps, loss, toy_args = CASES[case]
    x = np.random.default_rng(0).uniform(0.2, 0.8, (3, 2, 2, 2)).astype(np.float32)
    y = np.zeros(3, np.int64)
    model = Toy(**toy_args)
    tf.random.set_seed(1)
    x_adv, fooled, evals = apgd(model, tf.constant(x), tf.constant(y), eps, norm, n_iter=50, loss=loss)
    assert not np.any(fooled) and np.all(evals.numpy() == 51)  # the toy is never fooled: every step is taken
    ours = model.calls
    assert len(ours) == 51 and all(c.shape == x.shape for c in ours)
    points, x_best, sizes = reference_apgd(Toy(**toy_args), x, y, ours[0], eps, norm, 50, loss)
    halvings = np.log2(sizes[0] / sizes[-1])
    if "rising" in case:  # the loss rose at every step: never halved
        assert np.all(sizes == np.float32(2 * eps))
    elif "rho" in case:  # halved once, at the fourth checkpoint (after 38 steps)
        assert np.all(sizes[:38] == np.float32(2 * eps)) and np.all(sizes[38:] == np.float32(eps)), sizes[:, 0]
    elif "stalled" in case:  # halved once, at the second checkpoint only (the 22nd step is the first at eps)
        assert np.all(sizes[:21] == np.float32(2 * eps)) and np.all(sizes[21:] == np.float32(eps)), sizes[:, 0]
    else:  # halved at some checkpoints, not at all of them (checkpoints after 11, 12, 13, 14, 15, 16, 17 steps)
        assert np.all(halvings >= 1) and np.all(halvings < 7), halvings
    for i, (a, b) in enumerate(zip(ours, points)):
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"point {i}")
    np.testing.assert_allclose(x_adv, x_best, atol=2e-5)  # nothing fooled: the point of highest loss


def test_apgd_checkpoints_follow_the_official_code():
    assert apgd_checkpoints(100) == (22, 3, 6)
    assert apgd_checkpoints(10) == (2, 1, 1)
    assert apgd_checkpoints(1000) == (220, 30, 60)


def _fooled_at_lower_loss(x):
    """One 2x2x1 image, its mean pixel s: class 0 (the label) wins until s > 0.796; the cross-entropy is
    highest at the start (class 2 close behind) and lower where class 1 finally wins (class 2 far behind)."""
    s = tf.reduce_mean(tf.reshape(x, [-1, 4]), axis=1)
    z1 = 5.0 * (s - 0.796)
    z2 = -0.01 - 400.0 * tf.square(tf.nn.relu(s - 0.7))
    return tf.stack([tf.zeros_like(s), z1, z2], axis=1)


def test_apgd_returns_the_first_success_not_the_point_of_highest_loss():
    x = np.full((1, 2, 2, 1), 0.5, np.float32)
    y = np.zeros(1, np.int64)
    tf.random.set_seed(0)
    x_adv, fooled, evals = apgd(_fooled_at_lower_loss, tf.constant(x), tf.constant(y), 0.3, np.inf, n_iter=20)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits

    assert bool(fooled[0]) and float(evals[0]) == 2  # the start, then the first step to the ball's corner
    logits = _fooled_at_lower_loss(x_adv)
    assert int(tf.argmax(logits, axis=1)[0]) != 0
    corner = np.full_like(x, 0.8)
    np.testing.assert_allclose(x_adv, corner, atol=1e-6)
    assert float(ce(y, logits)[0]) < float(ce(y, _fooled_at_lower_loss(tf.constant(x)))[0])


@pytest.mark.parametrize("norm", [np.inf, 2])
def test_apgd_starts_where_the_official_code_does(norm):
    """L-inf: x + eps * t / max|t|, t uniform in [-1, 1]^d (one pixel at +-eps, the others uniform inside);
    L2: x + eps * t / ||t||, t standard normal (uniform on the sphere). Checked on 2000 starts of 8 pixels."""
    x = np.full((2000, 2, 2, 2), 0.5, np.float32)
    model = Toy()
    tf.random.set_seed(5)
    apgd(model, tf.constant(x), tf.zeros(2000, tf.int64), 0.2, norm, n_iter=0)
    delta = (model.calls[0] - x).reshape(2000, -1) / 0.2
    assert abs(delta.mean()) < 0.01  # symmetric
    if norm == np.inf:
        top = np.abs(delta).max(axis=1)
        np.testing.assert_allclose(top, 1.0, atol=1e-5)
        inside = np.sort(np.abs(delta), axis=1)[:, :-1].ravel()  # the 7 others: uniform in [0, 1]
        assert abs(np.mean(inside < 0.5) - 0.5) < 0.02 and abs(np.mean(inside < 0.25) - 0.25) < 0.02
    else:
        np.testing.assert_allclose(np.sqrt(np.sum(delta ** 2, axis=1)), 1.0, atol=1e-4)
        # uniform on the sphere of 8 dims: coordinate kurtosis 3 d / (d + 2) = 2.4 (a normalized cube's: 1.8)
        kurtosis = np.mean(delta ** 4) / np.mean(delta ** 2) ** 2
        assert 2.25 < kurtosis < 2.55, kurtosis


def test_apgd_averages_each_gradient_over_its_eot_draws_and_keeps_its_defaults():
    import inspect

    model = Toy()
    x = np.random.default_rng(0).uniform(0.2, 0.8, (2, 2, 2, 2)).astype(np.float32)
    tf.random.set_seed(0)
    _, _, evals = apgd(model, tf.constant(x), tf.zeros(2, tf.int64), 0.1, n_iter=3, eot_iter=4)
    assert len(model.calls) == 4 * (3 + 1)  # every iteration and the start: 4 draws
    np.testing.assert_array_equal(evals, 16)
    defaults = {k: v.default for k, v in inspect.signature(apgd).parameters.items() if v.default is not v.empty}
    assert defaults == {"norm": np.inf, "n_iter": 100, "loss": "ce", "y_target": None, "active": None, "rho": 0.75,
                        "eot_iter": 1, "early_exit": True}
