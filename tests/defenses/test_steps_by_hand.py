"""Each defense's training step recomputed by hand, weight by weight.

With plain SGD at rate 1, one `train_step` must move every weight of every player by exactly minus
the gradient of that player's loss, where the loss is written here from the paper (with
`tfpurify.losses`, tested on their own) and the same random draws (same seed, same order). A wrong
sign, a dropped or mis-weighted term, a loss on the wrong player or a stale input fails it. The
tests are eager, small and fast: `make mutation` runs them against one defense module at a time.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfpurify import data, losses
from tfpurify.attacks.loop import iterative_gradient
from tfpurify.defenses.registry import build_defense

SEED = 5
keras = tf.keras


@pytest.fixture(scope="module")
def batch():
    x, y = data.load_dataset("fashion_mnist", "train", limit=8)
    return tf.constant(x), tf.constant(y.astype(np.int64))


def _tiny_classifier(seed=0, hidden=16):
    """Flatten -> two dense layers -> logits: a fast frozen target whose penultimate layer is F."""
    tf.keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Dense(hidden, activation="relu")(keras.layers.Flatten()(inputs))
    h = keras.layers.Dense(12, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    model.trainable = False
    return model


def _sgd(rate=1.0):
    return keras.optimizers.SGD(rate)


def _check_step(step, players, losses_by_hand, rtol=1e-3, atol=1e-5):
    """Runs `losses_by_hand()` under a tape and `step()` from the same seed; each player's weights must
    move by minus the gradient of its loss. Returns (the step's metrics, the losses by hand)."""
    start = {k: [w.numpy() for w in p.trainable_weights] for k, p in players.items()}
    tf.random.set_seed(SEED)
    with tf.GradientTape(persistent=True) as tape:
        want = losses_by_hand()
    grads = {k: tape.gradient(want[k], p.trainable_weights, unconnected_gradients="zero") for k, p in players.items()}
    tf.random.set_seed(SEED)
    got = step()
    for k, p in players.items():
        assert p.trainable_weights, k
        for w0, w, g in zip(start[k], p.trainable_weights, grads[k]):
            np.testing.assert_allclose(w.numpy() - w0, -tf.convert_to_tensor(g).numpy(), rtol=rtol, atol=atol, err_msg=f"{k} {w.name}")
    return got, want


def _pgd(model_fn, x, y, eps, eps_iter, nb_iter, rand_init=True):
    """The inner adversary every adversarially trained defense here uses: PGD from a random start, all steps."""
    x_adv, _, _ = iterative_gradient(model_fn, x, y, eps, eps_iter, nb_iter, rand_init=rand_init, early_exit=False)
    return tf.stop_gradient(tf.clip_by_value(x_adv, 0.0, 1.0))


# ---------------------------------------------------------------------- Cowboy (eq. 1)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cowboy_step(batch, smoothing):
    x, _ = batch
    model = build_defense("cowboy", {"base_filters": 4, "z_dim": 8, "label_smoothing": smoothing})
    model.compile(d_optimizer=_sgd(), g_optimizer=_sgd())
    model(x[:1])

    def by_hand():
        z = tf.random.normal([8, 8])
        real, fake = model.discriminator(x), model.discriminator(model.generator(z))
        return {"d": losses.minimax_discriminator_loss(real, fake, label_smoothing=smoothing),
                "g": losses.non_saturating_generator_loss(fake), "real": real, "fake": fake}

    got, want = _check_step(lambda: model.train_step(x), {"d": model.discriminator, "g": model.generator}, by_hand)
    assert float(got["d_loss"]) == pytest.approx(float(want["d"]), rel=1e-5)
    assert float(got["g_loss"]) == pytest.approx(float(want["g"]), rel=1e-5)
    assert float(got["d_real"]) == pytest.approx(float(tf.reduce_mean(tf.sigmoid(want["real"]))), rel=1e-5)
    assert float(got["d_fake"]) == pytest.approx(float(tf.reduce_mean(tf.sigmoid(want["fake"]))), rel=1e-5)


def test_cowboy_compiles_adam_from_its_config():
    model = build_defense("cowboy", {"base_filters": 4, "z_dim": 8, "learning_rate": 3e-4, "beta_1": 0.4})
    model.compile_for_training()
    for optimizer in (model.d_optimizer, model.g_optimizer):
        assert isinstance(optimizer, keras.optimizers.Adam)
        assert float(optimizer.learning_rate) == pytest.approx(3e-4) and float(optimizer.beta_1) == pytest.approx(0.4)
    assert model.d_optimizer is not model.g_optimizer


def _search_by_hand(model, x):
    """Algorithm 1 as `Cowboy.search_rows` documents it, in numpy: warm start, Adam or momentum SGD
    (rate x0.1 after 80 % of the steps), best code per row, patience, pruning to each image's best restart."""
    cfg = model.config
    n, restarts = x.shape[0], cfg.clean_restarts
    rows = n * restarts
    x_rows = tf.repeat(x, restarts, axis=0)

    def draw(salt):
        codes = tf.random.stateless_normal([restarts, cfg.z_dim], seed=[cfg.cleaning_seed, salt]).numpy()
        return np.tile(codes, (n, 1))  # the same R starting codes for every image

    def loss_of(z):
        return model.search_loss(tf.constant(z), x_rows).numpy()

    z = draw(0)
    passes = np.zeros(rows)
    rounds = -(-cfg.warm_start // restarts) if cfg.warm_start else 0
    loss = loss_of(z) if rounds else None
    for r in range(1, rounds):
        candidate = draw(r)
        candidate_loss = loss_of(candidate)
        better = candidate_loss < loss
        z[better], loss[better] = candidate[better], candidate_loss[better]
    passes += rounds
    z_best = z.copy()
    if rounds:
        loss_best = loss.copy()
    else:  # the loss of the start where nothing descends, the largest float where descent will set it
        loss_best = loss_of(z) if not cfg.clean_steps else np.full(rows, np.finfo(np.float32).max)
    m, v = np.zeros_like(z), np.zeros_like(z)
    stall, active = np.zeros(rows, int), np.ones(rows, bool)
    for i in range(cfg.clean_steps):
        if not active.any():
            break
        codes = tf.constant(z)
        with tf.GradientTape() as tape:
            tape.watch(codes)
            value = model.search_loss(codes, x_rows)
            total = tf.reduce_sum(value)
        grad = tape.gradient(total, codes).numpy()
        value = value.numpy()
        improved = active & (value < loss_best - 1e-4 * np.abs(loss_best))
        z_best[improved], loss_best[improved] = z[improved], value[improved]
        stall = np.where(improved, 0, stall + 1)
        if cfg.z_optimizer == "adam":
            m_new, v_new = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad ** 2
            step = cfg.z_learning_rate * (m_new / (1 - 0.9 ** (i + 1))) / (np.sqrt(v_new / (1 - 0.999 ** (i + 1))) + 1e-8)
        else:
            m_new, v_new = cfg.z_momentum * m + grad, v
            step = (0.1 if i >= 0.8 * cfg.clean_steps else 1.0) * cfg.z_learning_rate * m_new
        z[active], m[active], v[active] = (z - step)[active], m_new[active], v_new[active]
        passes += active
        if cfg.patience:
            active &= stall < cfg.patience
        if cfg.prune_after and i + 1 == cfg.prune_after:
            keep = np.zeros((n, restarts), bool)
            keep[np.arange(n), loss_best.reshape(n, restarts).argmin(axis=1)] = True
            active &= keep.reshape(-1)
    return z_best, loss_best, passes


COWBOY_SEARCHES = {
    "adam, warm start": dict(clean_steps=6, warm_start=7, clean_restarts=3),
    "adam, no warm start": dict(clean_steps=4, warm_start=0, clean_restarts=2),
    "sgd, patience": dict(clean_steps=10, warm_start=4, clean_restarts=2, z_optimizer="sgd", z_learning_rate=0.2,
                          patience=2),
    "adam, pruned": dict(clean_steps=6, warm_start=0, clean_restarts=3, prune_after=2, z_learning_rate=0.5),
    "defense-gan, no steps": dict(clean_steps=0, warm_start=5, clean_restarts=2, mode="defense_gan", sigma=0.5),
    "no steps, no warm start": dict(clean_steps=0, warm_start=0, clean_restarts=2),
}


@pytest.mark.parametrize("name", list(COWBOY_SEARCHES))
def test_cowboy_search_by_hand(batch, name):
    x = batch[0][:3]
    model = build_defense("cowboy", {"base_filters": 4, "z_dim": 6, "cleaning_seed": 3, "clean_only_detected": False,
                                     **COWBOY_SEARCHES[name]})
    model(x[:1])
    z_best, loss_best, passes = _search_by_hand(model, x)
    got = [t.numpy() for t in model.search_rows(x)]
    # At rate 0.5 Adam's normalised steps amplify round-off in near-zero gradient components (the
    # graph computes active rows only, a smaller matmul): codes agree to 1e-2, losses to 1e-5.
    z_atol = 1e-2 if model.config.z_learning_rate >= 0.5 else 1e-5
    np.testing.assert_allclose(got[0], z_best, rtol=1e-4, atol=z_atol)
    np.testing.assert_allclose(got[1], loss_best, rtol=1e-5)
    np.testing.assert_array_equal(got[2], passes)
    if name == "sgd, patience":
        assert passes.min() < passes.max(), "the case must stop some rows early"
    if name == "adam, pruned":
        assert sorted(set(passes)) == [2, 6]
    z_star, loss_star, image_passes = (t.numpy() for t in model.search(x))
    best = loss_best.reshape(3, -1).argmin(axis=1)
    np.testing.assert_allclose(z_star, z_best.reshape(3, -1, 6)[np.arange(3), best], rtol=1e-4, atol=z_atol)
    np.testing.assert_allclose(loss_star, loss_best.reshape(3, -1).min(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(image_passes, passes.reshape(3, -1).sum(axis=1))
    np.testing.assert_allclose(model.purify(x).numpy(), model.generator(z_star).numpy(), atol=1e-5)
    assert model.config.passes_per_image == (-(-model.config.warm_start // model.config.clean_restarts)
                                      + model.config.clean_steps) * model.config.clean_restarts


def test_cowboy_search_loss_and_scores_by_hand(batch):
    x = batch[0][:3]
    model = build_defense("cowboy", {"base_filters": 4, "z_dim": 6, "sigma": 0.5})
    z = tf.random.normal([3, 6])
    g = model.generator(z)
    d = model.discriminator(g)
    want = tf.reduce_sum(tf.square(g - x), axis=[1, 2, 3]) / (2 * 0.25) + tf.nn.softplus(-d[:, 0])
    np.testing.assert_allclose(model.search_loss(z, x).numpy(), want.numpy(), rtol=1e-5)
    np.testing.assert_allclose(model.adversarial_score(x).numpy(), tf.nn.softplus(-model.discriminator(x)[:, 0]).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(model.call(x).numpy(), model.discriminator(x).numpy())


def test_cowboy_cleans_only_what_it_flags(batch):
    x = batch[0][:4]
    model = build_defense("cowboy", {"base_filters": 4, "z_dim": 6, "cleaning_seed": 1, "clean_steps": 2,
                                     "warm_start": 0, "clean_only_detected": True})
    model(x[:1])
    scores = model.adversarial_score(x).numpy()
    model.threshold.assign(float(np.median(scores)))
    flagged = scores > np.median(scores)
    assert 0 < flagged.sum() < 4
    out = model.purify(x.numpy().astype(np.float64)).numpy()  # numpy input of another float type
    np.testing.assert_array_equal(out[~flagged], x.numpy()[~flagged])
    cleaned = model.generator(model.search(tf.constant(x.numpy()[flagged]))[0]).numpy()
    np.testing.assert_allclose(out[flagged], cleaned, atol=1e-5)


@pytest.mark.parametrize("unroll", [0, 2])
def test_cowboy_bpda_surrogate_by_hand(batch, unroll):
    x = batch[0][:2]
    model = build_defense("cowboy", {"base_filters": 4, "z_dim": 6, "cleaning_seed": 2, "clean_steps": 3,
                                     "warm_start": 0, "bpda_unroll": unroll, "z_learning_rate": 0.3})
    model(x[:1])
    z = model.search(x)[0]
    for _ in range(unroll):
        with tf.GradientTape() as tape:
            tape.watch(z)
            total = tf.reduce_sum(model.search_loss(z, x))
        z = z - 0.3 * tape.gradient(total, z)
    want = model.generator(z).numpy() if unroll else x.numpy()
    np.testing.assert_allclose(model.attack_surrogate(x).numpy(), want, atol=1e-5)
    purified, surrogate = model.purify_and_surrogate(x.numpy().astype(np.float64))
    np.testing.assert_allclose(purified.numpy(), model.purify(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(surrogate), want, atol=1e-5)


# ---------------------------------------------------------------------- GCLN (eqs. 3-6)


def _gcln(**fields):
    model = build_defense("gcln", {"filters": 4, "residual_blocks": 1, "detector_filters": 4, "attack_steps": 2,
                                   "attack_eps": 0.1, **fields})
    object.__setattr__(model, "_target", _tiny_classifier())
    model.compile(g_optimizer=_sgd(), d_optimizer=_sgd())
    return model


@pytest.mark.parametrize("recycle", [False, True])
@pytest.mark.parametrize("g_on", [1.0, 0.0])
def test_gcln_step(batch, recycle, g_on):
    x, y = batch
    model = _gcln(recycle=recycle, perceptual_weight=0.3, raw_attack_weight=0.25)
    model(x[:1])
    model.g_on.assign(g_on)
    target = model.target_classifier
    target.layers[-1].bias.assign(tf.one_hot(0, 10) * 10.0)  # class 0 wherever: some cleaned images count as right
    features = keras.Model(target.inputs, target.layers[-2].output)

    def by_hand():
        x_adv = _pgd(target, x, y, 0.1, 0.025, 2)
        cleaned = model.cleaner(x_adv)
        real, fake_raw, fake = model.detector_net(x), model.detector_net(x_adv), model.detector_net(cleaned)
        correct = tf.cast(tf.argmax(target(cleaned), axis=1) == y, tf.float32)
        d = -tf.reduce_mean(tf.math.log_sigmoid(real)) - 0.25 * tf.reduce_mean(tf.math.log_sigmoid(-fake_raw)) \
            - 0.75 * tf.reduce_mean(tf.math.log_sigmoid(-fake))
        if recycle:  # cleaned images the target gets right count as clean for D
            d += losses.weighted_bce(1.0, model.detector_net(tf.stop_gradient(cleaned)), correct)
        perceptual = tf.reduce_mean(tf.reduce_sum(tf.square(features(x) - features(cleaned)), axis=1))
        adversarial = -tf.reduce_mean(tf.math.log_sigmoid(fake))
        return {"d": d, "g": g_on * (0.3 * perceptual + 0.7 * adversarial), "perceptual": perceptual,
                "adversarial": adversarial, "correct": correct}

    got, want = _check_step(lambda: model.train_step((x, y)), {"d": model.detector_net, "g": model.cleaner}, by_hand)
    for name in ("perceptual", "adversarial"):
        assert float(got[name]) == pytest.approx(float(want[name]), rel=1e-4), name
    assert float(got["d_loss"]) == pytest.approx(float(want["d"]), rel=1e-4)
    assert float(got["recovered_accuracy"]) == pytest.approx(float(tf.reduce_mean(want["correct"])))
    assert 0 < float(tf.reduce_mean(want["correct"])) < 1  # so the recycled term has examples to weigh
    assert float(got["g_loss"]) == pytest.approx(0.3 * float(want["perceptual"]) + 0.7 * float(want["adversarial"]),
                                                  rel=1e-4)


def test_gcln_detector_pretrains_then_the_cleaner_joins(batch):
    model = _gcln(detector_pretrain_epochs=2)
    (callback,) = model.training_callbacks()
    callback.set_model(model)
    for epoch, on in ((0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0)):
        callback.on_epoch_begin(epoch)
        assert float(model.g_on.numpy()) == on, epoch


def test_gcln_scores_purifies_and_compiles_by_hand(batch):
    x = batch[0][:4]
    model = _gcln(learning_rate=3e-4, beta_1=0.4)
    model(x[:1])
    np.testing.assert_allclose(model.adversarial_score(x).numpy(),
                               tf.sigmoid(-model.detector_net(x)[:, 0]).numpy(), rtol=1e-6)
    # the served (true-gradient) and straight-through passes differ by the float rounding of x + (Q(x) - x)
    np.testing.assert_allclose(model.purify(x).numpy(), model.cleaner(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(model.attack_surrogate(x).numpy(), model.cleaner(x).numpy())
    np.testing.assert_allclose(model.call(x).numpy(), model.cleaner(x).numpy(), atol=1e-6)
    model.compile_for_training()
    for optimizer in (model.g_optimizer, model.d_optimizer):
        assert float(optimizer.learning_rate) == pytest.approx(3e-4) and float(optimizer.beta_1) == pytest.approx(0.4)
    quantized = model.cleaner.get_layer("quantized_dct")
    assert quantized.step == 10.0 and quantized.block == 8


def test_gcln_features_from_a_model_file_resized_and_tiled(batch, tmp_path):
    x = batch[0][:2]
    inputs = keras.Input((32, 32, 3))
    other = keras.Model(inputs, keras.layers.Conv2D(2, 3, strides=4)(inputs))
    path = str(tmp_path / "features.keras")
    other.save(path)
    model = _gcln(feature_model=path)
    want = other(tf.tile(tf.image.resize(x, (32, 32)), [1, 1, 1, 3])).numpy().reshape(2, -1)
    np.testing.assert_allclose(model._features_of(x).numpy(), want, rtol=1e-5, atol=1e-6)
    default = _gcln()
    np.testing.assert_allclose(default._features_of(x).numpy(),
                               keras.Model(default.target_classifier.inputs,
                                           default.target_classifier.layers[-2].output)(x).numpy(), rtol=1e-6)


# ---------------------------------------------------------------------- AAA (eqs. 2-3)


@pytest.mark.parametrize("loss,weight", [("xent", 0.7), ("mse", 0.7), ("xent+mse", 0.7), ("xent+mse", None)])
def test_aaa_step(batch, loss, weight):
    x, y = batch
    model = build_defense("aaa", {"filters": 4, "loss": loss, "mse_weight": weight, "eps": 0.2, "eps_iter": 0.05,
                                  "nb_iter": 3})
    native = _tiny_classifier()
    object.__setattr__(model, "_natives", [native])
    model.compile(optimizer=_sgd())
    model(x[:1])

    def by_hand():
        x_adv = _pgd(lambda images: native(model.autoencoder(images)), x, y, 0.2, 0.05, 3)
        cleaned = model.autoencoder(x_adv)
        logits = native(cleaned)
        xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        mse = tf.reduce_mean(tf.square(cleaned - x))
        lam = 0.7 if weight is not None else tf.stop_gradient(xent / mse)  # unset: the magnitudes balanced
        return {"ae": {"xent": xent, "mse": mse, "xent+mse": xent + lam * mse}[loss], "xent": xent, "mse": mse,
                "logits": logits}

    got, want = _check_step(lambda: model.train_step((x, y)), {"ae": model.autoencoder}, by_hand)
    for name, key in (("loss", "ae"), ("xent", "xent"), ("mse", "mse")):
        assert float(got[name]) == pytest.approx(float(want[key]), rel=1e-4), name
    accuracy = np.mean(np.argmax(want["logits"].numpy(), axis=1) == y.numpy())
    assert float(got["adv_accuracy"]) == pytest.approx(accuracy)


def test_aaa_ensemble_trains_through_one_native_per_step(batch):
    x, y = batch
    model = build_defense("aaa", {"filters": 4, "nb_iter": 1, "eps_iter": 0.2})
    natives = [_tiny_classifier(1), _tiny_classifier(2)]
    object.__setattr__(model, "_natives", natives)
    model.compile(optimizer=_sgd(0.0))
    losses_seen = set()
    for seed in range(8):
        tf.random.set_seed(seed)
        got = float(model.train_step((x, y))["xent"])
        model.reset_metrics()
        tf.random.set_seed(seed)
        index = int(tf.random.uniform([], 0, 2, dtype=tf.int32))
        x_adv = _pgd(lambda images, c=natives[index]: c(model.autoencoder(images)), x, y, 0.2, 0.2, 1)
        want = losses.classification_loss(y, natives[index](model.autoencoder(x_adv)))
        assert got == pytest.approx(float(want), rel=1e-5), seed
        losses_seen.add(index)
    assert losses_seen == {0, 1}


def test_aaa_compiles_from_its_config_and_plateaus_on_validation():
    model = build_defense("aaa", {"filters": 4, "learning_rate": 3e-4, "lr_patience": 3})
    object.__setattr__(model, "_natives", [_tiny_classifier()])
    model.compile_for_training()
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-4)
    (plateau,) = model.training_callbacks()
    assert plateau.monitor == "val_loss" and plateau.patience == 3


def test_aaa_encodes_at_its_bottleneck(batch):
    x = batch[0][:2]
    model = build_defense("aaa", {"filters": 4})
    code = model.encode(x).numpy()
    assert code.shape == (2, 7, 7, 8)
    np.testing.assert_allclose(model.purify(x).numpy(), model.autoencoder(x).numpy())


# ---------------------------------------------------------------------- PGD adversarial training (Madry et al.)


@pytest.mark.parametrize("adv_weight,clean_weight,eps_iter,rand_init",
                         [(1.0, None, None, True), (0.3, None, 0.03, False), (1.0, 1.0, None, False)])
def test_pgd_at_step(batch, adv_weight, clean_weight, eps_iter, rand_init):
    x, y = batch
    model = build_defense("pgd_at", {"arch": "lenet5", "eps": 0.1, "nb_iter": 2, "eps_iter": eps_iter,
                                     "adv_weight": adv_weight, "clean_weight": clean_weight, "rand_init": rand_init})
    share = 1 - adv_weight if clean_weight is None else clean_weight  # L2L-DA's L(x) + L(x_adv): both 1
    model.compile(optimizer=_sgd(0.1))
    model(x[:1])
    step_size = 0.025 if eps_iter is None else eps_iter
    assert model.config.step_size == step_size

    def by_hand():
        x_adv = _pgd(model.classifier, x, y, 0.1, step_size, 2, rand_init)
        clean = losses.classification_loss(y, model.classifier(x))
        adv = losses.classification_loss(y, model.classifier(x_adv))
        return {"c": 0.1 * (share * clean + adv_weight * adv), "clean": clean, "adv": adv}

    got, want = _check_step(lambda: model.train_step((x, y)), {"c": model.classifier}, by_hand)
    assert float(got["clean_loss"]) == pytest.approx(float(want["clean"]), rel=1e-5)
    assert float(got["adv_loss"]) == pytest.approx(float(want["adv"]), rel=1e-5)
    assert float(got["loss"]) == pytest.approx(10 * float(want["c"]), rel=1e-5)


# ---------------------------------------------------------------------- L2L-DA (eqs. 5-7, Algorithm 1)


def _trajectory_by_hand(generator, classifier, x, y, z, eps, eps_step, steps, pixel_clipped_delta=False):
    """Eq. 5: delta_t = clip_eps(delta_{t-1} + eps_step g(x, y, z, delta_{t-1}, grad / ||grad||)), the image clipped
    to [0, 1] (delta, with `pixel_clipped_delta`, the perturbation applied); the gradient scaled to unit RMS
    per pixel."""
    def loss_and_grad(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = classifier(images)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        return loss, tape.gradient(loss, images), logits

    _, grad, _ = loss_and_grad(x)
    delta, trajectory, step_losses = tf.zeros_like(x), [], []
    for _ in range(steps):
        unit = grad / (tf.norm(tf.reshape(grad, [len(x), -1]), axis=1)[:, None, None, None] + 1e-12) * 28.0
        delta = tf.clip_by_value(delta + eps_step * generator([x, y, z, delta, unit], training=True), -eps, eps)
        x_adv = tf.clip_by_value(x + delta, 0.0, 1.0)
        if pixel_clipped_delta:
            delta = x_adv - x
        loss, grad, logits = loss_and_grad(x_adv)
        trajectory.append(x_adv)
        step_losses.append(loss)
    return trajectory, step_losses, logits


@pytest.mark.parametrize("fields", [{}, {"diversity": False}, {"recursive": False}, {"eps_step": 0.05},
                                    {"pixel_clipped_delta": True}, {"diversity_form": "batch_mean"}])
def test_l2l_da_step(batch, fields):
    x, y = batch
    model = build_defense("l2l_da", {"arch": "lenet5", "eps": 0.1, "steps": 3, "z_dim": 4, "generator_filters": 4,
                                     "diversity_weight": 0.5, **fields})
    model.compile(c_optimizer=_sgd(0.1), g_optimizer=_sgd(0.1))
    model(x[:1])
    steps, eps_step = (1, 0.1) if fields.get("recursive") is False else (3, fields.get("eps_step", 0.025))
    weight = 0.0 if fields.get("diversity") is False else 0.5
    generator, classifier = model.generator, model.classifier
    keep = [w.numpy() for w in generator.weights]

    def by_hand():
        z1, z2 = tf.random.normal([8, 4]), tf.random.normal([8, 4])
        x2, y2 = tf.concat([x, x], 0), tf.concat([y, y], 0)
        trajectory, step_losses, _ = _trajectory_by_hand(generator, classifier, x2, y2, tf.concat([z1, z2], 0), 0.1,
                                                         eps_step, steps, fields.get("pixel_clipped_delta", False))
        cls = tf.reduce_mean(tf.stack(step_losses))
        # eq. 7 per example: the trajectory's mean L1 image gap over the L1 code gap, then the batch mean
        image_gap = tf.add_n([tf.reduce_sum(tf.abs(t[:8] - t[8:]), axis=[1, 2, 3]) for t in trajectory]) / steps
        div = tf.reduce_mean(image_gap / (tf.reduce_sum(tf.abs(z1 - z2), axis=1) + 1e-8))
        if fields.get("diversity_form") == "batch_mean":  # our earlier form: a ratio of the batch's mean gaps
            mean_gap = tf.add_n([tf.reduce_mean(tf.abs(t[:8] - t[8:])) for t in trajectory]) / steps
            div = mean_gap / (tf.reduce_mean(tf.abs(z1 - z2)) + 1e-8)
        x_adv = tf.stop_gradient(trajectory[-1])
        adv = losses.classification_loss(y2, classifier(x_adv, training=True))
        return {"g": -0.1 * (cls + weight * div), "c": 0.1 * (losses.classification_loss(y, classifier(x, training=True))
                                                               + adv), "div": div, "adv": adv, "cls": cls}

    def step():
        for w, value in zip(generator.weights, keep):  # the batch norms' moving statistics as before by_hand
            w.assign(value)
        return model.train_step((x, y))

    # eq. 7's per-example ratios (over small code gaps) make the generator's gradients larger: float noise up
    # to 3e-5 on weights that move by 1e-2
    got, want = _check_step(step, {"g": generator, "c": classifier}, by_hand, atol=1e-4)
    assert float(got["gen_loss"]) == pytest.approx(10 * float(want["g"]), rel=1e-4)
    assert float(got["div_loss"]) == pytest.approx(float(want["div"]), rel=1e-4)
    assert float(got["adv_loss"]) == pytest.approx(float(want["adv"]), rel=1e-4)
    assert float(got["cls_loss"]) == pytest.approx(10 * float(want["c"]), rel=1e-4)


@pytest.mark.parametrize("name", ["l2l_da", "pgd_at"])
def test_a_robust_classifier_serves_in_inference_unless_asked(batch, name):
    x = batch[0][:4]
    model = build_defense(name, {"arch": "mlp"})  # the mlp has dropout: the phase shows
    served = model(x).numpy()
    np.testing.assert_allclose(served, model.classifier(x, training=False).numpy(), atol=1e-6)
    np.testing.assert_allclose(model(x).numpy(), served, atol=1e-6)
    assert np.abs(model(x, training=True).numpy() - served).max() > 1e-3


def test_l2l_da_generator_sees_what_its_flags_say(batch):
    x, y = batch[0][:4], batch[1][:4]
    for use_label, use_delta in ((True, True), (False, False)):
        model = build_defense("l2l_da", {"arch": "lenet5", "z_dim": 4, "generator_filters": 4, "use_label": use_label,
                                         "use_delta": use_delta})
        model(x)
        g = model.generator
        z, grad = tf.random.normal([4, 4]), tf.random.normal(x.shape)
        base = g([x, y, z, tf.zeros_like(x), grad]).numpy()
        assert base.shape == x.shape and np.abs(base).max() <= 1.0
        for i in range(len(g.norms)):  # per-class scales, so the label has an effect before training
            if use_label:
                g.norms[i].gamma.assign(tf.random.uniform(g.norms[i].gamma.shape, 0.5, 1.5))
        base = g([x, y, z, tf.zeros_like(x), grad]).numpy()
        changes = {"z": g([x, y, tf.random.normal([4, 4]), tf.zeros_like(x), grad]),
                   "grad": g([x, y, z, tf.zeros_like(x), tf.random.normal(x.shape)]),
                   "x": g([tf.random.uniform(x.shape), y, z, tf.zeros_like(x), grad]),
                   "y": g([x, (y + 1) % 10, z, tf.zeros_like(x), grad]),
                   "delta": g([x, y, z, tf.random.uniform(x.shape, -0.1, 0.1), grad])}
        for name, out in changes.items():
            moved = not np.allclose(out.numpy(), base, atol=1e-6)
            assert moved == {"y": use_label, "delta": use_delta}.get(name, True), (name, use_label, use_delta)


@pytest.mark.parametrize("generator_optimizer", ["sgd", "adam"])
def test_l2l_da_compiles_the_papers_optimizers(generator_optimizer):
    model = build_defense("l2l_da", {"arch": "lenet5", "learning_rate": 0.02, "generator_learning_rate": 0.03,
                                     "momentum": 0.8, "weight_decay": 1e-4, "generator_optimizer": generator_optimizer})
    model.compile_for_training()
    c, g = model.c_optimizer, model.g_optimizer
    assert isinstance(c, keras.optimizers.SGD)
    assert float(c.learning_rate) == pytest.approx(0.02) and c.momentum == pytest.approx(0.8)
    assert c.weight_decay == pytest.approx(1e-4)
    assert float(g.learning_rate) == pytest.approx(0.03)
    if generator_optimizer == "sgd":
        assert isinstance(g, keras.optimizers.SGD) and g.momentum == pytest.approx(0.8)
    else:
        assert isinstance(g, keras.optimizers.Adam)
    assert g.weight_decay == pytest.approx(1e-4)  # both players (paper 5.1)
    no_decay = build_defense("l2l_da", {"arch": "lenet5", "weight_decay": 0.0})
    no_decay.compile_for_training()
    assert not no_decay.c_optimizer.weight_decay and not no_decay.g_optimizer.weight_decay


# ---------------------------------------------------------------------- denoising autoencoder (MagNet)


@pytest.mark.tf_data
def test_denoising_ae_trains_on_noisy_and_clean_pairs():
    model = build_defense("denoising_ae", {"filters": 4, "noise_std": 0.3, "detector": True})
    grey = np.full((8, 28, 28, 1), 0.5, np.float32)
    noisy, clean = (t.numpy() for t in next(iter(model.make_dataset(grey, None, 8))))
    np.testing.assert_array_equal(clean, grey)
    assert noisy.min() == 0.0 and noisy.max() == 1.0  # clipped to the pixel range
    # Gaussian noise of std 0.3 on 0.5: clipped where |noise| > 0.5 (9.6 %); elsewhere a normal truncated at
    # +-0.5, whose std is 0.3 sqrt(1 - 2 a phi(a) / (2 Phi(a) - 1)) = 0.239 (a = 0.5 / 0.3)
    inside = (noisy > 0) & (noisy < 1)
    assert 1 - inside.mean() == pytest.approx(0.0956, abs=0.015)
    assert np.std(noisy[inside] - 0.5) == pytest.approx(0.239, abs=0.01)
    quiet = build_defense("denoising_ae", {"filters": 4, "noise_std": 0.0})
    noisy, _ = next(iter(quiet.make_dataset(grey, None, 8)))
    np.testing.assert_array_equal(noisy.numpy(), grey)


def test_denoising_ae_scores_and_code(batch):
    x = batch[0]
    model = build_defense("denoising_ae", {"filters": 4, "detector": True})
    quiet = build_defense("denoising_ae", {"filters": 4})
    out = model.autoencoder(x).numpy()
    np.testing.assert_allclose(model.adversarial_score(x).numpy(), np.abs(x.numpy() - out).mean(axis=(1, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(model.purify(x).numpy(), out)
    layers = model.autoencoder.layers  # conv, pool, conv (the code), conv, upsample, conv, conv
    np.testing.assert_allclose(model.encode(x).numpy(), layers[2](layers[1](layers[0](x))).numpy(), rtol=1e-6)
    assert model.encode(x).shape == (8, 14, 14, 4)
    assert model.detector_enabled and not quiet.detector_enabled


def test_denoising_ae_step(batch):
    x = batch[0]
    model = build_defense("denoising_ae", {"filters": 4, "learning_rate": 2e-3})
    model.compile_for_training()
    assert float(model.optimizer.learning_rate) == pytest.approx(2e-3)
    model.compile(optimizer=_sgd(), loss="mse")
    noisy = tf.clip_by_value(x + 0.3, 0.0, 1.0)
    _check_step(lambda: model.train_step((noisy, x)), {"ae": model.autoencoder},
                lambda: {"ae": tf.reduce_mean(tf.square(model.autoencoder(noisy) - x))})


# ---------------------------------------------------------------------- the classifier runs a config names


def _defense_run(path, name, model):
    """A defense run folder written without training: its config and its weights, as `tfpurify train` leaves them."""
    from tfpurify.defenses.registry import WEIGHTS
    from tfpurify.runs import finish_run, start_run
    from tfpurify.training import config_dict

    start_run(path, config_dict(name, model.config))
    finish_run(model, path, WEIGHTS)
    return str(path)


def _classifier_run(path, arch="lenet5", dataset="fashion_mnist", seed=0):
    """A classifier run folder written without training (random weights): what the defenses load."""
    from tfpurify.classifiers import WEIGHTS, ClassifierConfig, build_classifier
    from tfpurify.runs import finish_run, start_run

    config = ClassifierConfig(arch=arch, dataset=dataset)
    tf.keras.utils.set_random_seed(seed)
    model = build_classifier(arch, config.input_shape, config.num_classes)
    start_run(path, config.to_dict())
    finish_run(model, path, WEIGHTS)
    return str(path), model


def test_a_robust_classifier_starts_from_its_classifier_run(batch, tmp_path):
    from tfpurify.errors import InputValidationError, RunFolderError

    run, start = _classifier_run(tmp_path / "lenet")
    model = build_defense("pgd_at", {"classifier": run, "learning_rate": 3e-4, "nb_iter": 1})
    assert model.arch == model.config.arch == "lenet5"  # read from the run
    model.compile_for_training()
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-4)
    for a, b in zip(model.classifier.get_weights(), start.get_weights()):
        np.testing.assert_array_equal(a, b)
    x, y = batch
    np.testing.assert_allclose(model(x).numpy(), start(x).numpy(), rtol=1e-5, atol=1e-6)
    assert [m.name for m in model.metrics] == ["loss", "clean_loss", "adv_loss", "accuracy", "adv_accuracy"]
    tf.random.set_seed(SEED)
    got = model.train_step((x, y))
    tf.random.set_seed(SEED)
    assert float(got["accuracy"]) == pytest.approx(np.mean(np.argmax(start(x).numpy(), 1) == y.numpy()))
    x_adv = _pgd(start, x, y, 0.1, 0.025, 1)
    assert float(got["adv_accuracy"]) == pytest.approx(np.mean(np.argmax(start(x_adv).numpy(), 1) == y.numpy()))
    assert model.get_config()["classifier"] == run
    sgd = build_defense("pgd_at", {"classifier": run, "learning_rate": 0.05, "optimizer": "sgd", "momentum": 0.8,
                                   "weight_decay": 1e-4})
    sgd.compile_for_training()  # L2L-DA's classifier optimiser, for a comparison with the same one
    assert isinstance(sgd.optimizer, tf.keras.optimizers.SGD)
    assert (float(sgd.optimizer.learning_rate), sgd.optimizer.momentum, sgd.optimizer.weight_decay) == pytest.approx(
        (0.05, 0.8, 1e-4))
    assert isinstance(model.optimizer, tf.keras.optimizers.Adam) and model.optimizer.weight_decay is None
    for fields, match in (({"optimizer": "rmsprop"}, "optimizer"), ({"momentum": -0.1}, "momentum"),
                          ({"clean_weight": 1.5}, "clean_weight"), ({"clean_weight": -0.1}, "clean_weight"),
                          ({"weight_decay": -1.0}, "weight_decay")):
        with pytest.raises(InputValidationError, match=match):
            build_defense("pgd_at", {"arch": "lenet5", **fields})
    for weight in (0.0, 1.0):  # both ends of [0, 1] are weights a user may give
        assert build_defense("pgd_at", {"arch": "lenet5", "clean_weight": weight}).config.clean_weight == weight
    fresh = build_defense("pgd_at", {"arch": "lenet5"})
    before = [w.copy() for w in fresh.classifier.get_weights()]
    fresh.compile_for_training()  # no run: the weights it was built with
    for a, b in zip(fresh.classifier.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    for fields in ({"classifier": run, "arch": "mlp"}, {"classifier": _classifier_run(tmp_path / "m", dataset="mnist")[0],
                                                         "arch": "lenet5"}):
        with pytest.raises(RunFolderError, match="this run trains a"):
            build_defense("pgd_at", fields).compile_for_training()


def test_gcln_and_aaa_load_the_classifiers_they_protect(batch, tmp_path):
    from tfpurify.errors import InputValidationError

    x = batch[0][:2]
    run, start = _classifier_run(tmp_path / "a", seed=1)
    other, other_start = _classifier_run(tmp_path / "b", seed=2)
    gcln = build_defense("gcln", {"classifier": run, "filters": 4, "residual_blocks": 0, "detector_filters": 4})
    target = gcln.target_classifier
    assert target is gcln.target_classifier and not target.trainable
    np.testing.assert_allclose(target(x).numpy(), start(x).numpy(), rtol=1e-5, atol=1e-6)
    aaa = build_defense("aaa", {"classifier": run, "filters": 4})
    assert aaa.config.classifier == (run,)
    ensemble = build_defense("aaa", {"classifier": [run, other], "filters": 4}).native_classifiers
    assert len(ensemble) == 2 and not any(c.trainable for c in ensemble)
    for got, want in zip(ensemble, (start, other_start)):
        np.testing.assert_allclose(got(x).numpy(), want(x).numpy(), rtol=1e-5, atol=1e-6)
    mnist, _ = _classifier_run(tmp_path / "m", dataset="mnist")
    for make, match in ((lambda: build_defense("gcln", {"classifier": mnist}).target_classifier, "on mnist"),
                        (lambda: build_defense("gcln", {}).compile_for_training(), "--classifier RUN"),
                        (lambda: build_defense("aaa", {"classifier": mnist}).native_classifiers, "on mnist"),
                        (lambda: build_defense("aaa", {}).compile_for_training(), "--classifier RUN")):
        with pytest.raises(InputValidationError, match=match):
            make()


@pytest.mark.parametrize("rule", ["fpr", "paper"])
def test_cowboy_keeps_both_thresholds_and_uses_the_one_its_rule_names(batch, tmp_path, rule):
    from tfpurify.attacks import run_attack

    x = batch[0].numpy()
    run, classifier = _classifier_run(tmp_path / "c")
    model = build_defense("cowboy", {"base_filters": 4, "z_dim": 6, "classifier": run, "threshold_rule": rule,
                                     "threshold_p": 2.0, "threshold_eps": 0.2})
    model(x[:1])
    result = model.calibrate(x, target_fpr=0.25)
    clean = model.adversarial_score(x).numpy()
    fpr_threshold = float(np.quantile(clean, 0.75, method="higher"))
    d = tf.sigmoid(model.discriminator(run_attack("fgsm", classifier, x, eps=0.2))[:, 0]).numpy().astype(np.float64)
    paper = float(-np.log(np.mean(d ** 2) ** 0.5))
    assert result["threshold_fpr"] == pytest.approx(fpr_threshold, rel=1e-6)
    assert result["threshold_paper"] == pytest.approx(paper, rel=1e-4)
    assert result["fpr_paper"] == pytest.approx(np.mean(clean > paper))
    assert result["paper_attack"] == {"attack": "fgsm", "eps": 0.2, "p": 2.0, "classifier": run}
    want = paper if rule == "paper" else fpr_threshold
    assert result["rule"] == rule and result["threshold"] == pytest.approx(want, rel=1e-4)
    assert float(model.threshold.numpy()) == pytest.approx(want, rel=1e-4)
    assert result["fpr"] == pytest.approx(np.mean(clean > want))
    assert model.calibration is result
    x_adv = np.clip(x + 0.3, 0, 1)
    with_adv = model.calibrate(x, x_adv=x_adv)  # the default target rate, and the detection rates
    assert with_adv["target_fpr"] == 0.05
    assert with_adv["tpr"] == pytest.approx(np.mean(model.adversarial_score(x_adv).numpy() > with_adv["threshold"]))
    assert with_adv["fpr"] == pytest.approx(np.mean(model.adversarial_score(x).numpy() > with_adv["threshold"]))
    assert 0.0 <= with_adv["roc_auc"] <= 1.0


# ---------------------------------------------------------------------- validation passes (test_step)


def _unchanged(model, step):
    """Runs `step()` and checks that no weight moved; returns its metrics."""
    networks = [getattr(model, name) for name in ("generator", "discriminator", "cleaner", "detector_net", "autoencoder",
                                                  "classifier", "encoder") if hasattr(model, name)]
    weights = [w for network in networks for w in network.weights]  # moving statistics too; not the trackers
    before = [w.numpy().copy() for w in weights]
    got = step()
    for a, w in zip(before, weights):
        np.testing.assert_array_equal(a, w.numpy(), err_msg=w.name)
    model.reset_metrics()
    return got


def test_validation_passes_measure_the_training_losses_without_moving_a_weight(batch):
    x, y = batch
    cowboy = build_defense("cowboy", {"base_filters": 4, "z_dim": 8, "label_smoothing": 0.1})
    cowboy.compile(d_optimizer=_sgd(), g_optimizer=_sgd())
    tf.random.set_seed(SEED)
    got = _unchanged(cowboy, lambda: cowboy.test_step(x))
    tf.random.set_seed(SEED)
    fake = cowboy.discriminator(cowboy.generator(tf.random.normal([8, 8])))
    real = cowboy.discriminator(x)
    assert float(got["d_loss"]) == pytest.approx(float(losses.minimax_discriminator_loss(real, fake, label_smoothing=0.1)),
                                                  rel=1e-5)
    assert float(got["g_loss"]) == pytest.approx(float(losses.non_saturating_generator_loss(fake)), rel=1e-5)

    gcln = _gcln(perceptual_weight=0.3)
    gcln.g_on.assign(0.0)  # the validation loss is the objective's, whatever the phase
    target = gcln.target_classifier
    tf.random.set_seed(SEED)
    got = _unchanged(gcln, lambda: gcln.test_step((x, y)))
    tf.random.set_seed(SEED)
    cleaned = gcln.cleaner(_pgd(target, x, y, 0.1, 0.025, 2))
    features = keras.Model(target.inputs, target.layers[-2].output)
    perceptual = tf.reduce_mean(tf.reduce_sum(tf.square(features(x) - features(cleaned)), axis=1))
    adversarial = losses.non_saturating_generator_loss(gcln.detector_net(cleaned))
    assert float(got["g_loss"]) == pytest.approx(0.3 * float(perceptual) + 0.7 * float(adversarial), rel=1e-4)

    aaa = build_defense("aaa", {"filters": 4, "loss": "xent+mse", "mse_weight": 0.7, "nb_iter": 2, "eps_iter": 0.1})
    native = _tiny_classifier()
    object.__setattr__(aaa, "_natives", [native])
    aaa.compile(optimizer=_sgd())
    tf.random.set_seed(SEED)
    got = _unchanged(aaa, lambda: aaa.test_step((x, y)))
    tf.random.set_seed(SEED)
    cleaned = aaa.autoencoder(_pgd(lambda images: native(aaa.autoencoder(images)), x, y, 0.2, 0.1, 2))
    xent = losses.classification_loss(y, native(cleaned))
    assert float(got["loss"]) == pytest.approx(float(xent + 0.7 * tf.reduce_mean(tf.square(cleaned - x))), rel=1e-4)

    pgd_at = build_defense("pgd_at", {"arch": "lenet5", "nb_iter": 2, "adv_weight": 0.3})
    pgd_at.compile(optimizer=_sgd())
    tf.random.set_seed(SEED)
    got = _unchanged(pgd_at, lambda: pgd_at.test_step((x, y)))
    tf.random.set_seed(SEED)
    adv = losses.classification_loss(y, pgd_at.classifier(_pgd(pgd_at.classifier, x, y, 0.1, 0.025, 2)))
    clean = losses.classification_loss(y, pgd_at.classifier(x))
    assert float(got["loss"]) == pytest.approx(float(0.7 * clean + 0.3 * adv), rel=1e-5)

    l2l = build_defense("l2l_da", {"arch": "lenet5", "steps": 2, "z_dim": 4, "generator_filters": 4,
                                   "diversity_weight": 0.5})
    l2l.compile(c_optimizer=_sgd(), g_optimizer=_sgd())
    l2l(x[:1])
    tf.random.set_seed(SEED)
    got = _unchanged(l2l, lambda: l2l.test_step((x, y)))
    tf.random.set_seed(SEED)
    z1, z2 = tf.random.normal([8, 4]), tf.random.normal([8, 4])
    x2, y2 = tf.concat([x, x], 0), tf.concat([y, y], 0)

    def inference(inputs, training=True):
        return l2l.generator(inputs, training=False)

    trajectory, step_losses, _ = _trajectory_by_hand(inference, l2l.classifier, x2, y2, tf.concat([z1, z2], 0), 0.1,
                                                     0.025, 2)
    div = losses.diversity_loss([t[:8] for t in trajectory], [t[8:] for t in trajectory], z1, z2)
    adv = losses.classification_loss(y2, l2l.classifier(trajectory[-1]))
    assert float(got["adv_loss"]) == pytest.approx(float(adv), rel=1e-4)
    assert float(got["cls_loss"]) == pytest.approx(float(losses.classification_loss(y, l2l.classifier(x)) + adv),
                                                   rel=1e-4)
    assert float(got["gen_loss"]) == pytest.approx(-float(tf.reduce_mean(tf.stack(step_losses)) + 0.5 * div), rel=1e-4)
    assert float(got["div_loss"]) == pytest.approx(float(div), rel=1e-4)


def test_every_defense_returns_its_config():
    import dataclasses

    from tfpurify.defenses.registry import REGISTRY

    for name, (_, config_class) in REGISTRY.items():
        fields = {"arch": "lenet5"} if "arch" in config_class.__dataclass_fields__ else {}
        model = build_defense(name, fields)
        assert model.get_config() == dataclasses.asdict(model.config), name


# ---------------------------------------------------------------------- L2L-DA's learned attack


@pytest.mark.parametrize("pixel_clipped", [False, True])
def test_the_learned_attack_keeps_the_first_draw_that_fools_else_the_highest_loss(batch, tmp_path, pixel_clipped):
    from tfpurify.attacks import resolve_params, run_attack
    from tfpurify.defenses.l2l_da import _l2l_da_attack, _load_generator
    from tfpurify.errors import AttackConfigError

    x, y = batch
    model = build_defense("l2l_da", {"arch": "lenet5", "steps": 3, "z_dim": 4, "generator_filters": 4, "eps": 0.2,
                                     "eps_step": 0.05, "pixel_clipped_delta": pixel_clipped})
    model(x[:1])
    run = _defense_run(tmp_path / "l2l", "l2l_da", model)
    p = {**resolve_params("l2l_da", generator_run=run, eps=0.1, draws=3, finetune_steps=0),
         **_load_generator({"generator_run": run, "finetune_steps": 0})}
    assert (p["steps"], p["step_ratio"], p["z_dim"]) == (3, 0.25, 4)
    target = _tiny_classifier(3)
    tf.random.set_seed(SEED)
    got, cost = _l2l_da_attack(target, x, y, p, None)
    np.testing.assert_array_equal(cost.numpy(), 3 * 3)
    tf.random.set_seed(SEED)
    best, best_loss, best_fooled = x.numpy(), np.full(8, -np.inf), np.zeros(8, bool)
    for _ in range(3):
        z = tf.random.normal([8, 4])
        trajectory, step_losses, logits = _trajectory_by_hand(
            lambda inputs, training=True: p["generator"](inputs, training=False), target, x, y, z, 0.1, 0.025, 3,
            pixel_clipped)
        fooled = np.argmax(logits.numpy(), 1) != y.numpy()
        loss = step_losses[-1].numpy()
        better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
        best[better], best_loss[better] = trajectory[-1].numpy()[better], loss[better]
        best_fooled |= fooled
    np.testing.assert_allclose(got.numpy(), best, atol=1e-6)
    assert np.abs(got.numpy() - x.numpy()).max() <= 0.1 + 1e-6
    x_adv = run_attack("l2l_da", target, x.numpy(), y.numpy(), eps=0.1, generator_run=run, draws=2)
    assert np.abs(x_adv - x.numpy()).max() <= 0.1 + 1e-6
    # fine-tuning starts from the trained weights on every batch: the same batch twice, the same result
    tuned = {**p, "finetune_steps": 2, **_load_generator({"generator_run": run, "finetune_steps": 2})}
    trained = [w.copy() for w in tuned["generator"].get_weights()]
    outcomes = []
    for _ in range(2):
        tf.random.set_seed(SEED)
        adversarial, cost = _l2l_da_attack(target, x, y, tuned, None)
        outcomes.append(adversarial.numpy())
    # per example: the draws' steps, and per update two trajectories of T + 1 gradients (start and T steps)
    np.testing.assert_array_equal(cost.numpy(), 3 * 3 + 2 * 2 * (3 + 1))
    np.testing.assert_array_equal(outcomes[0], outcomes[1])
    assert any(np.abs(a - b).max() > 0 for a, b in zip(trained, tuned["generator"].get_weights()))  # it moved
    # ... by the run's optimizer (SGD, momentum 0.9, decoupled weight decay 1e-5, rate 0.01), in training mode,
    # ascending L_cls + lambda L_div with the run's step size, in two updates from the trained weights
    tuned_weights = [w.copy() for w in tuned["generator"].get_weights()]
    generator = tuned["generator"]
    generator.set_weights(trained)
    tf.random.set_seed(SEED)
    weights, velocity = [v.numpy() for v in generator.trainable_variables], None
    for _ in range(2):
        with tf.GradientTape() as tape:
            z1, z2 = tf.random.normal([8, 4]), tf.random.normal([8, 4])
            x2, y2 = tf.concat([x, x], 0), tf.concat([y, y], 0)
            trajectory, step_losses, _ = _trajectory_by_hand(generator, target, x2, y2, tf.concat([z1, z2], 0), 0.1,
                                                             0.025, 3, pixel_clipped)
            cls = tf.reduce_mean(tf.stack(step_losses))
            image_gap = tf.add_n([tf.reduce_sum(tf.abs(t[:8] - t[8:]), axis=[1, 2, 3]) for t in trajectory]) / 3
            div = tf.reduce_mean(image_gap / (tf.reduce_sum(tf.abs(z1 - z2), axis=1) + 1e-8))
            loss = -(cls + 0.02 * div)
        grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, generator.trainable_variables)]
        velocity = [-0.01 * g for g in grads] if velocity is None else [0.9 * m - 0.01 * g
                                                                         for m, g in zip(velocity, grads)]
        weights = [w - 0.01 * 1e-5 * w + m for w, m in zip(weights, velocity)]
        for variable, value in zip(generator.trainable_variables, weights):
            variable.assign(value)
    for got_weight, want in zip(tuned_weights, generator.get_weights()):  # moving statistics included
        np.testing.assert_allclose(got_weight, want, atol=1e-5)
    assert resolve_params("l2l_da", generator_run=run, draws=1)["draws"] == 1
    assert resolve_params("l2l_da", generator_run=run)["finetune_steps"] == 20  # the default
    for params, match in (({}, "needs a trained generator"), ({"generator_run": run, "norm": 2}, "only norm inf"),
                          ({"generator_run": run, "draws": 0}, "draws must be an integer >= 1"),
                          ({"generator_run": run, "draws": 1.5}, "draws must be an integer >= 1")):
        with pytest.raises(AttackConfigError, match=match):
            resolve_params("l2l_da", **params)
    cowboy_run = _defense_run(tmp_path / "cowboy", "cowboy", build_defense("cowboy", {"base_filters": 4, "z_dim": 4}))
    with pytest.raises(AttackConfigError, match="is not an l2l_da run"):
        _load_generator({"generator_run": cowboy_run})


# ---------------------------------------------------------------------- FBGAN's validation pass and diagnostics


@pytest.mark.parametrize("straight_through", [True, False])
def test_fbgan_validation_pass_by_hand(batch, straight_through):
    x = batch[0]
    cfg = {"base_filters": 4, "d_dropout": 0.0, "lambda_mi": 0.7, "continuous_weight": 0.5, "ae_reduction": "sum",
           "straight_through": straight_through}
    model = build_defense("fbgan", cfg)
    model.compile(d_optimizer=_sgd(), g_optimizer=_sgd(), e_optimizer=_sgd())
    tf.random.set_seed(SEED)
    got = _unchanged(model, lambda: model.test_step(x))
    tf.random.set_seed(SEED)
    z = model.sample_prior(8)
    e = model.encode(x)
    if straight_through:
        e = model.straight_through_code(e)
    x_fake, x_rec = model.generator(z), model.generator(e)
    real, real_features, _, _ = model.discriminator([x, e])
    fake, fake_features, q_cat, q_cont = model.discriminator([x_fake, z])
    rec = model.discriminator([x_rec, e])[0]
    mi = losses.mutual_information_gap(z[:, :10], z[:, 10:], q_cat, q_cont, 0.5)
    want = {"d_loss": losses.minimax_discriminator_loss(real, [fake, rec], [0.5, 0.5]) + 0.7 * mi,
            "g_loss": 0.5 * (losses.non_saturating_generator_loss(fake) + losses.non_saturating_generator_loss(rec)),
            "e_loss": losses.feature_matching_loss(real_features, fake_features), "mi_gap": mi,
            "recon_error": tf.reduce_mean(tf.reduce_sum(tf.square(x - x_rec), axis=[1, 2, 3]))}  # per image
    for name, value in want.items():
        assert float(got[name]) == pytest.approx(float(value), rel=1e-4), name


def test_fbgan_diagnostics_by_hand(batch):
    x, y = batch[0].numpy(), batch[1].numpy()
    model = build_defense("fbgan", {"base_filters": 4, "n_continuous": 2})
    codes = np.argmax(model.encode(x).numpy()[:, :10], axis=1)
    majority = {}
    for k in sorted(set(codes)):
        members = y[codes == k]
        majority[k] = int(np.bincount(members).argmax())
    purity = sum(int(np.sum(y[codes == k] == m)) for k, m in majority.items()) / 8

    said = max(set(majority.values()), key=list(majority.values()).count)

    seen = []

    def classifier(images):  # always the most common majority label: those categories score 1, the others 0
        seen.append(np.asarray(images))
        return tf.one_hot(tf.fill([tf.shape(images)[0]], said), 10)

    tf.random.set_seed(SEED)
    got = model.diagnostics(x, y, classifier, per_category=6, batch_size=3)
    asked, seen = seen, []
    assert got["purity"] == pytest.approx(purity)
    assert got["category_labels"] == [majority.get(k, -1) for k in range(10)]
    tf.random.set_seed(SEED)
    generated = []
    for k in range(10):
        continuous = tf.random.uniform([6, 2], -1.0, 1.0)
        images = model.generator(tf.concat([tf.one_hot(tf.fill([6], k), 10), continuous], axis=1))
        pred = np.argmax(classifier(images).numpy(), axis=1)
        generated.append(float(np.mean(pred == majority[k])) if k in majority else None)
    assert got["generated_accuracy"] == generated and 1.0 in generated
    assert len(asked) == 10  # G(one-hot k, continuous codes uniform in [-1, 1]), as by hand
    for a, b in zip(asked, seen):
        np.testing.assert_allclose(a, b, atol=1e-6)
    known = [g for g in generated if g is not None]
    assert got["generated_accuracy_mean"] == pytest.approx(np.mean(known))


@pytest.mark.parametrize("regularized", [True, False])
def test_fbgan_bpda_surrogate_clips_the_continuous_codes_it_differentiates(batch, regularized):
    x = batch[0][:4]
    model = build_defense("fbgan", {"base_filters": 4, "n_continuous": 3, "white_box_regularization": regularized})
    z = tf.concat([tf.nn.softmax(tf.random.normal([4, 10])), tf.constant([[-3.0, -0.5, 2.0]] * 4)], axis=1)
    object.__setattr__(model, "encode", lambda images, training=False: z)
    continuous = tf.clip_by_value(z[:, 10:], -1.0, 1.0) if regularized else z[:, 10:]
    want = model.generator(tf.concat([z[:, :10], continuous], axis=1)).numpy()
    np.testing.assert_allclose(model.attack_surrogate(x).numpy(), want, atol=1e-6)


def test_fbgan_compiles_adam_from_its_config():
    model = build_defense("fbgan", {"base_filters": 4, "learning_rate": 3e-4, "beta_1": 0.4})
    model.compile_for_training()
    optimizers = (model.d_optimizer, model.g_optimizer, model.e_optimizer)
    assert len({id(o) for o in optimizers}) == 3
    for optimizer in optimizers:
        assert isinstance(optimizer, keras.optimizers.Adam)
        assert float(optimizer.learning_rate) == pytest.approx(3e-4) and float(optimizer.beta_1) == pytest.approx(0.4)


# ---------------------------------------------------------------------- phases of the robust classifiers


class _Phase(keras.layers.Layer):
    """Doubles the logits in the training phase: a classifier whose phase shows, as `mlp`'s dropout or
    `resnet20`'s batch norm make it show, but deterministically."""

    def call(self, x, training=None):
        return 2.0 * x if training else x


def _phase_probe():
    tf.keras.utils.set_random_seed(1)
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, _Phase()(keras.layers.Dense(10)(keras.layers.Flatten()(inputs))))


def _with_probe(model, x):
    model.classifier = _phase_probe()
    model(x[:1])
    return model.classifier


def test_robust_classifiers_attack_and_validate_at_inference_and_train_in_the_training_phase(batch):
    """The attacks inside the steps and the validation passes see the inference phase, the updates the
    training phase (the by-hand tests above run on `lenet5`, which has no phase)."""
    x, y = batch
    pgd_at = build_defense("pgd_at", {"arch": "lenet5", "nb_iter": 2, "adv_weight": 0.3})
    pgd_at.compile(optimizer=_sgd(0.1))
    probe = _with_probe(pgd_at, x)

    def pgd_at_by_hand(training):
        x_adv = _pgd(probe, x, y, 0.1, 0.025, 2)
        clean, adv = (losses.classification_loss(y, probe(images, training=training)) for images in (x, x_adv))
        return {"c": 0.1 * (0.7 * clean + 0.3 * adv), "loss": 0.7 * clean + 0.3 * adv}

    _check_step(lambda: pgd_at.train_step((x, y)), {"c": probe}, lambda: pgd_at_by_hand(True))
    pgd_at.reset_metrics()  # the trackers' means restart
    tf.random.set_seed(SEED)
    got = _unchanged(pgd_at, lambda: pgd_at.test_step((x, y)))
    tf.random.set_seed(SEED)
    assert float(got["loss"]) == pytest.approx(float(pgd_at_by_hand(False)["loss"]), rel=1e-5)

    for diversity in (True, False):
        l2l = build_defense("l2l_da", {"arch": "lenet5", "steps": 2, "z_dim": 4, "generator_filters": 4,
                                       "diversity_weight": 0.5, "diversity": diversity})
        l2l.compile(c_optimizer=_sgd(0.1), g_optimizer=_sgd(0.1))
        probe = _with_probe(l2l, x)
        generator = l2l.generator
        keep = [w.numpy() for w in generator.weights]
        weight = 0.5 if diversity else 0.0

        def l2l_by_hand(training):
            z1, z2 = tf.random.normal([8, 4]), tf.random.normal([8, 4])
            x2, y2 = tf.concat([x, x], 0), tf.concat([y, y], 0)

            def g(inputs, training=True, phase=training):
                return generator(inputs, training=phase)

            trajectory, step_losses, _ = _trajectory_by_hand(g, probe, x2, y2, tf.concat([z1, z2], 0), 0.1, 0.025, 2)
            div = losses.diversity_loss([t[:8] for t in trajectory], [t[8:] for t in trajectory], z1, z2)
            adv = losses.classification_loss(y2, probe(tf.stop_gradient(trajectory[-1]), training=training))
            cls = losses.classification_loss(y, probe(x, training=training)) + adv
            gen = -(tf.reduce_mean(tf.stack(step_losses)) + weight * div)
            return {"g": 0.1 * gen, "c": 0.1 * cls, "gen": gen, "cls": cls, "adv": adv}

        def step():
            for w, value in zip(generator.weights, keep):
                w.assign(value)
            return l2l.train_step((x, y))

        _check_step(step, {"g": generator, "c": probe}, lambda: l2l_by_hand(True))
        for w, value in zip(generator.weights, keep):
            w.assign(value)
        l2l.reset_metrics()
        tf.random.set_seed(SEED)
        got = _unchanged(l2l, lambda: l2l.test_step((x, y)))
        tf.random.set_seed(SEED)
        want = l2l_by_hand(False)
        for key, name in (("gen", "gen_loss"), ("cls", "cls_loss"), ("adv", "adv_loss")):
            assert float(got[name]) == pytest.approx(float(want[key]), rel=1e-4), (diversity, name)


def test_gcln_trains_at_every_eps_it_is_given(batch, monkeypatch):
    from tfpurify.defenses import gcln
    from tfpurify.errors import InputValidationError

    x, y = batch
    seen = []
    real = gcln.pgd_examples
    monkeypatch.setattr(gcln, "pgd_examples", lambda c, images, labels, eps, eps_iter, steps: seen.append(
        (np.asarray(eps).reshape(-1), np.asarray(eps_iter).reshape(-1))) or real(c, images, labels, eps, eps_iter, steps))
    model = _gcln(attack_eps=["0.1", 0.3])  # repeated CLI options arrive as strings
    assert model.config.attack_eps == (0.1, 0.3) and _gcln().config.attack_eps == (0.1,)
    model(x[:1])
    model.train_step((x, y))
    eps, eps_iter = seen[-1]
    np.testing.assert_allclose(eps, np.tile([0.1, 0.3], len(x) // 2 + 1)[:len(x)])  # the batch split between them
    np.testing.assert_allclose(eps_iter, eps / 4)
    with pytest.raises(InputValidationError, match="attack_eps"):
        build_defense("gcln", {"attack_eps": ["x"]})
