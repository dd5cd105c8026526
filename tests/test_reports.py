import json

import numpy as np

from tfpurify import evaluation, reports


def _report():
    report = evaluation.RobustnessReport(
        n_examples=3, seed=0, clean_accuracy=2 / 3, clean_correct=np.array([1, 1, 0], bool),
        classifier="cnn", dataset="fashion_mnist", x_sample=np.random.rand(3, 28, 28, 1),
        y_sample=np.array([0, 1, 2]), clean_pred_sample=np.array([0, 1, 1]))
    report.results.append(evaluation.AttackResult(
        "none", "pgd", 0.1, {"nb_iter": 40, "eps_iter": 0.025}, 1 / 3, 1.0,
        np.array([1, 0, 0], bool), np.random.rand(3, 28, 28, 1), np.array([0, 3, 3]), grad_evals=27.5,
        plain_correct=np.array([1, 0, 1], bool)))  # the third, wrong clean, is right under the attack
    report.warnings.append("[none] sanity check 3 failed: test")
    return report


def test_markdown_names_threat_model_and_shows_warnings():
    md = reports.to_markdown(_report())
    assert "| defense | threat model | attack | eps | accuracy | plain |" in md
    assert "| none | none | pgd | 0.1 | 33.3 % | 66.7 % | 27.5 | nb_iter=40, eps_iter=0.025 |" in md
    assert "| none | none | **worst case** | 0.1 | 33.3 % | 66.7 % |" in md
    assert "WARNING: [none] sanity check 3 failed" in md


def test_write_report_writes_json_markdown_and_png(tmp_path):
    paths = reports.write_report(_report(), tmp_path / "r" / "report.md", class_names=[str(i) for i in range(10)])
    d = json.loads(paths["json"].read_text())
    assert d["n_examples"] == 3 and d["rows"][0]["attack"] == "none"
    assert paths["grid"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".")], "temporary files left"


def test_score_violins_are_written(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "scores.png"
    reports.save_score_violins(path, {"clean": rng.normal(0, 1, 50), "graybox/pgd 0.1": rng.normal(2, 1, 50)},
                               threshold=1.5)
    assert path.stat().st_size > 1000 and not list(tmp_path.glob(".tmp-*"))


def test_evaluate_takes_names_and_digests_from_a_loaded_run(cnn_run, fmnist_test, caplog):
    from tfpurify import attacks, classifiers, evaluation, reports

    x, y = fmnist_test
    model, config = classifiers.load_classifier(cnn_run)
    report = evaluation.evaluate(model, x[:16], y[:16], evaluation.make_attack_specs(["fgsm"], [0.1]),
                                 sanity_checks=False)
    assert (report.defense, report.classifier, report.dataset) == ("none", "cnn", "fashion_mnist")
    digest = report.settings["runs"]["classifier"]["weights_sha256"]
    assert len(digest) == 64
    text = reports.to_markdown(report)
    assert text.startswith("# Robustness report: none on cnn (fashion_mnist)") and digest in text
    named = evaluation.evaluate(model, x[:16], y[:16], ["fgsm"], sanity_checks=False, classifier="mine", runs={})
    assert named.classifier == "mine" and "runs" not in named.settings  # what it is told wins
    with caplog.at_level("WARNING", logger="tensorflow"):
        for _ in range(7):  # a fresh trace per call, on purpose: TensorFlow's retracing warning is dropped
            attacks.run_attack("pgd", model, x[:4], y[:4], eps=0.1, nb_iter=2)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
