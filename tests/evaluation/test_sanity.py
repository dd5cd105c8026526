import numpy as np
import pytest
import tensorflow as tf

from tfpurify import evaluation, metrics
from tfpurify.evaluation import sanity


def _timed(records):
    """The records without their `seconds` (checked: each ran check's time since the record before it)."""
    for c in records:
        assert (c.pop("seconds") >= 0) if c["status"] != "skipped" else "seconds" not in c
    return records


def test_masked_gradients_trigger_sanity_warnings(cnn, fmnist_test):
    """A purifier with tf.round attacked without BPDA: checks 3 and 4 (Square) must both fail."""
    x, y = fmnist_test

    def masked(images):  # quantization with a zero gradient: a textbook case of gradient masking
        return cnn(tf.stop_gradient(tf.round(images * 8.0) / 8.0) + 0.0 * images)

    specs = evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=5)
    report = evaluation.evaluate(masked, x[:32], y[:32], specs, sanity_n=32)
    failed = {c["check"] for c in report.sanity if c["status"] == "failed"}
    assert {3, 4} <= failed, report.sanity
    assert any("sanity check 3 failed" in w for w in report.warnings)
    check4 = next(c for c in report.sanity if c["check"] == 4)
    assert check4["broken_by_gradient_free_only"] > 0 and check4["n"] == 32
    # what Square found counts in the worst case: it is below every attack column of the table
    pgd = next(r for r in report.results if r.attack == "pgd")
    assert report.worst_case("none", 0.1) < pgd.accuracy
    assert "square on the first 32 (sanity check)" in report.worst_case_attacks("none", 0.1)


def test_unconverged_pgd_fails_check_1_and_pgd_2k_joins_the_worst_case(cnn, fmnist_test):
    x, y = fmnist_test
    # 4 steps of 0.02 cannot cover an eps of 0.2: PGD-8 finds clearly more
    specs = evaluation.make_attack_specs(["pgd"], [0.2], nb_iter=4, eps_iter=0.02)
    report = evaluation.evaluate(cnn, x[:64], y[:64], specs, sanity_n=64)
    check1 = next(c for c in report.sanity if c["check"] == 1)
    assert check1["status"] == "failed" and check1["pgd_8"] < check1["pgd_4"], check1
    assert any("had not converged" in w for w in report.warnings)
    # the table's only attack column says PGD-4; the worst case must not print more than PGD-8 found
    worst = report.worst_case("none", 0.2)
    assert worst <= check1["pgd_8"] < report.results[0].accuracy
    row = next(r for r in report.rows() if r["attack"] == "worst_case")
    assert row["accuracy"] == worst and "pgd-8 on the first 64 (sanity check)" in row["params"]["attacks"]


def test_gradient_free_check_passes_on_a_plain_cnn(cnn, fmnist_test):
    x, y = fmnist_test
    report = evaluation.evaluate(cnn, x[:64], y[:64], evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=20),
                                 sanity_n=64)
    check4 = next(c for c in report.sanity if c["check"] == 4)
    assert check4["status"] == "passed", check4
    assert check4["gradient_free_attack"] == {"attack": "square", "n_queries": 5000, "p_init": 0.8}


def test_skipped_checks_are_recorded_with_their_reason(cnn, fmnist_test):
    from tfpurify import reports

    x, y = fmnist_test
    off = evaluation.evaluate(cnn, x[:16], y[:16], evaluation.make_attack_specs(["fgsm"], [0.1]),
                              sanity_checks=False)
    assert {c["status"] for c in off.sanity} == {"skipped"} and len(off.sanity) == 5
    assert all("turned off" in c["reason"] for c in off.sanity)
    text = reports.to_markdown(off)
    assert "No warnings" not in text and "No sanity check ran" in text and "5 skipped" in text
    no_pgd = evaluation.evaluate(cnn, x[:16], y[:16], evaluation.make_attack_specs(["fgsm"], [0.1]), sanity_n=16)
    reasons = {c["check"]: c.get("reason") for c in no_pgd.sanity}
    assert reasons[1] == reasons[2] == reasons[5] == "no pgd attack in this evaluation"
    assert reasons[3] is None and reasons[4] is None  # these ran
    assert "check 1, 2, 5 skipped: no pgd attack" in reports.to_markdown(no_pgd)


def _report_with_pgd(n_examples, pgd_correct, **extra_rows):
    """A report with a PGD-10 row at eps 0.1 (and other rows), as `evaluate` leaves it before the checks."""
    report = evaluation.RobustnessReport(n_examples=n_examples, seed=0, clean_accuracy=1.0,
                                         clean_correct=np.ones(n_examples, bool))
    params = {"eps_iter": 0.025, "nb_iter": 10, "restarts": 1, "norm": "inf"}
    report.results.append(evaluation.AttackResult("none", "pgd", 0.1, params, float(np.mean(pgd_correct)), 0.0,
                                                  np.asarray(pgd_correct, bool)))
    for name, correct in extra_rows.items():
        report.results.append(evaluation.AttackResult("none", name, 0.1, {}, float(np.mean(correct)), 0.0,
                                                      np.asarray(correct, bool)))
    return report


def _fake_attacks(monkeypatch, verdicts):
    """Replaces the checks' attacks by fixed verdicts: verdicts(name, params) -> [n] bool correct."""
    def fake(name, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, progress=False, progress_label=None,
             **params):
        correct = np.asarray(verdicts(name, params), bool)[:len(x)] & clean_correct
        return x, np.where(correct, y, (y + 1) % 10), correct, np.zeros(len(x))

    monkeypatch.setattr(sanity, "attack_and_score", fake)


def _checks(report, n):
    x, y = np.zeros((n, 28, 28, 1), np.float32), np.zeros(n, np.int64)
    sanity.run_sanity_checks(report, "none", None, None, x, y, np.ones(n, bool), 64, 0)
    return {c["check"]: c for c in report.sanity}


def _column(n, robust):
    return np.arange(n) < robust  # the first `robust` examples correct


@pytest.mark.parametrize("pgd_2k_robust,passed,why", [
    (90, False, "more iterations helped the defense"),   # PGD-20 far above PGD-10: masking or randomness
    (10, False, "had not converged"),                     # PGD-20 far below PGD-10: PGD-10 overestimates
    (52, True, None),                                     # within two standard errors
])
def test_check_1_fails_in_both_directions(monkeypatch, pgd_2k_robust, passed, why):
    n = 100
    def verdicts(name, params):
        if name == "pgd" and params["eps"] == 0.1:
            return _column(n, pgd_2k_robust)
        return np.zeros(n, bool) if name == "pgd" else _column(n, 100)  # eps 0.5 breaks all; FGSM, Square none

    _fake_attacks(monkeypatch, verdicts)
    report = _report_with_pgd(n, _column(n, 50), fgsm=_column(n, 60))
    checks = _checks(report, n)
    assert checks[1]["passed"] is passed and checks[1]["pgd_10"] == 0.5 and checks[1]["pgd_20"] == pgd_2k_robust / n
    assert (why is None) == (not any("check 1" in w for w in report.warnings))
    if why:
        assert any(why in w for w in report.warnings), report.warnings
    if pgd_2k_robust == 10:
        assert report.warnings == [
            "[none] sanity check 1 failed: PGD-20 accuracy 0.100 < PGD-10 0.500 at eps 0.1 (PGD-10 had not converged: "
            "the numbers above overestimate robustness; the worst case includes PGD-20)"]
    assert checks[2]["passed"] and checks[3]["passed"] and checks[4]["passed"]


def test_check_2_fails_when_pgd_is_weaker_than_fgsm(monkeypatch):
    n = 100
    _fake_attacks(monkeypatch, lambda name, params: _column(n, 70 if params["eps"] == 0.1 else 0)
                  if name == "pgd" else _column(n, 100))
    report = _report_with_pgd(n, _column(n, 70), fgsm=_column(n, 40))
    checks = _checks(report, n)
    assert checks[2]["passed"] is False and checks[2]["pgd"] == 0.7 and checks[2]["fgsm"] == 0.4
    assert any("sanity check 2 failed" in w for w in report.warnings)
    assert checks[1]["passed"]


def test_the_checks_attacks_join_the_worst_case_only_on_their_subset(monkeypatch):
    """Examples outside the checked subset stay robust unless a reported attack broke them."""
    full, n = 10, 4
    # PGD-20 breaks the whole checked subset; Square breaks nothing more
    _fake_attacks(monkeypatch, lambda name, params: np.zeros(n, bool) if name == "pgd" else np.ones(n, bool))
    report = _report_with_pgd(full, np.ones(full, bool))
    _checks(report, n)
    assert report.worst_case("none", 0.1) == pytest.approx(0.6)  # the 6 examples outside the subset
    pgd_2k = next(c for tm, eps, name, c in report.check_columns if name.startswith("pgd-20"))
    np.testing.assert_array_equal(pgd_2k, np.arange(full) >= n)
    # an attack row that broke an example outside the subset still counts there
    report = _report_with_pgd(full, np.arange(full) != 7)
    _checks(report, n)
    assert report.worst_case("none", 0.1) == pytest.approx(0.5)


def test_the_checks_in_full_attacks_called_and_everything_recorded(monkeypatch):
    """One passing run of checks 1-4, by hand: which attacks run on which examples of which pipeline
    with which parameters, and every number, column and verdict the report keeps."""
    full, n = 12, 10
    attacked, scored = object(), object()  # the checks must hand each attack the pipelines they were given
    calls = []
    verdict = {("pgd", 0.1): lambda i: i < 5, ("pgd", 0.5): lambda i: False, ("square", 0.1): lambda i: i != 4}

    def fake(name, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, progress=False, progress_label=None,
             **params):
        rows = [int(round(v * 100)) for v in x[:, 0, 0, 0]]  # row i of the subset holds the value i / 100
        calls.append((name, attacked_fn is attacked, scored_fn is scored, rows, list(clean_correct), list(y),
                      batch_size, seed, params))
        correct = np.array([verdict[(name, params["eps"])](i) for i in rows]) & clean_correct
        return x, np.where(correct, y, (y + 1) % 10), correct, np.zeros(len(x))

    monkeypatch.setattr(sanity, "attack_and_score", fake)
    report = _report_with_pgd(full, np.arange(full) < 6, fgsm=np.arange(full) < 8)
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None, None, None] / 100, 28, axis=1).repeat(28, axis=2)
    y = np.arange(n, dtype=np.int64) % 3
    sanity.run_sanity_checks(report, "none", attacked, scored, x, y, np.ones(n, bool), 64, 5)

    ten, five = list(range(10)), list(range(5))
    assert calls == [
        ("pgd", True, True, ten, [True] * 10, list(y), 64, 5,
         {"eps": 0.1, "eps_iter": 0.025, "nb_iter": 20, "restarts": 1, "norm": np.inf}),  # PGD-2k, as PGD-k ran
        ("pgd", True, True, ten, [True] * 10, list(y), 64, 5, {"eps": 0.5, "eps_iter": 0.05, "nb_iter": 40}),
        ("square", True, True, five, [True] * 5, list(y[:5]), 64, 5, {"eps": 0.1, "n_queries": 5000, "p_init": 0.8}),
    ]
    tolerance = metrics.binomial_tolerance
    assert _timed(report.sanity) == [
        {"threat_model": "none", "check": 1, "name": "PGD-2k vs PGD-k", "status": "passed", "passed": True,
         "eps": 0.1, "pgd_10": 0.6, "pgd_20": 0.5, "n": 10, "tolerance": tolerance(0.6, 10)},
        {"threat_model": "none", "check": 2, "name": "PGD vs FGSM", "status": "passed", "passed": True,
         "eps": 0.1, "pgd": 0.6, "fgsm": 0.8, "n": 10, "tolerance": tolerance(0.8, 10)},
        {"threat_model": "none", "check": 3, "name": "PGD at eps 0.5", "status": "passed", "passed": True,
         "eps": 0.5, "pgd": 0.0, "n": 10, "threshold": 0.05},
        {"threat_model": "none", "check": 4, "name": "gradient-free vs gradient attacks", "status": "passed",
         "passed": True, "eps": 0.1, "gradient_attacks": 0.5, "with_gradient_free": 0.4,
         "broken_by_gradient_free_only": 1, "n": 10, "tolerance": tolerance(0.5, 10),
         "gradient_free_attack": {"attack": "square", "n_queries": 5000, "p_init": 0.8}, "estimated_seconds": None},
        {"threat_model": "none", "check": 5, "name": "binarization test", "status": "skipped", "passed": None,
         "reason": NO_READOUT},  # the fakes have no classifier to binarize: tests/evaluation/test_binarization.py
    ]
    assert report.warnings == []
    columns = [(tm, eps, name, list(column)) for tm, eps, name, column in report.check_columns]
    assert columns == [("none", 0.1, "pgd-20 on the first 10", [True] * 5 + [False] * 5 + [True] * 2),
                       ("none", 0.1, "square on the first 10", [True] * 4 + [False] * 6 + [True] * 2)]
    assert report.worst_case("none", 0.1) == pytest.approx(4 / 12)


def test_failed_checks_say_why_in_the_warnings(monkeypatch):
    n = 100
    _fake_attacks(monkeypatch, lambda name, params: _column(n, {0.1: 90, 0.5: 30}[params["eps"]]) if name == "pgd"
                  else _column(n, 10))  # Square breaks everything PGD left
    report = _report_with_pgd(n, _column(n, 50), fgsm=_column(n, 20))
    _checks(report, n)
    assert report.warnings == [
        "[none] sanity check 1 failed: PGD-20 accuracy 0.900 > PGD-10 0.500 at eps 0.1 (more iterations helped the "
        "defense: gradients are masked or the defense is random)",
        "[none] sanity check 2 failed: PGD accuracy 0.500 > FGSM 0.200 at eps 0.1 (an iterative attack should beat "
        "a single step: gradients may be masked)",
        "[none] sanity check 3 failed: PGD accuracy 0.300 at eps 0.5 is not ~0 (gradients are masked)",
        "[none] sanity check 4 failed: square broke 10 of the 20 examples every gradient attack left robust at eps "
        "0.1 (accuracy 0.200 -> 0.100): a gradient-free attack does clearly better, so gradients are masked; the "
        "worst case includes square",
    ]
    assert [(c["check"], c["status"], c["passed"]) for c in report.sanity] == [
        (1, "failed", False), (2, "failed", False), (3, "failed", False), (4, "failed", False), (5, "skipped", None)]


NO_READOUT = "the attacked pipeline's classifier has no last Dense layer to replace by a binary readout"


def _logged_fake(monkeypatch, verdict):
    """Fake attacks that log (name, rows, params) and answer verdict(name, params)(row index) -> correct."""
    calls = []

    def fake(name, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, progress=False, progress_label=None,
             **params):
        rows = [int(round(v * 100)) for v in x[:, 0, 0, 0]]
        calls.append((name, rows, params))
        correct = np.array([verdict(name, params)(i) for i in rows], bool) & clean_correct
        return x, np.where(correct, y, (y + 1) % 10), correct, np.zeros(len(x))

    monkeypatch.setattr(sanity, "attack_and_score", fake)
    return calls


def _indexed(n):
    return np.repeat(np.arange(n, dtype=np.float32)[:, None, None, None] / 100, 28, axis=1).repeat(28, axis=2)


def test_a_cascaded_l2_pgd_row_other_rows_and_the_boundaries(monkeypatch):
    """PGD-k reruns on its own where its row is cascaded; L2 carries over; rows and check columns of
    another threat model, eps or a gradient-free attack do not count; check 3 passes at exactly 5 %; an
    eps no attack left anything robust at runs no Square."""
    n = 20
    table = {("pgd", 0.1, 5): 11, ("pgd", 0.1, 10): 10, ("fgsm", 0.1, None): 14, ("pgd", 0.5, 40): 1}
    calls = _logged_fake(monkeypatch, lambda name, p: (lambda i: i != 3) if name == "square"
                         else (lambda i: i < table[(name, p["eps"], p.get("nb_iter"))]))
    report = evaluation.RobustnessReport(n_examples=n, seed=0, clean_accuracy=1.0, clean_correct=np.ones(n, bool))
    row = lambda tm, name, eps, params, robust, **kw: evaluation.AttackResult(  # noqa: E731
        tm, name, eps, params, robust / n, 0.0, np.arange(n) < robust, **kw)
    report.results += [row("none", "square", 0.1, {}, 12),
                       row("none", "pgd", 0.1, {"eps_iter": 0.5, "nb_iter": 5, "restarts": 1, "norm": 2}, 10,
                           after=("square",), n_attacked=12),
                       row("whitebox", "fgsm", 0.1, {}, 0), row("none", "fgsm", 0.3, {}, 0)]
    report.check_columns.append(("whitebox", 0.1, "pgd-20 on the first 20", np.zeros(n, bool)))  # another model's
    x, y = _indexed(n), np.zeros(n, np.int64)
    sanity.run_sanity_checks(report, "none", None, None, x, y, np.ones(n, bool), 64, 0)
    everything = list(range(n))
    assert calls == [
        ("pgd", everything, {"eps": 0.1, "eps_iter": 0.5, "nb_iter": 5, "restarts": 1, "norm": 2}),
        ("pgd", everything, {"eps": 0.1, "eps_iter": 0.5, "nb_iter": 10, "restarts": 1, "norm": 2}),
        ("fgsm", everything, {"eps": 0.1, "norm": 2}),
        ("pgd", everything, {"eps": 0.5, "eps_iter": 0.05, "nb_iter": 40}),
        ("square", list(range(10)), {"eps": 0.1, "n_queries": 5000, "p_init": 0.8}),
    ]
    tolerance, square = metrics.binomial_tolerance, {"attack": "square", "n_queries": 5000, "p_init": 0.8}
    passed = {"threat_model": "none", "status": "passed", "passed": True}
    assert _timed(report.sanity) == [
        {**passed, "check": 1, "name": "PGD-2k vs PGD-k", "eps": 0.1, "pgd_5": 0.55, "pgd_10": 0.5, "n": n,
         "tolerance": tolerance(0.55, n)},
        {**passed, "check": 2, "name": "PGD vs FGSM", "eps": 0.1, "pgd": 0.55, "fgsm": 0.7, "n": n,
         "tolerance": tolerance(0.7, n)},
        {**passed, "check": 3, "name": "PGD at eps 0.5", "eps": 0.5, "pgd": 0.05, "n": n, "threshold": 0.05},
        {**passed, "check": 4, "name": "gradient-free vs gradient attacks", "eps": 0.1, "gradient_attacks": 0.5,
         "with_gradient_free": 0.45, "broken_by_gradient_free_only": 1, "n": n, "tolerance": tolerance(0.5, n),
         "gradient_free_attack": square, "estimated_seconds": None},
        {**passed, "check": 4, "name": "gradient-free vs gradient attacks", "eps": 0.3, "gradient_attacks": 0.0,
         "with_gradient_free": 0.0, "broken_by_gradient_free_only": 0, "n": n, "tolerance": tolerance(0.0, n),
         "gradient_free_attack": square, "estimated_seconds": None},
        {"threat_model": "none", "check": 5, "name": "binarization test", "status": "skipped", "passed": None,
         "reason": NO_READOUT},
    ]


def test_checks_without_pgd_or_gradient_attacks_are_skipped_with_their_reason(monkeypatch):
    n = 10
    calls = _logged_fake(monkeypatch, lambda name, p: lambda i: False)
    report = evaluation.RobustnessReport(n_examples=n, seed=0, clean_accuracy=1.0, clean_correct=np.ones(n, bool))
    report.results.append(evaluation.AttackResult("none", "square", 0.1, {}, 1.0, 0.0, np.ones(n, bool)))
    sanity.run_sanity_checks(report, "none", None, None, _indexed(n), np.zeros(n, np.int64), np.ones(n, bool), 64, 0)
    skipped = {"threat_model": "none", "status": "skipped", "passed": None}
    assert _timed(report.sanity) == [
        {**skipped, "check": 1, "name": "PGD-2k vs PGD-k", "reason": "no pgd attack in this evaluation"},
        {**skipped, "check": 2, "name": "PGD vs FGSM", "reason": "no pgd attack in this evaluation"},
        {"threat_model": "none", "check": 3, "name": "PGD at eps 0.5", "status": "passed", "passed": True,
         "eps": 0.5, "pgd": 0.0, "n": n, "threshold": 0.05},
        {**skipped, "check": 4, "name": "gradient-free vs gradient attacks",
         "reason": "no gradient attack with an eps budget in this evaluation"},
        {**skipped, "check": 5, "name": "binarization test", "reason": NO_READOUT},
    ]
    assert [name for name, _, _ in calls] == ["pgd"]


def test_check_4_announces_a_long_run_and_takes_a_query_budget(monkeypatch, capsys):
    n = 20
    seen = []

    def fake(name, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, progress=False, progress_label=None,
             **params):
        seen.append((name, attacked_fn, progress, progress_label, params))
        correct = _column(n, 10)[:len(x)] & clean_correct
        return x, np.where(correct, y, (y + 1) % 10), correct, np.zeros(len(x))

    attacked = object()  # what check 4 times and attacks
    monkeypatch.setattr(sanity, "attack_and_score", fake)
    monkeypatch.setattr(sanity, "query_seconds", lambda model_fn, x, batch_size: 0.3 * len(x) * (model_fn is attacked))
    x, y = np.zeros((n, 28, 28, 1), np.float32), np.zeros(n, np.int64)

    def run(announce_seconds, **kwargs):
        monkeypatch.setattr(sanity, "ANNOUNCE_SECONDS", announce_seconds)
        report = _report_with_pgd(n, _column(n, 10))
        sanity.run_sanity_checks(report, "none", attacked, None, x, y, np.ones(n, bool), 64, 0, **kwargs)
        return next(c for c in report.sanity if c["check"] == 4), capsys.readouterr().out

    written = []
    check4, out = run(89.0, progress=True, n_queries=30, checkpoint=lambda r: written.append(len(r.sanity)))
    assert check4["gradient_free_attack"] == {"attack": "square", "n_queries": 30, "p_init": 0.8}
    square = [s for s in seen if s[0] == "square"]
    assert square == [("square", attacked, True, "[none] check 4: square", {"eps": 0.1, "n_queries": 30, "p_init": 0.8})]
    assert check4["estimated_seconds"] == 30 * 0.3 * 10  # 30 queries of the 10 examples left robust: 90 s
    assert "sanity check 4 at eps 0.1: square, 30 queries on 10 examples, up to 2 min" in out and "--check-queries" in out
    assert written == [1, 2, 3, 4]  # after every check that ran (check 5, skipped with the fakes, costs nothing)
    check4, out = run(90.0, progress=True, n_queries=30)  # not over the bar: nothing said
    assert check4["estimated_seconds"] == 90.0 and "sanity check 4" not in out
    check4, out = run(0.0, n_queries=30)  # without progress: no timing, no message, no bars
    assert check4["estimated_seconds"] is None and out == "" and seen[-1][2] is False
