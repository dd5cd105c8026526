import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from tfpurify import attacks, classifiers
from tfpurify.attacks.loop import iterative_gradient


def test_our_bim_loop_matches_cleverhans_without_early_exit(cnn, fmnist_test):
    x, y = fmnist_test
    ours = attacks.run_attack("bim", cnn, x[:32], y[:32], eps=0.05, nb_iter=5, early_exit=False)
    theirs = projected_gradient_descent(cnn, x[:32], 0.05, 0.0125, 5, np.inf, clip_min=0.0, clip_max=1.0,
                                        y=y[:32], rand_init=False, sanity_checks=False).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_early_exit_never_raises_accuracy_and_saves_gradients(cnn, fmnist_test):
    x, y = fmnist_test
    full, full_cost = attacks.run_attack("pgd", cnn, x, y, eps=0.1, nb_iter=20, early_exit=False, return_cost=True)
    early, early_cost = attacks.run_attack("pgd", cnn, x, y, eps=0.1, nb_iter=20, return_cost=True)
    assert classifiers.accuracy(cnn, early, y) <= classifiers.accuracy(cnn, full, y)
    assert np.all(full_cost == 20) and early_cost.mean() < 0.5 * full_cost.mean()
    # an example that stopped early keeps an adversarial example
    stopped = early_cost < 20
    assert np.all(np.argmax(cnn(early[stopped]), 1) != y[stopped])


class _Cycling:
    """A 'stochastic' two-class linear model whose draws are known: call k multiplies the first logit
    by FACTORS[k % 3]; records how many calls it has served."""

    FACTORS = (1.0, -3.0, 1.0)

    def __init__(self, w):
        self.w, self.calls = tf.constant(w), tf.Variable(0)

    def __call__(self, images):
        k = self.calls.assign_add(1) - 1
        factor = tf.gather(tf.constant(self.FACTORS), k % 3)
        score = factor * tf.reduce_sum(images * self.w, axis=[1, 2, 3])
        return tf.stack([score, tf.zeros_like(score)], axis=1)


def test_eot_steps_follow_the_mean_gradient_of_their_draws_and_leave_only_when_every_draw_is_fooled():
    w = np.zeros((1, 4, 4, 1), np.float32)
    w[0, :2] = 1.0
    w[0, 2:] = -1.0
    x = np.full((1, 4, 4, 1), 0.5, np.float32)  # w.x = 0: every draw at p = 0.5
    y = np.zeros(1, np.int64)
    # draws 1, -3, 1: the gradients -0.5 f w average to +w / 6; the first and the last draw alone say -w
    for eot_iter, direction in ((3, 1.0), (1, -1.0)):
        model = _Cycling(w)
        x_adv, _, evals = iterative_gradient(model, x, y, 0.1, 0.1, 1, early_exit=False, eot_iter=eot_iter)
        np.testing.assert_allclose(x_adv.numpy(), x + 0.1 * direction * np.sign(w), atol=1e-6)
        assert float(evals[0]) == eot_iter
    # w.x > 0: draws 1 and 3 classify it right, draw 2 does not: it never leaves; one draw alone would
    x = x + 0.05 * w
    model = _Cycling(w)
    _, reached, evals = iterative_gradient(model, x, y, 0.01, 0.001, 2, eot_iter=3)
    assert float(evals[0]) == 6 and int(model.calls.numpy()) == 7  # 2 steps x 3 draws, then the last point
    model = _Cycling(w)
    model.calls.assign(1)  # the fooling draw first
    _, reached, evals = iterative_gradient(model, x, y, 0.01, 0.001, 2, eot_iter=1)
    assert float(evals[0]) == 1 and bool(reached[0])


def test_pgd_eot_defaults_are_200_steps_of_20_draws():
    p = attacks.resolve_params("pgd_eot", eps=0.1)
    assert (p["nb_iter"], p["eot_iter"], p["rand_init"], p["eps_iter"]) == (200, 20, True, 0.025)
    model = _Cycling(np.ones((1, 4, 4, 1), np.float32))
    _, cost = attacks.run_attack("pgd_eot", model, np.full((2, 4, 4, 1), 0.5, np.float32), np.zeros(2, np.int64),
                                 eps=0.1, nb_iter=3, eot_iter=4, early_exit=False, return_cost=True)
    np.testing.assert_array_equal(cost, [12, 12])
