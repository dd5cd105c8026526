import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cli.main import cli
from tfpurify import adaptive, attacks, data, export, metrics
from tfpurify.defenses.base import DefendedClassifier, adversarial_scores
from tfpurify.defenses.cowboy import Cowboy, CowboyConfig
from tfpurify.errors import InputValidationError
from tfpurify.training import build_defense, load_defended, load_defense, train_defense

from tests.toys import layer_specs

# the cleaning search itself: every input cleaned (the default cleans only what the detector flags)
SMALL = CowboyConfig(base_filters=8, z_dim=16, batch_size=32, clean_only_detected=False)


@pytest.fixture(scope="module")
def untrained():
    model = build_defense("cowboy", SMALL)
    model.compile_for_training()
    return model


def _with(model, **fields):
    """The same weights under other (runtime) config fields."""
    other = Cowboy(dataclasses.replace(model.config, **fields), model.image_shape)
    other(tf.zeros((1, *model.image_shape)))
    other.set_weights(model.get_weights())
    return other


def test_no_batch_norm_and_shapes(untrained):
    kinds = {type(layer).__name__ for p in (untrained.generator, untrained.discriminator) for layer in p.layers}
    assert not any("BatchNormalization" in k for k in kinds)
    images = untrained.generator(tf.random.normal([3, SMALL.z_dim])).numpy()
    assert images.shape == (3, 28, 28, 1) and images.min() >= 0.0 and images.max() <= 1.0
    assert untrained.adversarial_score(images).shape == (3,)


def test_one_fit_step_updates_both_players_without_nan(untrained):
    x = np.random.rand(32, 28, 28, 1).astype(np.float32)
    players = (untrained.generator, untrained.discriminator)
    before = [[w.numpy().copy() for w in p.trainable_weights] for p in players]
    history = untrained.fit(untrained.make_dataset(x, None, 32), epochs=1, verbose=0)
    assert set(history.history) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    for player, old in zip(players, before):
        assert all(not np.allclose(a, b.numpy()) for a, b in zip(old, player.trainable_weights)), player.name


def test_bad_options_are_one_line_errors():
    for fields, match in (({"clean_steps": -1}, "clean_steps must be >= 0"), ({"sigma": 0.0}, "sigma must be"),
                          ({"sigma": float("inf")}, "sigma must be"), ({"mode": "magic"}, "mode must be"),
                          ({"clean_restarts": 0}, "clean_restarts must be > 0"),
                          ({"threshold_rule": "paper"}, "needs --classifier")):
        with pytest.raises(InputValidationError, match=match):
            CowboyConfig(**fields)


def test_default_cleaning_budget_is_at_most_200_passes():
    assert CowboyConfig().passes_per_image <= 200


def test_search_lowers_the_loss_and_keeps_the_best_restart(untrained):
    x = tf.constant(np.random.rand(4, 28, 28, 1).astype(np.float32))
    start = _with(untrained, clean_steps=0, warm_start=0, clean_restarts=3, cleaning_seed=1)
    searched = _with(untrained, clean_steps=30, warm_start=0, clean_restarts=3, cleaning_seed=1)
    _, loss_start, _ = start.search(x)
    z_star, loss_end, passes = searched.search(x)
    assert np.all(loss_end.numpy() < loss_start.numpy())
    np.testing.assert_array_equal(passes.numpy(), 3 * 30)
    _, rows_loss, _ = searched.search_rows(x)
    np.testing.assert_allclose(loss_end.numpy(), rows_loss.numpy().reshape(4, 3).min(axis=1))
    np.testing.assert_allclose(searched.search_loss(z_star, x).numpy(), loss_end.numpy(), rtol=1e-4)


def test_early_stopping_and_pruning_save_passes(untrained):
    x = tf.constant(np.random.rand(4, 28, 28, 1).astype(np.float32))
    full = _with(untrained, clean_steps=40, warm_start=0, clean_restarts=3, cleaning_seed=2)
    pruned = _with(untrained, clean_steps=40, warm_start=0, clean_restarts=3, cleaning_seed=2, prune_after=5)
    patient = _with(untrained, clean_steps=40, warm_start=0, clean_restarts=3, cleaning_seed=2, patience=1,
                    z_learning_rate=5.0)  # steps this large stop improving quickly
    np.testing.assert_array_equal(pruned.search(x)[2].numpy(), 3 * 5 + 35)
    assert np.all(patient.search(x)[2].numpy() < full.search(x)[2].numpy())


def test_cleaning_is_deterministic_for_a_seed_and_random_without(untrained):
    x = np.random.rand(3, 28, 28, 1).astype(np.float32)
    seeded = _with(untrained, clean_steps=3, warm_start=4, cleaning_seed=5)
    np.testing.assert_array_equal(seeded.purify(x).numpy(), seeded.purify(x).numpy())
    assert not seeded.stochastic and untrained.stochastic
    free = _with(untrained, clean_steps=3, warm_start=4)
    assert not np.array_equal(free.purify(x).numpy(), free.purify(x).numpy())


def test_a_seeded_cleaning_of_an_image_does_not_depend_on_its_batch(untrained):
    # Served or attacked, an image must be cleaned as one function of itself: an attacker scoring
    # one batch and a report scoring another must see the same cleaning (the ART check's gap).
    x = np.random.RandomState(0).rand(5, 28, 28, 1).astype(np.float32)
    seeded = _with(untrained, clean_steps=4, warm_start=6, clean_restarts=2, cleaning_seed=3)
    together = seeded.purify(x).numpy()
    alone = np.concatenate([seeded.purify(x[i:i + 1]).numpy() for i in range(len(x))])
    reversed_batch = seeded.purify(x[::-1]).numpy()[::-1]
    np.testing.assert_allclose(alone, together, atol=1e-5)
    np.testing.assert_allclose(reversed_batch, together, atol=1e-5)
    assert np.abs(together[0] - together[1]).max() > 1e-3  # distinct images: a test that can fail


def test_defense_gan_mode_ignores_the_discriminator(untrained):
    x = np.random.rand(3, 28, 28, 1).astype(np.float32)
    gan = _with(untrained, mode="defense_gan", clean_steps=5, cleaning_seed=0)
    before = gan.purify(x).numpy()
    for w in gan.discriminator.trainable_weights:
        w.assign(tf.random.normal(w.shape))
    np.testing.assert_array_equal(gan.purify(x).numpy(), before)
    cowboy = _with(untrained, clean_steps=5, cleaning_seed=0)  # the D term changes the result
    assert not np.array_equal(cowboy.purify(x).numpy(), before)


def test_bpda_identity_and_unrolled_give_gradients(untrained):
    x = tf.constant(np.random.rand(2, 28, 28, 1).astype(np.float32))
    for model in (_with(untrained, clean_steps=2, warm_start=0, cleaning_seed=0),
                  _with(untrained, clean_steps=2, warm_start=0, cleaning_seed=0, bpda_unroll=2)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = adaptive.bpda(model)(x)
            total = tf.reduce_sum(out * tf.random.normal(out.shape))
        grad = tape.gradient(total, x)
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0
        np.testing.assert_allclose(out.numpy(), model.purify(x).numpy(), atol=1e-6)


def test_unrolled_bpda_searches_once(untrained):
    model = _with(untrained, clean_steps=2, warm_start=0, cleaning_seed=0, bpda_unroll=1)
    calls, search = [], model.search
    object.__setattr__(model, "search", lambda x: calls.append(1) or search(x))
    adaptive.bpda(model)(tf.constant(np.random.rand(2, 28, 28, 1).astype(np.float32)))
    assert len(calls) == 1


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cnn_run):
    out = tmp_path_factory.mktemp("runs") / "cowboy"
    config = CowboyConfig(base_filters=16, z_dim=32, epochs=4, limit=3000, seed=1, classifier=str(cnn_run),
                          clean_steps=20, clean_restarts=2, warm_start=4)
    _, history = train_defense("cowboy", config, out, verbose=0)
    return out


def test_discriminator_scores_clean_above_fgsm_and_both_thresholds_are_kept(trained_run, cnn, fmnist_test):
    model, _ = load_defense(trained_run)
    x, y = fmnist_test
    x_adv = attacks.run_attack("fgsm", cnn, x, y, eps=0.1)
    auc = metrics.roc_auc(adversarial_scores(model, x), adversarial_scores(model, x_adv))
    assert auc > 0.6, auc
    calibration = json.loads((trained_run / "calibration.json").read_text())
    assert calibration["split"] == "validation" and calibration["rule"] == "fpr"
    assert np.isfinite(calibration["threshold_fpr"]) and np.isfinite(calibration["threshold_paper"])
    assert calibration["threshold"] == calibration["threshold_fpr"] == pytest.approx(float(model.threshold.numpy()))


def test_cleaning_finds_codes_that_reconstruct_the_input(trained_run, fmnist_test):
    model, _ = load_defense(trained_run)
    x, _ = fmnist_test
    cleaned = model.purify(x[:64]).numpy()
    samples = model.generator(tf.random.normal([64, model.config.z_dim])).numpy()
    assert np.mean((cleaned - x[:64]) ** 2) < 0.8 * np.mean((samples - x[:64]) ** 2)


def test_export_reload_in_a_fresh_process_cleans_the_same(trained_run, cnn_run, tmp_path):
    defended, _ = load_defended(trained_run, cnn_run, {"cleaning_seed": 7})
    path = export.export_saved_model(defended, tmp_path, "cowboy", 1, (28, 28, 1))
    x, _ = data.load_dataset("fashion_mnist", "test", limit=4)
    np.save(tmp_path / "x.npy", x)
    script = f"""
import numpy as np, tensorflow as tf
model = tf.saved_model.load({str(path)!r})
x = tf.constant(np.load({str(tmp_path / 'x.npy')!r}))
out = model.signatures["serving_default"](images=x)
np.savez({str(tmp_path / 'out.npz')!r}, purified=model.signatures["purify"](images=x)["purified"].numpy(),
         score=out["adversarial_score"].numpy(), probabilities=out["probabilities"].numpy())
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["purified"], defended.purify(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(out["score"], defended.detector.adversarial_score(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], defended.predict_outputs(x)["probabilities"], atol=1e-5)


def test_cli_eval_overrides_cleaning_and_rejects_bad_values(trained_run, cnn_run, tmp_path):
    runner = CliRunner()
    report = tmp_path / "r.md"
    result = runner.invoke(cli, ["eval", str(trained_run), "--classifier", str(cnn_run), "--attacks", "fgsm",
                                 "--threat-model", "graybox", "--limit", "16", "--no-sanity-checks",
                                 "--clean-steps", "3", "--clean-restarts", "1", "--warm-start", "0",
                                 "--score-draws", "3", "--report", str(report)])
    assert result.exit_code == 0, result.output
    written = json.loads(report.with_suffix(".json").read_text())
    settings = written["settings"]
    fgsm = next(row for row in written["rows"] if row["attack"] == "fgsm" and row["threat_model"] == "graybox")
    assert fgsm["score_draws"] == 3 and fgsm["accuracy_all_draws"] <= fgsm["accuracy"]  # random starts: stochastic
    assert settings["threat_models"]["graybox"]["scored_over_draws"] == 3
    assert settings["runs"]["defense"]["runtime"] == {"clean_steps": 3, "clean_restarts": 1, "warm_start": 0}
    for args, match in ((["--clean-steps", "-1"], "clean_steps must be >= 0"), (["--sigma", "0"], "sigma must be")):
        bad = runner.invoke(cli, ["eval", str(trained_run), "--classifier", str(cnn_run), *args])
        assert bad.exit_code == 1 and "Traceback" not in bad.output
        lines = [line for line in bad.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and match in lines[0], lines


def test_runtime_options_do_not_apply_to_other_defenses(dae_run, cnn_run):
    with pytest.raises(InputValidationError, match="--clean-steps does not apply to a denoising_ae run"):
        load_defended(dae_run, cnn_run, {"clean_steps": 3})


def test_runtime_overrides_given_as_text_are_read_as_their_fields_types(trained_run, cnn_run):
    # What a benchmark's `--run label=path:clean_steps=3,...` or `--override key=value` passes on.
    _, info = load_defended(trained_run, cnn_run, {"clean_steps": "3", "clean_only_detected": "false",
                                                   "sigma": "0.25", "mode": "defense_gan", "cleaning_seed": "0"})
    assert info["runs"]["defense"]["runtime"] == {"clean_steps": 3, "clean_only_detected": False, "sigma": 0.25,
                                                  "mode": "defense_gan", "cleaning_seed": 0}
    assert type(info["runs"]["defense"]["runtime"]["clean_steps"]) is int
    for overrides, match in (({"clean_steps": "3.5"}, "clean_steps: '3.5' is not an integer"),
                             ({"sigma": "wide"}, "sigma: 'wide' is not a number"),
                             ({"clean_only_detected": "maybe"}, "clean_only_detected: 'maybe' is not true or false")):
        with pytest.raises(InputValidationError, match=match):
            load_defended(trained_run, cnn_run, overrides)


def test_paper_threshold_rule_flags_below_the_lp_mean_of_d_over_fgsm(trained_run, cnn, fmnist_train_slice):
    """Paper 3.4: the threshold is the L^p average of D over FGSM examples; flagged when D falls below it."""
    model, config = load_defense(trained_run)
    x_val = fmnist_train_slice[0][:500]
    model.config = dataclasses.replace(config, threshold_rule="paper", threshold_p=2.0)
    result = model.calibrate(x_val, target_fpr=0.05)
    x_fgsm = attacks.run_attack("fgsm", cnn, x_val, eps=config.threshold_eps)
    d = tf.sigmoid(model.discriminator(x_fgsm)).numpy().ravel().astype(np.float64)  # D(x) on FGSM examples
    expected = -np.log(np.mean(d ** 2) ** 0.5)  # flagged when -log D(x) is above -log of the L^2 mean
    assert result["rule"] == "paper" and result["threshold"] == pytest.approx(expected, rel=1e-4)
    assert float(model.threshold.numpy()) == pytest.approx(expected, rel=1e-4)
    assert result["threshold_fpr"] != pytest.approx(expected, rel=1e-3)  # the other rule gives another threshold
    assert result["fpr"] == pytest.approx(float(np.mean(model.is_adversarial(x_val).numpy())))


def test_the_dcgan_players_layer_by_layer():
    cfg = CowboyConfig(base_filters=8, z_dim=16)
    model = Cowboy(cfg)
    assert model.generator.name == "generator" and model.discriminator.name == "discriminator"
    assert layer_specs(model.generator) == [(7 * 7 * 32, (), (), None, "relu"), "Reshape", (16, (5, 5), (2, 2), "same", "relu"),
                                        (8, (5, 5), (2, 2), "same", "relu"), (1, (5, 5), (1, 1), "same", "sigmoid")]
    discriminator = [(8, (5, 5), (2, 2), "same", "linear"), ("LeakyReLU", 0.2), (16, (5, 5), (2, 2), "same", "linear"),
                     ("LeakyReLU", 0.2), "Flatten", (1, (), (), None, "linear")]
    assert layer_specs(model.discriminator) == discriminator
    spectral = layer_specs(Cowboy(dataclasses.replace(cfg, spectral_norm=True)).discriminator)
    assert [s for s in spectral if s != "SpectralNormalization"] == discriminator
    assert spectral.count("SpectralNormalization") == 3
    assert model.generator(tf.zeros([2, 16])).shape == (2, 28, 28, 1)
    assert Cowboy(cfg, (32, 32, 3)).generator(tf.zeros([1, 16])).shape == (1, 32, 32, 3)
    for shape in ((28, 32, 1), (30, 30, 1), (32, 28, 1)):
        with pytest.raises(InputValidationError, match="square images with a side divisible by 4"):
            Cowboy(cfg, shape)
    assert [m.name for m in model.metrics] == ["d_loss", "g_loss", "d_real", "d_fake"]


def test_config_boundaries():
    for fields in ({"z_momentum": 0.0}, {"z_momentum": 0.99}, {"label_smoothing": 0.49}, {"threshold_eps": 1.0},
                   {"clean_steps": 0, "warm_start": 0, "patience": 0, "prune_after": 0, "bpda_unroll": 0}):
        CowboyConfig(**fields)
    for fields, match in (({"z_dim": 0}, "z_dim must be > 0"), ({"base_filters": 0}, "base_filters must be > 0"),
                          ({"z_learning_rate": 0.0}, "z_learning_rate must be > 0"),
                          ({"threshold_p": 0.0}, "threshold_p must be > 0"), ({"z_optimizer": "rmsprop"}, "z_optimizer"),
                          ({"z_momentum": 1.0}, "z_momentum must be in"), ({"z_momentum": -0.1}, "z_momentum"),
                          ({"label_smoothing": 0.5}, "label_smoothing must be in"),
                          ({"threshold_rule": "best"}, "threshold_rule must be"),
                          ({"threshold_eps": 0.0}, "threshold_eps must be in"),
                          ({"threshold_eps": 1.5}, "threshold_eps must be in"),
                          ({"warm_start": -1}, "warm_start must be >= 0"), ({"patience": -1}, "patience"),
                          ({"prune_after": -1}, "prune_after"), ({"bpda_unroll": -1}, "bpda_unroll")):
        with pytest.raises(InputValidationError, match=match):
            CowboyConfig(**fields)


def test_cleaning_is_differentiable_end_to_end_and_checkpoints_change_no_gradient(untrained):
    """The served search passes the exact gradient (second order through each descent step); recomputing
    blocks of steps backward (`grad_checkpoint`) gives the same gradient as keeping every step, and the
    graph (tf.gradients inside `tf.recompute_grad`) the same as eager execution (nested tapes)."""
    x = tf.constant(np.random.RandomState(0).rand(3, 28, 28, 1).astype(np.float32))
    weights = tf.constant(np.random.RandomState(1).randn(3, 28, 28, 1).astype(np.float32))
    fields = dict(clean_steps=5, clean_restarts=2, warm_start=4, cleaning_seed=0, sigma=0.3)

    def value_and_grad(model):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(model.purify(x) * weights)
        return total, tape.gradient(total, x)

    graph = {k: tf.function(lambda m=_with(untrained, grad_checkpoint=k, **fields): value_and_grad(m))() for k in (0, 2)}
    assert float(tf.reduce_max(tf.abs(graph[0][1]))) > 0
    np.testing.assert_allclose(graph[2][1].numpy(), graph[0][1].numpy(), rtol=1e-4, atol=1e-7)
    tf.config.run_functions_eagerly(True)
    try:
        eager = value_and_grad(_with(untrained, grad_checkpoint=2, **fields))
    finally:
        tf.config.run_functions_eagerly(os.environ.get("TFPURIFY_TEST_EAGER") == "1")
    np.testing.assert_allclose(eager[1].numpy(), graph[0][1].numpy(), rtol=1e-4, atol=1e-7)
    # BPDA's forward pass searches on a stopped input: the identity's gradient exactly
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(adaptive.bpda(_with(untrained, **fields), "identity")(x) * weights)
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), weights.numpy())
    with pytest.raises(InputValidationError, match="grad_checkpoint must be >= 0"):
        _with(untrained, grad_checkpoint=-1)


def test_white_box_attacks_with_the_surrogate_and_the_exact_gradient(untrained):
    classifier = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(28, 28, 1)), tf.keras.layers.Dense(10)])
    defended = DefendedClassifier(classifier, purifier=_with(untrained, clean_steps=2, warm_start=0, cleaning_seed=0))
    auto = adaptive.threat_model_pipelines(defended)["whitebox"][0]
    assert [t.variant for t in auto] == ["surrogate", "exact"]
    assert auto[0].settings["bpda"] == "Cowboy.attack_surrogate" and auto[1].settings["bpda"].startswith("exact")
    one = adaptive.threat_model_pipelines(defended, bpda="unroll:2")["whitebox"][0]
    assert one.variant == "unroll:2" and "2 descent steps unrolled" in one.settings["bpda"]
    # unroll:K at eval time is the config's bpda_unroll = K
    x = tf.constant(np.random.RandomState(0).rand(2, 28, 28, 1).astype(np.float32))
    weights = tf.constant(np.random.RandomState(1).randn(2, 28, 28, 1).astype(np.float32))
    unrolled = _with(untrained, clean_steps=2, warm_start=0, cleaning_seed=0, bpda_unroll=2)
    grads = []
    for f in (adaptive.bpda(defended.purifier, "unroll:2"), adaptive.bpda(unrolled)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(f(x) * weights)
        grads.append(tape.gradient(total, x).numpy())
    assert np.abs(grads[0]).max() > 0
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_the_papers_schedule_and_pipeline_are_the_defaults(fmnist_train_slice):
    assert CowboyConfig().clean_only_detected and CowboyConfig().train_steps == 2000
    assert CowboyConfig(dataset="svhn").train_steps == 40000 and CowboyConfig(train_steps=0).train_steps == 0
    with pytest.raises(InputValidationError, match="train_steps"):
        CowboyConfig(train_steps=-1)
    x, _ = fmnist_train_slice
    model = build_defense("cowboy", dataclasses.replace(SMALL, train_steps=5))
    model.compile_for_training()
    model.fit(model.make_dataset(x[:320], None, 32), epochs=3, verbose=0, callbacks=model.training_callbacks())
    assert int(model.g_optimizer.iterations) == 5  # 10 steps an epoch: stopped in the first
    model.fit(model.make_dataset(x[:320], None, 32), epochs=3, verbose=0, callbacks=model.training_callbacks())
    assert int(model.g_optimizer.iterations) == 6  # a resumed run counts its earlier steps (one more: the check)
    unbounded = build_defense("cowboy", dataclasses.replace(SMALL, train_steps=0))
    assert unbounded.training_callbacks() == []
