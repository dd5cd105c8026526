import tensorflow as tf

from tfpurify import evaluation


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
