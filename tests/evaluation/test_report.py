import numpy as np
import pytest

from tfpurify import evaluation


def test_report_worst_case_uses_only_its_threat_model_and_eps():
    report = evaluation.RobustnessReport(n_examples=4, seed=0, clean_accuracy=1.0,
                                         clean_correct=np.ones(4, bool))
    mk = lambda tm, eps, c: evaluation.AttackResult(tm, "pgd", eps, {}, float(np.mean(c)), 0.0, np.array(c, bool))  # noqa: E731
    report.results += [mk("none", 0.1, [1, 0, 1, 1]), mk("none", 0.1, [1, 1, 0, 1]),
                       mk("none", 0.2, [0, 0, 0, 1]), mk("transfer", 0.1, [0, 1, 1, 1])]
    assert report.worst_case("none", 0.1) == pytest.approx(0.5)
    assert report.worst_case("none", 0.2) == pytest.approx(0.25)
    assert report.worst_case("transfer", 0.1) == pytest.approx(0.75)
    rows = [r for r in report.rows() if r["attack"] == "worst_case"]
    assert [(r["threat_model"], r["eps"], r["accuracy"]) for r in rows] == [
        ("none", 0.1, 0.5), ("none", 0.2, 0.25), ("transfer", 0.1, 0.75)]


def test_plain_accuracy_ignores_clean_errors_and_its_worst_case_is_per_example():
    report = evaluation.RobustnessReport(n_examples=4, seed=0, clean_accuracy=0.75,
                                         clean_correct=np.array([1, 1, 1, 0], bool))
    mk = lambda name, c, plain: evaluation.AttackResult(  # noqa: E731
        "none", name, 0.1, {}, float(np.mean(c)), 0.0, np.array(c, bool), plain_correct=np.array(plain, bool))
    report.results += [mk("fgsm", [1, 0, 1, 0], [1, 0, 1, 1]), mk("pgd", [1, 1, 0, 0], [1, 1, 0, 1])]
    rows = {r["attack"]: r for r in report.rows()}
    assert rows["fgsm"]["plain_accuracy"] == 0.75 and rows["fgsm"]["accuracy"] == 0.5
    assert rows["none"]["plain_accuracy"] == rows["none"]["accuracy"] == 0.75  # the clean row
    worst = rows["worst_case"]
    assert worst["accuracy"] == 0.25 and worst["plain_accuracy"] == 0.5  # examples 0 and 3
