import numpy as np
import pytest
import tensorflow as tf

from tests.toys import NoisyPurifier
from tfpurify import adaptive, attacks, classifiers
from tfpurify.attacks import autoattack
from tfpurify.defenses import DefendedClassifier


def test_dlr_losses_on_hand_made_logits():
    logits = tf.constant([[5.0, 1.0, 3.0, 2.0]])
    # true class 0 ranked first: -(5 - 3) / (5 - 2)
    assert float(autoattack.dlr_loss(logits, tf.constant([0], tf.int64))[0]) == pytest.approx(-2 / 3)
    # true class 2: -(3 - 5) / (5 - 2)
    assert float(autoattack.dlr_loss(logits, tf.constant([2], tf.int64))[0]) == pytest.approx(2 / 3)
    # targeted from 0 towards 3: -(5 - 2) / (5 - (2 + 1) / 2)
    value = autoattack.dlr_targeted_loss(logits, tf.constant([0], tf.int64), tf.constant([3], tf.int64))
    assert float(value[0]) == pytest.approx(-3 / 3.5)


def test_apgd_t_aims_at_the_runner_up_classes():
    logits = tf.constant([[5.0, 1.0, 3.0, 2.0], [0.0, 9.0, 8.0, 7.0]])
    np.testing.assert_array_equal(autoattack.runner_up_classes(logits, 2), [[2, 3], [2, 3]])
    np.testing.assert_array_equal(autoattack.runner_up_classes(logits, 9), [[2, 3, 1], [2, 3, 0]])


def test_apgd_checkpoints_follow_the_paper():
    assert autoattack.apgd_checkpoints(100) == (22, 3, 6)


def test_apgd_beats_or_equals_pgd_at_equal_iterations(cnn, fmnist_test):
    x, y = fmnist_test
    pgd = classifiers.accuracy(cnn, attacks.run_attack("pgd", cnn, x, y, eps=0.03, nb_iter=20), y)
    apgd = classifiers.accuracy(cnn, attacks.run_attack("apgd_ce", cnn, x, y, eps=0.03, nb_iter=20), y)
    assert apgd <= pgd, (apgd, pgd)


def test_square_lowers_accuracy_without_gradients(cnn, fmnist_test, cnn_clean_accuracy):
    x, y = fmnist_test

    def no_gradient(images):  # Square only queries scores
        return tf.stop_gradient(cnn(images))

    x_adv, queries = attacks.run_attack("square", no_gradient, x[:64], y[:64], eps=0.1, n_queries=300,
                                        return_cost=True)
    assert classifiers.accuracy(cnn, x_adv, y[:64]) < cnn_clean_accuracy - 0.3
    assert queries.max() <= 301 and queries.min() >= 1


def test_square_finds_what_masked_gradients_hide(cnn, fmnist_test):
    x, y = fmnist_test

    def masked(images):  # tf.round purifier attacked without BPDA: zero gradients
        return cnn(tf.stop_gradient(tf.round(images * 8.0) / 8.0) + 0.0 * images)

    pgd = classifiers.accuracy(masked, attacks.run_attack("pgd", masked, x[:64], y[:64], eps=0.1, nb_iter=10), y[:64])
    square = classifiers.accuracy(masked, attacks.run_attack("square", masked, x[:64], y[:64], eps=0.1,
                                                             n_queries=500), y[:64])
    assert square < pgd - 0.2, (square, pgd)


def test_autoattack_is_at_least_as_strong_as_each_part(cnn, fmnist_test):
    x, y = fmnist_test
    x, y = x[:64], y[:64]
    small = dict(eps=0.03, nb_iter=10)
    aa = classifiers.accuracy(cnn, attacks.run_attack("autoattack", cnn, x, y, n_target_classes=3, n_queries=100,
                                                      **small), y)
    ce = classifiers.accuracy(cnn, attacks.run_attack("apgd_ce", cnn, x, y, **small), y)
    assert aa <= ce


def _constant_model(labels):
    """Logits that always pick `labels` whatever the image (differentiable, so attacks accept it)."""
    return lambda images: tf.one_hot(tf.constant(labels, tf.int64), 10) * 10.0 + 0.0 * tf.reduce_sum(images)


def test_autoattack_stages_run_and_trace_only_while_something_is_robust(fmnist_test):
    x, y = fmnist_test
    x, y = tf.constant(x[:8]), tf.constant(y[:8], tf.int64)
    wrong = autoattack.AutoAttack(_constant_model((y.numpy() + 1) % 10), eps=0.1, n_iter=5, n_queries=20)
    x_adv, fooled, cost = wrong(x, y)
    assert np.all(fooled.numpy()) and np.all(cost.numpy() == 1)  # one forward pass, no stage at all
    np.testing.assert_array_equal(x_adv.numpy(), x.numpy())
    assert [stage.experimental_get_tracing_count() for stage in wrong._stages] == [0, 0, 0, 0]
    right = autoattack.AutoAttack(_constant_model(y.numpy()), eps=0.1, n_iter=5, n_target_classes=2, n_queries=20)
    _, fooled, cost = right(x, y)  # never fooled: every stage runs on every example
    assert not np.any(fooled.numpy())
    # the clean pass, APGD-CE (start + 5 steps), APGD-T (ranking pass + 2 targets x 6), FAB-T (ranking pass +
    # 2 targets x 5), Square (start + 20)
    np.testing.assert_array_equal(cost.numpy(), 1 + (5 + 1) + (1 + 2 * (5 + 1)) + (1 + 2 * 5) + (1 + 20))
    assert [stage.experimental_get_tracing_count() for stage in right._stages] == [1, 1, 1, 1]
    right(x, y)  # a second batch of the same shape traces nothing new
    assert [stage.experimental_get_tracing_count() for stage in right._stages] == [1, 1, 1, 1]
    # inside a caller's tf.function the stages are inlined and give the same result
    _, fooled_graph, cost_graph = tf.function(lambda a, b: autoattack.autoattack(
        _constant_model(y.numpy()), a, b, eps=0.1, n_iter=5, n_target_classes=2, n_queries=20))(x, y)
    np.testing.assert_array_equal(cost_graph.numpy(), cost.numpy())


def test_apgd_restarts_stop_when_every_example_is_fooled(fmnist_test):
    x, y = fmnist_test
    wrong = _constant_model((y[:4] + 1) % 10)
    _, cost = attacks.run_attack("apgd_ce", wrong, x[:4], y[:4], eps=0.1, nb_iter=5, n_restarts=3, return_cost=True)
    np.testing.assert_array_equal(cost, 1)  # fooled at the random start of the first restart
    right = _constant_model(y[:4])
    _, cost = attacks.run_attack("apgd_ce", right, x[:4], y[:4], eps=0.1, nb_iter=5, n_restarts=3, return_cost=True)
    np.testing.assert_array_equal(cost, 3 * (5 + 1))


def test_rand_version_averages_gradients_over_draws(cnn, fmnist_test):
    x, y = fmnist_test
    calls = tf.Variable(0.0)

    def robust(images):  # always right, so no example stops early; counts its calls
        calls.assign_add(1.0)
        return tf.one_hot(tf.constant(y[:4], tf.int64), 10) * 10.0 + 0.0 * tf.reduce_sum(images)

    _, cost = attacks.run_attack("apgd_ce", robust, x[:4], y[:4], eps=0.1, nb_iter=3, eot_iter=5, return_cost=True)
    assert np.all(cost == 5 * (3 + 1))  # 5 draws at the start and at each of 3 iterations
    # the rand AutoAttack attacks a stochastic defense through EOT and breaks it
    defended = DefendedClassifier(cnn, purifier=NoisyPurifier())
    target = adaptive.whitebox_target(defended, eot_samples=4)
    x_adv = attacks.run_attack("autoattack", target, x[:64], y[:64], eps=0.1, version="rand", nb_iter=10, eot_iter=2)
    tf.random.set_seed(1)
    adversarial = classifiers.accuracy(defended, x_adv, y[:64])
    tf.random.set_seed(1)
    assert adversarial < classifiers.accuracy(defended, x[:64], y[:64]) - 0.2


def test_autoattack_finds_what_masked_cross_entropy_hides(cnn, fmnist_test):
    """Logits scaled by 1e4: cross-entropy saturates and its gradient underflows to zero on confident
    examples, so APGD-CE stalls; the DLR loss of the later stages is scale-invariant and breaks them."""
    x, y = fmnist_test[0][:64], fmnist_test[1][:64]

    def saturated(images):
        return 1e4 * cnn(images)

    small = dict(eps=0.1, nb_iter=10)
    ce = classifiers.accuracy(saturated, attacks.run_attack("apgd_ce", saturated, x, y, **small), y)
    aa = classifiers.accuracy(saturated, attacks.run_attack("autoattack", saturated, x, y, n_target_classes=3,
                                                            n_queries=100, **small), y)
    plain = classifiers.accuracy(cnn, attacks.run_attack("apgd_ce", cnn, x, y, **small), y)
    assert aa < ce - 0.3 and aa <= plain + 0.05, (ce, aa, plain)
