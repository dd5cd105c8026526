"""Each defense's game, player by player: k steps of one player lower that player's own objective.

Every other weight is put back after each `train_step`, so only the player under test moves. Each
objective is written here from its paper (with `tfpurify.losses`, which have their own numeric
tests), not read off the defense's own metrics: a sign error in a defense's loss makes its player
climb the paper's objective, and the test fails. Random draws (z, PGD starts, noise) repeat by
seed, so the steps descend one fixed objective.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfpurify import losses
from tfpurify.attacks.loop import iterative_gradient
from tfpurify.defenses.adversarial_training import pgd_examples
from tfpurify.defenses.l2l_da import attack_trajectory
from tfpurify.defenses.registry import REGISTRY, build_defense

SEED, STEPS = 7, 5


@pytest.fixture(scope="module")
def batch(fmnist_train_slice):
    x, y = fmnist_train_slice
    return x[:32], y[:32].astype(np.int64)


def _snapshot(model):
    return [(w, w.numpy()) for w in model.weights]


def _restore(snapshot, keep=()):
    kept = {id(w) for w in keep}
    for w, value in snapshot:
        if id(w) not in kept:
            w.assign(value)


def _measure(model, objective, *args):
    """The objective at the current weights with the seeded draws; any state it touches is put back."""
    snapshot = _snapshot(model)
    tf.random.set_seed(SEED)
    value = float(objective(*args))
    _restore(snapshot)
    return value


def _steps_of(model, player, data):
    """STEPS train steps on `data` in which only `player`'s trainable weights move."""
    for _ in range(STEPS):
        snapshot = _snapshot(model)
        tf.random.set_seed(SEED)
        model.train_step(data)
        _restore(snapshot, keep=player.trainable_weights)


def _assert_descends(model, data, players):
    """players: {name: (player model, objective(), +1 to lower / -1 to raise)}; each from the same start."""
    start = _snapshot(model)
    moved = {}
    for name, (player, objective, direction) in players.items():
        before = _measure(model, objective)
        _steps_of(model, player, data)
        after = _measure(model, objective)
        _restore(start)
        moved[name] = (before, after)
        assert direction * (after - before) < 0, f"{name}: objective {before:.5f} -> {after:.5f}"
    return moved


GAMES = {}


def game(name):
    def register(test):
        GAMES[name] = test
        return test
    return register


def test_every_registered_defense_has_its_game_tested():
    assert set(GAMES) == set(REGISTRY)


@game("cowboy")
def test_cowboy_discriminator_and_generator(batch):
    x, _ = batch
    model = build_defense("cowboy", {"base_filters": 8, "z_dim": 16, "batch_size": 32})
    model.compile_for_training()

    def pair():
        z = tf.random.normal([len(x), model.config.z_dim])  # the train step's first draw
        fake = model.discriminator(model.generator(z, training=True), training=True)
        return model.discriminator(x, training=True), fake

    _assert_descends(model, x, {
        "discriminator": (model.discriminator, lambda: losses.minimax_discriminator_loss(*pair()), 1),  # eq. 1
        "generator": (model.generator, lambda: losses.non_saturating_generator_loss(pair()[1]), 1),
    })


@game("fbgan")
def test_fbgan_discriminator_generator_and_encoder(batch):
    x, _ = batch
    # the bidirectional game alone (eq. 6 and the encoder's feature matching): no MI, cycle or AE terms
    model = build_defense("fbgan", {"base_filters": 8, "lambda_mi": 0.0, "latent_cycle_weight": 0.0,
                                    "ae_weight": 0.0, "d_dropout": 0.0, "batch_size": 32})
    model.compile_for_training()

    def pairs():
        z = model.sample_prior(len(x))  # the train step's first draw
        e = model.straight_through_code(model.encode(x, training=True))
        real, real_features, _, _ = model.discriminator([x, e], training=True)
        fake, fake_features, _, _ = model.discriminator([model.generator(z, training=True), z], training=True)
        rec, _, _, _ = model.discriminator([model.generator(e, training=True), e], training=True)
        return real, fake, rec, real_features, fake_features

    def d_objective():  # (x, E(x)) real; (G(z), z) and (G(E(x)), E(x)) fake
        real, fake, rec, _, _ = pairs()
        return losses.minimax_discriminator_loss(real, [fake, rec], [0.5, 0.5])

    def g_objective():
        _, fake, rec, _, _ = pairs()
        return losses.non_saturating_generator_loss(fake) + losses.non_saturating_generator_loss(rec)

    def e_objective():  # paper 3.3: E matches D's joint features of real and generated pairs
        _, _, _, real_features, fake_features = pairs()
        return losses.feature_matching_loss(real_features, fake_features)

    _assert_descends(model, x, {"discriminator": (model.discriminator, d_objective, 1),
                                "generator": (model.generator, g_objective, 1),
                                "encoder": (model.encoder, e_objective, 1)})


def _gcln(cnn_run, perceptual_weight):
    model = build_defense("gcln", {"classifier": str(cnn_run), "filters": 8, "residual_blocks": 1,
                                   "detector_filters": 8, "attack_steps": 2, "batch_size": 32,
                                   "perceptual_weight": perceptual_weight})
    model.compile_for_training()
    return model


@game("gcln")
def test_gcln_detector_and_both_terms_of_the_cleaner(batch, cnn_run):
    x, y = batch

    def parts(model):
        c = model.config
        x_adv = pgd_examples(model.target_classifier, x, y, c.attack_eps[0], c.attack_eps[0] / 4.0, c.attack_steps)
        recovered = model.cleaner(x_adv, training=True)
        return x_adv, recovered

    def d_objective(model):  # eq. 5: clean images real, attacked and cleaned-attacked fake
        x_adv, recovered = parts(model)
        fakes = [model.detector_net(x_adv, training=True), model.detector_net(recovered, training=True)]
        return losses.minimax_discriminator_loss(model.detector_net(x, training=True), fakes, [0.5, 0.5])

    def adversarial(model):  # eq. 4's adversarial term: the cleaned image passes D as clean
        return losses.non_saturating_generator_loss(model.detector_net(parts(model)[1], training=True))

    def perceptual(model):  # eq. 3's perceptual term: the classifier's features of x and G(x*) agree
        return losses.perceptual_loss(model._features_of(x), model._features_of(parts(model)[1]))

    only_adversarial, only_perceptual = _gcln(cnn_run, 0.0), _gcln(cnn_run, 1.0)
    _assert_descends(only_adversarial, (x, y), {
        "detector": (only_adversarial.detector_net, lambda: d_objective(only_adversarial), 1),
        "cleaner, adversarial term": (only_adversarial.cleaner, lambda: adversarial(only_adversarial), 1)})
    _assert_descends(only_perceptual, (x, y), {
        "cleaner, perceptual term": (only_perceptual.cleaner, lambda: perceptual(only_perceptual), 1)})


@game("aaa")
def test_aaa_autoencoder_lowers_eq_3_at_its_own_adversarial_examples(batch, cnn_run):
    x, y = batch
    model = build_defense("aaa", {"classifier": (str(cnn_run),), "filters": 8, "nb_iter": 3, "eps_iter": 0.05,
                                  "batch_size": 32, "mse_weight": 1.0})  # a fixed lambda: one objective to descend
    model.compile_for_training()
    classifier = model.native_classifiers[0]

    def objective():  # eq. 3 at eq. 2's adversary: PGD through classifier(G(.)) on the current weights
        c = model.config
        x_adv, _, _ = iterative_gradient(lambda images: classifier(model.autoencoder(images)), x, y, c.eps,
                                         c.eps_iter, c.nb_iter, rand_init=c.rand_init, early_exit=False)
        cleaned = model.autoencoder(x_adv, training=True)
        return (losses.classification_loss(y, classifier(cleaned)) + c.mse_weight * losses.reconstruction_loss(
            x, cleaned))

    _assert_descends(model, (x, y), {"autoencoder": (model.autoencoder, objective, 1)})


@game("l2l_da")
def test_l2l_da_generator_raises_the_classifier_loss_and_the_classifier_lowers_it(batch):
    x, y = batch
    model = build_defense("l2l_da", {"generator_filters": 8, "steps": 3, "diversity": False, "batch_size": 32})
    model.compile_for_training()
    c = model.config

    def trajectory():
        z = tf.concat([tf.random.normal([len(x), c.z_dim]), tf.random.normal([len(x), c.z_dim])], axis=0)
        x2, y2 = tf.concat([x, x], axis=0), tf.concat([y, y], axis=0)
        steps, _, _ = attack_trajectory(model.generator, lambda images: model.classifier(images, training=False),
                                        x2, y2, z, c.eps, c.step_size, c.n_steps, training=True)
        return steps, y2

    def attack_objective():  # eq. 6: the classifier's loss along the generated trajectory (maximized)
        steps, y2 = trajectory()
        return tf.reduce_mean([losses.classification_loss(y2, model.classifier(s, training=False)) for s in steps])

    tf.random.set_seed(SEED)
    steps, y2 = trajectory()
    x_adv, y2 = steps[-1].numpy(), y2.numpy()

    def classifier_objective():  # Algorithm 1, line 10: L(x) + L(x_adv), the attack held fixed
        return (losses.classification_loss(y, model.classifier(x, training=True))
                + losses.classification_loss(y2, model.classifier(x_adv, training=True)))

    _assert_descends(model, (x, y), {"generator": (model.generator, attack_objective, -1),
                                     "classifier": (model.classifier, classifier_objective, 1)})


@game("pgd_at")
def test_pgd_at_classifier_lowers_its_loss_at_its_own_pgd_examples(batch):
    x, y = batch
    model = build_defense("pgd_at", {"nb_iter": 3, "batch_size": 32})
    model.compile_for_training()
    c = model.config

    def objective():  # Madry et al.: the loss at PGD examples of the current weights
        x_adv = pgd_examples(model.classifier, x, y, c.eps, c.step_size, c.nb_iter, c.rand_init)
        return losses.classification_loss(y, model.classifier(x_adv, training=True))

    _assert_descends(model, (x, y), {"classifier": (model.classifier, objective, 1)})


@game("denoising_ae")
def test_denoising_ae_lowers_the_reconstruction_error_of_noisy_images(batch):
    x, _ = batch
    model = build_defense("denoising_ae", {"filters": 8, "batch_size": 32})
    model.compile_for_training()
    noisy = np.clip(x + np.random.default_rng(0).normal(0, model.config.noise_std, x.shape), 0, 1).astype(np.float32)

    def objective():  # MagNet: reconstruct the clean image from the noisy one
        return tf.reduce_mean(tf.square(model.autoencoder(noisy, training=True) - x))

    _assert_descends(model, (tf.constant(noisy), tf.constant(x)), {"autoencoder": (model.autoencoder, objective, 1)})
