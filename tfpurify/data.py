"""Image classification data sets as float32 NHWC arrays in [0, 1] with int64 labels.

Fashion-MNIST is the embedded default. It is looked up, in order, in `$TFPURIFY_DATA_DIR`
(`fashion-mnist/` below it, or the IDX files directly in it), the Keras cache
(`~/.keras/datasets/fashion-mnist`, or `$KERAS_HOME/datasets/...`), Debian's
`/usr/share/datasets/fashion-mnist` (package `dataset-fashion-mnist`), and only then downloaded
through Keras. Set `TFPURIFY_OFFLINE=1` to forbid any download (the tests do).
"""

import dataclasses
import gzip
import os
import pathlib
import struct
import zipfile
import zlib

import numpy as np
import tensorflow as tf

from tfpurify.errors import DataFormatError, DatasetUnavailableError, InputValidationError

__all__ = [
    "DatasetInfo",
    "DATASETS",
    "dataset_info",
    "load_dataset",
    "read_idx",
    "read_cifar10_batch",
    "train_val_split",
    "validation_size",
    "load_train_val",
    "to_tf_dataset",
    "validate_batch_size",
    "validate_images",
]

_SPLITS = ("train", "test")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_SIZES = {"train": 60000, "test": 10000}
_IDX_MAGIC_IMAGES = 2051
_IDX_MAGIC_LABELS = 2049


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a data set looks like, without loading it."""

    name: str
    input_shape: tuple
    num_classes: int
    class_names: tuple
    train_size: int
    test_size: int


DATASETS = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", (28, 28, 1), 10,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        60000, 10000),
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, tuple(str(i) for i in range(10)), 60000, 10000),
    "cifar10": DatasetInfo(
        "cifar10", (32, 32, 3), 10,
        ("airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck"),
        50000, 10000),
    "svhn": DatasetInfo("svhn", (32, 32, 3), 10, tuple(str(i) for i in range(10)), 73257, 26032),
}


def dataset_info(name):
    """Returns the `DatasetInfo` of a data set name, or raises `DatasetUnavailableError`."""
    if name not in DATASETS:
        raise DatasetUnavailableError(
            f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _offline():
    return os.environ.get("TFPURIFY_OFFLINE", "").lower() in ("1", "true", "yes")


def _keras_datasets_dir():
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return pathlib.Path(home) / "datasets"


def _user_data_dir():
    value = os.environ.get("TFPURIFY_DATA_DIR")
    return pathlib.Path(value) if value else None


# --------------------------------------------------------------------------- IDX (MNIST family)

def read_idx(path, expected_magic, expected_count=None):
    """Reads a gzipped IDX file and verifies its magic number and size.

    Args:
      path: path to a `.gz` IDX file.
      expected_magic: 2051 for image files, 2049 for label files.
      expected_count: number of items the file must hold, or None.

    Returns:
      A uint8 array of shape [count] (labels) or [count, rows, cols] (images).

    Raises:
      DataFormatError: the file is not gzip, has the wrong magic number, or is truncated.
    """
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # not gzip, truncated, or a corrupt deflate stream
        raise DataFormatError(f"{path}: not a readable gzip IDX file ({e})") from None
    if len(data) < 8:
        raise DataFormatError(f"{path}: truncated IDX header")
    magic, count = struct.unpack(">II", data[:8])
    if magic != expected_magic:
        raise DataFormatError(f"{path}: IDX magic number {magic}, expected {expected_magic}")
    if expected_count is not None and count != expected_count:
        raise DataFormatError(f"{path}: holds {count} items, expected {expected_count}")
    header, shape = 8, (count,)
    if expected_magic == _IDX_MAGIC_IMAGES:
        if len(data) < 16:
            raise DataFormatError(f"{path}: truncated IDX header")
        rows, cols = struct.unpack(">II", data[8:16])
        header, shape = 16, (count, rows, cols)
    expected_bytes = header + int(np.prod(shape))
    if len(data) != expected_bytes:
        raise DataFormatError(
            f"{path}: {len(data)} bytes, expected {expected_bytes} (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_candidates(folder_name):
    dirs = []
    user = _user_data_dir()
    if user is not None:
        dirs += [user / folder_name, user]
    dirs.append(_keras_datasets_dir() / folder_name)
    if folder_name == "fashion-mnist":
        dirs.append(pathlib.Path("/usr/share/datasets/fashion-mnist"))
    return dirs


def _load_idx_dataset(name, folder_name, split, keras_loader):
    images_file, labels_file = _IDX_FILES[split]
    candidates = _idx_candidates(folder_name)
    for folder in candidates:
        if (folder / images_file).is_file() and (folder / labels_file).is_file():
            x = read_idx(folder / images_file, _IDX_MAGIC_IMAGES, _IDX_SIZES[split])
            y = read_idx(folder / labels_file, _IDX_MAGIC_LABELS, _IDX_SIZES[split])
            return x[..., None], y, f"{folder / images_file} and {labels_file}"
    where = ", ".join(str(c) for c in candidates)
    if _user_data_dir() is None:
        where = f"$TFPURIFY_DATA_DIR/{folder_name}, {where}"
    hint = f"{name} is not on disk: put {images_file} and {labels_file} in one of {where}"
    if name == "fashion_mnist":
        hint += " (or apt-get install dataset-fashion-mnist)"
    elif name == "mnist":
        hint += f" (or mnist.npz in {_keras_datasets_dir()})"
    (x_train, y_train), (x_test, y_test) = _keras_download(name, keras_loader, hint)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return x[..., None], y, f"the Keras download of {name}"


def _keras_download(name, keras_loader, hint):
    if _offline():
        raise DatasetUnavailableError(f"{hint}; downloads are off (TFPURIFY_OFFLINE=1)")
    try:
        return keras_loader()
    except Exception as e:  # network errors come in many types; all mean "not available"
        raise DatasetUnavailableError(f"{hint}; the Keras download failed ({type(e).__name__})") from None


# --------------------------------------------------------------------------- loaders

def _load_fashion_mnist(split):
    return _load_idx_dataset("fashion_mnist", "fashion-mnist", split,
                             tf.keras.datasets.fashion_mnist.load_data)


def _load_mnist(split):
    candidates = []
    user = _user_data_dir()
    if user is not None:
        candidates.append(user / "mnist.npz")
    candidates.append(_keras_datasets_dir() / "mnist.npz")
    for path in candidates:
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as f:
                    x, y = f[f"x_{split}"], f[f"y_{split}"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise DataFormatError(f"{path}: not a valid mnist.npz ({type(e).__name__}: {e})") from None
            return x[..., None], y, str(path)
    # Otherwise the four IDX .gz files in $TFPURIFY_DATA_DIR/mnist or the Keras cache.
    return _load_idx_dataset("mnist", "mnist", split, tf.keras.datasets.mnist.load_data)


_CIFAR_RECORD = 1 + 32 * 32 * 3  # label byte, then 1024 red, 1024 green, 1024 blue pixels
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def read_cifar10_batch(path):
    """Reads one file of CIFAR-10's binary version (fixed 3073-byte records; nothing unpickled).

    Returns:
      (images uint8 [10000, 32, 32, 3], labels uint8 [10000])

    Raises:
      DataFormatError: unreadable, or not 10000 whole records.
    """
    try:
        raw = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise DataFormatError(f"{path}: unreadable ({e})") from None
    if len(raw) != 10000 * _CIFAR_RECORD:
        raise DataFormatError(f"{path}: {len(raw)} bytes, expected {10000 * _CIFAR_RECORD} "
                              f"(10000 records of {_CIFAR_RECORD}; truncated or not CIFAR-10 binary)")
    records = np.frombuffer(raw, np.uint8).reshape(10000, _CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0]


def _load_cifar10(split):
    folders = []
    user = _user_data_dir()
    if user is not None:
        folders.append(user / "cifar-10-batches-bin")
    folders.append(_keras_datasets_dir() / "cifar-10-batches-bin")
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    folder = next((f for f in folders if all((f / n).is_file() for n in names)), None)
    if folder is None:
        hint = (f"cifar10 is not on disk: extract cifar-10-binary.tar.gz ({_CIFAR_URL}) so that "
                f"cifar-10-batches-bin/ lies in {folders[0].parent}")
        if _offline():
            raise DatasetUnavailableError(f"{hint}; downloads are off (TFPURIFY_OFFLINE=1)")
        try:
            tf.keras.utils.get_file("cifar-10-binary.tar.gz", _CIFAR_URL, extract=True,
                                    cache_dir=str(_keras_datasets_dir().parent))
        except Exception as e:  # network errors come in many types; all mean "not available"
            raise DatasetUnavailableError(f"{hint}; the download failed ({type(e).__name__})") from None
        folder = folders[-1]
    batches = [read_cifar10_batch(folder / n) for n in names]
    return (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]),
            str(folder / names[0]) if len(names) == 1 else f"{folder}/data_batch_*.bin")


def _load_svhn(split):
    candidates = []
    user = _user_data_dir()
    if user is not None:
        candidates.append(user / "svhn")
    candidates.append(_keras_datasets_dir() / "svhn")
    for folder in candidates:
        path = folder / f"{split}_32x32.mat"
        if path.is_file():
            import scipy.io  # only needed for this format
            from scipy.io.matlab import MatReadError

            try:
                mat = scipy.io.loadmat(str(path))
                x, y = np.asarray(mat["X"]).transpose(3, 0, 1, 2), np.asarray(mat["y"]).reshape(-1)
            except (OSError, KeyError, ValueError, TypeError, EOFError, MatReadError, zlib.error) as e:
                raise DataFormatError(f"{path}: not a valid SVHN .mat file ({type(e).__name__}: {e})") from None
            return x, np.where(y == 10, 0, y), str(path)  # SVHN stores digit 0 as label 10
    hint = (f"svhn is not on disk: put train_32x32.mat and test_32x32.mat "
            f"(http://ufldl.stanford.edu/housenumbers/) in {candidates[0]}")
    if _offline():
        raise DatasetUnavailableError(f"{hint}; downloads are off (TFPURIFY_OFFLINE=1)")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DatasetUnavailableError(f"{hint}, or pip install tensorflow-datasets") from None
    try:
        x, y = tfds.as_numpy(tfds.load("svhn_cropped", split=split, batch_size=-1, as_supervised=True))
    except Exception as e:  # download or preparation failure
        raise DatasetUnavailableError(f"{hint}; the tensorflow-datasets download failed ({type(e).__name__})") from None
    return x, y, "the tensorflow-datasets copy of svhn_cropped"


_LOADERS = {
    "fashion_mnist": _load_fashion_mnist,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "svhn": _load_svhn,
}


def load_dataset(name="fashion_mnist", split="train", limit=None):
    """Loads a data set split as float32 NHWC images in [0, 1] and int64 labels.

    Args:
      name: one of `DATASETS` (`fashion_mnist`, `mnist`, `cifar10`, `svhn`).
      split: "train" or "test".
      limit: keep only the first `limit` examples (a fixed, reproducible subset), or None.

    Returns:
      (x, y): x float32 [N, H, W, C] in [0, 1], y int64 [N].

    Raises:
      DatasetUnavailableError: unknown name, or the files are missing and cannot be downloaded.
      DataFormatError: the files exist but are corrupt.
      InputValidationError: bad `split` or `limit`.
    """
    info = dataset_info(name)
    if split not in _SPLITS:
        raise InputValidationError(f"split must be 'train' or 'test', not {split!r}")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputValidationError(f"limit must be a positive integer or None, not {limit!r}")
    x, y, source = _LOADERS[name](split)
    _check_arrays(info, x, y, f"{name}/{split} from {source}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return np.asarray(x, dtype=np.float32) / 255.0, np.asarray(y, dtype=np.int64).reshape(-1)


def _check_arrays(info, x, y, source):
    """Raw images must be uint8 [N, H, W, C] of the data set's shape, labels integers in range."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8:
        raise DataFormatError(f"{source}: images are {x.dtype}, expected uint8 pixels")
    if x.ndim != 4 or x.shape[1:] != info.input_shape:
        raise DataFormatError(f"{source}: images of shape {x.shape[1:]}, expected {info.input_shape}")
    if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != len(x):
        raise DataFormatError(f"{source}: labels of dtype {y.dtype} and shape {y.shape}, "
                              f"expected {len(x)} integers")
    if len(y) and (y.min() < 0 or y.max() >= info.num_classes):
        raise DataFormatError(f"{source}: labels range over [{y.min()}, {y.max()}], "
                              f"expected 0..{info.num_classes - 1}")


def validate_batch_size(batch_size):
    """`batch_size` if it is an integer >= 1, else InputValidationError (booleans are not integers here)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputValidationError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def validate_images(x, name="images", input_shape=None):
    """Checks a batch of images is a finite float array [N, H, W, C] in [0, 1].

    Args:
      x: array-like of images.
      name: what to call the array in error messages.
      input_shape: the (H, W, C) the model expects, or None to accept any.

    Returns:
      x as a float32 numpy array.

    Raises:
      InputValidationError: wrong rank or shape, non-numeric dtype, NaN/Inf, values outside [0, 1].
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise InputValidationError(f"{name} must be numeric, got dtype {x.dtype}")
    if x.ndim != 4:
        raise InputValidationError(f"{name} must be [N, H, W, C], got shape {x.shape}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise InputValidationError(f"{name} have shape {x.shape[1:]}, the model expects {tuple(input_shape)}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise InputValidationError(f"{name} contain NaN or Inf")
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise InputValidationError(
            f"{name} must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}] (divide uint8 images by 255)")
    return x


def train_val_split(x, y, val_fraction=0.1, seed=0):
    """Splits training data into train and validation parts, deterministically per seed.

    The test split is never used for validation, early stopping or calibration.

    Returns:
      (x_train, y_train), (x_val, y_val)
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputValidationError(f"val_fraction must be in (0, 1), not {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = validation_size(len(x), val_fraction)
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def validation_size(n, val_fraction):
    """How many of `n` training images `train_val_split` holds out for validation (at least one)."""
    return max(1, int(round(n * val_fraction)))


def load_train_val(name, limit=None, val_fraction=0.1, seed=0):
    """The training split of `name`, split deterministically into (train, validation) parts."""
    x, y = load_dataset(name, "train", limit=limit)
    return train_val_split(x, y, val_fraction, seed)


def to_tf_dataset(x, y=None, batch_size=128, shuffle=False, seed=0):
    """Wraps arrays in a batched, prefetched `tf.data.Dataset` (shuffled per epoch if asked)."""
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    if shuffle:
        ds = ds.shuffle(min(len(x), 10000), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
