import json

import numpy as np
import pytest
import tensorflow as tf

from tfpurify import attacks, classifiers, losses
from tfpurify.defenses.base import make_optimizer
from tfpurify.defenses.l2l_da import L2LDA, AttackGenerator, L2LDAConfig, attack_trajectory
from tfpurify.errors import AttackConfigError, InputValidationError
from tfpurify.layers import ConditionalBatchNorm
from tfpurify.training import build_defense, load_defended, train_defense

SMALL = dict(steps=4, eps_step=0.05, z_dim=4, generator_filters=8, limit=2000, batch_size=50)


@pytest.fixture(scope="module")
def untrained():
    return build_defense("l2l_da", L2LDAConfig(**SMALL))


def test_generator_output_and_every_step_stay_in_the_ball_and_pixel_range(untrained, fmnist_test, cnn):
    x, y = fmnist_test
    x, y = tf.constant(x[:32]), tf.constant(y[:32])
    z = tf.random.normal([32, 4])
    out = untrained.generator([x, y, z, x * 0, x], training=False)
    assert out.shape == x.shape and float(tf.reduce_max(tf.abs(out))) <= 1.0

    def pushy(inputs, training=False):  # a generator at its limits: +-1 everywhere
        return tf.sign(tf.random.normal(tf.shape(inputs[0])))

    for generator in (untrained.generator, pushy):
        trajectory, step_losses, _ = attack_trajectory(generator, cnn, x, y, z, eps=0.1, eps_step=0.1, steps=3)
        assert len(trajectory) == len(step_losses) == 3
        for x_adv in trajectory:
            assert float(tf.reduce_max(tf.abs(x_adv - x))) <= 0.1 + 1e-6
            assert float(tf.reduce_min(x_adv)) >= 0.0 and float(tf.reduce_max(x_adv)) <= 1.0
    assert float(tf.reduce_max(tf.abs(trajectory[-1] - x))) > 0.09  # the pushy one reached the boundary


def test_different_z_give_different_attacks(untrained, fmnist_test, cnn):
    x, y = fmnist_test
    x, y = tf.constant(x[:16]), tf.constant(y[:16])
    z1, z2 = tf.random.normal([16, 4]), tf.random.normal([16, 4])
    a = attack_trajectory(untrained.generator, cnn, x, y, z1, 0.1, 0.025, 3)[0]
    b = attack_trajectory(untrained.generator, cnn, x, y, z2, 0.1, 0.025, 3)[0]
    assert float(losses.diversity_loss(a, b, z1, z2)) > 0
    same = attack_trajectory(untrained.generator, cnn, x, y, z1, 0.1, 0.025, 3)[0]
    assert float(losses.diversity_loss(a, same, z1, z2)) == 0.0


def test_one_step_per_player_moves_each_objective_its_way(cnn_run, fmnist_test):
    x, y = fmnist_test
    x, y = tf.constant(x[:64]), tf.constant(y[:64], tf.int64)
    model = build_defense("l2l_da", L2LDAConfig(**SMALL, classifier=str(cnn_run)))
    model.compile_for_training()

    def generator_objective():
        tf.random.set_seed(1)  # the same z1, z2 each time
        _, _, _, cls, div = model._attack(x, y, training=False)
        return float(cls + model.config.diversity_weight * div)

    before = generator_objective()
    for _ in range(3):
        model.generator_step(x, y)
    assert generator_objective() > before

    tf.random.set_seed(2)
    _, y2, x_adv, _, _ = model._attack(x, y, training=False)
    x_adv = tf.stop_gradient(x_adv)
    loss_before = float(losses.classification_loss(y2, model.classifier(x_adv)))
    for _ in range(3):
        model.classifier_step(x, y, y2, x_adv)
    assert float(losses.classification_loss(y2, model.classifier(x_adv))) < loss_before


def test_conditional_batch_norm_scales_and_shifts_per_class():
    layer = ConditionalBatchNorm(3)
    x = tf.random.normal([6, 4, 4, 2]) * 3.0 + 1.0
    y = tf.constant([0, 1, 2, 0, 1, 2])
    layer([x, y], training=True)
    layer.gamma.assign([[1.0, 1.0], [2.0, 2.0], [1.0, 1.0]])
    layer.beta.assign([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    out = layer([x, y], training=True).numpy()
    mean = x.numpy().mean(axis=(0, 1, 2))
    var = x.numpy().var(axis=(0, 1, 2))
    x_hat = (x.numpy() - mean) / np.sqrt(var + 1e-3)  # batch statistics, shared by all classes
    np.testing.assert_allclose(out[0], x_hat[0], atol=1e-4)          # class 0: identity affine
    np.testing.assert_allclose(out[1], 2.0 * x_hat[1], atol=1e-4)    # class 1: scaled
    np.testing.assert_allclose(out[2], x_hat[2] + 5.0, atol=1e-4)    # class 2: shifted
    same_input = tf.repeat(x[:1], 3, axis=0)
    per_class = layer([same_input, tf.constant([0, 1, 2])], training=False).numpy()
    assert not np.allclose(per_class[0], per_class[1]) and not np.allclose(per_class[0], per_class[2])


def test_config_rejects_bad_values(cnn_run):
    with pytest.raises(InputValidationError, match="eps_step"):
        L2LDAConfig(eps=0.1, eps_step=0.2)
    with pytest.raises(InputValidationError, match="generator_optimizer"):
        L2LDAConfig(generator_optimizer="rmsprop")
    assert L2LDAConfig(recursive=False).n_steps == 1 and L2LDAConfig(recursive=False).step_size == 0.1
    assert L2LDAConfig(classifier=str(cnn_run)).arch == "cnn"
    for bad in (dict(clip_norm=-1.0), dict(lr_decay_at=1.0), dict(lr_decay_at=-0.1), dict(lr_gamma=0.0)):
        with pytest.raises(InputValidationError, match=next(iter(bad))):
            L2LDAConfig(**bad)


def test_clip_norm_bounds_both_players_updates():
    """The authors' code clips each player's gradient to global norm 1 before its step: `clip_norm`."""
    variables = [tf.Variable([0.0, 0.0]), tf.Variable([0.0])]
    optimizer = make_optimizer("sgd", 1.0, clip_norm=0.5)
    optimizer.apply_gradients(zip([tf.constant([30.0, 40.0]), tf.constant([0.0])], variables))
    np.testing.assert_allclose(variables[0].numpy(), [-0.3, -0.4], rtol=1e-5)  # norm 50 -> 0.5
    model = build_defense("l2l_da", L2LDAConfig(**SMALL, clip_norm=1.0))
    model.compile_for_training()
    assert model.c_optimizer.global_clipnorm == 1.0 and model.g_optimizer.global_clipnorm == 1.0
    assert build_defense("l2l_da", L2LDAConfig(**SMALL)).config.clip_norm == 0.0  # the paper states none


def test_classifier_learning_rate_steps_at_the_planned_fraction(tmp_path):
    """`lr_decay_at=0.5`: the classifier's rate is x`lr_gamma` from half of the planned updates on (the authors'
    code), the generator's unchanged; a run killed at the half resumes with the stepped rate."""
    seen = []

    class Record(tf.keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            optimizers = self.model.c_optimizer, self.model.g_optimizer
            seen.append((int(optimizers[0].iterations), *(float(o.learning_rate) for o in optimizers)))

    class Killed(Exception):
        pass

    class Kill(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise Killed

    config = L2LDAConfig(**{**SMALL, "limit": 400, "steps": 2}, epochs=2, learning_rate=0.01, lr_decay_at=0.5,
                         lr_gamma=0.1)
    with pytest.raises(Killed):  # after the first epoch's backup
        train_defense("l2l_da", config, tmp_path / "run", callbacks=[Record(), Kill()], verbose=0)
    half = len(seen)
    train_defense("l2l_da", config, tmp_path / "run", callbacks=[Record()], verbose=0)
    assert half >= 4 and len(seen) == 2 * half
    assert [u for u, _, _ in seen] == list(range(2 * half))  # the resumed run goes on from the kept updates
    np.testing.assert_allclose([c for _, c, _ in seen], [0.01] * half + [0.001] * half, rtol=1e-6)
    np.testing.assert_allclose([g for _, _, g in seen], config.generator_learning_rate, rtol=1e-6)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cnn_run):
    """One epoch on 2000 images (36 steps of 50, z1 and z2), starting from the session cnn."""
    out = tmp_path_factory.mktemp("runs") / "l2l_da"
    config = L2LDAConfig(**SMALL, epochs=1, classifier=str(cnn_run), learning_rate=1e-3, generator_optimizer="adam",
                         generator_learning_rate=3e-3)
    train_defense("l2l_da", config, out, verbose=0)
    return out


def test_learned_attack_beats_fgsm_on_the_plain_classifier(trained_run, cnn, fmnist_test):
    x, y = fmnist_test
    x_adv, cost = attacks.run_attack("l2l_da", cnn, x, y, eps=0.1, generator_run=str(trained_run), draws=3,
                                     finetune_steps=0, return_cost=True)
    assert np.max(np.abs(x_adv - x)) <= 0.1 + 1e-6 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(cost == 3 * 4)  # draws x steps
    learned = classifiers.accuracy(cnn, x_adv, y)
    fgsm = classifiers.accuracy(cnn, attacks.run_attack("fgsm", cnn, x, y, eps=0.1), y)
    assert learned < fgsm < classifiers.accuracy(cnn, x, y), (learned, fgsm)


def test_finetuning_against_the_target_strengthens_the_learned_attack(trained_run, cnn, fmnist_test):
    x, y = fmnist_test[0][:128], fmnist_test[1][:128]

    def attacked(steps):
        tf.random.set_seed(0)
        x_adv, cost = attacks.run_attack("l2l_da", cnn, x, y, eps=0.1, generator_run=str(trained_run), draws=1,
                                         finetune_steps=steps, return_cost=True, batch_size=64)
        assert np.max(np.abs(x_adv - x)) <= 0.1 + 1e-6
        loss = tf.keras.losses.sparse_categorical_crossentropy(y, cnn(x_adv), from_logits=True)
        return float(np.mean(loss)), cost

    plain, _ = attacked(0)
    tuned, cost = attacked(20)
    assert tuned > 1.03 * plain, (plain, tuned)  # the generator ascended the target's loss (seeds move it < 1 %)
    assert np.all(cost == 1 * 4 + 2 * 20 * 5)  # the draw's steps, two trajectories of T + 1 gradients per update
    for bad in (-1, 1.5, True):
        with pytest.raises(AttackConfigError, match="finetune_steps"):
            attacks.resolve_params("l2l_da", eps=0.1, generator_run=str(trained_run), finetune_steps=bad)


def test_learned_attack_needs_its_run():
    with pytest.raises(AttackConfigError, match="l2l-da-run"):
        attacks.resolve_params("l2l_da", eps=0.1)


def test_run_reloads_as_a_robust_classifier(trained_run, cnn_run):
    defended, info = load_defended(trained_run)
    assert defended.robust_classifier and defended.purifier is None and defended.undefended is None
    assert info["defense"] == "l2l_da" and info["classifier"] == "cnn" and set(info["runs"]) == {"defense"}
    assert isinstance(defended.classifier, L2LDA)
    with_plain, info = load_defended(trained_run, cnn_run)
    assert with_plain.undefended is not None and set(info["runs"]) == {"defense", "undefended"}
    history = (trained_run / "history.csv").read_text().splitlines()[0]
    for tracker in ("cls_loss", "adv_loss", "div_loss", "gen_loss"):
        assert tracker in history
    assert json.loads((trained_run / "config.json").read_text())["classifier"] == str(cnn_run)


def test_generator_shapes_for_32x32_colour():
    generator = AttackGenerator((32, 32, 3), 10, z_dim=4, filters=8)
    x = tf.random.uniform([2, 32, 32, 3])
    assert generator([x, tf.constant([1, 2]), tf.zeros([2, 4]), x, x]).shape == (2, 32, 32, 3)


def test_delta_keeps_what_pixel_clipping_cuts_unless_asked(untrained, cnn):
    x = tf.fill([4, 28, 28, 1], 0.98)  # near the top of the pixel range: clipping cuts most of a step up
    y = tf.zeros([4], tf.int64)
    z = tf.random.normal([4, untrained.config.z_dim], seed=2)

    def final(pixel_clipped_delta):
        return attack_trajectory(untrained.generator, cnn, x, y, z, 0.1, 0.05, 4,
                                 pixel_clipped_delta=pixel_clipped_delta)[0][-1].numpy()

    paper, ours = final(False), final(True)
    assert np.all(paper <= 1.0) and np.all(np.abs(paper - 0.98) <= 0.1 + 1e-6)
    assert not np.allclose(paper, ours)  # eq. 5 keeps the unclipped delta; the earlier form did not
    assert L2LDAConfig().diversity_form == "example" and not L2LDAConfig().pixel_clipped_delta
