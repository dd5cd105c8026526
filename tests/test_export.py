import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.toys import BrightnessDetector
from tfpurify import export
from tfpurify.defenses import DefendedClassifier
from tfpurify.errors import InputValidationError

SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def exported(defended_dae, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models")
    path = export.export_saved_model(defended_dae, base, "dae", 1, SHAPE, metadata={"dataset": "fashion_mnist"})
    return path


def test_fresh_process_reload_gives_same_outputs(exported, defended_dae, fmnist_test, tmp_path):
    x, _ = fmnist_test
    np.save(tmp_path / "x.npy", x[:16])
    script = f"""
import numpy as np, tensorflow as tf
model = tf.saved_model.load({str(exported)!r})
x = tf.constant(np.load({str(tmp_path / 'x.npy')!r}))
serving = model.signatures["serving_default"](images=x)
purified = model.signatures["purify"](images=x)["purified"]
np.savez({str(tmp_path / 'out.npz')!r}, probabilities=serving["probabilities"].numpy(),
         classes=serving["classes"].numpy(), purified=purified.numpy())
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, env=env)
    out = np.load(tmp_path / "out.npz")
    expected = defended_dae.predict_outputs(x[:16])
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(out["classes"], expected["classes"])
    np.testing.assert_allclose(out["purified"], defended_dae.purify(x[:16]), atol=1e-5)


def test_saved_model_cli_lists_both_signatures(exported):
    cli = pathlib.Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run([str(cli), "show", "--dir", str(exported), "--all"], check=True,
                           capture_output=True, text=True, timeout=300).stdout
    for text in ("signature_def['serving_default']", "signature_def['purify']", "inputs['images']",
                 "outputs['probabilities']", "outputs['classes']", "outputs['purified']"):
        assert text in shown


def test_metadata_asset(exported):
    meta = json.loads((exported / "assets" / export.METADATA_ASSET).read_text())
    assert meta["dataset"] == "fashion_mnist" and meta["input_shape"] == [28, 28, 1]


def test_nan_input_fails_cleanly_and_out_of_range_is_clipped(exported, fmnist_test):
    x, _ = fmnist_test
    model = tf.saved_model.load(str(exported))
    serve = model.signatures["serving_default"]
    bad = x[:2].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="images contain NaN or Inf"):
        serve(images=tf.constant(bad))
    high = serve(images=tf.constant(np.full((1, *SHAPE), 1.7, np.float32)))["probabilities"]
    one = serve(images=tf.constant(np.ones((1, *SHAPE), np.float32)))["probabilities"]
    np.testing.assert_allclose(high, one, atol=1e-6)


def test_rest_payload_matches_the_signature(exported, fmnist_test):
    x, _ = fmnist_test
    body = json.loads(export.predict_request(x[:3]))
    assert body["signature_name"] == "serving_default"
    model = tf.saved_model.load(str(exported))
    signature = model.signatures[body["signature_name"]]
    inputs = signature.structured_input_signature[1]
    assert set(inputs) == {"images"}
    instances = np.asarray(body["instances"], dtype=np.float32)
    assert inputs["images"].shape.is_compatible_with(instances.shape)
    assert inputs["images"].dtype == tf.float32
    outputs = signature(images=tf.constant(instances))
    assert set(outputs) == {"probabilities", "classes"}
    assert outputs["probabilities"].shape == (3, 10)


def test_detector_outputs_are_exported(cnn, tmp_path, fmnist_test):
    x, _ = fmnist_test
    detector = BrightnessDetector()
    detector.threshold.assign(0.3)
    defended = DefendedClassifier(cnn, purifier=detector, detector=detector)
    defended(tf.zeros((1, *SHAPE)))
    path = export.export_saved_model(defended, tmp_path, "toy", 3, SHAPE)
    outputs = tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.constant(x[:4]))
    assert {"adversarial_score", "is_adversarial"} <= set(outputs)
    np.testing.assert_allclose(outputs["adversarial_score"], detector.adversarial_score(x[:4]), atol=1e-6)


def test_existing_version_is_refused_unless_overwrite(defended_dae, tmp_path):
    export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE)
    with pytest.raises(export.ExportError, match="overwrite"):
        export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE)
    export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 2}, overwrite=True)
    assert json.loads((tmp_path / "m" / "1" / "assets" / export.METADATA_ASSET).read_text())["v"] == 2
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_crash_mid_export_leaves_no_version_folder(defended_dae, tmp_path, monkeypatch):
    def crash(self, filepath, options=None):
        pathlib.Path(filepath).mkdir(parents=True)
        (pathlib.Path(filepath) / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(tf.keras.export.ExportArchive, "write_out", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE)
    assert list((tmp_path / "m").iterdir()) == []


@pytest.mark.parametrize("name", ["a/b", "..", "", "../x", "a\\b", "name\n", "x" * 101])
def test_bad_names_are_refused(defended_dae, tmp_path, name):
    with pytest.raises(InputValidationError, match="invalid model name"):
        export.export_saved_model(defended_dae, tmp_path, name, 1, SHAPE)


def test_bad_version_is_refused(defended_dae, tmp_path):
    with pytest.raises(InputValidationError, match="version"):
        export.export_saved_model(defended_dae, tmp_path, "m", 0, SHAPE)


def _servable_version(path):
    """The metadata of a complete SavedModel at `path` (it loads and serves), or an AssertionError."""
    model = tf.saved_model.load(str(path))
    assert model.signatures["serving_default"](images=tf.zeros((1, *SHAPE)))["probabilities"].shape == (1, 10)
    return json.loads((pathlib.Path(path) / "assets" / export.METADATA_ASSET).read_text())


def test_overwrite_survives_a_crash_between_renames(defended_dae, tmp_path, monkeypatch):
    """A kill between two renames of the swap must leave a servable version (the old or the new)."""
    export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 1})
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    try:
        export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 2}, overwrite=True)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    assert _servable_version(tmp_path / "m" / "1")["v"] in (1, 2)


def test_overwrite_crash_while_writing_keeps_the_old_version(defended_dae, tmp_path, monkeypatch):
    export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 1})

    def crash(self, filepath, options=None):
        pathlib.Path(filepath).mkdir(parents=True)
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(tf.keras.export.ExportArchive, "write_out", crash)
    with pytest.raises(KeyboardInterrupt):
        export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 2}, overwrite=True)
    monkeypatch.undo()
    assert _servable_version(tmp_path / "m" / "1")["v"] == 1
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_overwrite_crash_after_the_swap_serves_the_new_version(defended_dae, tmp_path, monkeypatch):
    export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 1})
    real_exchange = export._exchange

    def exchange_then_die(a, b):
        real_exchange(a, b)
        raise KeyboardInterrupt("killed before the old version was removed")

    monkeypatch.setattr(export, "_exchange", exchange_then_die)
    with pytest.raises(KeyboardInterrupt):
        export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 2}, overwrite=True)
    assert _servable_version(tmp_path / "m" / "1")["v"] == 2


@pytest.mark.parametrize("key", export.RESERVED_METADATA)
def test_caller_metadata_cannot_override_tfpurify_keys(defended_dae, tmp_path, key):
    with pytest.raises(InputValidationError, match=f"may not set {key}"):
        export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={key: "forged"})
    assert not (tmp_path / "m" / "1").exists()
    # repeating tfpurify's own value (as load_defended's info does) is not an override
    export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"classifier": "cnn"})


def test_tfpurify_writes_its_own_metadata(exported):
    meta = json.loads((exported / "assets" / export.METADATA_ASSET).read_text())
    assert meta["classifier"] == "cnn" and meta["defense"] == "denoising_ae"
    assert meta["versions"]["tensorflow"] == tf.__version__


def test_uncalibrated_detector_is_not_exported(cnn, tmp_path):
    detector = BrightnessDetector()  # threshold still +inf: it would never flag anything
    defended = DefendedClassifier(cnn, purifier=detector, detector=detector)
    defended(tf.zeros((1, *SHAPE)))
    with pytest.raises(export.ExportError, match="never calibrated"):
        export.export_saved_model(defended, tmp_path, "toy", 1, SHAPE)


def test_evaluation_summary_only_for_the_weights_it_was_made_for(tmp_path):
    runs = {"classifier": {"path": "a", "weights_sha256": "1" * 64}}
    report = {"rows": [{"attack": "pgd", "accuracy": 0.5}], "settings": {"runs": runs}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert export.evaluation_summary(tmp_path, runs) == (report["rows"], None)
    other = {"classifier": {"path": "a", "weights_sha256": "2" * 64}}
    rows, note = export.evaluation_summary(tmp_path, other)
    assert rows is None and "not made for these weights" in note
    (tmp_path / "report.json").write_text(json.dumps({"rows": report["rows"]}))  # made before digests existed
    assert export.evaluation_summary(tmp_path, runs)[0] is None
