import numpy as np
import pytest
import tensorflow as tf

from tfpurify import attacks, classifiers, data
from tfpurify.defenses.denoising_ae import DenoisingAEConfig
from tfpurify.errors import InputValidationError
from tfpurify.training import load_defense, train_defense


def test_output_shape_and_range(defended_dae, fmnist_test):
    x, _ = fmnist_test
    purified = defended_dae.purify(x[:8]).numpy()
    assert purified.shape == x[:8].shape
    assert purified.min() >= 0.0 and purified.max() <= 1.0


def test_training_lowers_reconstruction_error(dae_run, fmnist_test):
    history = (dae_run / "history.csv").read_text().splitlines()
    losses = [float(line.split(",")[1]) for line in history[1:]]
    assert losses[-1] < losses[0]
    model, _ = load_defense(dae_run)
    x, _ = fmnist_test
    assert float(tf.reduce_mean((model.purify(x) - x) ** 2)) < 0.03


def test_raises_graybox_pgd_accuracy_clearly_above_undefended(cnn, defended_dae, fmnist_test):
    x, y = fmnist_test
    x_adv = attacks.run_attack("pgd", cnn, x, y, eps=0.1, nb_iter=20)  # gray-box: sees the classifier only
    undefended = classifiers.accuracy(cnn, x_adv, y)
    defended = classifiers.accuracy(defended_dae, x_adv, y)
    assert defended > undefended + 0.2, (undefended, defended)


def test_config_validation():
    with pytest.raises(InputValidationError):
        DenoisingAEConfig(noise_std=-1)
    with pytest.raises(InputValidationError):
        DenoisingAEConfig(epochs=0)


class _Crash(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill")


def test_killed_defense_run_resumes(tmp_path):
    config = DenoisingAEConfig(epochs=2, limit=300, batch_size=64, filters=4)
    with pytest.raises(KeyboardInterrupt):
        train_defense("denoising_ae", config, tmp_path, callbacks=[_Crash()], verbose=0)
    assert (tmp_path / "backup").exists()
    seen = []
    cb = tf.keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch))
    train_defense("denoising_ae", config, tmp_path, callbacks=[cb], verbose=0)
    assert seen == [1]
    model, loaded = load_defense(tmp_path)
    assert loaded == config
    x, _ = data.load_dataset("fashion_mnist", "test", limit=4)
    assert np.all(np.isfinite(model.purify(x).numpy()))
