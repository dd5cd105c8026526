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


def test_evaluate_records_everything_and_pgd_beats_fgsm(cnn, fmnist_test):
    x, y = fmnist_test
    specs = evaluation.make_attack_specs(["fgsm", "pgd"], [0.1], nb_iter=10)
    report = evaluation.evaluate(cnn, x[:128], y[:128], specs, sanity_n=64, classifier="cnn",
                                 dataset="fashion_mnist")
    accs = {r.attack: r.accuracy for r in report.results}
    assert accs["pgd"] <= accs["fgsm"] < report.clean_accuracy
    assert report.worst_case("none", 0.1) <= min(accs.values())
    d = report.to_dict()
    assert d["n_examples"] == 128 and d["seed"] == 0
    pgd_row = next(r for r in d["rows"] if r["attack"] == "pgd")
    assert pgd_row["threat_model"] == "none" and pgd_row["eps"] == 0.1
    assert pgd_row["params"]["nb_iter"] == 10 and pgd_row["params"]["eps_iter"] == pytest.approx(0.025)
    assert {c["check"] for c in d["sanity_checks"]} == {1, 2, 3, 4}
    assert all(c["passed"] for c in d["sanity_checks"]), d["sanity_checks"]
    assert d["warnings"] == []


def test_masked_gradients_trigger_sanity_warnings(cnn, fmnist_test):
    x, y = fmnist_test

    def masked(images):  # quantization with a zero gradient: a textbook case of gradient masking
        return cnn(tf.stop_gradient(tf.round(images * 8.0) / 8.0) + 0.0 * images)

    specs = evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=5)
    report = evaluation.evaluate(masked, x[:64], y[:64], specs, sanity_n=64)
    failed = {c["check"] for c in report.sanity if not c["passed"]}
    assert 3 in failed
    assert any("sanity check 3 failed" in w for w in report.warnings)


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
