import numpy as np
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from tfpurify import attacks, classifiers


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
