"""Export a `DefendedClassifier` as a versioned SavedModel that TF Serving loads.

`<base_dir>/<name>/<version>/` gets two signatures:
- `serving_default`: `images` float32 [None, H, W, C] -> `probabilities`, `classes`, and where a
  detector exists `adversarial_score`, `is_adversarial`;
- `purify`: `images` -> `purified`.
Inputs are checked in the graph: a non-finite pixel fails the request with "images contain NaN
or Inf"; pixels outside [0, 1] are clipped into it. Written with `tf.keras.export.ExportArchive`
(plain `tf.saved_model.save` cannot save tfa weight-normalized layers) into a temporary sibling
folder, then renamed, so a crash never leaves a half-written version. Replacing a version
(`overwrite`) swaps the two folders in one atomic rename (Linux `renameat2(RENAME_EXCHANGE)`), so
the old version stays servable until the new one is complete. Metadata (defense, config,
dataset, input shape, versions, evaluation summary) is stored in `assets/tfpurify.json`; the keys
tfpurify writes itself cannot be overridden by the caller.
"""

import ctypes
import errno
import json
import os
import pathlib
import re
import shutil
import uuid

import tensorflow as tf

from tfpurify.data import dataset_info, load_dataset
from tfpurify.errors import InputValidationError, RunFolderError, TfpurifyError
from tfpurify.metrics import percent

__all__ = ["ExportError", "export_saved_model", "METADATA_ASSET", "RESERVED_METADATA", "validate_name",
           "predict_request", "evaluation_summary", "predict_saved_model"]

METADATA_ASSET = "tfpurify.json"
RESERVED_METADATA = ("input_shape", "signatures", "versions", "defense", "classifier")
MAX_NAME_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ExportError(TfpurifyError):
    """The export destination is taken or invalid."""


def validate_name(name):
    """A model name is one path component: letters, digits, `_ . -`, no separators, not `..`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or len(name) > MAX_NAME_LENGTH:
        raise InputValidationError(
            f"invalid model name {name!r}: use up to {MAX_NAME_LENGTH} letters, digits, '_', '.', '-' "
            "(no path separators or '..')")
    return name


def _checked(images, input_shape):
    """The request's images, checked in the graph: their shape and finite values; pixels clipped into [0, 1]."""
    expected = tf.constant(input_shape, tf.int32)
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.shape(images)[1:], expected,
            message=f"images must have shape [N, {', '.join(str(d) for d in input_shape)}]")]):
        images = tf.debugging.assert_all_finite(images, "images contain NaN or Inf")
    return tf.clip_by_value(images, 0.0, 1.0)


def _any_batch(fn, images):
    """fn's {name: [N, ...]} outputs, also for an empty batch (N = 0), which oneDNN convolutions refuse
    with a cryptic error: an empty batch runs one blank image and returns none of its rows."""
    n = tf.shape(images)[0]
    blank = tf.zeros(tf.concat([[1], tf.shape(images)[1:]], axis=0), images.dtype)
    outputs = fn(tf.cond(n > 0, lambda: images, lambda: blank))
    return {name: value[:n] for name, value in outputs.items()}


def export_saved_model(defended, base_dir, name, version, input_shape, metadata=None, overwrite=False):
    """Writes `base_dir/name/version/` atomically.

    Args:
      defended: a `DefendedClassifier` (built).
      base_dir: export root, e.g. "saved_models".
      name: model name (one path component).
      version: positive integer (TF Serving serves the highest).
      input_shape: (H, W, C) of the images.
      metadata: JSON-serializable dict stored in assets/tfpurify.json beside the keys tfpurify
        writes itself (RESERVED_METADATA: input_shape, signatures, versions, defense, classifier),
        which it may repeat (as `load_defended`'s info does) but not override.
      overwrite: replace an existing version instead of refusing.

    Returns:
      pathlib.Path of the version folder.

    Raises:
      ExportError: the version exists and overwrite is False; an uncalibrated detector; no atomic
        swap for overwrite on this file system.
      InputValidationError: bad name, version or metadata.
    """
    validate_name(name)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputValidationError(f"version must be a positive integer, got {version!r}")
    metadata, own = dict(metadata or {}), _own_metadata(defended, input_shape)
    forged = sorted(k for k in RESERVED_METADATA if k in metadata and metadata[k] != own[k])
    if forged:
        raise InputValidationError(f"metadata may not set {', '.join(forged)}: tfpurify writes these keys itself "
                                   f"({', '.join(f'{k}={own[k]!r}' for k in forged)})")
    detector = defended.detector
    if detector is not None and not detector.is_calibrated:
        raise ExportError("the detector's threshold was never calibrated (it would flag nothing); "
                          "calibrate it on validation data before exporting")
    model_dir = pathlib.Path(base_dir) / name
    final = model_dir / str(version)
    if final.exists() and not overwrite:
        raise ExportError(f"{final} exists; pass --overwrite to replace it")
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        _write(defended, tmp, tuple(input_shape), {**metadata, **own})
        if final.exists():
            _exchange(tmp, final)  # atomic: `final` is the old version, then the new one, never absent
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after an exchange, the old version
    return final


def _own_metadata(defended, input_shape):
    """The metadata keys tfpurify writes itself (RESERVED_METADATA)."""
    import importlib.metadata

    try:
        own_version = importlib.metadata.version("tfpurify")
    except importlib.metadata.PackageNotFoundError:
        own_version = "unknown"
    defense = defended.purifier if defended.purifier is not None else defended.detector
    if getattr(defended, "robust_classifier", False):  # adversarial training: the classifier is the defense
        defense = defended.classifier
    return {"input_shape": list(input_shape), "signatures": ["serving_default", "purify"],
            "versions": {"tfpurify": own_version, "tensorflow": tf.__version__},
            "defense": "none" if defense is None else getattr(defense, "registry_name", type(defense).__name__),
            "classifier": getattr(defended.classifier, "arch", None)
            or getattr(defended.classifier, "name", type(defended.classifier).__name__)}


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a, b):
    """Atomically swaps two directories (Linux renameat2 with RENAME_EXCHANGE).

    Raises:
      ExportError: the platform or file system cannot swap atomically; the old version is kept.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(b))
    raise ExportError(f"cannot replace {b} atomically on this platform or file system; export a new version "
                      "instead (TF Serving serves the highest)")


def _endpoints(defended, input_shape):
    """{signature name: images -> {output name: tensor}}: what the export serves."""

    def serve(images):
        return _any_batch(defended.predict_outputs, _checked(images, input_shape))

    def purify(images):
        return _any_batch(lambda batch: {"purified": defended.purify(batch)}, _checked(images, input_shape))

    return {"serving_default": serve, "purify": purify}


def _write(defended, path, input_shape, metadata):
    spec = tf.TensorSpec([None, *input_shape], tf.float32, name="images")
    # Plain functions with `input_signature`: given tf.functions instead, ExportArchive picks each
    # endpoint's "first trace" from the tracing cache, and once a stale cache entry put the
    # serving function under the `purify` signature.
    archive = tf.keras.export.ExportArchive()
    archive.track(defended)
    for name, fn in _endpoints(defended, input_shape).items():
        archive.add_endpoint(name, fn, input_signature=[spec])
    interactive = tf.keras.utils.is_interactive_logging_enabled()
    tf.keras.utils.disable_interactive_logging()  # write_out prints every signature otherwise
    try:
        archive.write_out(str(path))
    finally:
        if interactive:
            tf.keras.utils.enable_interactive_logging()
    assets = path / "assets"
    assets.mkdir(exist_ok=True)
    (assets / METADATA_ASSET).write_text(json.dumps(metadata, indent=2, default=str) + "\n")


def predict_request(images, signature_name="serving_default"):
    """The JSON body of a TF Serving REST predict request (row format) for a batch of images.

    POST it to `http://HOST:8501/v1/models/NAME:predict`.
    """
    import numpy as np

    images = np.asarray(images, dtype=np.float32)
    return json.dumps({"signature_name": signature_name, "instances": images.tolist()})


def evaluation_summary(run_dir, runs):
    """The result rows of `run_dir/report.json` if that report was made for exactly these weights.

    Args:
      run_dir: the run folder being exported.
      runs: {role: {path, weights_sha256}} of the runs being exported (`load_defended`'s info).

    Returns:
      (rows or None, a one-line note saying why the summary was left out, or None)

    Raises:
      RunFolderError: report.json exists but is unreadable.
    """
    path = pathlib.Path(run_dir) / "report.json"
    if not path.is_file():
        return None, None
    try:
        report = json.loads(path.read_text())
        rows, recorded = report["rows"], report.get("settings", {}).get("runs")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RunFolderError(f"{path}: unreadable evaluation report ({e}); re-run tfpurify eval or delete it") from None
    if report.get("finished") is False:
        return None, (f"note: {path} is an unfinished evaluation (it was stopped, or is still running); its "
                      "numbers are left out of the export's metadata")
    if not isinstance(recorded, dict) or _digests(recorded) != _digests(runs):
        return None, (f"note: {path} was not made for these weights and runtime options (other classifier, "
                      "retrained run, or other --clean-steps and the like); its numbers are left out of the "
                      "export's metadata")
    return rows, None


def _digests(runs):
    """SHA-256 per role of the weights an export holds, with the runtime options they ran with (a robust
    classifier's `undefended` classifier is not exported)."""
    return {role: (v.get("weights_sha256"), json.dumps(v.get("runtime") or {}, sort_keys=True))
            if isinstance(v, dict) else None for role, v in runs.items() if role != "undefended"}


def predict_saved_model(path, dataset=None, limit=8):
    """Loads an exported SavedModel and classifies the first `limit` test images of its data set.

    Returns:
      lines of text: one per image (true and predicted class, probability, detector outputs).

    Raises:
      ExportError: `path` is not a tfpurify export.
    """
    import numpy as np

    meta_path = pathlib.Path(path) / "assets" / METADATA_ASSET
    try:
        meta = json.loads(meta_path.read_text())
        model = tf.saved_model.load(str(path))
        serve = model.signatures["serving_default"]
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"{path}: not a tfpurify SavedModel ({type(e).__name__}: {e})") from None
    dataset = dataset or meta.get("dataset", "fashion_mnist")
    names = dataset_info(dataset).class_names
    x, y = load_dataset(dataset, "test", limit=limit)
    out = {k: v.numpy() for k, v in serve(images=tf.constant(x)).items()}
    lines = [f"{path}: {meta.get('defense')} + {meta.get('classifier')}, {len(x)} {dataset} test images"]
    for i in range(len(x)):
        c = int(out["classes"][i])
        line = (f"  image {i}: true {names[y[i]]:<12} predicted {names[c]:<12} p {percent(out['probabilities'][i, c])}"
                f"{'' if c == y[i] else '  (wrong)'}")
        if "adversarial_score" in out:
            line += f"  score {out['adversarial_score'][i]:.4f}{'  FLAGGED' if out['is_adversarial'][i] else ''}"
        lines.append(line)
    lines.append(f"accuracy {percent(np.mean(out['classes'] == y))}")
    return lines
