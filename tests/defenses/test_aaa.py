import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cli.main import cli
from tfpurify import adaptive, attacks, classifiers, export
from tfpurify.defenses.aaa import AAA, AAAConfig
from tfpurify.errors import InputValidationError
from tfpurify.training import build_defense, load_defended, train_defense


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A classifier AAA never sees in training (the paper's transfer classifier)."""
    out = tmp_path_factory.mktemp("runs") / "mlp"
    classifiers.train_classifier(classifiers.ClassifierConfig(arch="mlp", epochs=2, limit=3000), out, verbose=0)
    return out


def _small(*runs, **fields):
    return AAAConfig(classifier=tuple(str(r) for r in runs), filters=8, nb_iter=3, batch_size=32, **fields)


def test_bad_config_values():
    for fields, match in (({"loss": "l1"}, "loss must be"), ({"eps_iter": 0.5}, "eps_iter"),
                          ({"architecture": "vgg"}, "architecture"), ({"mse_weight": -1.0}, "mse_weight")):
        with pytest.raises(InputValidationError, match=match):
            AAAConfig(**fields)
    assert AAAConfig(classifier="runs/cnn").classifier == ("runs/cnn",)
    with pytest.raises(InputValidationError, match="--classifier RUN"):
        build_defense("aaa", AAAConfig()).compile_for_training()


def test_unet_for_colour_images():
    model = AAA(AAAConfig(filters=4), input_shape=(32, 32, 3))
    assert model.purify(tf.zeros((2, 32, 32, 3))).shape == (2, 32, 32, 3)
    assert any(type(layer).__name__ == "Concatenate" for layer in model.autoencoder.layers)


def test_pgd_in_the_step_stays_in_the_ball(cnn_run, fmnist_test):
    model = build_defense("aaa", _small(cnn_run, eps=0.2, eps_iter=0.05))
    x, y = fmnist_test
    x_adv = model.adversarial_examples(model.native_classifiers[0], tf.constant(x[:32]), tf.constant(y[:32])).numpy()
    assert np.abs(x_adv - x[:32]).max() <= 0.2 + 1e-6 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x[:32]).max() > 0.1  # it moved


@pytest.mark.parametrize("loss", ["xent", "mse", "xent+mse"])
def test_each_loss_trains_the_autoencoder_only(cnn_run, mlp_run, fmnist_train_slice, loss):
    model = build_defense("aaa", _small(cnn_run, mlp_run, loss=loss))  # an ensemble of two
    model.compile_for_training()
    natives = [[w.numpy().copy() for w in c.weights] for c in model.native_classifiers]
    before = [w.numpy().copy() for w in model.autoencoder.trainable_weights]
    x, y = fmnist_train_slice
    history = model.fit(model.make_dataset(x[:64], y[:64], 32), epochs=1, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values()), history.history
    assert all(not np.allclose(a, b.numpy()) for a, b in zip(before, model.autoencoder.trainable_weights))
    for old, c in zip(natives, model.native_classifiers):
        assert all(np.array_equal(a, b.numpy()) for a, b in zip(old, c.weights))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cnn_run):
    out = tmp_path_factory.mktemp("runs") / "aaa"
    config = AAAConfig(classifier=(str(cnn_run),), filters=16, eps=0.2, eps_iter=0.05, nb_iter=5, epochs=3,
                       limit=3000, batch_size=64)
    train_defense("aaa", config, out, verbose=0)
    return out


def test_short_training_beats_the_bare_classifier_white_box(trained_run, cnn_run, cnn, fmnist_test):
    defended, _ = load_defended(trained_run, cnn_run)
    x, y = fmnist_test
    x, y = x[:128], y[:128]
    bare = classifiers.accuracy(cnn, attacks.run_attack("pgd", cnn, x, y, eps=0.2, nb_iter=10), y)
    target = adaptive.whitebox_target(defended)
    protected = classifiers.accuracy(defended, attacks.run_attack("pgd", target, x, y, eps=0.2, nb_iter=10), y)
    assert protected > bare + 0.1, (bare, protected)


def test_transfer_to_an_unseen_classifier_and_export(trained_run, mlp_run, fmnist_test, tmp_path):
    result = CliRunner().invoke(cli, ["eval", str(trained_run), "--classifier", str(mlp_run), "--attacks", "pgd",
                                      "--nb-iter", "3", "--limit", "32", "--no-sanity-checks",
                                      "--report", str(tmp_path / "r.md")])
    assert result.exit_code == 0, result.output
    assert "| aaa | whitebox | pgd |" in result.output
    defended, _ = load_defended(trained_run, mlp_run)
    path = export.export_saved_model(defended, tmp_path, "aaa", 1, (28, 28, 1))
    reloaded = tf.saved_model.load(str(path))
    x = fmnist_test[0][:8]
    served = reloaded.signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(served["probabilities"].numpy(), defended.predict_outputs(x)["probabilities"].numpy(),
                               atol=1e-5)


def test_train_cli_takes_several_classifiers(cnn_run, mlp_run, tmp_path):
    out = tmp_path / "aaa"
    result = CliRunner().invoke(cli, ["train", "aaa", "--classifier", str(cnn_run), "--classifier", str(mlp_run),
                                      "--nb-iter", "2", "--filters", "4", "--epochs", "1", "--limit", "300",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    import json
    assert json.loads((out / "config.json").read_text())["classifier"] == [str(cnn_run), str(mlp_run)]
