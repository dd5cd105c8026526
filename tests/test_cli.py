import json
import pathlib
import re
import shutil

import click
import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.fixture
def runner():
    return CliRunner()


def _one_line_error(result, match):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], lines


def test_help_lists_commands(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "eval", "export", "predict"):
        assert command in result.output


def test_data_info(runner):
    result = runner.invoke(cli, ["data", "info", "fashion_mnist", "--limit", "200"])
    assert result.exit_code == 0, result.output
    assert "train: x (200, 28, 28, 1) float32 in [0.0, 1.0]" in result.output


def test_train_then_eval_writes_report(runner, tmp_path):
    out = tmp_path / "cnn"
    result = runner.invoke(cli, ["train", "classifier", "--arch", "cnn", "--epochs", "1",
                                 "--limit", "1000", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "classifier.weights.h5").exists()
    report = tmp_path / "report.md"
    result = runner.invoke(cli, ["eval", str(out), "--attacks", "fgsm,pgd", "--eps", "0.1",
                                 "--nb-iter", "5", "--limit", "64", "--no-sanity-checks",
                                 "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "| none | none | pgd (after fgsm) | 0.1 |" in result.output  # cascaded by default
    d = json.loads(report.with_suffix(".json").read_text())
    accs = {r["attack"]: r["accuracy"] for r in d["rows"]}
    assert accs["pgd"] < accs["none"]
    assert report.with_suffix(".png").exists()


def test_a_killed_eval_resumes_with_its_next_attack(runner, cnn_run, tmp_path, monkeypatch):
    from tfpurify import evaluation

    real, resumed_after = evaluation.evaluate, []

    class Killed(Exception):
        pass

    def killed_after_one(*args, checkpoint=None, **kwargs):
        def stop(report):
            checkpoint(report)
            raise Killed()
        return real(*args, checkpoint=stop, **kwargs)

    def counted(*args, resume=None, **kwargs):
        resumed_after.append(None if resume is None else len(resume.results))
        return real(*args, resume=resume, **kwargs)

    args = ["eval", str(cnn_run), "--attacks", "fgsm,pgd", "--eps", "0.1", "--nb-iter", "5", "--limit", "48",
            "--no-sanity-checks"]
    report, whole, partial = tmp_path / "report.md", tmp_path / "whole.md", tmp_path / "report.partial.npz"
    assert runner.invoke(cli, [*args, "--report", str(whole)]).exit_code == 0
    for options, expected in ((["--seed", "1"], None), ([], 1)):  # other options: evaluated afresh
        monkeypatch.setattr(evaluation, "evaluate", killed_after_one)
        assert isinstance(runner.invoke(cli, [*args, "--report", str(report)]).exception, Killed)
        assert partial.is_file() and not json.loads(report.with_suffix(".json").read_text())["finished"]
        monkeypatch.setattr(evaluation, "evaluate", counted)
        result = runner.invoke(cli, [*args, "--report", str(report), *options])
        assert result.exit_code == 0, result.output
        assert resumed_after[-1] == expected and ("resuming the unfinished evaluation" in result.stderr) == bool(expected)
        assert not partial.exists()
    rows = lambda path: [(r["attack"], r["accuracy"]) for r in json.loads(path.with_suffix(".json").read_text())["rows"]]  # noqa: E731
    assert rows(report) == rows(whole)  # the resumed evaluation ends where the uninterrupted one did


def test_eval_chunk_minutes_keeps_a_long_attack_per_chunk(runner, cnn_run, tmp_path, monkeypatch):
    """--chunk-minutes: each attack in chunks of images, the report kept after each (0, the default: at once)."""
    from tfpurify import evaluation

    real, asked = evaluation.evaluate, []
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: asked.append(k["chunk_seconds"]) or real(*a, **k))
    args = ["eval", str(cnn_run), "--attacks", "fgsm", "--eps", "0.1", "--limit", "12", "--no-sanity-checks"]
    assert runner.invoke(cli, [*args, "--report", str(tmp_path / "a.md")]).exit_code == 0
    result = runner.invoke(cli, [*args, "--report", str(tmp_path / "b.md"), "--chunk-minutes", "0.5"])
    assert result.exit_code == 0, result.output
    assert asked == [None, 30.0]
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["chunk_seconds"] == 30.0
    _one_line_error(runner.invoke(cli, [*args, "--chunk-minutes", "-1"]), "chunk-minutes")


def test_eval_missing_run_folder(runner, tmp_path):
    _one_line_error(runner.invoke(cli, ["eval", str(tmp_path / "nope")]), "does not exist")


def test_eval_unknown_attack(runner, cnn_run):
    _one_line_error(runner.invoke(cli, ["eval", str(cnn_run), "--attacks", "fgsm,deepfool"]), "unknown attack")


@pytest.mark.parametrize("eps,match", [("1.5", "larger than the pixel range"), ("-0.1", "eps must be"),
                                       ("abc", "not a number")])
def test_eval_eps_out_of_range(runner, cnn_run, eps, match):
    _one_line_error(runner.invoke(cli, ["eval", str(cnn_run), "--eps", eps]), match)


def test_eval_unknown_threat_model(runner, cnn_run):
    _one_line_error(runner.invoke(cli, ["eval", str(cnn_run), "--threat-model", "blackbox"]), "unknown threat model")


def test_unreadable_data(runner, cnn_run, tmp_path, monkeypatch):
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(b"garbage")
    monkeypatch.setenv("TFPURIFY_DATA_DIR", str(tmp_path / "data"))
    _one_line_error(runner.invoke(cli, ["eval", str(cnn_run), "--limit", "8"]), "not a readable gzip")


def test_unavailable_dataset(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    _one_line_error(runner.invoke(cli, ["data", "info", "cifar10"]), "cifar-10-batches-bin")


def test_unknown_dataset_and_arch_on_train(runner, tmp_path):
    _one_line_error(runner.invoke(cli, ["train", "classifier", "--dataset", "imagenet", "--out", str(tmp_path)]),
                    "unknown dataset")
    _one_line_error(runner.invoke(cli, ["train", "classifier", "--arch", "vgg", "--out", str(tmp_path)]),
                    "unknown architecture")


def test_eval_run_without_weights(runner, cnn_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(cnn_run, broken)
    (broken / "classifier.weights.h5").unlink()
    _one_line_error(runner.invoke(cli, ["eval", str(broken)]), "no trained weights")


def test_train_defense_eval_whitebox_and_export(runner, cnn_run, tmp_path):
    dae = tmp_path / "dae"
    result = runner.invoke(cli, ["train", "denoising_ae", "--epochs", "1", "--limit", "600", "--filters", "8",
                                 "--out", str(dae)])
    assert result.exit_code == 0, result.output
    assert '"filters": 8' in (dae / "config.json").read_text()
    result = runner.invoke(cli, ["eval", str(dae), "--classifier", str(cnn_run), "--attacks", "pgd",
                                 "--nb-iter", "3", "--limit", "32", "--no-sanity-checks"])
    assert result.exit_code == 0, result.output
    for threat_model in ("none", "graybox", "whitebox"):
        assert f"| {threat_model} | pgd | 0.1 |" in result.output
    out = tmp_path / "saved_models"
    args = ["export", str(dae), "--classifier", str(cnn_run), "--name", "dae-cnn", "--version", "2", "--out", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (out / "dae-cnn" / "2" / "saved_model.pb").exists()
    meta = json.loads((out / "dae-cnn" / "2" / "assets" / "tfpurify.json").read_text())
    assert meta["defense"] == "denoising_ae" and meta["evaluation_summary"]
    _one_line_error(runner.invoke(cli, args), "--overwrite")
    assert runner.invoke(cli, args + ["--overwrite"]).exit_code == 0
    result = runner.invoke(cli, ["predict", str(out / "dae-cnn" / "2"), "--limit", "4"])
    assert result.exit_code == 0, result.output
    assert "denoising_ae + cnn, 4 fashion_mnist test images" in result.output and "image 3: true" in result.output
    _one_line_error(runner.invoke(cli, ["predict", str(tmp_path)]), "not a tfpurify SavedModel")


def test_defense_eval_needs_classifier(runner, dae_run):
    _one_line_error(runner.invoke(cli, ["eval", str(dae_run)]), "--classifier")


def test_export_bad_name(runner, cnn_run, tmp_path):
    _one_line_error(runner.invoke(cli, ["export", str(cnn_run), "--name", "../evil", "--out", str(tmp_path)]),
                    "invalid model name")


def test_export_classifier_run_alone(runner, cnn_run, tmp_path):
    result = runner.invoke(cli, ["export", str(cnn_run), "--name", "cnn", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cnn" / "1" / "saved_model.pb").exists()


def test_unknown_strategy(runner, tmp_path):
    _one_line_error(runner.invoke(cli, ["train", "denoising_ae", "--strategy", "tpu", "--limit", "100",
                                        "--out", str(tmp_path / "x")]), "unknown strategy")


def test_graybox_on_a_bare_classifier_run_is_an_error(runner, cnn_run):
    _one_line_error(runner.invoke(cli, ["eval", str(cnn_run), "--threat-model", "graybox"]), "defense run")


def test_export_with_corrupt_report_is_a_clear_error(runner, cnn_run, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(cnn_run, broken)
    (broken / "report.json").write_text("{not json")
    _one_line_error(runner.invoke(cli, ["export", str(broken), "--name", "m", "--out", str(tmp_path / "out")]),
                    "unreadable evaluation report")


def test_detector_is_calibrated_on_validation_data_when_training_ends(runner, cnn_run, tmp_path):
    magnet = tmp_path / "magnet"
    result = runner.invoke(cli, ["train", "denoising_ae", "--epochs", "1", "--limit", "1000", "--filters", "8",
                                 "--detector", "true", "--target-fpr", "0.1", "--out", str(magnet)])
    assert result.exit_code == 0, result.output
    calibration = json.loads((magnet / "calibration.json").read_text())
    assert calibration["split"] == "validation" and calibration["n"] == 100  # val_fraction 0.1 of 1000
    assert calibration["target_fpr"] == 0.1 and abs(calibration["fpr"] - 0.1) <= 0.02
    report = tmp_path / "report.md"
    result = runner.invoke(cli, ["eval", str(magnet), "--classifier", str(cnn_run), "--attacks", "pgd",
                                 "--nb-iter", "3", "--limit", "32", "--no-sanity-checks", "--report", str(report)])
    assert result.exit_code == 0, result.output
    d = json.loads(report.with_suffix(".json").read_text())
    assert d["settings"]["detector"]["threshold"] == calibration["threshold"]
    assert [det["threat_model"] for det in d["detection"]] == ["graybox", "whitebox"]
    assert "| accuracy on accepted |" in result.output and "system" in result.output
    assert (tmp_path / "report-scores.png").stat().st_size > 1000  # clean vs each attack's scores


def test_eval_refuses_an_uncalibrated_detector(runner, cnn_run, tmp_path):
    from tfpurify.runs import save_weights_atomic
    from tfpurify.training import load_defense

    magnet = tmp_path / "magnet"
    assert runner.invoke(cli, ["train", "denoising_ae", "--epochs", "1", "--limit", "300", "--filters", "4",
                               "--detector", "true", "--out", str(magnet)]).exit_code == 0
    model, _ = load_defense(magnet)
    model.threshold.assign(float("inf"))  # as if training had never calibrated it
    save_weights_atomic(model, magnet / "defense.weights.h5")
    _one_line_error(runner.invoke(cli, ["eval", str(magnet), "--classifier", str(cnn_run), "--limit", "8"]),
                    "never calibrated")


def test_export_leaves_out_a_report_made_for_another_classifier(runner, cnn_run, dae_run, tmp_path):
    run = tmp_path / "dae"
    shutil.copytree(dae_run, run)
    other = tmp_path / "mlp"
    assert runner.invoke(cli, ["train", "classifier", "--arch", "mlp", "--epochs", "1", "--limit", "300",
                               "--out", str(other)]).exit_code == 0
    assert runner.invoke(cli, ["eval", str(run), "--classifier", str(other), "--attacks", "fgsm", "--limit", "16",
                               "--no-sanity-checks"]).exit_code == 0
    args = ["export", str(run), "--classifier", str(cnn_run), "--name", "m", "--out", str(tmp_path / "out")]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0 and "not made for these weights" in result.output, result.output
    meta = json.loads((tmp_path / "out" / "m" / "1" / "assets" / "tfpurify.json").read_text())
    assert meta["evaluation_summary"] is None and meta["classifier"] == "cnn"


def test_eval_autoattack_reports_its_cost(runner, cnn_run, tmp_path):
    report = tmp_path / "report.md"
    result = runner.invoke(cli, ["eval", str(cnn_run), "--attacks", "pgd,autoattack", "--nb-iter", "5", "--limit", "32",
                                 "--no-sanity-checks", "--no-early-exit", "--no-cascade", "--report", str(report)])
    assert result.exit_code == 0, result.output
    rows = {r["attack"]: r for r in json.loads(report.with_suffix(".json").read_text())["rows"]}
    assert rows["pgd"]["params"]["early_exit"] is False and rows["pgd"]["grad_evals_per_example"] == 5
    assert rows["autoattack"]["params"]["version"] == "standard" and rows["autoattack"]["params"]["nb_iter"] == 5
    assert rows["autoattack"]["accuracy"] <= rows["pgd"]["accuracy"] + 1 / 32
    assert "after" not in rows["autoattack"]  # --no-cascade: AutoAttack's own number on every example
    _one_line_error(runner.invoke(cli, ["eval", str(cnn_run), "--attacks", "autoattack",
                                        "--autoattack-version", "fast"]), "version must be standard, rand, or a comma list")


@pytest.mark.parametrize("args,match", [
    (["eval", "RUN", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["eval", "RUN", "--batch-size", "-4"], "--batch-size must be >= 1, got -4"),
    (["eval", "RUN", "--batch-size", "2.5"], "--batch-size: '2.5' is not an integer"),
    (["eval", "RUN", "--limit", "0"], "--limit must be >= 1"),
    (["eval", "RUN", "--nb-iter", "0"], "--nb-iter must be >= 1"),
    (["eval", "RUN", "--restarts", "0"], "--restarts must be >= 1"),
    (["eval", "RUN", "--eot-samples", "0"], "--eot-samples must be >= 1"),
    (["eval", "RUN", "--score-draws", "0"], "--score-draws must be >= 1"),
    (["eval", "RUN", "--bpda", "fast"], "unknown bpda mode 'fast'"),
    (["eval", "RUN", "--bpda", "unroll:0"], "unroll:K needs an integer K >= 1"),
    (["eval", "RUN", "--eps-iter", "0"], "--eps-iter must be > 0"),
    (["eval", "RUN", "--eps-iter", "nan"], "--eps-iter must be a finite number"),
    (["eval", "RUN", "--detector-weight", "-1"], "--detector-weight must be >= 0"),
    (["eval", "RUN", "--seed", "-1"], "--seed must be >= 0"),
    (["train", "classifier", "--out", "OUT", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "classifier", "--out", "OUT", "--learning-rate", "0"], "--learning-rate must be > 0"),
    (["train", "cowboy", "--out", "OUT", "--target-fpr", "1.5"], "--target-fpr must be > 0 and < 1"),
    (["tune", "denoising_ae", "--param", "noise_std=0.1:0.5", "--out", "OUT", "--trials", "0"],
     "--trials must be >= 1"),
    (["tune", "denoising_ae", "--param", "noise_std=0.1:0.5", "--out", "OUT", "--val-limit", "-5"],
     "--val-limit must be >= 1"),
    (["export", "RUN", "--name", "m", "--version", "0", "--out", "OUT"], "--version must be >= 1"),
    (["predict", "PATH", "--limit", "0"], "--limit must be >= 1"),
])
def test_number_options_are_checked_before_any_work(runner, tmp_path, args, match):
    # RUN, OUT and PATH do not exist: the number is refused first, before any folder is read or written
    args = [str(tmp_path / a) if a in ("RUN", "OUT", "PATH") else a for a in args]
    _one_line_error(runner.invoke(cli, args), match)
    assert list(tmp_path.iterdir()) == []


def test_graybox_numbers_come_with_whitebox_ones_unless_asked_for_alone(runner, dae_run, cnn_run, tmp_path):
    base = ["eval", str(dae_run), "--classifier", str(cnn_run), "--attacks", "fgsm", "--limit", "16",
            "--no-sanity-checks", "--threat-model", "graybox"]
    result = runner.invoke(cli, base + ["--report", str(tmp_path / "added.md")])
    assert result.exit_code == 0, result.output
    assert "whitebox added" in result.output and "| whitebox | fgsm | 0.1 |" in result.output
    assert "Gray-box only" not in (tmp_path / "added.md").read_text()
    result = runner.invoke(cli, base + ["--graybox-only", "--report", str(tmp_path / "alone.md")])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "alone.md").read_text()
    assert "| graybox | fgsm | 0.1 |" in markdown and "| whitebox |" not in markdown
    assert "> **Gray-box only.**" in markdown and "WARNING: gray-box only" in markdown
    assert json.loads((tmp_path / "alone.json").read_text())["warnings"][0].startswith("gray-box only")


def test_a_stopped_evaluation_keeps_what_it_finished(runner, cnn_run, tmp_path, monkeypatch):
    from tfpurify.evaluation import run as run_module

    finish = run_module.attack_and_score

    def stop_at_pgd(name, *args, **kwargs):  # the user presses Ctrl-C during the second attack
        if name == "pgd":
            raise KeyboardInterrupt
        return finish(name, *args, **kwargs)

    monkeypatch.setattr(run_module, "attack_and_score", stop_at_pgd)
    report = tmp_path / "report.md"
    result = runner.invoke(cli, ["eval", str(cnn_run), "--attacks", "fgsm,pgd", "--limit", "24", "--batch-size", "8",
                                 "--report", str(report)])
    assert result.exit_code != 0
    d = json.loads(report.with_suffix(".json").read_text())
    assert d["finished"] is False and [r["attack"] for r in d["rows"] if r["threat_model"] == "none"] == [
        "fgsm", "worst_case"]
    assert "> **Unfinished.**" in report.read_text()
    monkeypatch.setattr(run_module, "attack_and_score", finish)
    result = runner.invoke(cli, ["eval", str(cnn_run), "--attacks", "fgsm,pgd", "--nb-iter", "3", "--limit", "24",
                                 "--batch-size", "8", "--report", str(report), "--check-queries", "50"])
    assert result.exit_code == 0, result.output
    d = json.loads(report.with_suffix(".json").read_text())
    assert d["finished"] is True and "Unfinished" not in report.read_text()
    assert d["settings"]["sanity_checks"]["gradient_free_attack"]["n_queries"] == 50
    assert d["settings"]["sanity_checks"]["seconds"]["none"] > 0
    assert "fgsm: 100%" in result.output and "24/24" in result.output  # progress over examples, not batches
    assert "check 4: square" in result.output and "check 5: pgd" in result.output
    assert "- sanity checks: ran under none on the first 24 examples (" in report.read_text()


def test_training_a_finished_run_again_says_so_and_never_overwrites_it(runner, tmp_path):
    out = tmp_path / "dae"
    args = ["train", "denoising_ae", "--epochs", "1", "--limit", "300", "--filters", "4", "--out", str(out)]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "trained denoising_ae on fashion_mnist: loss " in first.output and "{" not in first.output
    weights = (out / "defense.weights.h5").read_bytes()
    again = runner.invoke(cli, args)
    assert again.exit_code == 0 and "already trained with this config: nothing to do" in again.output
    _one_line_error(runner.invoke(cli, args[:-4] + ["--filters", "8", "--out", str(out)]), "finished run of another")
    assert (out / "defense.weights.h5").read_bytes() == weights
    (out / "backup").mkdir()  # as a killed run leaves it
    assert "resuming the unfinished run" in runner.invoke(cli, args).output
    # a config that cannot train leaves no run folder behind; --limit 0 clears a limit (all examples)
    _one_line_error(runner.invoke(cli, ["train", "denoising_ae", "--limit", "-3", "--out", str(tmp_path / "bad")]),
                    "limit must be")
    assert not (tmp_path / "bad").exists()
    from tfpurify.defenses.denoising_ae import DenoisingAEConfig

    assert DenoisingAEConfig(limit=0).limit is None


def _options(command):
    return {o[2:] for p in command.params if isinstance(p, click.Option)
            for o in (*p.opts, *p.secondary_opts) if o.startswith("--")} - {"help"}


def test_the_readme_and_the_options_agree():
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    named = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]+)", readme))
    commands = {"eval": cli.commands["eval"], "tune": cli.commands["tune"], "export": cli.commands["export"],
                "predict": cli.commands["predict"], "train classifier": cli.commands["train"].commands["classifier"],
                "leaderboard": cli.commands["leaderboard"],
                **{f"zoo {name}": command for name, command in cli.commands["zoo"].commands.items()}}
    for name, command in commands.items():  # every option a user can give is in the README
        assert not _options(command) - named, f"{name}: options missing from the README"
    everywhere = set().union(*(_options(c) for c in commands.values()),
                             *(_options(c) for c in cli.commands["train"].commands.values()))
    others = {"dir", "all", "defense", "help"}  # saved_model_cli's, a benchmark script's, `--help`
    assert not named - everywhere - others, "the README names options no command has"
