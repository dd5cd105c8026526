import json

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cli.main import cli
from tfpurify import adaptive, attacks, classifiers
from tfpurify.defenses.adversarial_training import PGDATConfig
from tfpurify.errors import InputValidationError, RunFolderError
from tfpurify.training import load_defended, train_defense


@pytest.fixture(scope="module")
def pgd_at_run(tmp_path_factory, cnn_run):
    """PGD-5 adversarial training for one epoch on 2000 images, fine-tuning the session cnn."""
    out = tmp_path_factory.mktemp("runs") / "pgd_at"
    config = PGDATConfig(classifier=str(cnn_run), eps=0.1, nb_iter=5, epochs=1, limit=2000, batch_size=50)
    train_defense("pgd_at", config, out, verbose=0)
    return out


def test_pgd_training_raises_pgd_accuracy_over_the_plain_classifier(pgd_at_run, cnn, fmnist_test):
    x, y = fmnist_test
    x, y = x[:128], y[:128]
    robust, _ = load_defended(pgd_at_run)
    plain_pgd = classifiers.accuracy(cnn, attacks.run_attack("pgd", cnn, x, y, eps=0.1, nb_iter=10), y)
    robust_pgd = classifiers.accuracy(robust, attacks.run_attack("pgd", robust, x, y, eps=0.1, nb_iter=10), y)
    assert robust_pgd > plain_pgd + 0.15, (plain_pgd, robust_pgd)
    assert classifiers.accuracy(robust, x, y) > 0.6  # still a classifier
    history = (pgd_at_run / "history.csv").read_text().splitlines()[0]
    assert "adv_loss" in history and "adv_accuracy" in history


def test_pipelines_of_a_robust_classifier(pgd_at_run, cnn_run):
    robust, _ = load_defended(pgd_at_run)
    pipelines = adaptive.threat_model_pipelines(robust)
    assert pipelines["none"] is None  # no plain classifier given: no undefended rows
    assert pipelines["whitebox"][1] is robust and pipelines["graybox"] == pipelines["whitebox"]
    assert "gray-box = white-box" in pipelines["whitebox"][0].settings["attacked"]
    with_plain, _ = load_defended(pgd_at_run, cnn_run)
    assert adaptive.threat_model_pipelines(with_plain)["none"][1] is with_plain.undefended


def test_config_checks(cnn_run, tmp_path):
    with pytest.raises(InputValidationError, match="adv_weight"):
        PGDATConfig(adv_weight=1.5)
    with pytest.raises(InputValidationError, match="eps_iter"):
        PGDATConfig(eps=0.1, eps_iter=0.3)
    assert PGDATConfig(eps=0.2).step_size == pytest.approx(0.05)
    with pytest.raises(RunFolderError):
        PGDATConfig(classifier=str(tmp_path / "missing"))


def test_cli_train_eval_export(pgd_at_run, cnn_run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "at"
    result = runner.invoke(cli, ["train", "pgd_at", "--classifier", str(cnn_run), "--nb-iter", "2", "--epochs", "1",
                                 "--limit", "300", "--batch-size", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["arch"] == "cnn"

    report = pgd_at_run / "report.md"  # where export looks for the evaluation summary
    result = runner.invoke(cli, ["eval", str(pgd_at_run), "--classifier", str(cnn_run), "--attacks", "pgd",
                                 "--nb-iter", "10", "--limit", "64", "--no-sanity-checks"])
    assert result.exit_code == 0, result.output
    rows = {(r["threat_model"], r["attack"]): r for r in json.loads(report.with_suffix(".json").read_text())["rows"]}
    assert rows[("none", "pgd")]["defense"] == "none" and rows[("whitebox", "pgd")]["defense"] == "pgd_at"
    assert rows[("whitebox", "pgd")]["accuracy"] > rows[("none", "pgd")]["accuracy"]
    assert ("graybox", "pgd") not in rows and "gray-box = white-box" in report.read_text()

    export_dir = tmp_path / "saved"
    result = runner.invoke(cli, ["export", str(pgd_at_run), "--name", "at", "--out", str(export_dir)])
    assert result.exit_code == 0, result.output
    meta = json.loads((export_dir / "at" / "1" / "assets" / "tfpurify.json").read_text())
    assert meta["defense"] == "pgd_at" and meta["classifier"] == "cnn"
    # the report (made with the plain cnn for its `none` rows) belongs to these exported weights
    assert any(r["threat_model"] == "whitebox" for r in meta["evaluation_summary"])
    loaded = tf.saved_model.load(str(export_dir / "at" / "1"))
    robust, _ = load_defended(pgd_at_run)
    x = tf.random.uniform((4, 28, 28, 1))
    np.testing.assert_allclose(loaded.signatures["serving_default"](images=x)["probabilities"].numpy(),
                               tf.nn.softmax(robust(x)).numpy(), atol=1e-5)
