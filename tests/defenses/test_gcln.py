import numpy as np
import pytest
import tensorflow as tf

from tfpurify import adaptive, attacks, classifiers, export, metrics
from tfpurify.defenses.base import adversarial_scores
from tfpurify.defenses.gcln import GCLNConfig
from tfpurify.errors import InputValidationError
from tfpurify.training import build_defense, load_defended, load_defense, train_defense


def _small(cnn_run, **fields):
    return GCLNConfig(classifier=str(cnn_run), filters=8, residual_blocks=1, detector_filters=8, attack_steps=2,
                      batch_size=32, **fields)


def test_bad_config_values():
    for fields, match in (({"quant_step": -1.0}, "quant_step"), ({"perceptual_weight": 1.5}, "perceptual_weight"),
                          ({"attack_eps": 0.0}, "attack_eps"), ({"raw_attack_weight": 1.0}, "raw_attack_weight")):
        with pytest.raises(InputValidationError, match=match):
            GCLNConfig(**fields)
    model = build_defense("gcln", GCLNConfig())
    with pytest.raises(InputValidationError, match="--classifier RUN"):
        model.compile_for_training()


@pytest.mark.parametrize("recycle", [False, True])
def test_a_step_updates_cleaner_and_detector(cnn_run, fmnist_train_slice, recycle):
    model = build_defense("gcln", _small(cnn_run, recycle=recycle))
    model.compile_for_training()
    x, y = fmnist_train_slice
    players = (model.cleaner, model.detector_net)
    before = [[w.numpy().copy() for w in p.trainable_weights] for p in players]
    history = model.fit(model.make_dataset(x[:64], y[:64], 32), epochs=1, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values()), history.history
    for player, old in zip(players, before):
        assert all(not np.allclose(a, b.numpy()) for a, b in zip(old, player.trainable_weights)), player.name
    assert model.target_classifier.trainable_weights == []  # the protected classifier never trains


def test_the_detector_pretrains_alone(cnn_run, fmnist_train_slice):
    model = build_defense("gcln", _small(cnn_run, detector_pretrain_epochs=1))
    model.compile_for_training()
    x, y = fmnist_train_slice
    cleaner_before = [w.numpy().copy() for w in model.cleaner.trainable_weights]
    model.fit(model.make_dataset(x[:64], y[:64], 32), epochs=1, verbose=0, callbacks=model.training_callbacks())
    assert all(np.allclose(a, b.numpy()) for a, b in zip(cleaner_before, model.cleaner.trainable_weights))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cnn_run):
    out = tmp_path_factory.mktemp("runs") / "gcln"
    config = GCLNConfig(classifier=str(cnn_run), filters=16, residual_blocks=2, detector_filters=16, attack_steps=3,
                        epochs=3, limit=2000, detector_pretrain_epochs=1, learning_rate=1e-3)
    train_defense("gcln", config, out, verbose=0)
    return out


def test_detector_tells_clean_from_pgd(trained_run, cnn, fmnist_test):
    model, _ = load_defense(trained_run)
    x, y = fmnist_test
    x_adv = attacks.run_attack("pgd", cnn, x, y, eps=0.1, nb_iter=10)
    auc = metrics.roc_auc(adversarial_scores(model, x), adversarial_scores(model, x_adv))
    assert auc > 0.7, auc


def test_bpda_whitebox_pgd_goes_through_the_quantizer(trained_run, cnn_run, fmnist_test):
    defended, _ = load_defended(trained_run, cnn_run)
    x, y = fmnist_test
    x, y = x[:128], y[:128]
    clean = classifiers.accuracy(defended, x, y)
    assert clean > 0.5, clean  # the cleaner keeps the content
    target = adaptive.whitebox_target(defended, detector_weight=0.0)
    adversarial = classifiers.accuracy(defended, attacks.run_attack("pgd", target, x, y, eps=0.1, nb_iter=20), y)
    assert adversarial < clean - 0.2, (clean, adversarial)  # no masked gradient
    assert target.settings["bpda"] == "GCLN.attack_surrogate"


def test_export_with_detector_outputs_reloads_equal(trained_run, cnn_run, tmp_path, fmnist_test):
    defended, _ = load_defended(trained_run, cnn_run)
    path = export.export_saved_model(defended, tmp_path, "gcln", 1, (28, 28, 1))
    reloaded = tf.saved_model.load(str(path))
    x = fmnist_test[0][:8]
    served = reloaded.signatures["serving_default"](images=tf.constant(x))
    expected = defended.predict_outputs(x)
    for key in ("probabilities", "adversarial_score"):
        np.testing.assert_allclose(served[key].numpy(), expected[key].numpy(), atol=1e-5)
    np.testing.assert_array_equal(served["is_adversarial"].numpy(), expected["is_adversarial"].numpy())
    purified = reloaded.signatures["purify"](images=tf.constant(x))["purified"]
    np.testing.assert_allclose(purified.numpy(), defended.purify(x).numpy(), atol=1e-5)


def test_served_cleaner_has_the_true_gradient_and_bpda_the_straight_through_one_in_one_pass(cnn_run,
                                                                                          fmnist_test):
    model = build_defense("gcln", _small(cnn_run))
    x = tf.constant(fmnist_test[0][:4])

    def input_gradient(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(fn(x))
        g = tape.gradient(out, x)
        return np.zeros(x.shape) if g is None else g.numpy()

    assert np.abs(input_gradient(model.purify)).max() == 0.0  # rounding: what plain gradients see
    assert np.abs(input_gradient(model.attack_surrogate)).max() > 0.0  # straight-through: BPDA
    np.testing.assert_allclose(model.attack_surrogate(x).numpy(), model.purify(x).numpy(), atol=1e-5)
    calls, cleaner = [], model.cleaner

    class Counting:  # the cleaner, counting its calls
        def __call__(self, images, **kwargs):
            calls.append(1)
            return cleaner(images, **kwargs)

        def get_layer(self, name):
            return cleaner.get_layer(name)

    object.__setattr__(model, "cleaner", Counting())
    try:
        surrogate = input_gradient(adaptive.bpda(model))
    finally:
        object.__setattr__(model, "cleaner", cleaner)
    assert len(calls) == 1 and np.abs(surrogate).max() > 0.0  # BPDA runs the cleaner once
    assert model.quantizer.straight_through  # training keeps the straight-through gradient
