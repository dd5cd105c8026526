import numpy as np
import pytest
import tensorflow as tf

from tfpurify import attacks, classifiers, registry
from tfpurify.errors import AttackConfigError

EPS = 0.1
# Small but real settings per attack, so the whole file runs in well under a minute.
FAST = {
    "fgsm": {},
    "pgd": {"nb_iter": 10, "restarts": 2},
    "pgd_eot": {"nb_iter": 5, "eot_iter": 2},
    "bim": {"nb_iter": 10},
    "mim": {"nb_iter": 10},
    "cw_l2": {"max_iterations": 20, "binary_search_steps": 2, "eps": 1.0},
    "spsa": {"nb_iter": 5, "spsa_samples": 16},
    "apgd_ce": {"nb_iter": 10},
    "apgd_dlr": {"nb_iter": 10, "norm": 2, "eps": 1.0},
    "apgd_t": {"nb_iter": 5, "n_target_classes": 2},
    "square": {"n_queries": 50},
    "fab_t": {"nb_iter": 10, "n_target_classes": 2},
    "autoattack": {"nb_iter": 5, "n_target_classes": 2, "n_queries": 50},
}


# Learned attacks need a trained run: l2l_da's constraints are tested in tests/defenses/test_l2l_da.py.
LEARNED = {"l2l_da"}
# Attacks on a purifier itself need a defense: tested in tests/attacks/test_purifier.py.
ON_PURIFIERS = {"pgd_recon", "latent"}


def test_every_attack_is_checked_here_or_with_its_defense():
    registry.load()  # registers the learned attacks (conftest did too)
    assert set(attacks.ATTACKS) == set(FAST) | LEARNED | ON_PURIFIERS


@pytest.mark.parametrize("name", sorted(FAST))
def test_attack_stays_in_eps_ball_and_pixel_range(name, cnn, fmnist_test):
    x, y = fmnist_test
    n = 4 if name == "spsa" else 40
    params = {"eps": EPS, **FAST[name]}
    x_adv = attacks.run_attack(name, cnn, x[:n], y[:n], batch_size=16, **params)
    assert x_adv.shape == x[:n].shape and x_adv.dtype == np.float32
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x[:n]).reshape(n, -1)
    l2 = name == "cw_l2" or params.get("norm") == 2
    if params["eps"] is not None and not l2:
        assert np.abs(delta).max() <= params["eps"] + 1e-6
    if l2:
        assert np.linalg.norm(delta, axis=1).max() <= params["eps"] + 1e-4
    assert np.abs(delta).max() > 0, f"{name} changed nothing"


@pytest.mark.parametrize("name", ["fgsm", "pgd", "bim", "mim", "spsa"])
def test_eps_zero_returns_input(name, cnn, fmnist_test):
    x, y = fmnist_test
    x_adv = attacks.run_attack(name, cnn, x[:8], y[:8], eps=0.0)
    np.testing.assert_array_equal(x_adv, x[:8])


def test_pgd_lowers_accuracy_well_below_clean(cnn, fmnist_test, cnn_clean_accuracy):
    x, y = fmnist_test
    x_adv = attacks.run_attack("pgd", cnn, x, y, eps=0.1, nb_iter=20, batch_size=128)
    adv_acc = classifiers.accuracy(cnn, x_adv, y)
    assert adv_acc < cnn_clean_accuracy - 0.3, (adv_acc, cnn_clean_accuracy)


def test_pgd_restarts_never_weaken_the_attack(cnn, fmnist_test):
    x, y = fmnist_test
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    one = attacks.run_attack("pgd", cnn, x[:64], y[:64], eps=0.05, nb_iter=5, restarts=1, seed=1)
    many = attacks.run_attack("pgd", cnn, x[:64], y[:64], eps=0.05, nb_iter=5, restarts=4, seed=1)
    # The first restart of `many` is `one` (same seed); later restarts only replace an example
    # when they fool the model or raise its loss.
    assert classifiers.accuracy(cnn, many, y[:64]) <= classifiers.accuracy(cnn, one, y[:64])
    fooled_one = np.argmax(cnn(one), 1) != y[:64]
    fooled_many = np.argmax(cnn(many), 1) != y[:64]
    assert np.all(fooled_many[fooled_one])
    same = fooled_one == fooled_many
    assert np.all(loss(y[:64], cnn(many)).numpy()[same] >= loss(y[:64], cnn(one)).numpy()[same] - 1e-4)


def test_seed_makes_random_starts_reproducible(cnn, fmnist_test):
    x, y = fmnist_test
    run = lambda seed: attacks.run_attack("pgd", cnn, x[:32], y[:32], eps=0.1, eps_iter=0.01, nb_iter=1, seed=seed)  # noqa: E731
    first = run(5)
    np.testing.assert_array_equal(first, run(5))
    assert not np.array_equal(first, run(6))


def test_batching_pads_the_last_batch_and_keeps_order(cnn, fmnist_test):
    x, y = fmnist_test
    whole = attacks.run_attack("fgsm", cnn, x[:50], y[:50], batch_size=50)
    batched = attacks.run_attack("fgsm", cnn, x[:50], y[:50], batch_size=16)
    np.testing.assert_allclose(whole, batched, atol=1e-6)


def test_y_none_attacks_predictions(cnn, fmnist_test):
    x, _ = fmnist_test
    pred = np.argmax(cnn(x[:32]), 1)
    x_adv = attacks.run_attack("pgd", cnn, x[:32], None, eps=0.1, nb_iter=10)
    assert np.mean(np.argmax(cnn(x_adv), 1) != pred) > 0.5


def test_model_fn_can_be_any_callable(cnn, fmnist_test):
    x, y = fmnist_test
    pipeline = lambda images: cnn(tf.clip_by_value(images, 0.0, 1.0))  # noqa: E731
    x_adv = attacks.run_attack("pgd", pipeline, x[:32], y[:32], eps=0.1, nb_iter=10)
    assert classifiers.accuracy(cnn, x_adv, y[:32]) < classifiers.accuracy(cnn, x[:32], y[:32])


def test_label_count_must_match(cnn, fmnist_test):
    x, y = fmnist_test
    with pytest.raises(AttackConfigError, match="labels"):
        attacks.run_attack("fgsm", cnn, x[:4], y[:3])
