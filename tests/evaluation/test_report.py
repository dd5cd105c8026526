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
    np.testing.assert_array_equal(report.worst_case_correct("none", 0.1), [True, False, False, True])
    report.check_columns.append(("none", 0.1, "square", np.array([1, 1, 1, 0], bool)))  # a check's attack counts
    np.testing.assert_array_equal(report.worst_case_correct("none", 0.1), [True, False, False, False])
    assert report.worst_case("none", 0.1) == pytest.approx(0.25)
    report.check_columns.clear()
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


def _golden_report():
    """A defense's report with every kind of row: two threat models, two eps, a cascaded row, a row
    without the papers' metric, the sanity checks' columns, a corruption row and numpy values."""
    c = lambda *bits: np.array(bits, bool)  # noqa: E731
    report = evaluation.RobustnessReport(
        n_examples=4, seed=3, clean_accuracy=0.75, clean_correct=c(1, 1, 1, 0), defense="dae", classifier="cnn",
        dataset="fashion_mnist", threat_models=("none", "whitebox"),
        clean_by_threat_model={"none": c(1, 1, 0, 0), "whitebox": c(1, 1, 1, 0)},
        settings={"seed": 3, "detector": {"threshold": np.float32(np.inf)}, "n": np.int64(4), "on": np.bool_(True),
                  "steps": (np.float32(0.5), 2)},
        sanity=[{"check": 1, "passed": np.bool_(True)}], warnings=["a warning"],
        detection=[{"attack": "pgd", "roc_auc": np.float64(0.75)}],
        corruptions=[{"defense": "dae", "classifier": "cnn", "threat_model": "corruption",
                      "attack": "gaussian_noise", "eps": None, "params": {"severity": 1}, "accuracy": 0.5}])
    report.results += [
        evaluation.AttackResult("none", "pgd", 0.1, {"nb_iter": np.int64(10), "norm": np.inf}, 0.5, 1.23456,
                                c(1, 0, 1, 0), grad_evals=12.3456, plain_correct=c(1, 0, 0, 1)),
        evaluation.AttackResult("whitebox", "fgsm", 0.1, {}, 0.5, 0.5, c(1, 1, 0, 0), plain_correct=c(1, 1, 0, 1)),
        evaluation.AttackResult("whitebox", "pgd", 0.1, {"restarts": 2}, 0.25, 2.0, c(1, 0, 0, 0), grad_evals=40.0,
                                after=("fgsm",), n_attacked=2, plain_correct=c(1, 0, 0, 1)),
        evaluation.AttackResult("whitebox", "pgd", 0.2, {}, 0.0, 1.0, c(0, 0, 0, 0)),
    ]
    report.check_columns += [("whitebox", 0.1, "square on the first 2", c(0, 1, 1, 1)),
                             ("none", 0.2, "pgd-20 on the first 2", c(0, 0, 0, 0)),
                             ("whitebox", 0.2, "square on the first 2", c(1, 1, 1, 1))]
    return report


def test_report_rows_and_json_in_full():
    """The whole JSON of a report, by hand: every key, every number, in order."""
    bare, defended = {"defense": "none", "classifier": "cnn"}, {"defense": "dae", "classifier": "cnn"}
    square = "square on the first 2 (sanity check)"
    rows = [
        {**defended, "threat_model": "clean", "attack": "none", "eps": 0, "params": {}, "accuracy": 0.75,
         "plain_accuracy": 0.75},
        {**bare, "threat_model": "clean", "attack": "none", "eps": 0, "params": {}, "accuracy": 0.5,
         "plain_accuracy": 0.5},
        {**bare, "threat_model": "none", "attack": "pgd", "eps": 0.1, "params": {"nb_iter": 10, "norm": "inf"},
         "accuracy": 0.5, "plain_accuracy": 0.5, "grad_evals_per_example": 12.35, "seconds": 1.235},
        {**defended, "threat_model": "whitebox", "attack": "fgsm", "eps": 0.1, "params": {}, "accuracy": 0.5,
         "plain_accuracy": 0.75, "grad_evals_per_example": None, "seconds": 0.5},
        {**defended, "threat_model": "whitebox", "attack": "pgd", "eps": 0.1, "params": {"restarts": 2},
         "accuracy": 0.25, "plain_accuracy": 0.5, "grad_evals_per_example": 40.0, "seconds": 2.0,
         "after": ["fgsm"], "n_attacked": 2},
        {**defended, "threat_model": "whitebox", "attack": "pgd", "eps": 0.2, "params": {}, "accuracy": 0.0,
         "plain_accuracy": None, "grad_evals_per_example": None, "seconds": 1.0},
        # worst cases: per example over the clean column of the threat model and every column at that eps
        {**bare, "threat_model": "none", "attack": "worst_case", "eps": 0.1, "params": {"attacks": ["pgd"]},
         "accuracy": 0.25, "plain_accuracy": 0.5},
        {**defended, "threat_model": "whitebox", "attack": "worst_case", "eps": 0.1,
         "params": {"attacks": ["fgsm", "pgd", square]}, "accuracy": 0.0, "plain_accuracy": 0.5},
        {**defended, "threat_model": "whitebox", "attack": "worst_case", "eps": 0.2,
         "params": {"attacks": ["pgd", square]}, "accuracy": 0.0, "plain_accuracy": None},
        {**defended, "threat_model": "corruption", "attack": "gaussian_noise", "eps": None, "params": {"severity": 1},
         "accuracy": 0.5},
    ]
    expected = {"defense": "dae", "classifier": "cnn", "dataset": "fashion_mnist", "n_examples": 4, "seed": 3,
                "threat_models": ["none", "whitebox"], "clean_accuracy": 0.75,
                "settings": {"seed": 3, "detector": {"threshold": "inf"}, "n": 4, "on": True, "steps": [0.5, 2]},
                "rows": rows, "detection": [{"attack": "pgd", "roc_auc": 0.75}],
                "sanity_checks": [{"check": 1, "passed": True}], "warnings": ["a warning"], "finished": True}
    got = _golden_report().to_dict()
    assert got == expected
    assert [type(v) for v in got["settings"].values()] == [int, dict, int, bool, list]  # plain JSON types


def test_worst_case_queries_by_threat_model_and_eps():
    report = _golden_report()
    assert report.worst_case("none", 0.1) == 0.25 and report.plain_worst_case("none", 0.1) == 0.5
    assert report.worst_case("whitebox", 0.1) == 0.0 and report.plain_worst_case("whitebox", 0.2) is None
    assert report.worst_case_attacks("none", 0.2) == ["pgd-20 on the first 2 (sanity check)"]
    assert report.worst_cases() == [("none", 0.1, 0.25), ("whitebox", 0.1, 0.0), ("whitebox", 0.2, 0.0)]


def test_a_classifier_report_has_one_clean_row():
    """With no defense, the `none` threat model is the scored classifier itself: no second, bare clean row."""
    report = evaluation.RobustnessReport(n_examples=2, seed=0, clean_accuracy=0.5, clean_correct=np.array([1, 0], bool),
                                         clean_by_threat_model={"none": np.array([1, 0], bool)})
    assert [r for r in report.rows() if r["threat_model"] == "clean"] == [
        {"defense": "none", "classifier": "", "threat_model": "clean", "attack": "none", "eps": 0, "params": {},
         "accuracy": 0.5, "plain_accuracy": 0.5}]


def test_a_kept_state_round_trips_without_pickle():
    from tfpurify.evaluation.report import AttackResult, RobustnessReport, load_state, save_state

    correct = np.array([True, False, True])
    result = AttackResult("whitebox", "pgd", 0.1, {"nb_iter": 5, "eps_iter": np.float32(0.025)}, 2 / 3, 1.5, correct,
                          np.zeros((1, 2, 2, 1), np.float32), np.array([3]), float("inf"), after=("fgsm",))
    report = RobustnessReport(3, 0, 1.0, correct, [result], settings={"cascade": True},
                              detector_scores={"clean": np.arange(3.0)},
                              progress_state={"whitebox": {"steps": 2, "chains": {0.1: (correct, np.ones((3, 2)), ("fgsm",),
                                                                                          correct)}, "sanity": False}})
    blob = save_state(report, {"key": [1, "a"]})
    assert b"pickle" not in blob
    back, extra = load_state(blob)
    assert extra == {"key": [1, "a"]} and isinstance(back, RobustnessReport)
    got = back.results[0]
    assert isinstance(got, AttackResult) and got.after == ("fgsm",) and got.params["eps_iter"] == pytest.approx(0.025)
    assert got.grad_evals == float("inf") and np.array_equal(got.correct, correct)
    chain = back.progress_state["whitebox"]["chains"][0.1]
    assert isinstance(chain, tuple) and chain[2] == ("fgsm",) and chain[1].shape == (3, 2)
    np.testing.assert_array_equal(back.detector_scores["clean"], np.arange(3.0))
    with pytest.raises(ValueError):
        load_state(b"not an npz file")


def test_a_damaged_kept_state_is_measured_again(tmp_path):
    """A kept state that cannot be read (truncated, not an npz) or was kept for another key gives (None, None):
    the work is done again, never a traceback."""
    from tfpurify.evaluation.report import RobustnessReport, kept_state, save_state

    blob = save_state(RobustnessReport(3, 0, 1.0, np.array([True, False, True]), []), {"key": "k"})
    path = tmp_path / "state.npz"
    path.write_bytes(blob)
    assert isinstance(kept_state(path, "k")[0], RobustnessReport) and kept_state(path, "other") == (None, None)
    for damaged in (blob[: len(blob) // 2], b"PK\x03\x04garbage", b"not an npz file"):
        path.write_bytes(damaged)
        assert kept_state(path, "k") == (None, None)
    assert kept_state(tmp_path / "missing.npz", "k") == (None, None)


def test_a_kept_evaluation_resumes_for_its_key_and_counts_the_seconds_of_every_process(tmp_path, monkeypatch):
    """`KeptEvaluation`: what a stopped process kept is the next one's `resume` only for the same key, and the
    seconds it reports add those the stopped process spent (a resumed benchmark or leaderboard cell states its
    whole cost, not the last process's)."""
    from tfpurify.evaluation import report as report_lib

    clock = iter([100.0, 130.0, 500.0, 510.0, 900.0])
    monkeypatch.setattr(report_lib.time, "perf_counter", lambda: next(clock))
    path = tmp_path / "cell.partial.npz"
    first = report_lib.KeptEvaluation(path, {"n": np.int64(3), "eps": 0.1})  # started at 100
    assert first.resume is None and first.seconds_before == 0.0
    first.checkpoint(report_lib.RobustnessReport(3, 0, 1.0, np.array([True, False, True]), []))  # at 130: 30 s
    second = report_lib.KeptEvaluation(path, {"n": 3, "eps": 0.1})  # started at 500
    assert isinstance(second.resume, report_lib.RobustnessReport) and second.seconds_before == 30.0
    assert second.seconds() == 40.0  # at 510: 30 before + 10 now
    assert report_lib.KeptEvaluation(path, {"n": 4, "eps": 0.1}).resume is None  # another key: measured again
    second.discard()
    assert not path.exists()
