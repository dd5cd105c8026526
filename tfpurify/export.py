"""Export a `DefendedClassifier` as a versioned SavedModel that TF Serving loads.

`<base_dir>/<name>/<version>/` gets two signatures:
- `serving_default`: `images` float32 [None, H, W, C] -> `probabilities`, `classes`, and where a
  detector exists `adversarial_score`, `is_adversarial`;
- `purify`: `images` -> `purified`.
Inputs are checked in the graph: a non-finite pixel fails the request with "images contain NaN
or Inf"; pixels outside [0, 1] are clipped into it. Written with `tf.keras.export.ExportArchive`
(plain `tf.saved_model.save` cannot save tfa weight-normalized layers) into a temporary sibling
folder, then renamed, so a crash never leaves a half-written version. Metadata (defense, config,
dataset, input shape, evaluation summary) is stored in `assets/tfpurify.json`.
"""

import json
import os
import pathlib
import re
import shutil
import uuid

import tensorflow as tf

from tfpurify.errors import InputValidationError, TfpurifyError

__all__ = ["ExportError", "export_saved_model", "METADATA_ASSET", "validate_name", "predict_request"]

METADATA_ASSET = "tfpurify.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportError(TfpurifyError):
    """The export destination is taken or invalid."""


def validate_name(name):
    """A model name is one path component: letters, digits, `_ . -`, no separators, not `..`."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise InputValidationError(
            f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (no path separators or '..')")
    return name


def _checked(images):
    images = tf.debugging.assert_all_finite(images, "images contain NaN or Inf")
    return tf.clip_by_value(images, 0.0, 1.0)


def export_saved_model(defended, base_dir, name, version, input_shape, metadata=None, overwrite=False):
    """Writes `base_dir/name/version/` atomically.

    Args:
      defended: a `DefendedClassifier` (built).
      base_dir: export root, e.g. "saved_models".
      name: model name (one path component).
      version: positive integer (TF Serving serves the highest).
      input_shape: (H, W, C) of the images.
      metadata: JSON-serializable dict stored in assets/tfpurify.json.
      overwrite: replace an existing version instead of refusing.

    Returns:
      pathlib.Path of the version folder.

    Raises:
      ExportError: the version exists and overwrite is False.
      InputValidationError: bad name or version.
    """
    validate_name(name)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputValidationError(f"version must be a positive integer, got {version!r}")
    model_dir = pathlib.Path(base_dir) / name
    final = model_dir / str(version)
    if final.exists() and not overwrite:
        raise ExportError(f"{final} exists; pass --overwrite to replace it")
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        _write(defended, tmp, tuple(input_shape), metadata or {})
        if final.exists():  # overwrite: move the old version aside, then swap
            trash = model_dir / f".old-{version}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write(defended, path, input_shape, metadata):
    spec = tf.TensorSpec([None, *input_shape], tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def serve(images):
        return defended.predict_outputs(_checked(images))

    @tf.function(input_signature=[spec])
    def purify(images):
        return {"purified": defended.purify(_checked(images))}

    archive = tf.keras.export.ExportArchive()
    archive.track(defended)
    archive.add_endpoint("serving_default", serve)
    archive.add_endpoint("purify", purify)
    interactive = tf.keras.utils.is_interactive_logging_enabled()
    tf.keras.utils.disable_interactive_logging()  # write_out prints every signature otherwise
    try:
        archive.write_out(str(path))
    finally:
        if interactive:
            tf.keras.utils.enable_interactive_logging()
    assets = path / "assets"
    assets.mkdir(exist_ok=True)
    (assets / METADATA_ASSET).write_text(json.dumps(
        {"input_shape": list(input_shape), "signatures": ["serving_default", "purify"], **metadata},
        indent=2, default=str) + "\n")


def predict_request(images, signature_name="serving_default"):
    """The JSON body of a TF Serving REST predict request (row format) for a batch of images.

    POST it to `http://HOST:8501/v1/models/NAME:predict`.
    """
    import numpy as np

    images = np.asarray(images, dtype=np.float32)
    return json.dumps({"signature_name": signature_name, "instances": images.tolist()})
