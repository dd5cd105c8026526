import gzip
import struct

import numpy as np
import pytest

from tfpurify import data
from tfpurify.errors import DataFormatError, DatasetUnavailableError, InputValidationError

DEBIAN = "/usr/share/datasets/fashion-mnist"


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_shapes_ranges_labels(split):
    x, y = data.load_dataset("fashion_mnist", split, limit=500)
    assert x.shape == (500, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (500,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert set(np.unique(y)) == set(range(10))


def test_full_test_split_has_10000_examples():
    x, y = data.load_dataset("fashion_mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and len(y) == 10000
    assert np.bincount(y).tolist() == [1000] * 10


def _write_idx(path, magic, dims, payload):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload)


def test_data_dir_takes_precedence_and_truncated_file_is_an_error(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    # A truncated images file: header says 10000 images, holds only 10.
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", 2051, (10000, 28, 28), bytes(28 * 28 * 10))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", 2049, (10000,), bytes(10000))
    monkeypatch.setenv("TFPURIFY_DATA_DIR", str(tmp_path))
    with pytest.raises(DataFormatError, match="truncated or corrupt"):
        data.load_dataset("fashion_mnist", "test")


def test_wrong_magic_and_non_gzip_are_errors(tmp_path):
    bad_magic = tmp_path / "labels.gz"
    _write_idx(bad_magic, 2051, (3,), bytes(3))
    with pytest.raises(DataFormatError, match="magic number 2051"):
        data.read_idx(bad_magic, 2049)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"not a gzip file at all")
    with pytest.raises(DataFormatError, match="not a readable gzip"):
        data.read_idx(not_gzip, 2049)


def test_read_idx_round_trip(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    path = tmp_path / "img.gz"
    _write_idx(path, 2051, (2, 28, 28), images.tobytes())
    np.testing.assert_array_equal(data.read_idx(path, 2051, 2), images)


@pytest.mark.parametrize("name,where", [("mnist", "mnist.npz"), ("cifar10", "cifar-10-batches-bin"),
                                        ("svhn", "test_32x32.mat")])
def test_offline_datasets_say_where_to_put_files(name, where, tmp_path, monkeypatch):
    monkeypatch.setenv("TFPURIFY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(DatasetUnavailableError, match=where) as info:
        data.load_dataset(name, "test")
    assert str(tmp_path) in str(info.value)


def test_mnist_loads_from_npz_in_data_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {f"x_{s}": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 6), ("test", 4))}
    arrays.update({f"y_{s}": rng.integers(0, 10, n) for s, n in (("train", 6), ("test", 4))})
    np.savez(tmp_path / "mnist.npz", **arrays)
    monkeypatch.setenv("TFPURIFY_DATA_DIR", str(tmp_path))
    x, y = data.load_dataset("mnist", "test")
    assert x.shape == (4, 28, 28, 1) and y.dtype == np.int64
    np.testing.assert_allclose(x[..., 0], arrays["x_test"] / 255.0, atol=1e-6)


def test_unknown_dataset_and_bad_arguments():
    with pytest.raises(DatasetUnavailableError, match="unknown dataset"):
        data.load_dataset("imagenet")
    with pytest.raises(InputValidationError):
        data.load_dataset("fashion_mnist", "validation")
    with pytest.raises(InputValidationError):
        data.load_dataset("fashion_mnist", "test", limit=0)


def test_train_val_split_is_deterministic_and_disjoint():
    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1)
    y = np.arange(100)
    (xa, ya), (xv, yv) = data.train_val_split(x, y, 0.2, seed=3)
    (xa2, _), (xv2, _) = data.train_val_split(x, y, 0.2, seed=3)
    assert len(xv) == 20 and len(xa) == 80
    assert not set(ya) & set(yv)
    np.testing.assert_array_equal(xv, xv2)
    np.testing.assert_array_equal(xa, xa2)


def test_to_tf_dataset_batches():
    x = np.zeros((10, 28, 28, 1), np.float32)
    y = np.arange(10)
    batches = list(data.to_tf_dataset(x, y, batch_size=4, shuffle=True))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate([b[1].numpy() for b in batches]).tolist()) == list(range(10))


@pytest.mark.parametrize("bad,match", [
    (np.full((2, 28, 28, 1), np.nan, np.float32), "NaN"),
    (np.full((2, 28, 28, 1), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((28, 28, 1), np.float32), r"\[N, H, W, C\]"),
    (np.array([["a"]]), "numeric"),
])
def test_validate_images_rejects_bad_input(bad, match):
    with pytest.raises(InputValidationError, match=match):
        data.validate_images(bad)


def test_corrupt_deflate_stream_is_a_format_error(tmp_path):
    compressed = bytearray(gzip.compress(struct.pack(">II", 2049, 4000) + bytes(4000)))
    compressed[12] ^= 0xFF  # inside the deflate stream: zlib.error, not a gzip header error
    path = tmp_path / "labels.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(DataFormatError, match="labels.gz"):
        data.read_idx(path, 2049)


def test_truncated_mnist_npz_is_a_format_error(tmp_path, monkeypatch):
    np.savez(tmp_path / "full.npz", x_test=np.zeros((4, 28, 28), np.uint8), y_test=np.zeros(4, np.int64))
    whole = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "mnist.npz").write_bytes(whole[:len(whole) // 2])
    monkeypatch.setenv("TFPURIFY_DATA_DIR", str(tmp_path))
    with pytest.raises(DataFormatError, match="mnist.npz.*BadZipFile"):
        data.load_dataset("mnist", "test")


def test_corrupt_svhn_mat_is_a_format_error(tmp_path, monkeypatch):
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(bytes(256))
    monkeypatch.setenv("TFPURIFY_DATA_DIR", str(tmp_path))
    with pytest.raises(DataFormatError, match="test_32x32.mat.*MatReadError"):
        data.load_dataset("svhn", "test")


def _write_fashion_test(folder, images, labels):
    folder.mkdir(exist_ok=True)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", 2051, images.shape, images.tobytes())
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", 2049, labels.shape, labels.tobytes())


def test_labels_out_of_range_name_the_file(tmp_path, monkeypatch, ):
    labels = np.zeros(10000, np.uint8)
    labels[7] = 10  # Fashion-MNIST has classes 0..9
    _write_fashion_test(tmp_path / "fashion-mnist", np.zeros((10000, 28, 28), np.uint8), labels)
    monkeypatch.setenv("TFPURIFY_DATA_DIR", str(tmp_path))
    with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte.gz.*labels range over \[0, 10\]"):
        data.load_dataset("fashion_mnist", "test", limit=5)


def test_images_of_wrong_shape_name_the_file(tmp_path, monkeypatch):
    _write_fashion_test(tmp_path / "fashion-mnist", np.zeros((10000, 28, 27), np.uint8), np.zeros(10000, np.uint8))
    monkeypatch.setenv("TFPURIFY_DATA_DIR", str(tmp_path))
    with pytest.raises(DataFormatError, match=r"t10k-images.*\(28, 27, 1\)"):
        data.load_dataset("fashion_mnist", "test")


def test_mnist_npz_of_wrong_dtype_or_labels_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TFPURIFY_DATA_DIR", str(tmp_path))
    np.savez(tmp_path / "mnist.npz", x_test=np.zeros((4, 28, 28), np.float64), y_test=np.zeros(4, np.int64))
    with pytest.raises(DataFormatError, match="mnist.npz: images are float64"):
        data.load_dataset("mnist", "test")
    np.savez(tmp_path / "mnist.npz", x_test=np.zeros((4, 28, 28), np.uint8), y_test=np.full(4, -1))
    with pytest.raises(DataFormatError, match=r"mnist.npz: labels range over \[-1, -1\]"):
        data.load_dataset("mnist", "test")
    np.savez(tmp_path / "mnist.npz", x_test=np.zeros((4, 28, 28), np.uint8), y_test=np.zeros(3, np.int64))
    with pytest.raises(DataFormatError, match="mnist.npz: labels"):
        data.load_dataset("mnist", "test")


def test_cifar10_reads_the_binary_version_without_pickle(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 10000, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(10000, -1)], axis=1)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(records.tobytes())
    monkeypatch.setenv("TFPURIFY_DATA_DIR", str(tmp_path))
    x, y = data.load_dataset("cifar10", "test", limit=3)
    np.testing.assert_array_equal(y, labels[:3])
    np.testing.assert_allclose(x, images[:3] / 255.0, atol=1e-6)
    (folder / "test_batch.bin").write_bytes(records.tobytes()[:-5])
    with pytest.raises(DataFormatError, match="test_batch.bin.*truncated"):
        data.load_dataset("cifar10", "test")


def test_nothing_in_the_package_unpickles_data():
    import pathlib
    import re

    package = pathlib.Path(data.__file__).parent
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"\bimport pickle\b|pickle\.loads?\(|allow_pickle=True", text), path


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "8", None])
def test_batch_size_must_be_a_positive_integer(bad):
    with pytest.raises(InputValidationError, match="batch_size must be an integer >= 1"):
        data.validate_batch_size(bad)
    assert data.validate_batch_size(np.int64(3)) == 3 and data.validate_batch_size(1) == 1
