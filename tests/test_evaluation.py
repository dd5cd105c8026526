import numpy as np
import pytest
import tensorflow as tf

from tfpurify import classifiers, evaluation
from tfpurify.errors import AttackConfigError, InputValidationError


def test_worst_case_is_mean_of_per_example_minimum():
    clean = np.array([1, 1, 1, 1, 0], bool)
    fgsm = np.array([1, 0, 1, 1, 1], bool)
    pgd = np.array([1, 1, 0, 1, 1], bool)
    # per-attack means are 0.8 and 0.8, but only examples 0 and 3 survive everything
    assert evaluation.worst_case_accuracy([clean, fgsm, pgd]) == pytest.approx(0.4)


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


def test_evaluate_records_everything_and_pgd_beats_fgsm(cnn, fmnist_test):
    x, y = fmnist_test
    specs = evaluation.make_attack_specs(["fgsm", "pgd"], [0.1], nb_iter=10)
    report = evaluation.evaluate(cnn, x[:128], y[:128], specs, sanity_n=64, classifier="cnn",
                                 dataset="fashion_mnist", cascade=False)
    accs = {r.attack: r.accuracy for r in report.results}
    assert accs["pgd"] <= accs["fgsm"] < report.clean_accuracy
    d = report.to_dict()
    assert d["n_examples"] == 128 and d["seed"] == 0
    pgd_row = next(r for r in d["rows"] if r["attack"] == "pgd")
    assert pgd_row["threat_model"] == "none" and pgd_row["eps"] == 0.1
    assert pgd_row["params"]["nb_iter"] == 10 and pgd_row["params"]["eps_iter"] == pytest.approx(0.025)
    pgd = next(r for r in report.results if r.attack == "pgd")
    assert pgd_row["plain_accuracy"] >= pgd_row["accuracy"]
    np.testing.assert_array_equal(pgd.correct, pgd.plain_correct & report.clean_correct)
    assert {c["check"] for c in d["sanity_checks"]} == {1, 2, 3, 4}
    assert all(c["status"] == "passed" for c in d["sanity_checks"]), d["sanity_checks"]
    assert d["warnings"] == []
    assert d["settings"]["seed"] == 0 and d["settings"]["sanity_checks"]["n"] == 64


def test_cascade_attacks_only_what_is_left_and_keeps_the_worst_case(cnn, fmnist_test):
    from tfpurify import reports

    x, y = fmnist_test
    specs = evaluation.make_attack_specs(["fgsm", "pgd"], [0.1], nb_iter=10)
    alone = evaluation.evaluate(cnn, x[:128], y[:128], specs, sanity_n=64, cascade=False)
    chain = evaluation.evaluate(cnn, x[:128], y[:128], specs, sanity_n=64)
    (fgsm_a, pgd_a), (fgsm_c, pgd_c) = alone.results, chain.results
    assert fgsm_c.accuracy == fgsm_a.accuracy and fgsm_c.after == ()
    assert pgd_c.after == ("fgsm",) and pgd_c.n_attacked == int(fgsm_c.correct.sum()) < 128
    assert not np.any(pgd_c.correct & ~fgsm_c.correct)  # robust under pgd *and* fgsm
    assert not np.any(pgd_c.plain_correct & ~fgsm_c.plain_correct)  # plain: the latest image per example
    assert pgd_c.grad_evals < pgd_a.grad_evals  # the examples FGSM broke cost nothing
    assert abs(chain.worst_case("none", 0.1) - alone.worst_case("none", 0.1)) <= 3 / 128
    # checks 1 and 2 compare PGD on its own, not the cascaded column
    check2 = {r["check"]: r for r in chain.sanity}[2]
    assert abs(check2["pgd"] - {r["check"]: r for r in alone.sanity}[2]["pgd"]) <= 3 / 64
    assert all(c["status"] == "passed" for c in chain.sanity), chain.sanity
    row = next(r for r in chain.to_dict()["rows"] if r["attack"] == "pgd")
    assert row["after"] == ["fgsm"] and row["n_attacked"] == pgd_c.n_attacked
    text = reports.to_markdown(chain)
    assert "| pgd (after fgsm) |" in text and "Cascade:" in text and "attacks cascaded" in text
    assert "Cascade:" not in reports.to_markdown(alone)


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
    assert {c["status"] for c in off.sanity} == {"skipped"} and len(off.sanity) == 4
    assert all("turned off" in c["reason"] for c in off.sanity)
    text = reports.to_markdown(off)
    assert "No warnings" not in text and "No sanity check ran" in text and "4 skipped" in text
    no_pgd = evaluation.evaluate(cnn, x[:16], y[:16], evaluation.make_attack_specs(["fgsm"], [0.1]), sanity_n=16)
    reasons = {c["check"]: c.get("reason") for c in no_pgd.sanity}
    assert reasons[1] == reasons[2] == "no pgd attack in this evaluation"
    assert reasons[3] is None and reasons[4] is None  # these ran
    assert "check 1, 2 skipped: no pgd attack" in reports.to_markdown(no_pgd)


def test_detection_metrics_on_hand_made_scores():
    clean_scores = np.array([0.1, 0.2, 0.3, 0.9, 0.4])
    clean_correct = np.array([1, 1, 1, 1, 0], bool)
    adv_scores = np.array([0.35, 0.8, 0.05, 0.95, 0.99])
    correct = np.array([0, 1, 0, 0, 0], bool)  # examples 0, 2, 3 are successful attacks; 4 was wrong clean
    m = evaluation.detection_metrics(clean_scores, clean_correct, adv_scores, correct, threshold=0.5)
    assert m["n_adversarial"] == 3 and m["n_clean"] == 4
    # positives {0.35, 0.05, 0.95} vs negatives {0.1, 0.2, 0.3, 0.9}: 3 + 0 + 4 of 12 pairs ranked right
    assert m["roc_auc"] == pytest.approx(7 / 12)
    assert m["tpr"] == pytest.approx(1 / 3)  # only 0.95 of the successful ones is above 0.5
    assert m["fpr"] == pytest.approx(1 / 5)  # 0.9 among all five clean inputs
    # flagged attacked inputs: 1, 3, 4; correct: 1 -> detected or correct on 1, 3, 4
    assert m["detected_or_correct"] == pytest.approx(3 / 5)
    # the system also needs the clean input accepted and right: example 3's clean input is rejected
    assert m["system_accuracy"] == pytest.approx(1 / 5)
    assert m["accuracy_on_accepted"] == pytest.approx(0.0)  # accepted: 0 and 2, both fooled
    none = evaluation.detection_metrics(clean_scores, clean_correct, adv_scores, clean_correct, threshold=0.5)
    assert none["n_adversarial"] == 0 and none["roc_auc"] is None and none["tpr"] is None


def test_non_differentiable_pipeline_is_a_clear_error(cnn, fmnist_test):
    x, y = fmnist_test
    with pytest.raises(AttackConfigError, match="BPDA"):
        evaluation.evaluate(lambda images: cnn(tf.round(images)), x[:8], y[:8], ["pgd"])


def test_transfer_threat_model_uses_the_surrogate(cnn, fmnist_test):
    x, y = fmnist_test
    surrogate = classifiers.build_classifier("mlp")
    surrogate.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    surrogate.fit(x, y, epochs=3, verbose=0)
    specs = evaluation.make_attack_specs(["pgd"], [0.2], nb_iter=10)
    report = evaluation.evaluate(cnn, x[:128], y[:128], specs, threat_model=["none", "transfer"],
                                 surrogate_fn=surrogate, sanity_checks=False)
    acc = {r.threat_model: r.accuracy for r in report.results}
    # Transferred examples hurt, but less than attacking the classifier itself.
    assert acc["none"] < acc["transfer"] < report.clean_accuracy
    # the surrogate's success says nothing about the scored model: no early exit under transfer
    params = {r.threat_model: r.params for r in report.results}
    assert params["none"]["early_exit"] is True and params["transfer"]["early_exit"] is False
    assert next(r for r in report.results if r.threat_model == "transfer").grad_evals == 10


def test_threat_model_errors(cnn, fmnist_test):
    x, y = fmnist_test
    with pytest.raises(AttackConfigError, match="unknown threat model"):
        evaluation.evaluate(cnn, x[:4], y[:4], ["fgsm"], threat_model="blackbox")
    with pytest.raises(AttackConfigError, match="surrogate"):
        evaluation.evaluate(cnn, x[:4], y[:4], ["fgsm"], threat_model="transfer")
    with pytest.raises(AttackConfigError, match="defense run"):
        evaluation.evaluate(cnn, x[:4], y[:4], ["fgsm"], threat_model="whitebox")
    with pytest.raises(InputValidationError, match="labels"):
        evaluation.evaluate(cnn, x[:4], y[:3], ["fgsm"])


def test_make_attack_specs_validates_early():
    with pytest.raises(AttackConfigError, match="eps"):
        evaluation.make_attack_specs(["pgd"], [1.5])
    specs = evaluation.make_attack_specs(["fgsm", "pgd", "cw_l2"], [0.1, 0.2], nb_iter=7)
    assert [(s.name, s.eps) for s in specs] == [
        ("fgsm", 0.1), ("fgsm", 0.2), ("pgd", 0.1), ("pgd", 0.2), ("cw_l2", None)]
    assert "nb_iter" not in specs[0].params and specs[2].params["nb_iter"] == 7
