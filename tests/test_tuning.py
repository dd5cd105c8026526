import csv
import json

import pytest
from click.testing import CliRunner

from cli.main import cli
from tfpurify import tuning
from tfpurify.defenses.cowboy import CowboyConfig
from tfpurify.defenses.denoising_ae import DenoisingAEConfig
from tfpurify.errors import InputValidationError


def test_parse_param_ranges_and_choices():
    spec = tuning.parse_param("noise_std=0.1:0.5", DenoisingAEConfig)
    assert (spec.kind, spec.low, spec.high, spec.log) == ("float", 0.1, 0.5, False)
    spec = tuning.parse_param("learning_rate=1e-4:1e-2:log", DenoisingAEConfig)
    assert spec.kind == "float" and spec.log
    spec = tuning.parse_param("filters=8:32", DenoisingAEConfig)
    assert (spec.kind, spec.low, spec.high) == ("int", 8, 32)
    assert tuning.parse_param("filters=8,16,8", DenoisingAEConfig).values == (8, 16)
    assert tuning.parse_param("detector=true,false", DenoisingAEConfig).values == (True, False)
    assert tuning.parse_param("mode=cowboy,defense_gan", CowboyConfig).values == ("cowboy", "defense_gan")


@pytest.mark.parametrize("text, match", [
    ("nope=1:2", "not a field"), ("filters=8:8", "empty range"), ("noise_std=0.5:0.1", "empty range"),
    ("filters=8.5:16", "is not an integer"), ("learning_rate=0:1:log", "LOW > 0"), ("mode=a:b", "numeric field"),
    ("filters", "expected NAME="), ("filters=1:2:3", "LOW:HIGH or LOW:HIGH:log"), ("filters=", "empty choice"),
])
def test_bad_params_are_one_line_errors(text, match):
    config_class = CowboyConfig if text.startswith("mode") else DenoisingAEConfig
    with pytest.raises(InputValidationError, match=match):
        tuning.parse_param(text, config_class)


def test_tune_runs_trials_writes_its_table_and_resumes(cnn_run, tmp_path, monkeypatch):
    out = tmp_path / "tune"
    args = ["tune", "denoising_ae", "--param", "filters=4,8", "--param", "noise_std=0.1:0.5", "--trials", "2",
            "--epochs", "1", "--limit", "600", "--val-limit", "32", "--nb-iter", "2", "--classifier", str(cnn_run),
            "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "2 of 2 trials finished" in result.output
    lines = (out / "trials.csv").read_text().splitlines()
    assert len(lines) == 3 and "robust_accuracy" in lines[0] and "clean_accuracy" in lines[0]
    assert (out / "trials.md").read_text().startswith("# Tuning: objective robust_accuracy")
    assert (out / "objective.png").stat().st_size > 1000
    best = json.loads((out / "best" / "config.json").read_text())
    assert best["kind"] == "defense" and best["defense"] == "denoising_ae" and best["filters"] in (4, 8)
    # the search's own sizes stay with the search: recorded beside the config, not in it
    assert best["limit"] is None and best["epochs"] == DenoisingAEConfig().epochs
    searched = json.loads((out / "best" / "search.json").read_text())
    assert searched["train_examples"] == 540 and searched["val_examples"] == 32 and searched["epochs_per_trial"] == 1
    assert "the search trained each trial on 540 images for 1 epoch(s)" in result.output
    assert "\x1b" not in result.output and "trial 1: filters=" in result.output  # no terminal codes in a pipe
    assert [row["epochs"] for row in csv.DictReader(lines)] == ["1", "1"]  # the epochs column, filled
    # resuming trains nothing again
    calls = []
    monkeypatch.setattr(tuning.DefenseHyperModel, "fit", lambda *a, **k: calls.append(1))
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert calls == [] and "2 of 2 trials finished" in again.output
    # the best config trains as a run (read again: equal scores may tie-break differently on resume)
    best = json.loads((out / "best" / "config.json").read_text())
    run = tmp_path / "best_run"
    trained = CliRunner().invoke(cli, ["train", "denoising_ae", "--config", str(out / "best" / "config.json"),
                                       "--epochs", "1", "--limit", "600", "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    taken = [f"filters={best['filters']}", f"noise_std={best['noise_std']}"]
    assert f"from {out / 'best' / 'config.json'}: " in trained.output and all(t in trained.output for t in taken)
    assert "given here: epochs=1, limit=600" in trained.output or "given here: limit=600, epochs=1" in trained.output
    config = json.loads((run / "config.json").read_text())
    assert config["filters"] == best["filters"] and config["noise_std"] == best["noise_std"] and config["epochs"] == 1


def test_tune_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    for args, match in ((["--param", "nope=1:2"], "not a field"), (["--param", "filters=4,8", "--objective", "x"],
                                                                     "unknown objective"),
                        (["--param", "filters=4,8", "--tuner", "grid"], "unknown tuner")):
        result = runner.invoke(cli, ["tune", "denoising_ae", *args, "--out", str(tmp_path / "t")])
        assert result.exit_code == 1 and "Traceback" not in result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and match in lines[0], lines


def test_a_validation_slice_too_small_to_separate_the_trials_is_said():
    rows = [{"score": 0.0}, {"score": 0.0}, {"score": None}]
    warning = tuning.separation_warning(rows, "robust_accuracy", 10)
    assert warning.startswith("the validation slice (10 images) cannot separate the trials") and "tie" in warning
    assert tuning.separation_warning([{"score": 0.60}, {"score": 0.50}], "robust_accuracy", 2000) is None
    assert tuning.separation_warning([{"score": 0.55}, {"score": 0.50}], "robust_accuracy", 100) is not None
    assert tuning.separation_warning([{"score": 0.6}], "robust_accuracy", 10) is None  # one trial: nothing to separate
