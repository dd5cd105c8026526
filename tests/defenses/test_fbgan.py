import numpy as np
import pytest
import tensorflow as tf

from tfpurify import adaptive, data, export
from tfpurify.defenses import DefendedClassifier
from tfpurify.defenses.fbgan import FBGAN, FBGANConfig
from tfpurify.errors import InputValidationError
from tfpurify.training import build_defense, load_defense, train_defense

SMALL = FBGANConfig(base_filters=8, batch_size=32)


@pytest.fixture(scope="module")
def untrained():
    model = build_defense("fbgan", SMALL)
    model.compile_for_training()
    return model


def _purity(codes, labels):
    """Fraction of examples whose label is the majority label of their categorical code."""
    return sum(np.bincount(labels[codes == c]).max() for c in np.unique(codes)) / len(labels)


def test_shapes_and_ranges(untrained):
    x = np.random.rand(5, 28, 28, 1).astype(np.float32)
    z = untrained.encode(x).numpy()
    assert z.shape == (5, SMALL.latent_dim)
    np.testing.assert_allclose(z[:, :10].sum(axis=1), 1.0, atol=1e-5)  # categorical code is a softmax
    images = untrained.generate(untrained.sample_prior(5)).numpy()
    assert images.shape == (5, 28, 28, 1) and images.min() >= 0.0 and images.max() <= 1.0
    logit, features, q_categorical, q_continuous = untrained.discriminator([x, z])
    assert logit.shape == (5, 1) and features.shape[0] == 5
    assert q_categorical.shape == (5, 10) and q_continuous.shape == (5, SMALL.n_continuous)
    assert untrained.purify(x).shape == x.shape


def test_32x32_colour_inputs_build():
    model = FBGAN(FBGANConfig(base_filters=4), input_shape=(32, 32, 3))
    assert model(tf.zeros((2, 32, 32, 3))).shape == (2, 32, 32, 3)
    with pytest.raises(InputValidationError, match="divisible by 4"):
        FBGAN(FBGANConfig(base_filters=4), input_shape=(30, 30, 1))


def test_weight_norm_and_no_batch_norm_in_encoder_and_generator(untrained):
    for player in (untrained.encoder, untrained.generator):
        kinds = {type(layer).__name__ for layer in player.layers}
        assert "WeightNormalization" in kinds
        assert not any("BatchNormalization" in k for k in kinds)


def test_prior_is_one_hot_and_uniform(untrained):
    z = untrained.sample_prior(2000).numpy()
    categorical, continuous = z[:, :10], z[:, 10:]
    assert set(np.unique(categorical)) == {0.0, 1.0} and np.all(categorical.sum(axis=1) == 1)
    assert np.bincount(categorical.argmax(axis=1), minlength=10).min() > 120
    assert continuous.min() >= -1.0 and continuous.max() <= 1.0 and abs(continuous.mean()) < 0.05


def test_white_box_regularization_yields_one_hot_codes(untrained):
    z = tf.constant([[0.1, 0.7, 0.2, 0, 0, 0, 0, 0, 0, 0] + [2.0, -3.0, 0.5] + [0.0] * 5])
    regularized = untrained.regularize(z).numpy()[0]
    np.testing.assert_array_equal(regularized[:10], np.eye(10)[1])
    np.testing.assert_allclose(regularized[10:13], [1.0, -1.0, 0.5])


def test_bpda_surrogate_gives_gradients_through_the_argmax(untrained):
    x = tf.constant(np.random.rand(4, 28, 28, 1).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(adaptive.bpda(untrained)(x))
    grad = tape.gradient(out, x)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0
    np.testing.assert_allclose(adaptive.bpda(untrained)(x), untrained.purify(x), atol=1e-6)


def test_paper_protocol_target_is_the_regularized_pipeline_without_a_surrogate(untrained, cnn):
    assert untrained.config.white_box_regularization
    pipelines = adaptive.threat_model_pipelines(DefendedClassifier(cnn, purifier=untrained))
    x = tf.constant(np.random.RandomState(0).rand(4, 28, 28, 1).astype(np.float32))
    y = tf.constant([0, 1, 2, 3])
    grads = {}
    for name, target in (("paper", pipelines["whitebox_no_bpda"][0]), ("bpda", pipelines["whitebox"][0]),
                         ("by hand", lambda images: cnn(untrained.purify(images)))):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, target(x)))
        grads[name] = tape.gradient(loss, x).numpy()
        np.testing.assert_allclose(target(x), cnn(untrained.purify(x)), atol=1e-5)
    np.testing.assert_allclose(grads["paper"], grads["by hand"], atol=1e-7)  # exactly the served pipeline
    assert not np.allclose(grads["paper"], grads["bpda"], atol=1e-7)  # BPDA adds the argmax's surrogate gradient


def test_one_fit_step_updates_every_player_without_nan(untrained):
    x = np.random.rand(32, 28, 28, 1).astype(np.float32)
    players = (untrained.encoder, untrained.generator, untrained.discriminator)
    before = [[w.numpy().copy() for w in p.trainable_weights] for p in players]
    history = untrained.fit(untrained.make_dataset(x, None, 32), epochs=1, verbose=0,
                            callbacks=untrained.training_callbacks())
    assert set(history.history) == {"d_loss", "g_loss", "e_loss", "mi_gap", "recon_error"}
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    for player, old in zip(players, before):
        moved = [not np.allclose(a, b.numpy()) for a, b in zip(old, player.trainable_weights)]
        assert all(moved), f"{player.name}: {moved.count(False)} weights did not move"
        assert all(np.all(np.isfinite(w.numpy())) for w in player.trainable_weights)


def test_straight_through_code_is_the_served_code_with_the_softmax_gradient(untrained):
    logits = tf.constant(np.random.RandomState(0).randn(4, 10).astype(np.float32))
    z = tf.concat([tf.nn.softmax(logits), tf.constant(np.random.RandomState(1).randn(4, 8).astype(np.float32) * 2)], 1)
    np.testing.assert_allclose(untrained.straight_through_code(z), untrained.regularize(z), atol=1e-6)
    weights = tf.constant(np.random.RandomState(2).randn(4, 18).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = tf.reduce_sum(untrained.straight_through_code(z) * weights)
    grad = tape.gradient(out, z).numpy()
    np.testing.assert_allclose(grad[:, :10], weights.numpy()[:, :10], atol=1e-6)  # identity through the argmax
    inside = np.abs(z.numpy()[:, 10:]) < 1
    np.testing.assert_allclose(grad[:, 10:], np.where(inside, weights.numpy()[:, 10:], 0.0), atol=1e-6)


def test_fit_step_with_the_test_time_code_and_the_paper_ae_sum():
    import dataclasses

    model = build_defense("fbgan", dataclasses.replace(SMALL, straight_through=True, ae_reduction="sum",
                                                       ae_fraction=1.0))
    model.compile_for_training()
    x = np.random.rand(32, 28, 28, 1).astype(np.float32)
    before = [w.numpy().copy() for w in model.encoder.trainable_weights]
    history = model.fit(model.make_dataset(x, None, 32), epochs=1, verbose=0, callbacks=model.training_callbacks())
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    assert history.history["recon_error"][-1] > 10  # a per-image sum over 784 pixels, not a per-pixel mean
    assert all(not np.allclose(a, b.numpy()) for a, b in zip(before, model.encoder.trainable_weights))
    with pytest.raises(InputValidationError, match="ae_reduction"):
        FBGANConfig(ae_reduction="max")


def test_ae_term_switches_on_for_the_last_fraction(untrained):
    x = np.random.rand(64, 28, 28, 1).astype(np.float32)
    untrained.config = FBGANConfig(base_filters=8, batch_size=32, ae_fraction=0.5)
    try:
        untrained.fit(untrained.make_dataset(x, None, 32), epochs=2, verbose=0, callbacks=untrained.training_callbacks())
        assert int(untrained.ae_start_step.numpy()) == 2  # 4 steps in all, the last half with the term
    finally:
        untrained.config = SMALL


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fbgan"
    # the AE path (our deviation; the paper's E also plays eq. 6's reconstructed pair, which at this
    # size collapses the codes onto few categories: purity 0.28)
    config = FBGANConfig(base_filters=8, batch_size=32, epochs=10, limit=1200, ae_fraction=1.0, learning_rate=5e-4,
                         seed=1, encoder_adversarial=False)
    _, history = train_defense("fbgan", config, out, verbose=0)
    return out, history


def test_short_training_lowers_reconstruction_error_and_codes_track_labels(trained_run):
    out, history = trained_run
    assert history["recon_error"][-1] < 0.7 * history["recon_error"][0], history["recon_error"]
    model, _ = load_defense(out)
    x, y = data.load_dataset("fashion_mnist", "test", limit=500)
    codes = np.argmax(model.encode(x).numpy()[:, :10], axis=1)
    assert _purity(codes, y) > 0.3


def test_diagnostics_purity_and_generated_accuracy(trained_run, cnn):
    model, _ = load_defense(trained_run[0])
    x, y = data.load_dataset("fashion_mnist", "test", limit=500)
    d = model.diagnostics(x, y, cnn, per_category=20)
    codes = np.argmax(model.encode(x).numpy()[:, :10], axis=1)
    assert d["purity"] == pytest.approx(_purity(codes, y))
    assert len(d["generated_accuracy"]) == 10 and len(d["category_labels"]) == 10
    known = [g for g in d["generated_accuracy"] if g is not None]
    assert all(0.0 <= g <= 1.0 for g in known) and d["generated_accuracy_mean"] == pytest.approx(np.mean(known))
    # a classifier that always answers class c is right on exactly the categories whose label is c
    c = next(label for label in d["category_labels"] if label >= 0)
    constant = model.diagnostics(x, y, lambda images: tf.one_hot(tf.fill([tf.shape(images)[0]], c), 10), 5)
    assert constant["generated_accuracy"] == [None if label < 0 else float(label == c)
                                              for label in d["category_labels"]]


def test_pictures(trained_run):
    model, config = load_defense(trained_run[0])
    pictures = model.pictures(np.random.rand(3, 28, 28, 1).astype(np.float32))
    assert set(pictures) == {"reconstruction", "latent_traversal", "categories"}
    assert len(pictures["latent_traversal"]) == config.n_continuous
    assert len(pictures["categories"]) == config.n_categories


def test_export_reload_equality(trained_run, cnn, tmp_path):
    model, _ = load_defense(trained_run[0])
    defended = DefendedClassifier(cnn, purifier=model)
    defended(tf.zeros((1, 28, 28, 1)))
    path = export.export_saved_model(defended, tmp_path, "fbgan", 1, (28, 28, 1))
    reloaded = tf.saved_model.load(str(path))
    x = np.random.rand(6, 28, 28, 1).astype(np.float32)
    served = reloaded.signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(served["probabilities"], defended.predict_outputs(x)["probabilities"], atol=1e-5)
    purified = reloaded.signatures["purify"](images=tf.constant(x))["purified"]
    np.testing.assert_allclose(purified, model.purify(x), atol=1e-5)


@pytest.mark.parametrize("straight_through,encoder_adversarial", [(False, False), (True, True)])
def test_train_step_gives_each_player_the_gradient_of_its_own_loss_with_every_term(straight_through,
                                                                                   encoder_adversarial):
    """Eq. 6 with the MI term (D, Q and G), the AE term (G and E, switched on), the latent cycle (E) and, with
    `encoder_adversarial`, E's share of the reconstructed pair's term:
    with SGD at rate 1 every weight moves by minus the gradient of its player's loss, computed by hand
    from the same draw of z (eager, fast: `make mutation` runs it for fbgan.py)."""
    from tfpurify import losses

    cfg = FBGANConfig(base_filters=8, batch_size=8, d_dropout=0.0, lambda_mi=0.7, latent_cycle_weight=0.3,
                      ae_weight=2.0, ae_reduction="sum", straight_through=straight_through,
                      encoder_adversarial=encoder_adversarial)
    model = build_defense("fbgan", cfg)
    model.compile(d_optimizer=tf.keras.optimizers.SGD(1.0), g_optimizer=tf.keras.optimizers.SGD(1.0),
                  e_optimizer=tf.keras.optimizers.SGD(1.0))
    model.ae_start_step.assign(0)  # the AE term is on from the first step
    x = tf.constant(data.load_dataset("fashion_mnist", "train", limit=8)[0])
    players = {"d": model.discriminator, "g": model.generator, "e": model.encoder}
    start = {k: [w.numpy() for w in p.trainable_weights] for k, p in players.items()}

    def split(z):
        return z[:, :cfg.n_categories], z[:, cfg.n_categories:]

    tf.random.set_seed(11)
    z = model.sample_prior(8)
    with tf.GradientTape(persistent=True) as tape:
        e = model.encode(x, training=True)
        if straight_through:
            e = model.straight_through_code(e)
        x_fake, x_rec = model.generator(z, training=True), model.generator(e, training=True)
        real, real_features, _, _ = model.discriminator([x, e], training=True)
        fake, fake_features, q_cat, q_cont = model.discriminator([x_fake, z], training=True)
        rec, _, _, _ = model.discriminator([x_rec, e], training=True)
        mi = losses.mutual_information_gap(*split(z), q_cat, q_cont, cfg.continuous_weight)
        recon = losses.reconstruction_loss(x, x_rec, "sum")
        cycle = losses.mutual_information_gap(*split(z), *model.encoder(x_fake, training=True),
                                              cfg.continuous_weight)
        want = {"d": losses.minimax_discriminator_loss(real, [fake, rec], [0.5, 0.5]) + 0.7 * mi,
                "g": 0.5 * losses.non_saturating_generator_loss(fake) + 0.5 * losses.non_saturating_generator_loss(rec)
                + 0.7 * mi + 2.0 * recon,
                "e": losses.feature_matching_loss(real_features, fake_features) + 2.0 * recon + 0.3 * cycle
                + (0.5 * losses.non_saturating_generator_loss(rec) if encoder_adversarial else 0.0)}
    grads = {k: tape.gradient(want[k], p.trainable_weights) for k, p in players.items()}
    tf.random.set_seed(11)
    got = model.train_step(x)
    assert set(got) == {"d_loss", "g_loss", "e_loss", "mi_gap", "recon_error"}
    for k in "dge":
        assert float(got[f"{k}_loss"]) == pytest.approx(float(want[k]), rel=1e-5, abs=1e-5), k
    assert float(got["mi_gap"]) == pytest.approx(float(mi), rel=1e-5, abs=1e-6)
    assert float(got["recon_error"]) == pytest.approx(float(recon), rel=1e-5)
    for k, p in players.items():
        for w0, w, g in zip(start[k], p.trainable_weights, grads[k]):
            np.testing.assert_allclose(w.numpy() - w0, -g.numpy(), rtol=1e-3, atol=1e-5, err_msg=f"{k} {w.name}")


def test_paper_defaults_per_data_set_and_diagnostics_in_the_history(cnn_run, tmp_path, capsys):
    assert FBGANConfig().ae_fraction == 0.0 and FBGANConfig(dataset="mnist").ae_fraction == 0.0  # no AE term
    assert FBGANConfig(dataset="svhn").ae_fraction == 0.01 and FBGANConfig().encoder_adversarial
    assert FBGANConfig(ae_fraction=0.2).ae_fraction == 0.2  # our earlier default, reachable
    config = FBGANConfig(base_filters=8, batch_size=32, epochs=2, limit=640, ae_fraction=0.5, classifier=str(cnn_run))
    _, history = train_defense("fbgan", config, tmp_path / "run", verbose=0)
    assert len(history["purity"]) == 2 and all(0.1 <= p <= 1 for p in history["purity"])
    assert all(0 <= g <= 1 for g in history["generated_accuracy"])
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"purity", "generated_accuracy"} <= set(header)
    assert "AE term on at step 18: purity " in capsys.readouterr().out  # 2 x 18 steps, the last half with it
