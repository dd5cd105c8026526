import numpy as np

from tfpurify import attacks


def test_spsa_learning_rate_sets_its_step(cnn, fmnist_test):
    """cleverhans' SPSAAdam drops `lr` under Keras 2.15; ours must take the step it is given."""
    x, y = fmnist_test
    common = dict(eps=0.1, nb_iter=1, spsa_samples=16, seed=3)
    small = attacks.run_attack("spsa", cnn, x[:2], y[:2], learning_rate=0.001, **common)
    large = attacks.run_attack("spsa", cnn, x[:2], y[:2], learning_rate=0.05, **common)
    # same random start (seed), one Adam step of about learning_rate per pixel apart
    assert np.mean(np.abs(large - small)) > 0.01
