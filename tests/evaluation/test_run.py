import numpy as np
import pytest
import tensorflow as tf

from tfpurify import classifiers, evaluation
from tfpurify.errors import AttackConfigError, InputValidationError


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
