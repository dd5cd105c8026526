"""Shared fixtures: no network, seeded randomness, one briefly trained cnn for the whole session."""

import os

os.environ["TFPURIFY_OFFLINE"] = "1"  # tests never download anything
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfpurify import classifiers, data, registry  # noqa: E402

registry.load()  # the tests are the top: built-in defenses and attacks, and any installed plug-in

if os.environ.get("TFPURIFY_TEST_EAGER") == "1":
    # `make mutation`: mutmut runs each mutant in a fork of a warm process, where TensorFlow's thread
    # pools are gone and any graph function would wait forever; tf.functions run eagerly instead
    tf.config.run_functions_eagerly(True)


@pytest.fixture(autouse=True)
def _seed():
    tf.keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def fmnist_test():
    """The first 256 Fashion-MNIST test images (real data, small slice)."""
    return data.load_dataset("fashion_mnist", "test", limit=256)


@pytest.fixture(scope="session")
def fmnist_train_slice():
    """2000 Fashion-MNIST training images: calibration data (never the test split)."""
    return data.load_dataset("fashion_mnist", "train", limit=2000)


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory):
    """A cnn classifier run folder trained for 2 epochs on 3000 Fashion-MNIST images."""
    out = tmp_path_factory.mktemp("runs") / "cnn"
    config = classifiers.ClassifierConfig(arch="cnn", epochs=2, limit=3000, batch_size=64)
    classifiers.train_classifier(config, out, verbose=0)
    return out


@pytest.fixture(scope="session")
def cnn(cnn_run):
    model, _ = classifiers.load_classifier(cnn_run)
    return model


@pytest.fixture(scope="session")
def cnn_clean_accuracy(cnn, fmnist_test):
    x, y = fmnist_test
    acc = classifiers.accuracy(cnn, x, y)
    assert acc > 0.6, f"the session classifier should train well above chance, got {acc}"
    return acc


def pytest_configure(config):
    np.set_printoptions(precision=4)


FIRST = ("test_distributed.py",)  # the longest file: one test of 2-3 minutes (a fresh process, every defense twice)


def pytest_collection_modifyitems(items):
    """The longest file first: under `make test`'s two workers (`--dist loadfile --no-loadscope-reorder`: files
    handed out in this order) it runs beside the rest instead of alone at the end."""
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def dae_run(tmp_path_factory):
    """A denoising-AE defense run trained for 3 epochs on 3000 Fashion-MNIST images."""
    from tfpurify.defenses.denoising_ae import DenoisingAEConfig
    from tfpurify.training import train_defense

    out = tmp_path_factory.mktemp("runs") / "dae"
    train_defense("denoising_ae", DenoisingAEConfig(epochs=3, limit=3000, batch_size=64), out, verbose=0)
    return out


@pytest.fixture(scope="session")
def defended_dae(dae_run, cnn_run):
    from tfpurify.training import load_defended

    defended, _ = load_defended(dae_run, cnn_run)
    return defended


@pytest.fixture(scope="session")
def c_api_runner(tmp_path_factory):
    """tests/c_api/run_signature.c, built once (skipped where gcc is missing; .ci/run installs it)."""
    from tests.c_api import build_runner

    return build_runner(tmp_path_factory.mktemp("c_api"))
