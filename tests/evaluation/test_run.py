import numpy as np
import pytest
import tensorflow as tf

from tests.toys import brightness_images, threshold_classifier
from tfpurify import attacks, classifiers, evaluation
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
    assert {c["check"] for c in d["sanity_checks"]} == {1, 2, 3, 4, 5}
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


# ---------------------------------------------------------------- fast tests on toy models (make mutation)

def _shift_attacks(monkeypatch, calls):
    """Toy attacks: `half` adds eps / 2 to every pixel (and has an early exit), `up` adds eps."""
    from tfpurify.attacks.registry import COMMON, AttackDef

    def shift(name, fraction):
        def fn(model_fn, x, y, p, loss_fn):
            calls.append((name, [int(round(float(v) * 10)) for v in x[:, 0, 0, 0]], p["eps"], p.get("early_exit")))
            return x + fraction * p["eps"]
        return fn

    monkeypatch.setitem(attacks.ATTACKS, "half", AttackDef(shift("half", 0.5), {**COMMON, "early_exit": True},
                                                           graph=False, cost=lambda p: 1.0))
    monkeypatch.setitem(attacks.ATTACKS, "up", AttackDef(shift("up", 1.0), dict(COMMON), graph=False,
                                                         cost=lambda p: 2.0))


@pytest.mark.parametrize("cascade", [True, False])
def test_evaluate_by_hand_on_toy_models(monkeypatch, cascade):
    """Every row of an evaluation of toy models under four threat models, recomputed by hand."""
    calls = []
    _shift_attacks(monkeypatch, calls)
    n, v = 8, np.arange(8) / 10.0
    x = brightness_images(n)
    y = np.zeros(n, np.int64)
    bare, defended, surrogate = threshold_classifier(0.63), threshold_classifier(0.47), threshold_classifier(0.55)
    attacked = lambda images: defended(images)  # noqa: E731
    attacked.settings = {"bpda": "toy"}
    thresholds = {"none": 0.63, "graybox": 0.47, "whitebox": 0.47, "transfer": 0.47}
    report = evaluation.evaluate(
        defended, x, y, evaluation.make_attack_specs(["half", "up"], [0.1, 0.2]),
        threat_model=["none", "graybox", "whitebox", "transfer"], surrogate_fn=surrogate,
        pipelines={"none": (bare, bare), "graybox": (bare, defended), "whitebox": (attacked, defended)},
        batch_size=8, seed=4, sanity_checks=False, defense="toy", classifier="linear", cascade=cascade)

    assert report.clean_accuracy == 5 / 8 and list(report.clean_correct) == list(v < 0.47)
    expected = {}  # (threat model, attack, eps) -> (row, call)
    for tm, t in thresholds.items():
        clean = v < t
        np.testing.assert_array_equal(report.clean_by_threat_model[tm], clean)
        early_exit = tm not in ("graybox", "transfer")  # no early exit where the attacked model is not the scored one
        for eps in (0.1, 0.2):
            half_plain = v + eps / 2 < t
            half = clean & half_plain
            expected[tm, "half", eps] = ((tm, "half", eps, half.mean(), half_plain.mean(), 1.0, (), n),
                                         ("half", list(range(n)), eps, early_exit))
            attacked_rows = half if cascade else np.ones(n, bool)  # cascade: only what `half` left robust
            up_plain = np.where(attacked_rows, v + eps < t, half_plain)
            up = (half if cascade else clean) & (v + eps < t)
            expected[tm, "up", eps] = ((tm, "up", eps, up.mean(), up_plain.mean(), 2.0 * attacked_rows.mean(),
                                        ("half",) if cascade else (), int(attacked_rows.sum())),
                                       ("up", [int(i) for i in np.flatnonzero(attacked_rows)], eps, None))
    order = [(tm, name, eps) for tm in thresholds for name in ("half", "up") for eps in (0.1, 0.2)]
    got = [(r.threat_model, r.attack, r.eps, r.accuracy, r.plain_accuracy, r.grad_evals, r.after, r.n_attacked)
           for r in report.results]
    assert got == [expected[key][0] for key in order]
    assert calls == [expected[key][1] for key in order]
    for tm, t in thresholds.items():  # the worst case per example over both attacks at an eps
        for eps in (0.1, 0.2):
            assert report.worst_case(tm, eps) == np.mean((v < t) & (v + eps / 2 < t) & (v + eps < t))
    assert report.settings == {
        "seed": 4, "batch_size": 8, "cascade": cascade, "score_draws": 10,
        "sanity_checks": {"enabled": False, "n": 8, "gradient_free_attack": {"attack": "square", "n_queries": 5000,
                                                                             "p_init": 0.8}, "seconds": {}},
        "threat_models": {"none": {}, "graybox": {}, "transfer": {},
                          "whitebox": {"bpda": "toy", "success_judged_on": "the scored pipeline: wrong"}}}
    assert report.threat_models == ("none", "graybox", "whitebox", "transfer") and report.n_examples == n
    assert report.defense == "toy" and report.classifier == "linear" and report.seed == 4


def _toy_data(n=8):
    return brightness_images(n), np.zeros(n, np.int64)


def test_evaluate_detector_rows_samples_and_skipped_attacks_on_toys(monkeypatch):
    from tests.toys import BrightnessDetector
    from tfpurify.attacks.registry import COMMON, AttackDef

    calls = []
    _shift_attacks(monkeypatch, calls)
    monkeypatch.setitem(attacks.ATTACKS, "onpur", AttackDef(lambda m, x, y, p, l: x, dict(COMMON), graph=False,
                                                            needs_purifier=True))
    x, y = _toy_data()
    bare, defended = threshold_classifier(0.63), threshold_classifier(0.47)
    detector = BrightnessDetector()
    detector.threshold.assign(0.35)  # flags a mean pixel above 0.35
    attacked = lambda images: defended(images)  # noqa: E731
    attacked.purifier = detector  # what a white-box target of a purifier carries
    specs = evaluation.make_attack_specs(["half", "onpur", "up"], [0.1])
    report = evaluation.evaluate(defended, x, y, specs, threat_model=["none", "graybox", "whitebox"],
                                 pipelines={"none": (bare, bare), "graybox": (bare, defended),
                                            "whitebox": (attacked, defended)},
                                 sanity_checks=False, detector=detector, n_samples=3)
    assert [(r.threat_model, r.attack) for r in report.results] == [
        ("none", "half"), ("none", "up"), ("graybox", "half"), ("graybox", "up"),
        ("whitebox", "half"), ("whitebox", "onpur"), ("whitebox", "up")]  # skipped where it cannot run, not more
    assert report.warnings == [
        "onpur skipped under none: it attacks the purifier itself, which only the whitebox threat model of a "
        "defense run differentiates",
        "onpur skipped under graybox: it attacks the purifier itself, which only the whitebox threat model of a "
        "defense run differentiates"]
    assert report.settings["detector"] == {"threshold": pytest.approx(0.35)}
    labels = [(d["threat_model"], d["attack"], d["eps"], d.get("after")) for d in report.detection]
    assert labels == [("graybox", "half", 0.1, None), ("graybox", "up", 0.1, ["half"]),
                      ("whitebox", "half", 0.1, None), ("whitebox", "onpur", 0.1, ["half"]),
                      ("whitebox", "up", 0.1, ["half", "onpur"])]
    assert sorted(report.detector_scores) == sorted(
        ["clean", "graybox/half 0.1", "graybox/up (after half) 0.1", "whitebox/half 0.1",
         "whitebox/onpur (after half) 0.1", "whitebox/up (after half, onpur) 0.1"])
    np.testing.assert_allclose(report.detector_scores["clean"], np.arange(8) / 10.0, atol=1e-6)
    np.testing.assert_allclose(report.detector_scores["graybox/half 0.1"], np.arange(8) / 10.0 + 0.05, atol=1e-6)
    half = report.detection[0]  # graybox half at 0.1: scored by the defended toy, flagged above 0.35
    assert (half["n_clean"], half["n_adversarial"], half["fpr"]) == (5, 0, 0.5)  # none broken; 0.4-0.7 flagged
    up = report.detection[1]  # `up` at 0.1 breaks example 4 (0.4 + 0.1 is above 0.47), which the detector flags
    assert (up["n_adversarial"], up["tpr"], up["detected_or_correct"]) == (1, 1.0, 1.0)
    first = report.results[0]
    assert first.x_adv_sample.shape == (3, 2, 2, 1) and list(first.pred_sample) == [0, 0, 0]
    np.testing.assert_allclose(first.x_adv_sample[:, 0, 0, 0], [0.05, 0.15, 0.25], atol=1e-6)
    assert list(report.y_sample) == [0, 0, 0] and report.x_sample.shape == (3, 2, 2, 1)
    assert list(report.clean_pred_sample) == [0, 0, 0]
    cascaded = report.results[1]  # `up` after `half`: the sample keeps `half`'s image where `half` broke it
    assert list(cascaded.pred_sample) == [0, 0, 0]
    uncalibrated = BrightnessDetector()
    with pytest.raises(InputValidationError, match="never calibrated"):
        evaluation.evaluate(defended, x, y, specs[:1], sanity_checks=False, detector=uncalibrated)


def test_evaluate_refuses_what_it_cannot_measure_on_toys(monkeypatch):
    _shift_attacks(monkeypatch, [])
    x, y = _toy_data()
    toy, specs = threshold_classifier(0.47), evaluation.make_attack_specs(["half"], [0.1])
    for bad, match in ((0, "batch_size"), (-4, "batch_size"), (2.5, "batch_size"), (True, "batch_size")):
        with pytest.raises(InputValidationError, match=match):
            evaluation.evaluate(toy, x, y, specs, batch_size=bad, sanity_checks=False)
    with pytest.raises(InputValidationError, match=r"labels must be integers of shape \[8\], got int64 \(7,\)"):
        evaluation.evaluate(toy, x, y[:7], specs, sanity_checks=False)
    with pytest.raises(InputValidationError, match="labels must be integers"):
        evaluation.evaluate(toy, x, y.astype(np.float32), specs, sanity_checks=False)
    with pytest.raises(InputValidationError, match="no examples"):
        evaluation.evaluate(toy, x[:0], y[:0], specs, sanity_checks=False)
    with pytest.raises(AttackConfigError, match="unknown threat model 'grey'"):
        evaluation.evaluate(toy, x, y, specs, threat_model="grey", sanity_checks=False)
    with pytest.raises(AttackConfigError, match="needs a surrogate classifier"):
        evaluation.evaluate(toy, x, y, specs, threat_model="transfer", sanity_checks=False)
    with pytest.raises(AttackConfigError, match="threat model 'graybox' needs a defense run"):
        evaluation.evaluate(toy, x, y, specs, threat_model="graybox", sanity_checks=False)
    with pytest.raises(AttackConfigError, match="needs the plain classifier"):
        evaluation.evaluate(toy, x, y, specs, pipelines={"none": None}, sanity_checks=False)
    with pytest.raises(AttackConfigError, match="unknown attack"):
        evaluation.evaluate(toy, x, y, ["nosuch"], sanity_checks=False)


def test_attack_specs_from_names_pairs_and_specs(monkeypatch):
    _shift_attacks(monkeypatch, [])
    x, y = _toy_data()
    report = evaluation.evaluate(threshold_classifier(0.47), x, y, ["half", ("up", {"eps": 0.2}), evaluation.AttackSpec("half", {
        "eps": 0.3})], sanity_checks=False, cascade=False)
    assert [(r.attack, r.eps) for r in report.results] == [("half", 0.1), ("up", 0.2), ("half", 0.3)]
    assert evaluation.AttackSpec("up").eps == 0.1 and evaluation.AttackSpec("up", {"eps": 0.3}).eps == 0.3
    specs = evaluation.make_attack_specs(["half", "cw_l2", "up"], [0.1, 0.2], nb_iter=7, early_exit=None,
                                         max_iterations=5)
    assert specs == [evaluation.AttackSpec("half", {"eps": 0.1}), evaluation.AttackSpec("half", {"eps": 0.2}),
                     evaluation.AttackSpec("cw_l2", {"max_iterations": 5}),  # unbounded: one spec, no eps
                     evaluation.AttackSpec("up", {"eps": 0.1}), evaluation.AttackSpec("up", {"eps": 0.2})]
    # parameters an attack does not take are left out
    assert evaluation.make_attack_specs(["pgd"], [0.1], nb_iter=7) == [evaluation.AttackSpec("pgd", {
        "nb_iter": 7, "eps": 0.1})]
    with pytest.raises(AttackConfigError, match="eps"):
        evaluation.make_attack_specs(["half"], [-0.1])  # checked before any attack runs


def test_evaluate_hands_the_checks_and_attacks_what_they_need_on_toys(monkeypatch):
    from tfpurify.attacks.registry import COMMON, AttackDef
    from tfpurify.evaluation import run as run_module

    _shift_attacks(monkeypatch, [])
    monkeypatch.setitem(attacks.ATTACKS, "nocost", AttackDef(lambda m, x, y, p, l: x + p["eps"], dict(COMMON),
                                                             graph=False))  # counts no evaluations
    checked, attacked_with, real = [], [], run_module.attack_and_score

    def attack_and_score(name, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, progress=False,
                         judge=None, **params):
        attacked_with.append((name, len(x), batch_size, seed, progress, judge))
        return real(name, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, progress, judge, **params)

    monkeypatch.setattr(run_module, "attack_and_score", attack_and_score)
    monkeypatch.setattr(run_module, "run_sanity_checks", lambda *args: checked.append(args))
    x, y = _toy_data()
    bare, defended = threshold_classifier(0.63), threshold_classifier(0.47)
    runs = {"defense": {"path": "runs/toy", "weights_sha256": "abc"}}
    report = evaluation.evaluate(defended, x, y, evaluation.make_attack_specs(["nocost", "up"], [0.1]),
                                 threat_model=["none", "graybox", "whitebox", "transfer"], surrogate_fn=bare,
                                 pipelines={"none": (bare, bare), "graybox": (bare, defended),
                                            "whitebox": (defended, defended)},
                                 batch_size=3, seed=9, sanity_n=5, dataset="fashion_mnist", progress=True, runs=runs)
    assert report.dataset == "fashion_mnist" and report.settings["runs"] == runs
    assert report.settings["sanity_checks"]["n"] == 5 and report.settings["sanity_checks"]["enabled"] is True
    # the checks run where the attacker differentiates the scored pipeline, on the first sanity_n examples
    assert [(args[1], args[2] is pipeline[0], args[3] is pipeline[1], len(args[4]), len(args[5]), list(args[6]),
             args[7], args[8]) for args, pipeline in zip(checked, [(bare, bare), (defended, defended)])] == [
        ("none", True, True, 5, 5, list(np.arange(5) / 10 < 0.63), 3, 9),
        ("whitebox", True, True, 5, 5, list(np.arange(5) / 10 < 0.47), 3, 9)]
    assert all(args[0] is report for args in checked)
    np.testing.assert_array_equal(checked[0][4], x[:5])
    np.testing.assert_array_equal(checked[0][5], y[:5])
    skipped = [(c["threat_model"], c["check"], c["reason"]) for c in report.sanity]
    reason = "the checks detect gradient masking, and under {} the attacker does not differentiate the pipeline it " \
             "is scored on"
    assert skipped == [(tm, check, reason.format(tm)) for tm in ("graybox", "transfer") for check in (1, 2, 3, 4, 5)]
    # every attack gets the batch size, the seed and the progress bar; `up` runs on what `nocost` left robust
    assert [a[0] for a in attacked_with] == ["nocost", "up"] * 4
    assert all(a[2:] == (3, 9, True, None) for a in attacked_with)  # no judge: each attacks what is scored
    rows = {(r.threat_model, r.attack): r for r in report.results}
    assert rows["none", "nocost"].grad_evals is None and rows["none", "up"].grad_evals == pytest.approx(
        2.0 * rows["none", "up"].n_attacked / 8)
    assert all(0.0 <= r.seconds < 60.0 for r in report.results)
    assert rows["whitebox", "nocost"].params == {"norm": "inf", "clip_min": 0.0, "clip_max": 1.0, "targeted": False}
    off = evaluation.evaluate(defended, x, y, evaluation.make_attack_specs(["up", "nocost"], [0.1]),
                              sanity_checks=False, batch_size=1)
    assert [(c["threat_model"], c["check"], c["reason"]) for c in off.sanity] == [
        ("none", check, "sanity checks were turned off (--no-sanity-checks)") for check in (1, 2, 3, 4, 5)]
    assert off.results[1].after == ("up",) and off.results[1].grad_evals is None  # cascaded, and counts nothing
    del attacked_with[:]
    with pytest.raises(AttackConfigError, match="eps must be"):  # every spec is checked before any attack runs
        evaluation.evaluate(defended, x, y, [("up", {"eps": 0.1}), ("half", {"eps": -1.0})], sanity_checks=False)
    assert attacked_with == []


def test_evaluate_defaults_on_toys(monkeypatch):
    from tfpurify.evaluation import run as run_module

    _shift_attacks(monkeypatch, [])
    checked = []
    monkeypatch.setattr(run_module, "run_sanity_checks", lambda *args: checked.append(args))
    v = np.arange(12, dtype=np.float32) / 12
    x, y = np.repeat(v[:, None, None, None], 2, axis=1).repeat(2, axis=2), np.zeros(12, np.int64)
    report = evaluation.evaluate(threshold_classifier(0.47), x, y, evaluation.make_attack_specs(["half", "up"], [0.1]))
    assert report.settings["sanity_checks"].pop("seconds").keys() == {"none"}  # the checks' time, recorded
    assert report.settings == {"seed": 0, "batch_size": 256, "cascade": True, "score_draws": 10,
                               "sanity_checks": {"enabled": True, "n": 12, "gradient_free_attack": {
                                   "attack": "square", "n_queries": 5000, "p_init": 0.8}},
                               "threat_models": {"none": {}}}
    assert report.finished
    assert (report.defense, report.classifier, report.dataset, report.threat_models) == ("none", "", "", ("none",))
    assert len(report.x_sample) == 10 and len(checked) == 1 and len(checked[0][4]) == 12
    assert (checked[0][7], checked[0][8]) == (256, 0)
    assert report.results[1].after == ("half",)
    v = np.arange(201, dtype=np.float32) / 201  # more examples than the checks take by default (200)
    x, y = np.repeat(v[:, None, None, None], 2, axis=1).repeat(2, axis=2), np.zeros(201, np.int64)
    report = evaluation.evaluate(threshold_classifier(0.47), x, y, evaluation.make_attack_specs(["up"], [0.1]))
    assert report.settings["sanity_checks"]["n"] == 200 and len(checked[1][4]) == 200


def test_scored_judge_confirms_on_the_scored_pipeline_over_draws_and_the_detector():
    import tensorflow as tf

    from tests.toys import BrightnessDetector, NoisyPurifier

    x = tf.constant(brightness_images(8))
    y = tf.zeros(8, tf.int64)
    scored = threshold_classifier(0.45)  # wrong from image 5 on (mean pixel 0.5)
    judge, described = evaluation.scored_judge(threshold_classifier(0.3), scored)
    np.testing.assert_array_equal(judge(x, y), np.arange(8) >= 5)
    assert described == "the scored pipeline: wrong"

    class Scored:  # a purifier -> classifier pipeline, stochastic or not, with or without a detector
        def __init__(self, purifier, detector=None):
            self.purifier, self.detector, self.calls = purifier, detector, 0

        def __call__(self, images):
            self.calls += 1
            return scored(self.purifier.purify(images))

    noisy = Scored(NoisyPurifier())
    judge, described = evaluation.scored_judge(threshold_classifier(0.3), noisy)
    assert described == f"the scored pipeline: wrong in {evaluation.JUDGE_DRAWS} of {evaluation.JUDGE_DRAWS} draws"
    far = tf.constant(np.repeat(np.array([0.0, 1.0], np.float32)[:, None, None, None], 2, 1).repeat(2, 2))
    np.testing.assert_array_equal(judge(far, tf.zeros(2, tf.int64)), [False, True])  # noise 0.2 cannot flip these
    assert noisy.calls == evaluation.JUDGE_DRAWS
    noisy.calls = 0
    tf.random.set_seed(0)
    near = tf.fill([400, 2, 2, 1], 0.5)  # 0.05 above the threshold: each draw wrong with probability ~ 0.69
    got = judge(near, tf.zeros(400, tf.int64)).numpy().mean()
    assert 0.2 < got < 0.45, got  # wrong in all 3 draws: ~ 0.69 ** 3 = 0.33, not ~ 0.69 (one draw)

    class Aware:  # a detector-aware target: the judge then also asks the scored pipeline's detector
        def __call__(self, images):
            return tf.zeros([tf.shape(images)[0], 3])

        def logits(self, out):
            return out[:, :2]

    detector = BrightnessDetector()
    detector.threshold.assign(0.65)  # flags images 7 (mean 0.7)
    flagging = Scored(BrightnessDetector(), detector)
    judge, described = evaluation.scored_judge(Aware(), flagging)
    np.testing.assert_array_equal(judge(x, y), (np.arange(8) >= 5) & (np.arange(8) < 7))
    assert described == "the scored pipeline: wrong and not flagged"
    judge, described = evaluation.scored_judge(threshold_classifier(0.3), flagging)  # not aware: the detector aside
    np.testing.assert_array_equal(judge(x, y), np.arange(8) >= 5)


def test_a_stochastic_pipeline_is_scored_over_draws_by_hand():
    from tfpurify.defenses.base import DefendedClassifier, Purifier

    class Shifting(Purifier):  # call k shifts every pixel by OFFSETS[k % 5]: draws known in advance
        stochastic = True
        OFFSETS = (0.0, 0.0, 0.2, 0.0, -0.2)

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.calls = tf.Variable(0)

        def purify(self, x, training=False):
            k = self.calls.assign_add(1) - 1
            return x + tf.gather(tf.constant(self.OFFSETS), k % 5)

    x = brightness_images(8)  # mean pixels 0.0 ... 0.7
    y = (np.arange(8) >= 4).astype(np.int64)  # right clean at threshold 0.35
    classifier = threshold_classifier(0.35)
    for draws, keys in ((4, True), (1, False)):
        defended = DefendedClassifier(classifier, purifier=Shifting())
        pipelines = {"graybox": (classifier, defended)}
        report = evaluation.evaluate(defended, x, y, [("fgsm", {"eps": 0.0})], threat_model="graybox",
                                     pipelines=pipelines, sanity_checks=False, score_draws=draws)
        # calls: 0 clean, 1 the single draw, 2-4 fresh: +0.2 flips images 2 and 3 (means 0.2, 0.3), -0.2 images 4, 5
        row = next(r for r in report.to_dict()["rows"] if r["attack"] == "fgsm")
        worst = next(r for r in report.to_dict()["rows"] if r["attack"] == "worst_case")
        assert row["accuracy"] == 1.0 and worst["accuracy"] == 1.0
        if keys:
            assert int(defended.purifier.calls.numpy()) == 5
            result = report.results[0]
            np.testing.assert_array_equal(result.all_draws_correct, [1, 1, 0, 0, 0, 0, 1, 1])
            np.testing.assert_array_equal(result.majority_correct, np.ones(8))
            for r in (row, worst):
                assert (r["score_draws"], r["accuracy_all_draws"], r["accuracy_majority"]) == (4, 0.5, 1.0)
            assert report.settings["threat_models"]["graybox"]["scored_over_draws"] == 4
            assert "all 4 draws 50.0 %, majority 100.0 %" in __import__("tfpurify.reports").reports.to_markdown(report)
        else:
            assert "score_draws" not in row and "score_draws" not in worst
    with pytest.raises(InputValidationError, match="score_draws"):
        evaluation.evaluate(classifier, x, y, ["fgsm"], score_draws=0)
    # hits: the first draw's verdict plus fresh draws, each row counted
    defended = DefendedClassifier(classifier, purifier=Shifting())
    defended.purifier.calls.assign(2)
    hits = evaluation.draw_hits(defended, x, y, np.zeros(8, bool), 4)
    np.testing.assert_array_equal(hits, [3, 3, 2, 2, 2, 2, 3, 3])


def test_attacks_run_with_every_white_box_gradient_and_all_join_the_worst_case():
    x = brightness_images(8)  # mean pixels 0.0 ... 0.7
    y = np.zeros(8, np.int64)
    scored = threshold_classifier(0.55)  # right on images 0-5

    def blind(images):  # a gradient of zero: FGSM does not move
        return tf.zeros([tf.shape(images)[0], 2]) + 0.0 * tf.reduce_sum(images)

    strong = threshold_classifier(0.55)  # FGSM adds eps: image 5 (0.5) crosses
    blind.variant, blind.settings = "surrogate", {"bpda": "surrogate"}
    strong.variant, strong.settings = "exact", {"bpda": "exact"}
    report = evaluation.evaluate(scored, x, y, [("fgsm", {"eps": 0.1})], threat_model="whitebox",
                                 pipelines={"whitebox": ([blind, strong], scored)}, sanity_checks=False)
    rows = [r for r in report.to_dict()["rows"] if r["attack"] == "fgsm"]
    assert [r["params"]["gradient"] for r in rows] == ["surrogate", "exact"]
    assert [r["accuracy"] for r in rows] == [6 / 8, 5 / 8]
    assert "after" not in rows[0] and rows[1]["after"] == ["fgsm [surrogate]"] and rows[1]["n_attacked"] == 6
    assert report.settings["threat_models"]["whitebox"]["variants"] == {"surrogate": {"bpda": "surrogate"},
                                                                        "exact": {"bpda": "exact"}}
    assert report.worst_case("whitebox", 0.1) == 5 / 8
    assert report.worst_case_attacks("whitebox", 0.1) == ["fgsm", "fgsm"]
    square = evaluation.evaluate(scored, x, y, [("square", {"eps": 0.1, "n_queries": 5})], threat_model="whitebox",
                                 pipelines={"whitebox": ([blind, strong], scored)}, sanity_checks=False)
    assert len(square.results) == 1 and "gradient" in square.results[0].params  # gradient-free: run once
    alone = evaluation.evaluate(scored, x, y, [("fgsm", {"eps": 0.1})], threat_model="whitebox", cascade=False,
                                pipelines={"whitebox": ([blind, strong], scored)}, sanity_checks=False)
    assert [r.accuracy for r in alone.results] == [6 / 8, 5 / 8] and alone.worst_case("whitebox", 0.1) == 5 / 8


class _Stop(Exception):
    pass


def _stopped_at(k, evaluate, *args, **kwargs):
    """The report kept at the k-th checkpoint of `evaluate(*args, **kwargs)`, stopped there by _Stop."""
    from tfpurify.evaluation.report import load_state, save_state

    saved = []

    def checkpoint(report):
        saved.append(save_state(report))
        if len(saved) == k:
            raise _Stop()

    with pytest.raises(_Stop):
        evaluate(*args, checkpoint=checkpoint, **kwargs)
    return load_state(saved[-1])[0]


def test_an_interrupted_evaluation_resumes_with_the_attack_after_the_last_it_finished(monkeypatch):
    """Killed after its k-th checkpoint (each attack, then each sanity check), an evaluation resumed from the
    report it kept (`save_state`) runs only what was left, continues each cascade from where it stood, and ends with the
    uninterrupted evaluation's numbers; the sanity checks of a threat model that had not finished them run again."""
    calls = []
    _shift_attacks(monkeypatch, calls)
    x, y = brightness_images(8), np.zeros(8, np.int64)
    bare, defended = threshold_classifier(0.63), threshold_classifier(0.47)
    kwargs = dict(attacks=evaluation.make_attack_specs(["half", "up"], [0.1, 0.2]), threat_model=["none", "graybox"],
                  pipelines={"none": (bare, bare), "graybox": (bare, defended)}, batch_size=8, seed=4,
                  sanity_checks=False)
    whole = evaluation.evaluate(defended, x, y, **kwargs)
    order, steps = list(calls), len(calls)  # 8 attack runs: 2 threat models x (half, up) x 2 eps
    assert steps == 8
    summary = lambda r: ([(q.threat_model, q.attack, q.eps, q.accuracy, q.after, q.n_attacked) for q in r.results],  # noqa: E731
                         {tm: [r.worst_case(tm, e) for e in (0.1, 0.2)] for tm in r.threat_models},
                         sorted((c["threat_model"], c["check"], c["status"]) for c in r.sanity), r.warnings)
    for k in range(1, steps):
        calls.clear()
        partial = _stopped_at(k, evaluation.evaluate, defended, x, y, **kwargs)
        assert not partial.finished and len(partial.results) == k
        calls.clear()
        resumed = evaluation.evaluate(defended, x, y, resume=partial, **kwargs)
        assert calls == order[k:], k  # the finished attacks are not run again, the cascade goes on from its images
        assert resumed.finished and summary(resumed) == summary(whole), k
    assert evaluation.evaluate(defended, x, y, resume=whole, **kwargs) is whole  # finished: nothing left to do
    with pytest.raises(InputValidationError, match="resume: the report covers 8 examples"):
        evaluation.evaluate(defended, x[:4], y[:4], resume=partial, **kwargs)


def test_resumed_sanity_checks_run_again_when_they_had_not_all_finished(cnn, fmnist_test):
    from tfpurify.evaluation.report import load_state, save_state

    x, y = fmnist_test
    specs = evaluation.make_attack_specs(["fgsm", "pgd"], [0.1], nb_iter=5)
    saved = []

    def checkpoint(report):
        saved.append(save_state(report))
        if any(c["check"] == 3 for c in report.sanity):
            raise _Stop()  # killed after check 3 (checks 1-3 recorded, 4 and 5 not)

    with pytest.raises(_Stop):
        evaluation.evaluate(cnn, x[:32], y[:32], specs, sanity_n=16, sanity_queries=50, checkpoint=checkpoint)
    partial = load_state(saved[-1])[0]
    assert {c["check"] for c in partial.sanity} == {1, 2, 3} and len(partial.results) == 2
    resumed = evaluation.evaluate(cnn, x[:32], y[:32], specs, sanity_n=16, sanity_queries=50, resume=partial)
    assert sorted(c["check"] for c in resumed.sanity) == [1, 2, 3, 4, 5]  # once each: the partial ones forgotten
    assert len(resumed.results) == 2 and len({c[2] for c in resumed.check_columns}) == len(resumed.check_columns)


def test_a_killed_evaluation_resumes_inside_an_attack_with_its_next_chunk(monkeypatch):
    """With `chunk_seconds`, an attack runs in chunks (CHUNK_START images, then sized by time: here CHUNK_MIN),
    the report kept after each; killed after any checkpoint, the resumed evaluation attacks only the images
    not done yet and ends with the uninterrupted evaluation's numbers."""
    calls = []
    _shift_attacks(monkeypatch, calls)
    x, y = brightness_images(8), np.zeros(8, np.int64)
    defended = threshold_classifier(0.47)  # right on images 0-4; `up` at 0.05 leaves 0-4 robust
    kwargs = dict(attacks=evaluation.make_attack_specs(["up", "half"], [0.05]), threat_model="none", batch_size=8,
                  seed=4, sanity_checks=False)
    whole = evaluation.evaluate(defended, x, y, **kwargs)
    assert [c[1] for c in calls] == [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4]]  # each attack at once
    calls.clear()
    assert evaluation.evaluate(defended, x, y, chunk_seconds=1e-9, **kwargs).results[0].accuracy == 5 / 8
    assert len(calls) == 2  # no checkpoint to keep a chunk with: each attack at once
    calls.clear()
    kept = []
    chunked = evaluation.evaluate(defended, x, y, chunk_seconds=1e-9, checkpoint=lambda r: kept.append(1), **kwargs)
    order = list(calls)
    assert [c[1] for c in order] == [[0, 1, 2, 3], [4, 5], [6, 7], [0, 1, 2, 3], [4]]
    assert len(kept) == 5 and chunked.settings["chunk_seconds"] == 1e-9
    summary = lambda r: [(q.attack, q.accuracy, q.after, q.n_attacked, q.grad_evals, q.correct.tolist(),  # noqa: E731
                          q.plain_correct.tolist()) for q in r.results]
    assert summary(chunked) == summary(whole)
    for k in range(1, len(order)):
        calls.clear()
        partial = _stopped_at(k, evaluation.evaluate, defended, x, y, chunk_seconds=1e-9, **kwargs)
        calls.clear()
        resumed = evaluation.evaluate(defended, x, y, chunk_seconds=1e-9, resume=partial,
                                      checkpoint=lambda r: None, **kwargs)
        assert calls == order[k:], k  # no image attacked twice
        assert summary(resumed) == summary(whole), k
    with pytest.raises(InputValidationError, match="chunk_seconds"):
        evaluation.evaluate(defended, x, y, chunk_seconds=0, **kwargs)


def test_killed_sanity_checks_resume_inside_their_attack_and_keep_their_finished_ones(monkeypatch):
    """The sanity checks run again from their start after a kill, but take the attacks they had finished from the
    report and resume the one they were in with its next chunk: the same verdicts, no image attacked twice."""
    from tfpurify.evaluation import sanity

    attacked = []
    real = sanity.attack_and_score

    def spy(name, attacked_fn, scored_fn, x, *args, **params):
        attacked.append((name, len(x), params.get("eps"), params.get("nb_iter")))
        return real(name, attacked_fn, scored_fn, x, *args, **params)

    monkeypatch.setattr(sanity, "attack_and_score", spy)
    x, y = brightness_images(8), np.zeros(8, np.int64)
    model = threshold_classifier(0.75)
    kwargs = dict(attacks=evaluation.make_attack_specs(["pgd"], [0.2], nb_iter=5), batch_size=8, seed=1,
                  sanity_queries=20, chunk_seconds=1e-9)
    whole = evaluation.evaluate(model, x, y, checkpoint=lambda r: None, **kwargs)
    order = list(attacked)
    assert ("pgd", 4, 0.2, 10) in order and ("pgd", 4, 0.5, 40) in order  # checks 1 and 3, in chunks
    verdicts = lambda r: [(c["check"], c["status"], c.get("pgd"), c.get("pgd_10")) for c in r.sanity]  # noqa: E731
    checkpoints = []
    evaluation.evaluate(model, x, y, checkpoint=lambda r: checkpoints.append(len(r.sanity)), **kwargs)
    first = checkpoints.index(0, checkpoints.index(0) + 3)  # the cascade's PGD: two chunks and its end
    assert checkpoints[first:first + 3] == [0, 0, 1] and checkpoints[first + 5] == 2
    # killed inside check 1's PGD-10, after check 1, inside check 2's FGSM, after check 2
    for k in (first + 1, first + 3, first + 5, first + 6):
        attacked.clear()
        partial = _stopped_at(k, evaluation.evaluate, model, x, y, **kwargs)
        done = len(attacked)
        attacked.clear()
        resumed = evaluation.evaluate(model, x, y, resume=partial, checkpoint=lambda r: None, **kwargs)
        assert attacked == order[done:], k
        assert verdicts(resumed) == verdicts(whole), k


def test_autoattack_with_a_second_gradient_leaves_out_the_square_the_first_ran():
    x = brightness_images(8)
    y = np.zeros(8, np.int64)

    def ten_classes(images):  # the threshold toy's two classes, and eight that never win (APGD-T needs 4)
        two = threshold_classifier(0.55)(images)
        return tf.concat([two, tf.fill([tf.shape(images)[0], 8], -10.0)], axis=1)

    scored, strong = ten_classes, lambda images: ten_classes(images)

    def blind(images):
        return tf.zeros([tf.shape(images)[0], 10]) + 0.0 * tf.reduce_sum(images)

    blind.variant, blind.settings = "surrogate", {}
    strong.variant, strong.settings = "exact", {}
    specs = [("autoattack", {"eps": 0.02, "nb_iter": 3, "n_queries": 5, "n_target_classes": 1})]
    report = evaluation.evaluate(scored, x, y, specs, threat_model="whitebox",
                                 pipelines={"whitebox": ([blind, strong], scored)}, sanity_checks=False)
    assert [r.params["version"] for r in report.results] == ["standard", "apgd-ce,apgd-t,fab-t"]
    alone = evaluation.evaluate(scored, x, y, specs, threat_model="whitebox", cascade=False,
                                pipelines={"whitebox": ([blind, strong], scored)}, sanity_checks=False)
    assert [r.params["version"] for r in alone.results] == ["standard", "standard"]  # each its own number
    rand = evaluation.evaluate(scored, x, y, [("autoattack", {**specs[0][1], "version": "rand", "eot_iter": 1})],
                               threat_model="whitebox", pipelines={"whitebox": ([blind, strong], scored)},
                               sanity_checks=False)
    assert [r.params["version"] for r in rand.results] == ["rand", "rand"]  # no gradient-free stage to leave out
    square_only = evaluation.evaluate(scored, x, y, [("autoattack", {**specs[0][1], "version": "square"})],
                                      threat_model="whitebox", pipelines={"whitebox": ([blind, strong], scored)},
                                      sanity_checks=False)
    assert [r.params["version"] for r in square_only.results] == ["square"]  # nothing left for the second
