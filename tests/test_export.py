import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.c_api import run_through_c_api
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


def test_overwrite_swaps_in_one_step_never_remove_then_rename(defended_dae, tmp_path, monkeypatch):
    """Replacing a version is one atomic exchange of two folders (renameat2): no moment without a servable version.

    A remove-then-rename (os.replace, os.rename, rmtree of the old version first) would leave such a moment.
    """
    export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 1})
    final = tmp_path / "m" / "1"
    real_exchange, real_rmtree, exchanged = export._exchange, shutil.rmtree, []

    def window(*args, **kwargs):
        raise AssertionError(f"a rename during the overwrite: {args}")

    def exchange(a, b):
        exchanged.append(pathlib.Path(b))
        real_exchange(a, b)
        assert _servable_version(b)["v"] == 2  # the new version is in place at once

    def rmtree(path, *args, **kwargs):
        assert _servable_version(final)["v"] == 2, "a version folder was removed before the swap"
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", window)
    monkeypatch.setattr(os, "rename", window)
    monkeypatch.setattr(export, "_exchange", exchange)
    monkeypatch.setattr(export.shutil, "rmtree", rmtree)
    export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 2}, overwrite=True)
    monkeypatch.undo()
    assert exchanged == [final] and _servable_version(final)["v"] == 2
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_overwrite_without_an_atomic_swap_keeps_the_old_version(defended_dae, tmp_path, monkeypatch):
    export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 1})
    monkeypatch.setattr(export.ctypes, "CDLL", lambda *args, **kwargs: object())  # a C library without renameat2
    with pytest.raises(export.ExportError, match="atomically"):
        export.export_saved_model(defended_dae, tmp_path, "m", 1, SHAPE, metadata={"v": 2}, overwrite=True)
    monkeypatch.undo()
    assert _servable_version(tmp_path / "m" / "1")["v"] == 1
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


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


# Every registered defense, untrained and small (what is checked is the export, not the defense):
# entry -> (registry name, config fields); a purifier protects the session's cnn.
EVERY_DEFENSE = {
    "aaa": ("aaa", {"filters": 8, "classifier": "CNN"}),
    "cowboy": ("cowboy", {"base_filters": 8, "z_dim": 8, "clean_steps": 3, "clean_restarts": 2, "warm_start": 4,
                          "cleaning_seed": 0}),
    "cowboy_clean_only_detected": ("cowboy", {"base_filters": 8, "z_dim": 8, "clean_steps": 3, "clean_restarts": 2,
                                              "warm_start": 4, "cleaning_seed": 0, "clean_only_detected": True}),
    "cowboy_defense_gan": ("cowboy", {"base_filters": 8, "z_dim": 8, "clean_steps": 3, "clean_restarts": 2,
                                      "warm_start": 4, "cleaning_seed": 0, "mode": "defense_gan"}),
    "denoising_ae": ("denoising_ae", {"filters": 8}),
    "fbgan": ("fbgan", {"base_filters": 8}),
    "gcln": ("gcln", {"filters": 8, "residual_blocks": 1, "detector_filters": 8, "classifier": "CNN"}),
    "l2l_da": ("l2l_da", {"generator_filters": 8}),
    "pgd_at": ("pgd_at", {}),
}

EXPORT_CHECK = """
import json, sys
import numpy as np, tensorflow as tf
folder = sys.argv[1]
x = tf.constant(np.load(folder + "/x.npy"))
WEIGHTS = tf.reshape(tf.range(784.0) / 784.0 - 0.5, [1, 28, 28, 1])
bad = {"nan": np.where(np.arange(x.shape[0])[:, None, None, None] == 1, np.nan, x.numpy()),
       "inf": np.where(np.arange(x.shape[0])[:, None, None, None] == 1, np.inf, x.numpy()),
       "shape": np.zeros((2, 28, 28, 3), np.float32), "empty": np.zeros((0, 28, 28, 1), np.float32)}
verdicts, outputs = {}, {}
for name in sys.argv[2:]:
    model = tf.saved_model.load(f"{folder}/{name}/1")
    for signature in ("serving_default", "purify"):
        fn = model.signatures[signature]
        for key, value in fn(images=x).items():
            outputs[f"{name}/{signature}/{key}"] = value.numpy()
        for case, images in bad.items():
            try:
                out = fn(images=tf.constant(images.astype(np.float32)))
                verdicts[f"{name}/{signature}/{case}"] = {k: list(v.shape) for k, v in out.items()}
            except Exception as e:  # what a client gets back
                verdicts[f"{name}/{signature}/{case}"] = type(e).__name__ + ": " + " ".join(str(e).split())[-600:]
    with tf.GradientTape() as tape:  # what an attacker who differentiates the export gets
        tape.watch(x)
        total = tf.reduce_sum(model.signatures["purify"](images=x)["purified"] * WEIGHTS)
    gradient = tape.gradient(total, x)
    outputs[f"{name}/purify/gradient"] = np.zeros(x.shape, np.float32) if gradient is None else gradient.numpy()
np.savez(folder + "/outputs.npz", **outputs)
open(folder + "/verdicts.json", "w").write(json.dumps(verdicts))
"""


@pytest.fixture(scope="module")
def every_defense_exported(cnn, cnn_run, fmnist_test, fmnist_train_slice, tmp_path_factory):
    """Each entry of EVERY_DEFENSE exported; reloaded in one fresh process that serves good and bad inputs."""
    from tfpurify.defenses.registry import build_defense, is_detector

    folder = tmp_path_factory.mktemp("every_defense")
    x = fmnist_test[0][:6]
    np.save(folder / "x.npy", x)
    expected = {}
    for entry, (name, fields) in EVERY_DEFENSE.items():
        fields = {k: ((str(cnn_run),) if name == "aaa" else str(cnn_run)) if v == "CNN" else v
                  for k, v in fields.items()}
        model = build_defense(name, fields)
        if is_detector(model):
            model.calibrate(fmnist_train_slice[0][:64])
        if hasattr(model, "purify"):
            defended = DefendedClassifier(cnn, purifier=model, detector=model if is_detector(model) else None)
        else:  # the defense is the classifier
            defended = DefendedClassifier(model)
        defended(tf.zeros((1, *SHAPE)))
        export.export_saved_model(defended, folder, entry, 1, SHAPE)
        images = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(images)
            total = tf.reduce_sum(defended.purify(images) * tf.reshape(tf.range(784.0) / 784.0 - 0.5, [1, 28, 28, 1]))
        gradient = tape.gradient(total, images)
        expected[entry] = {"serving_default": {k: v.numpy() for k, v in defended.predict_outputs(x).items()},
                           "purify": {"purified": np.asarray(defended.purify(x)),
                                      "gradient": np.zeros(x.shape, np.float32) if gradient is None else gradient.numpy()}}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(folder), *EVERY_DEFENSE], check=True, timeout=600,
                   env=env)
    return expected, np.load(folder / "outputs.npz"), json.loads((folder / "verdicts.json").read_text()), folder


def test_every_defense_is_in_the_export_check():
    from tfpurify.defenses.registry import REGISTRY

    assert {name for name, _ in EVERY_DEFENSE.values()} == set(REGISTRY)


@pytest.mark.parametrize("entry", sorted(EVERY_DEFENSE))
def test_every_defense_serves_through_tensorflows_c_api(every_defense_exported, c_api_runner, entry, tmp_path):
    expected, _, _, folder = every_defense_exported
    x = np.load(folder / "x.npy")
    for signature, values in expected[entry].items():
        served = run_through_c_api(c_api_runner, folder / entry / "1", signature, x, tmp_path)
        outputs = {k: v for k, v in values.items() if k != "gradient"}  # the gradient is Python's check alone
        assert set(served) == set(outputs), (entry, signature, sorted(served))
        for key, value in outputs.items():
            got = served[key].reshape(value.shape)
            if value.dtype.kind == "f":
                np.testing.assert_allclose(got, value, atol=1e-4, err_msg=f"{entry} {signature} {key}")
            else:
                np.testing.assert_array_equal(got, value, err_msg=f"{entry} {signature} {key}")


@pytest.mark.parametrize("entry", sorted(EVERY_DEFENSE))
def test_every_defense_reloads_in_a_fresh_process_with_equal_outputs(every_defense_exported, entry):
    expected, outputs, _, _ = every_defense_exported
    for signature, values in expected[entry].items():
        for key, value in values.items():
            served = outputs[f"{entry}/{signature}/{key}"]
            if value.dtype.kind == "f":
                np.testing.assert_allclose(served, value, atol=1e-4, err_msg=f"{entry} {signature} {key}")
            else:
                np.testing.assert_array_equal(served, value, err_msg=f"{entry} {signature} {key}")
    if entry.startswith("cowboy") or entry == "gcln":
        assert {"adversarial_score", "is_adversarial"} <= set(expected[entry]["serving_default"])
    if entry == "cowboy":  # the exact gradient through the search survives the export, to the last digits
        served, own = outputs["cowboy/purify/gradient"], expected[entry]["purify"]["gradient"]
        assert np.abs(own).max() > 1e-4
        np.testing.assert_allclose(served, own, rtol=1e-3, atol=1e-3 * np.abs(own).max())


@pytest.mark.parametrize("entry", sorted(EVERY_DEFENSE))
@pytest.mark.parametrize("signature", ["serving_default", "purify"])
def test_every_defense_refuses_bad_inputs_and_serves_an_empty_batch(every_defense_exported, entry, signature):
    _, _, verdicts, _ = every_defense_exported
    for case in ("nan", "inf"):
        assert "images contain NaN or Inf" in str(verdicts[f"{entry}/{signature}/{case}"]), verdicts
    assert "images must have shape [N, 28, 28, 1]" in str(verdicts[f"{entry}/{signature}/shape"]), verdicts
    empty = verdicts[f"{entry}/{signature}/empty"]
    assert isinstance(empty, dict) and all(shape[0] == 0 for shape in empty.values()), empty
