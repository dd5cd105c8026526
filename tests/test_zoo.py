"""The zoo: entries made from run folders, re-verified (hashes, clean accuracy), used as zoo:NAME, exported."""

import json
import pathlib

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from tfpurify import zoo
from tfpurify.errors import InputValidationError, RunFolderError


def _one_line_error(result, match):
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0], lines


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory, dae_run, cnn_run):
    root = tmp_path_factory.mktemp("zoo")
    runner = CliRunner()
    details = root.parent / "details.json"
    details.write_text(json.dumps({"paper": {"title": "a denoising autoencoder"}, "license": "MIT",
                                   "training": {"cpu_minutes": 0.5},
                                   "deviation": "noise std 0.3 (paper 0.1); measured: clean 1 point higher"}))
    made = runner.invoke(cli, ["zoo", "add", "dae", "--run", str(dae_run), "--classifier", str(cnn_run),
                               "--classifier-name", "cnn", "--zoo", str(root), "--limit", "60", "--details", str(details)])
    assert made.exit_code == 0, made.output
    bare = runner.invoke(cli, ["zoo", "add", "none", "--run", str(cnn_run), "--classifier-name", "cnn",
                               "--zoo", str(root), "--limit", "60"])
    assert bare.exit_code == 0, bare.output
    return root


def test_an_entry_holds_its_runs_its_numbers_and_every_files_hash(small_zoo, cnn_run):
    manifest = zoo.read_manifest("dae", small_zoo)
    assert (manifest["defense"], manifest["classifier"], manifest["dataset"]) == ("denoising_ae", "cnn", "fashion_mnist")
    assert manifest["runs"] == {"run": "dae/run", "classifier": "classifiers/cnn"}
    assert manifest["license"] == "MIT" and manifest["training"] == {"cpu_minutes": 0.5}
    assert manifest["clean_accuracy"]["n"] == 60 and 0.5 < manifest["clean_accuracy"]["accuracy"] <= 1.0
    assert "dae/run/defense.weights.h5" in manifest["files"] and "classifiers/cnn/classifier.weights.h5" in manifest["files"]
    for relative, digest in manifest["files"].items():
        assert len(digest) == 64 and (small_zoo / relative).is_file()
    import h5py

    stored = small_zoo / "classifiers" / "cnn" / "classifier.weights.h5"
    with h5py.File(stored, "r") as weights, h5py.File(pathlib.Path(cnn_run) / "classifier.weights.h5", "r") as run:
        assert "optimizer" in run and "optimizer" not in weights and "layers" in weights  # the model's weights only
    assert stored.stat().st_size < 0.5 * (pathlib.Path(cnn_run) / "classifier.weights.h5").stat().st_size
    bare = zoo.read_manifest("none", small_zoo)  # the bare classifier is the stored one, not a second copy
    assert bare["defense"] == "none" and bare["runs"] == {"run": "classifiers/cnn"}
    assert sorted(p.name for p in (small_zoo / "classifiers").iterdir()) == ["cnn"]
    assert [m["name"] for m in zoo.entries(small_zoo)] == ["dae", "none"]
    listed = CliRunner().invoke(cli, ["zoo", "list", "--zoo", str(small_zoo)])
    assert listed.exit_code == 0 and listed.output.count("\n") == 2, listed.output
    assert "dae: denoising_ae + cnn on fashion_mnist" in listed.output and "trained 0.5 CPU-minutes" in listed.output
    assert "deviates from its paper: noise std 0.3 (paper 0.1)\n" in listed.output  # what changed, in one line
    assert listed.output.count(", no leaderboard row yet") == 2  # neither was measured with --record
    assert listed.output.count("deviates") == 1  # the bare classifier follows no paper it departs from


def test_verify_passes_as_made_and_fails_on_a_changed_number_or_byte(small_zoo, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["zoo", "verify", "dae", "--zoo", str(small_zoo)])
    assert ok.exit_code == 0 and ok.output.strip().endswith("OK"), ok.output
    copy = tmp_path / "zoo"
    import shutil

    shutil.copytree(small_zoo, copy)
    manifest_path = copy / "dae" / zoo.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["clean_accuracy"]["accuracy"] += 0.05  # a number the weights do not reach
    manifest_path.write_text(json.dumps(manifest))
    off = runner.invoke(cli, ["zoo", "verify", "dae", "--zoo", str(copy)])
    assert off.exit_code == 1 and "FAILED" in off.output, off.output
    assert runner.invoke(cli, ["zoo", "verify", "dae", "--zoo", str(copy), "--tolerance", "0.06"]).exit_code == 0
    weights = copy / "classifiers" / "cnn" / "classifier.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert set(zoo.check_files("dae", copy)) == {"classifiers/cnn/classifier.weights.h5"}
    _one_line_error(runner.invoke(cli, ["zoo", "verify", "dae", "--zoo", str(copy)]), "do not match the manifest")
    _one_line_error(runner.invoke(cli, ["eval", "zoo:none", "--limit", "4"], env={"TFPURIFY_ZOO": str(copy)}),
                    "do not match the manifest")  # a changed file is never evaluated
    weights.unlink()
    assert zoo.check_files("none", copy)["classifiers/cnn/classifier.weights.h5"][1] is None


def test_zoo_references_evaluate_and_export_like_run_folders(small_zoo, dae_run, cnn_run, tmp_path):
    runner = CliRunner()
    env = {"TFPURIFY_ZOO": str(small_zoo)}
    report = tmp_path / "zoo-dae.md"
    result = runner.invoke(cli, ["eval", "zoo:dae", "--attacks", "fgsm", "--limit", "24", "--threat-model", "graybox",
                                 "--graybox-only", "--no-sanity-checks", "--report", str(report)], env=env)
    assert result.exit_code == 0, result.output
    written = json.loads(report.with_suffix(".json").read_text())
    assert written["settings"]["runs"]["defense"]["path"] == str(small_zoo / "dae" / "run")
    direct = runner.invoke(cli, ["eval", str(dae_run), "--classifier", str(cnn_run), "--attacks", "fgsm", "--limit",
                                 "24", "--threat-model", "graybox", "--graybox-only", "--no-sanity-checks", "--report",
                                 str(tmp_path / "direct.md")])
    assert direct.exit_code == 0, direct.output
    rows = [json.loads(p.read_text())["rows"] for p in (report.with_suffix(".json"), tmp_path / "direct.json")]
    assert [r["accuracy"] for r in rows[0]] == [r["accuracy"] for r in rows[1]]  # the same weights, the same numbers
    assert not (small_zoo / "dae" / "run" / "report.md").exists()  # the zoo stays as shipped
    _one_line_error(runner.invoke(cli, ["eval", "zoo:dae", "--classifier", str(cnn_run)], env=env),
                    "names its own classifier")
    _one_line_error(runner.invoke(cli, ["eval", "zoo:nothing"], env=env), "no zoo entry 'nothing'")
    exported = runner.invoke(cli, ["zoo", "export", "dae", "--zoo", str(small_zoo), "--out", str(tmp_path / "sm")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "sm" / "dae" / "1" / "saved_model.pb").is_file()
    also = runner.invoke(cli, ["export", "zoo:none", "--name", "bare", "--out", str(tmp_path / "sm")], env=env)
    assert also.exit_code == 0 and (tmp_path / "sm" / "bare" / "1" / "saved_model.pb").is_file(), also.output


def test_add_refuses_what_would_make_a_wrong_entry(small_zoo, dae_run, cnn_run, tmp_path):
    with pytest.raises(RunFolderError, match="exists"):
        zoo.add("dae", dae_run, cnn_run, "cnn", small_zoo, n=8)
    other = tmp_path / "other-cnn"  # another classifier under a stored classifier's name
    other.mkdir()
    for file in ("config.json", "classifier.weights.h5"):
        (other / file).write_bytes((pathlib.Path(cnn_run) / file).read_bytes())
    import h5py

    with h5py.File(other / "classifier.weights.h5", "r+") as weights:  # one weight of the model changed
        bias = weights["layers/dense_1/vars/1"]
        bias[0] = bias[0] + 1.0
    zoo._store_classifier(cnn_run, "cnn", small_zoo)  # the same classifier again: accepted, stored once
    with pytest.raises(RunFolderError, match="holds another classifier"):
        zoo._store_classifier(other, "cnn", small_zoo)
    for name in ("", "a/b", "classifiers", ".."):
        with pytest.raises(InputValidationError, match="zoo entry name"):
            zoo.add(name, dae_run, cnn_run, root=tmp_path / "z", n=8)
    with pytest.raises(InputValidationError, match="files"):
        zoo.add("x", dae_run, cnn_run, root=tmp_path / "z", n=8, details={"files": {}})
    from tests.defenses.test_steps_by_hand import _defense_run
    from tfpurify.defenses.registry import build_defense

    cowboy = build_defense("cowboy", {"base_filters": 4, "z_dim": 4, "clean_steps": 1, "clean_only_detected": False})
    cowboy(np.zeros((1, 28, 28, 1), np.float32))
    cowboy_run = _defense_run(tmp_path / "cowboy", "cowboy", cowboy)
    with pytest.raises(InputValidationError, match="--cleaning-seed"):  # fresh draws: not re-verifiable
        zoo.add("x", cowboy_run, cnn_run, root=tmp_path / "z", n=8)
    assert not (tmp_path / "z").exists()  # refused before anything was written


def test_entries_made_from_one_run_share_its_stored_copy(dae_run, cnn_run, tmp_path):
    """Two entries serving one run (as Cowboy and its Defense-GAN mode) store it once; other files, their own."""
    first = zoo.add("first", dae_run, cnn_run, "cnn", tmp_path, n=8)
    second = zoo.add("second", dae_run, cnn_run, "cnn", tmp_path, n=8)
    assert first["runs"]["run"] == second["runs"]["run"] == "first/run"
    assert not (tmp_path / "second" / "run").exists() and first["files"] == second["files"]
    half = zoo.add("half", dae_run, cnn_run, "cnn16", tmp_path, n=8, half=True)  # stored otherwise: its own copy
    assert half["runs"]["run"] == "half/run" and (tmp_path / "half" / "run" / "defense.weights.h5").is_file()
    assert all(zoo.verify(name, tmp_path).passed for name in ("first", "second", "half"))


def test_half_precision_entries_are_half_the_size_and_measured_as_stored(small_zoo, dae_run, cnn_run, tmp_path):
    import h5py

    result = CliRunner().invoke(cli, ["zoo", "add", "dae16", "--run", str(dae_run), "--classifier", str(cnn_run),
                                      "--zoo", str(tmp_path), "--limit", "60", "--half"])
    assert result.exit_code == 0, result.output
    manifest = zoo.read_manifest("dae16", tmp_path)
    assert manifest["weights_dtype"] == "float16"
    stored = tmp_path / "classifiers" / pathlib.Path(cnn_run).name / "classifier.weights.h5"
    full = small_zoo / "classifiers" / "cnn" / "classifier.weights.h5"
    assert stored.stat().st_size < 0.6 * full.stat().st_size
    with h5py.File(stored, "r") as weights:
        assert weights["layers/dense/vars/0"].dtype == np.float16
    assert abs(manifest["clean_accuracy"]["accuracy"] - zoo.read_manifest("dae", small_zoo)["clean_accuracy"]["accuracy"]) <= 0.02
    assert zoo.verify("dae16", tmp_path).passed


def test_a_stored_entry_keeps_the_models_weights_and_no_players_optimizer(tmp_path):
    """A GAN's weights file holds one optimizer per player (`d_optimizer`, `g_optimizer`, ...): two thirds of
    FBGAN's 63 MB. The zoo stores the model's weights only, halved, and nothing else is lost."""
    import h5py

    source, target = tmp_path / "run.weights.h5", tmp_path / "zoo.weights.h5"
    with h5py.File(source, "w") as f:
        f.attrs["date_saved"] = "today"
        for group in ("layers/dense/vars", "vars", "optimizer/vars", "d_optimizer/vars", "e_optimizer/vars"):
            f.create_dataset(f"{group}/0", data=np.ones((4, 4), np.float32))
        f.create_dataset("layers/dense/vars/1", data=np.arange(3))
    zoo._copy_without_optimizer(source, target, half=True)
    with h5py.File(target, "r") as f:
        assert sorted(f) == ["layers", "vars"] and f.attrs["date_saved"] == "today"
        assert f["layers/dense/vars/0"].dtype == np.float16 and f["layers/dense/vars/1"].dtype == np.arange(3).dtype
        np.testing.assert_array_equal(f["layers/dense/vars/0"][()], np.ones((4, 4)))
    assert not target.with_name(target.name + ".partial").exists()


def test_resolve_merges_runtime_options_and_needs_no_network(tmp_path, monkeypatch):
    monkeypatch.delenv("TFPURIFY_ZOO", raising=False)
    entry = tmp_path / "e"
    entry.mkdir()
    (entry / zoo.MANIFEST).write_text(json.dumps({"name": "e", "runs": {"run": "e/run"}, "runtime": {"a": 1, "b": 2},
                                                  "files": {}}))
    run, classifier, overrides = zoo.resolve("zoo:e", overrides={"b": 3}, root=tmp_path)
    assert (run, classifier, overrides) == (str(tmp_path / "e" / "run"), None, {"a": 1, "b": 3})
    assert zoo.is_reference("zoo:e") and not zoo.is_reference("runs/e") and not zoo.is_reference(None)
    assert zoo.zoo_dir() == pathlib.Path(zoo.__file__).resolve().parents[1] / "zoo"
    assert zoo.entries(tmp_path / "none") == []
    assert np.isclose(zoo.VerifyResult("e", 1, 10, 0.5, 0.51, 0.01).passed, True)
    assert not zoo.VerifyResult("e", 1, 10, 0.5, 0.52, 0.01).passed


PROJECT_ZOO = pathlib.Path(__file__).resolve().parent.parent / "zoo"
SHIPPED = [m["name"] for m in zoo.entries(PROJECT_ZOO)]


def test_the_shipped_zoo_stays_under_80_mb():
    size = sum(f.stat().st_size for f in PROJECT_ZOO.rglob("*") if f.is_file()) if PROJECT_ZOO.exists() else 0
    assert size <= 80e6, f"zoo/ holds {size / 1e6:.1f} MB"


@pytest.mark.parametrize("name", SHIPPED or [pytest.param(None, marks=pytest.mark.skip(reason="no zoo entry shipped yet"))])
def test_every_shipped_entry_verifies_and_serves_through_the_c_api(name, c_api_runner, tmp_path):
    """RobustBench's check on every entry (hashes, clean accuracy within a point), then its SavedModel loaded
    by TensorFlow's C API gives Python's outputs."""
    import tensorflow as tf

    from tests.c_api import run_through_c_api
    from tfpurify import data

    result = zoo.verify(name, PROJECT_ZOO)
    assert result.passed, result
    manifest = zoo.read_manifest(name, PROJECT_ZOO)
    assert {"paper", "license", "training"} <= set(manifest), sorted(manifest)
    exported = CliRunner().invoke(cli, ["zoo", "export", name, "--zoo", str(PROJECT_ZOO), "--out", str(tmp_path)])
    assert exported.exit_code == 0, exported.output
    x = data.load_dataset(manifest["dataset"], "test", limit=4)[0]
    directory = tmp_path / name / "1"
    python = tf.saved_model.load(str(directory)).signatures["serving_default"](images=tf.constant(x))
    served = run_through_c_api(c_api_runner, directory, "serving_default", x, tmp_path)
    for key, value in python.items():
        np.testing.assert_allclose(served[key].reshape(value.shape), value.numpy(), atol=1e-4, err_msg=key)
