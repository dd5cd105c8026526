import numpy as np
import pytest
import tensorflow as tf

from tfpurify import adaptive, attacks, classifiers, evaluation
from tfpurify.attacks.purifier import nearest_other_class_codes
from tfpurify.errors import AttackConfigError


@pytest.fixture(scope="module")
def batch(fmnist_test):
    x, y = fmnist_test
    return x[:64], y[:64]


def _recon_error(defended, x):
    return float(np.mean(np.sum((defended.purify(x).numpy() - x) ** 2, axis=(1, 2, 3))))


def test_pgd_recon_without_its_term_is_pgd(defended_dae, batch):
    x, y = batch[0][:32], batch[1][:32]
    target = adaptive.whitebox_target(defended_dae)
    plain = attacks.run_attack("pgd", target, x, y, eps=0.1, nb_iter=5, rand_init=False)
    recon = attacks.run_attack("pgd_recon", target, x, y, eps=0.1, nb_iter=5, rand_init=False, recon_weight=0.0)
    np.testing.assert_allclose(recon, plain, atol=1e-6)


def test_pgd_recon_keeps_the_reconstruction_close_and_stays_in_the_ball(defended_dae, batch):
    x, y = batch[0][:32], batch[1][:32]
    target = adaptive.whitebox_target(defended_dae)
    kwargs = dict(eps=0.1, nb_iter=10, early_exit=False)
    free = attacks.run_attack("pgd_recon", target, x, y, recon_weight=0.0, **kwargs)
    tied = attacks.run_attack("pgd_recon", target, x, y, recon_weight=10.0, **kwargs)
    assert np.abs(tied - x).max() <= 0.1 + 1e-6 and 0.0 <= tied.min() and tied.max() <= 1.0
    assert _recon_error(defended_dae, tied) < 0.8 * _recon_error(defended_dae, free)


def test_nearest_other_class_codes():
    codes = tf.constant([[0.0], [1.0], [5.0], [6.0]])
    out = nearest_other_class_codes(codes, tf.constant([0, 0, 1, 1])).numpy().ravel()
    np.testing.assert_array_equal(out, [5.0, 5.0, 1.0, 1.0])
    same = nearest_other_class_codes(codes, tf.constant([2, 2, 2, 2])).numpy().ravel()  # no other class: itself
    np.testing.assert_array_equal(same, [0.0, 1.0, 5.0, 6.0])


def test_latent_attack_pulls_codes_and_lowers_accuracy(defended_dae, batch):
    x, y = batch
    target = adaptive.whitebox_target(defended_dae)
    x_adv, cost = attacks.run_attack("latent", target, x, y, eps=0.2, nb_iter=20, return_cost=True)
    assert np.abs(x_adv - x).max() <= 0.2 + 1e-6 and 0.0 <= x_adv.min() and x_adv.max() <= 1.0
    purifier = defended_dae.purifier
    codes = tf.reshape(purifier.encode(x), [len(x), -1])
    goal = nearest_other_class_codes(codes, y).numpy()

    def distance(images):
        return float(np.mean(np.sum((tf.reshape(purifier.encode(images), [len(x), -1]).numpy() - goal) ** 2, 1)))

    assert distance(x_adv) < 0.8 * distance(x)
    clean = classifiers.accuracy(defended_dae, x, y)
    attacked = classifiers.accuracy(defended_dae, x_adv, y)
    assert attacked < clean - 0.1, (clean, attacked)
    assert 0 < cost.mean() <= 20


def test_purifier_attacks_need_a_purifier(cnn, batch):
    x, y = batch
    for name in ("pgd_recon", "latent"):
        with pytest.raises(AttackConfigError, match="whitebox threat model of a defense run"):
            attacks.run_attack(name, cnn, x[:4], y[:4])


def test_evaluate_runs_them_white_box_only(defended_dae, batch):
    x, y = batch
    pipelines = adaptive.threat_model_pipelines(defended_dae)
    report = evaluation.evaluate(defended_dae, x[:32], y[:32], [("latent", {"eps": 0.2, "nb_iter": 5})],
                                 threat_model=["none", "graybox", "whitebox"], pipelines=pipelines,
                                 sanity_checks=False, defense="denoising_ae")
    assert [(r.threat_model, r.attack) for r in report.results] == [("whitebox", "latent")]
    assert sum("latent skipped under" in w for w in report.warnings) == 2


def test_latent_needs_a_purifier_with_a_code(defended_dae, batch):
    x, y = batch
    target = adaptive.whitebox_target(defended_dae)
    target.purifier = type("NoCode", (), {})()  # a purifier without `encode`
    with pytest.raises(AttackConfigError, match="latent code"):
        attacks.run_attack("latent", target, x[:4], y[:4])
