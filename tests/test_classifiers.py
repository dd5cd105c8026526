import json

import numpy as np
import pytest
import tensorflow as tf

from tfpurify import classifiers
from tfpurify.errors import InputValidationError, RunFolderError


@pytest.mark.parametrize("arch,shape", [("cnn", (28, 28, 1)), ("lenet5", (28, 28, 1)),
                                        ("mlp", (28, 28, 1)), ("resnet20", (32, 32, 3))])
def test_architectures_return_logits(arch, shape):
    model = classifiers.build_classifier(arch, shape, 10)
    out = model(np.random.rand(3, *shape).astype(np.float32))
    assert out.shape == (3, 10)
    assert model.layers[-1].get_config().get("activation") in (None, "linear")


def test_unknown_architecture():
    with pytest.raises(InputValidationError, match="unknown architecture"):
        classifiers.ClassifierConfig(arch="vgg")


def test_run_folder_reloads_to_same_outputs(cnn_run, cnn, fmnist_test):
    x, _ = fmnist_test
    config = json.loads((cnn_run / "config.json").read_text())
    assert config["kind"] == "classifier" and config["arch"] == "cnn"
    assert (cnn_run / "history.csv").read_text().count("\n") == 3  # header + 2 epochs
    assert not (cnn_run / "backup").exists()
    again, _ = classifiers.load_classifier(cnn_run)
    np.testing.assert_allclose(again(x[:16]), cnn(x[:16]), atol=1e-5)


def test_load_errors(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        classifiers.load_classifier(tmp_path / "missing")
    with pytest.raises(RunFolderError, match="no config.json"):
        classifiers.load_classifier(tmp_path)


class _Crash(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill after epoch 2")


class _Epochs(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def test_killed_run_resumes_from_last_epoch(tmp_path):
    config = classifiers.ClassifierConfig(arch="mlp", epochs=4, limit=600, batch_size=64)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        classifiers.train_classifier(config, out, callbacks=[_Crash()], verbose=0)
    assert (out / "backup").exists() and not (out / "classifier.weights.h5").exists()
    epochs = _Epochs()
    _, history = classifiers.train_classifier(config, out, callbacks=[epochs], verbose=0)
    assert epochs.seen == [2, 3], "training should resume after the two finished epochs"
    assert (out / "classifier.weights.h5").exists() and not (out / "backup").exists()
    assert (out / "history.csv").read_text().count("\n") == 5  # header + 4 epochs over both runs


def test_training_raises_accuracy_above_chance(cnn_clean_accuracy):
    assert cnn_clean_accuracy > 0.6
