"""Robustness evaluation: clean accuracy, accuracy per attack and threat model, worst case.

Rules: every number names its threat model; an example counts as robust under an attack only if
it is classified correctly both clean and under that attack; the worst case is the mean over
examples of the per-example minimum over every attack of a threat model at one eps (including
the attacks the sanity checks ran); sanity checks 1-4 run with every gradient (none, white-box)
evaluation, failures become warnings in the report, never hidden, and a check that does not run
is recorded as skipped with its reason. Every setting that shaped a number (seed, attack
parameters, BPDA mode, EOT samples, detector weight and threshold, checks) is in the report.
"""

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf

from tfpurify import attacks as attacks_lib
from tfpurify.classifiers import predict_logits
from tfpurify.data import validate_images
from tfpurify.errors import AttackConfigError, InputValidationError

__all__ = [
    "THREAT_MODELS",
    "AttackSpec",
    "AttackResult",
    "RobustnessReport",
    "make_attack_specs",
    "evaluate",
    "worst_case_accuracy",
    "detection_metrics",
    "roc_auc",
    "adversarial_scores",
]

THREAT_MODELS = ("none", "graybox", "whitebox", "whitebox_no_bpda", "transfer")
# Threat models in which the attacker differentiates the very pipeline it is scored on; the
# gradient-masking sanity checks apply to these.
_GRADIENT_THREAT_MODELS = ("none", "whitebox", "whitebox_no_bpda")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack with its parameters (cleverhans names), e.g. AttackSpec("pgd", {"eps": 0.1})."""

    name: str
    params: dict = dataclasses.field(default_factory=dict)

    @property
    def eps(self):
        return self.params.get("eps", attacks_lib.ATTACKS[self.name].defaults.get("eps"))


@dataclasses.dataclass
class AttackResult:
    threat_model: str
    attack: str
    eps: float
    params: dict
    accuracy: float
    seconds: float
    correct: np.ndarray = dataclasses.field(repr=False, default=None)
    x_adv_sample: np.ndarray = dataclasses.field(repr=False, default=None)
    pred_sample: np.ndarray = dataclasses.field(repr=False, default=None)
    grad_evals: float = None  # model evaluations per example (gradients, or queries); None: not counted
    # Cascade: the attacks that ran before this one at (threat_model, eps); this attack ran only on
    # the `n_attacked` examples they left robust, and `accuracy` is robust under all of them.
    after: tuple = ()
    n_attacked: int = None
    # The papers' metric: classified correctly under the attack, whatever happened clean.
    plain_correct: np.ndarray = dataclasses.field(repr=False, default=None)

    @property
    def plain_accuracy(self):
        return None if self.plain_correct is None else float(np.mean(self.plain_correct))

    def to_dict(self):
        row = {"threat_model": self.threat_model, "attack": self.attack, "eps": self.eps,
               "params": _jsonable(self.params), "accuracy": self.accuracy, "plain_accuracy": self.plain_accuracy,
               "grad_evals_per_example": None if self.grad_evals is None else round(self.grad_evals, 2),
               "seconds": round(self.seconds, 3)}
        if self.after:
            row.update(after=list(self.after), n_attacked=self.n_attacked)
        return row


@dataclasses.dataclass
class RobustnessReport:
    """Everything one evaluation measured; `reports.py` writes it as JSON, Markdown and PNG."""

    n_examples: int
    seed: int
    clean_accuracy: float
    clean_correct: np.ndarray = dataclasses.field(repr=False, default=None)
    results: list = dataclasses.field(default_factory=list)
    detection: list = dataclasses.field(default_factory=list)  # filled by detector defenses
    # The detector's scores: {"clean": [N], "<threat model>/<attack> <eps>": [N]} (the violin plot)
    detector_scores: dict = dataclasses.field(repr=False, default_factory=dict)
    warnings: list = dataclasses.field(default_factory=list)
    sanity: list = dataclasses.field(default_factory=list)
    defense: str = "none"
    classifier: str = ""
    dataset: str = ""
    threat_models: tuple = ("none",)
    clean_by_threat_model: dict = dataclasses.field(default_factory=dict)  # tm -> [N] bool
    x_sample: np.ndarray = dataclasses.field(repr=False, default=None)
    y_sample: np.ndarray = dataclasses.field(repr=False, default=None)
    clean_pred_sample: np.ndarray = dataclasses.field(repr=False, default=None)
    settings: dict = dataclasses.field(default_factory=dict)  # everything that shaped the numbers
    # Attacks run by the sanity checks on the first examples, folded into the worst case:
    # [(threat_model, eps, name, [N] bool correct, True outside the checked subset)].
    check_columns: list = dataclasses.field(default_factory=list)
    # Common corruptions (`tfpurify.corruptions.evaluate_corruptions`): rows in the results schema,
    # and one image under each corruption at severities 0-5 for the grid picture.
    corruptions: list = dataclasses.field(default_factory=list)
    corruption_grid: dict = dataclasses.field(repr=False, default_factory=dict)

    def worst_case(self, threat_model, eps):
        """Fraction of examples correct clean and under every attack of (threat_model, eps).

        The attacks the sanity checks ran at this eps (PGD-2k, the gradient-free attack) count
        too: a report never prints a worst case that its own checks beat.
        """
        columns = [r.correct for r in self.results if r.threat_model == threat_model and r.eps == eps]
        columns += [c for tm, e, _, c in self.check_columns if tm == threat_model and e == eps]
        clean = self.clean_by_threat_model.get(threat_model, self.clean_correct)
        return worst_case_accuracy([clean, *columns])

    def plain_worst_case(self, threat_model, eps):
        """The papers' "Min" per example: correct under every attack of (threat_model, eps), clean aside.

        Over the report's attack rows only (the sanity checks score robust accuracy alone).
        """
        columns = [r.plain_correct for r in self.results
                   if r.threat_model == threat_model and r.eps == eps and r.plain_correct is not None]
        return worst_case_accuracy(columns) if columns else None

    def worst_case_attacks(self, threat_model, eps):
        """Names of the attacks behind `worst_case(threat_model, eps)`."""
        names = [r.attack for r in self.results if r.threat_model == threat_model and r.eps == eps]
        return names + [f"{name} (sanity check)" for tm, e, name, _ in self.check_columns
                        if tm == threat_model and e == eps]

    def worst_cases(self):
        """[(threat_model, eps, accuracy)] for every (threat model, eps) with attacks."""
        keys = []
        for r in self.results:
            if (r.threat_model, r.eps) not in keys:
                keys.append((r.threat_model, r.eps))
        return [(tm, eps, self.worst_case(tm, eps)) for tm, eps in keys]

    def rows(self):
        """Rows in the benchmarks/results schema (clean row, attack rows, worst-case rows)."""
        def base(tm):  # in a defense's report, threat model "none" is the bare classifier
            return {"defense": "none" if tm == "none" else self.defense, "classifier": self.classifier}

        rows = [{**base("clean"), "threat_model": "clean", "attack": "none", "eps": 0, "params": {},
                 "accuracy": self.clean_accuracy, "plain_accuracy": self.clean_accuracy}]
        if self.defense != "none" and "none" in self.clean_by_threat_model:
            bare = float(np.mean(self.clean_by_threat_model["none"]))
            rows.append({**base("none"), "threat_model": "clean", "attack": "none", "eps": 0, "params": {},
                         "accuracy": bare, "plain_accuracy": bare})
        rows += [{**base(r.threat_model), **r.to_dict()} for r in self.results]
        rows += [{**base(tm), "threat_model": tm, "attack": "worst_case", "eps": eps,
                  "params": {"attacks": self.worst_case_attacks(tm, eps)}, "accuracy": acc,
                  "plain_accuracy": self.plain_worst_case(tm, eps)}
                 for tm, eps, acc in self.worst_cases()]
        return rows + [dict(r) for r in self.corruptions]

    def to_dict(self):
        return {
            "defense": self.defense, "classifier": self.classifier, "dataset": self.dataset,
            "n_examples": self.n_examples, "seed": self.seed, "threat_models": list(self.threat_models),
            "clean_accuracy": self.clean_accuracy,
            "settings": _jsonable(self.settings),
            "rows": self.rows(), "detection": _jsonable(self.detection),
            "sanity_checks": _jsonable(self.sanity), "warnings": list(self.warnings),
        }


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return "inf" if math.isinf(v) else v
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def roc_auc(clean_scores, adversarial_scores):
    """ROC-AUC of telling adversarial (positive) from clean (negative) inputs by score."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(adversarial_scores))]
    return float(roc_auc_score(labels, np.r_[clean_scores, adversarial_scores]))


def adversarial_scores(detector, x, batch_size=256):
    """A detector's adversarial scores over `x`, computed in batches, as a numpy array [N]."""
    return np.concatenate([np.asarray(detector.adversarial_score(tf.constant(x[i:i + batch_size])))
                           for i in range(0, len(x), batch_size)])


def worst_case_accuracy(correct_columns):
    """Mean over examples of the per-example minimum over columns of booleans.

    Args:
      correct_columns: sequence of [N] boolean arrays (clean and one per attack).

    Returns:
      float: the fraction of examples correct in every column (not the minimum of the means).
    """
    stacked = np.stack([np.asarray(c, dtype=bool) for c in correct_columns])
    return float(np.mean(np.all(stacked, axis=0)))


def make_attack_specs(names, eps_values, **params):
    """The cross product of attack names and eps values, sharing the other parameters.

    `eps_iter` given as None becomes eps / 4 per eps. CW-L2 is unbounded, so it gets one spec.
    """
    specs = []
    for name in names:
        accepted = attacks_lib.get_attack(name).defaults
        common = {k: v for k, v in params.items() if k in accepted and v is not None}
        if accepted.get("eps", 0.0) is None:  # unbounded (CW-L2)
            specs.append(AttackSpec(name, common))
            continue
        for eps in eps_values:
            spec_params = {**common, "eps": float(eps)}
            attacks_lib.resolve_params(name, **spec_params)  # fail early, before any attack runs
            specs.append(AttackSpec(name, spec_params))
    return specs


def _as_specs(attacks):
    specs = []
    for a in attacks:
        if isinstance(a, AttackSpec):
            specs.append(a)
        elif isinstance(a, str):
            specs.append(AttackSpec(a, {}))
        else:
            name, params = a
            specs.append(AttackSpec(name, dict(params)))
    return specs


def _tolerance(p, n):
    """Two binomial standard errors, at least 2 points: what "within noise" means here."""
    return max(0.02, 2.0 * math.sqrt(max(p * (1 - p), 1e-4) / max(n, 1)))


class _Pipelines:
    """Which callable the attacker differentiates and which one is scored, per threat model."""

    def __init__(self, model_fn, surrogate_fn=None, extra=None):
        self.table = {"none": (model_fn, model_fn)}
        if surrogate_fn is not None:
            self.table["transfer"] = (surrogate_fn, model_fn)
        self.table.update(extra or {})

    def get(self, threat_model):
        if threat_model not in THREAT_MODELS:
            raise AttackConfigError(f"unknown threat model {threat_model!r}; choose from {', '.join(THREAT_MODELS)}")
        if self.table.get(threat_model) is None:
            need = {"transfer": "a surrogate classifier (--surrogate RUN)",
                    "none": "the plain classifier (--classifier RUN) beside an adversarially trained one",
                    "graybox": "a defense run (tfpurify eval DEFENSE_RUN --classifier RUN)",
                    "whitebox": "a defense run (tfpurify eval DEFENSE_RUN --classifier RUN)",
                    "whitebox_no_bpda": "a defense run with a purifier (tfpurify eval DEFENSE_RUN --classifier RUN)"}
            raise AttackConfigError(f"threat model {threat_model!r} needs {need.get(threat_model, 'more input')}")
        return self.table[threat_model]


def evaluate(model_fn, x, y, attacks=("fgsm", "pgd"), threat_model="none", surrogate_fn=None,
             pipelines=None, batch_size=256, seed=0, sanity_checks=True, sanity_n=200,
             defense="none", classifier="", dataset="", progress=False, n_samples=10, detector=None,
             runs=None, cascade=True):
    """Measures clean and adversarial accuracy of `model_fn` under the named threat models.

    Args:
      model_fn: callable images -> logits: the pipeline being scored (classifier or defense).
      x, y: test images [N, H, W, C] in [0, 1] and true labels [N].
      attacks: AttackSpec objects, attack names, or (name, params) pairs.
      threat_model: a name or a list of names from THREAT_MODELS.
      surrogate_fn: independently trained classifier for the `transfer` threat model.
      pipelines: extra {threat_model: (attacked_fn, scored_fn)} (graybox/whitebox, added by the
        defense core). An attacked callable's `settings` dict (BPDA, EOT, detector weight) is
        recorded in the report.
      batch_size, seed: passed to every attack.
      sanity_checks: run checks 1-4 on the first `sanity_n` examples for gradient threat models;
        a check that does not run is recorded as skipped, with the reason.
      defense, classifier, dataset: names recorded in the report.
      progress: progress bars on attacks.
      n_samples: how many examples to keep for the image grid.
      detector: a `Detector` with a calibrated threshold: adds ROC-AUC and TPR over successful
        adversarial examples of clean-correct inputs, FPR on clean inputs, "detected or correct",
        the whole system's accuracy and the accuracy on accepted inputs, per attack.
      runs: {role: {path, weights_sha256}} of the run folders evaluated, recorded in the settings
        (an export checks its report against them).
      cascade: at each (threat model, eps), run each attack only on the examples the attacks
        before it (in the order given) left robust, as AutoAttack does within itself: the worst
        case for less compute. An attack's row then counts robustness under it *and* the attacks
        before it (`after`, `n_attacked` in the row). False: every attack runs on every example
        and each row is that attack's own number.

    Returns:
      RobustnessReport

    Raises:
      InputValidationError: bad images or labels, or a detector whose threshold was never set.
      AttackConfigError: unknown attack or threat model, bad attack parameters.
    """
    x = validate_images(x)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise InputValidationError(f"labels must be integers of shape [{len(x)}], got {y.dtype} {y.shape}")
    if len(x) == 0:
        raise InputValidationError("no examples to evaluate")
    if detector is not None and not detector.is_calibrated:
        raise InputValidationError(
            "the detector's threshold was never calibrated; calibrate it on validation data "
            "(tfpurify train does, or Detector.calibrate) before evaluating")
    threat_models = [threat_model] if isinstance(threat_model, str) else list(threat_model)
    table = _Pipelines(model_fn, surrogate_fn, pipelines)
    for tm in threat_models:
        table.get(tm)  # fail before spending time on attacks
    specs = _as_specs(attacks)
    for spec in specs:
        attacks_lib.resolve_params(spec.name, **spec.params)

    clean_pred = np.argmax(predict_logits(model_fn, x, batch_size), axis=1)
    clean_correct = clean_pred == y
    clean_of = {id(model_fn): clean_correct}  # clean correctness per scored pipeline
    clean_scores = None if detector is None else adversarial_scores(detector, x, batch_size)
    report = RobustnessReport(
        n_examples=len(x), seed=seed, clean_accuracy=float(clean_correct.mean()),
        clean_correct=clean_correct, defense=defense, classifier=classifier, dataset=dataset,
        threat_models=tuple(threat_models), x_sample=x[:n_samples], y_sample=y[:n_samples],
        clean_pred_sample=clean_pred[:n_samples],
        settings={"seed": seed, "batch_size": batch_size, "cascade": bool(cascade),
                  "sanity_checks": {"enabled": bool(sanity_checks), "n": min(sanity_n, len(x)),
                                    "gradient_free_attack": _GRADIENT_FREE_CHECK},
                  "threat_models": {}, **({"runs": runs} if runs else {})})
    if detector is not None:
        report.detector_scores["clean"] = clean_scores
        threshold = float(detector.threshold.numpy())
        report.settings["detector"] = {"threshold": threshold, **(detector.calibration or {})}
    for tm in threat_models:
        attacked_fn, scored_fn = table.get(tm)
        report.settings["threat_models"][tm] = dict(getattr(attacked_fn, "settings", {}))
        if id(scored_fn) not in clean_of:
            clean_of[id(scored_fn)] = np.argmax(predict_logits(scored_fn, x, batch_size), axis=1) == y
        tm_clean = report.clean_by_threat_model[tm] = clean_of[id(scored_fn)]
        chains = {}  # eps -> (robust so far, current adversarial images, attacks so far, plain correct)
        for spec in specs:
            if attacks_lib.get_attack(spec.name).needs_purifier and getattr(attacked_fn, "purifier", None) is None:
                report.warnings.append(f"{spec.name} skipped under {tm}: it attacks the purifier itself, which only "
                                       "the whitebox threat model of a defense run differentiates")
                continue
            spec_params = _for_threat_model(tm, spec)
            params = attacks_lib.resolve_params(spec.name, **spec_params)
            eps = params.pop("eps", None)
            start_chain = (tm_clean, x, (), tm_clean)
            robust, x_cur, before, plain_cur = chains.get(eps, start_chain) if cascade else start_chain
            start = time.perf_counter()
            if not before:
                x_adv, pred, correct, cost = _attack_and_score(spec.name, attacked_fn, scored_fn, x, y, tm_clean,
                                                               batch_size, seed, progress, **spec_params)
                plain = pred == y
            else:  # only what the attacks before left robust; the rest keeps its adversarial image
                x_adv, correct, cost, plain = x_cur.copy(), robust.copy(), np.zeros(len(x)), plain_cur.copy()
                idx = np.flatnonzero(robust)
                if len(idx):
                    x_adv[idx], pred_idx, correct[idx], cost[idx] = _attack_and_score(
                        spec.name, attacked_fn, scored_fn, x[idx], y[idx], robust[idx], batch_size, seed,
                        progress, **spec_params)
                    plain[idx] = pred_idx == y[idx]
                    if np.all(np.isnan(cost[idx])):
                        cost[:] = np.nan  # this attack does not count its evaluations
                pred = np.argmax(predict_logits(scored_fn, x_adv[:n_samples], batch_size), axis=1)
            chains[eps] = (correct, x_adv, before + (spec.name,), plain)
            report.results.append(AttackResult(
                tm, spec.name, eps, _jsonable(params), float(correct.mean()),
                time.perf_counter() - start, correct, x_adv[:n_samples], pred[:n_samples],
                None if np.all(np.isnan(cost)) else float(np.nanmean(cost)),
                after=before, n_attacked=int(robust.sum()) if before else len(x), plain_correct=plain))
            if detector is not None and tm != "none":
                adv_scores = adversarial_scores(detector, x_adv, batch_size)
                label = f"{tm}/{spec.name}" + (f" (after {', '.join(before)})" if before else "")
                report.detector_scores[label + ("" if eps is None else f" {eps:g}")] = adv_scores
                report.detection.append(detection_metrics(
                    clean_scores, tm_clean, adv_scores, correct,
                    threshold, threat_model=tm, attack=spec.name, eps=eps,
                    **({"after": list(before)} if before else {})))
        if not sanity_checks:
            _skip_checks(report, tm, "sanity checks were turned off (--no-sanity-checks)")
        elif tm not in _GRADIENT_THREAT_MODELS:
            _skip_checks(report, tm, f"the checks detect gradient masking, and under {tm} the attacker does "
                                     "not differentiate the pipeline it is scored on")
        else:
            n = min(sanity_n, len(x))
            _sanity_checks(report, tm, attacked_fn, scored_fn, x[:n], y[:n], tm_clean[:n], batch_size, seed)
    return report


def _for_threat_model(tm, spec):
    """The attack's parameters under `tm`: no early exit where the attacker does not see the scored pipeline.

    Under graybox and transfer, stopping when the attacked model is fooled yields the weakest
    example that fools it, which transfers worst: there, PGD/BIM/MIM take all their steps.
    """
    if tm in ("graybox", "transfer") and "early_exit" in attacks_lib.ATTACKS[spec.name].defaults:
        return {**spec.params, "early_exit": False}
    return spec.params


def detection_metrics(clean_scores, clean_correct, adv_scores, correct, threshold, **labels):
    """Detector metrics for one attack, by the standard definitions.

    Args:
      clean_scores: [N] adversarial scores of the clean inputs.
      clean_correct: [N] bool, the defended pipeline classifies the clean input correctly.
      adv_scores: [N] scores of the attacked inputs.
      correct: [N] bool, correct clean and under the attack (the robust-accuracy column).
      threshold: the detector flags scores above it.
      **labels: keys copied into the row (threat_model, attack, eps).

    Returns:
      dict: `roc_auc` and `tpr` over the successful adversarial examples of clean-correct inputs
      (`n_adversarial` of them) against the clean-correct clean inputs (`n_clean`); `fpr` over
      all clean inputs; `detected_or_correct` (each attacked input flagged or classified right);
      `system_accuracy` (clean input accepted and right, and attacked input flagged or right:
      rejected clean inputs count as errors); `accuracy_on_accepted` (accuracy on attacked inputs
      the detector lets through). A metric with no example to compute it on is None.
    """
    clean_scores, adv_scores = np.asarray(clean_scores), np.asarray(adv_scores)
    clean_correct, correct = np.asarray(clean_correct, bool), np.asarray(correct, bool)
    success = clean_correct & ~correct
    clean_flagged, adv_flagged = clean_scores > threshold, adv_scores > threshold
    n_adv, n_clean = int(success.sum()), int(clean_correct.sum())
    return {**labels, "threshold": float(threshold), "n_adversarial": n_adv, "n_clean": n_clean,
            "roc_auc": roc_auc(clean_scores[clean_correct], adv_scores[success]) if n_adv and n_clean else None,
            "tpr": float(np.mean(adv_flagged[success])) if n_adv else None,
            "fpr": float(np.mean(clean_flagged)),
            "detected_or_correct": float(np.mean(adv_flagged | correct)),
            "system_accuracy": float(np.mean(clean_correct & ~clean_flagged & (adv_flagged | correct))),
            "accuracy_on_accepted": float(np.mean(correct[~adv_flagged])) if np.any(~adv_flagged) else None}


def _attack_and_score(name, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, progress=False,
                      **params):
    """Crafts x_adv on `attacked_fn`, classifies it with `scored_fn`.

    Returns:
      (x_adv, pred, robust per example, model evaluations per example)
    """
    x_adv, cost = attacks_lib.run_attack(name, attacked_fn, x, y, batch_size=batch_size, seed=seed,
                                         progress=progress, return_cost=True, **params)
    pred = np.argmax(predict_logits(scored_fn, x_adv, batch_size), axis=1)
    return x_adv, pred, clean_correct & (pred == y), cost


# Check 4's gradient-free attack: the Square Attack with AutoAttack's budget (5000 queries, p_init
# 0.8), stopping on an example once it is broken.
_GRADIENT_FREE_CHECK = {"attack": "square", "n_queries": 5000, "p_init": 0.8}
_CHECKS = {1: "PGD-2k vs PGD-k", 2: "PGD vs FGSM", 3: "PGD at eps 0.5", 4: "gradient-free vs gradient attacks"}


def _skip_checks(report, tm, reason, checks=tuple(_CHECKS)):
    for check in checks:
        report.sanity.append({"threat_model": tm, "check": check, "name": _CHECKS[check], "status": "skipped",
                              "passed": None, "reason": reason})


def _sanity_checks(report, tm, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed):
    """Checks 1-4 against gradient masking on the first n examples; failures become warnings.

    1. PGD-2k vs PGD-k: 2k iterations clearly *above* k means more iterations helped the defense
       (masking or randomness); clearly *below* means PGD-k had not converged. Either fails, and
       PGD-2k joins the worst case.
    2. PGD must not be clearly weaker than FGSM.
    3. PGD at eps 0.5 must bring accuracy to ~0.
    4. A gradient-free attack (Square, 5000 queries), run on the examples every gradient attack
       left robust, must not break clearly more of them; what it breaks joins the worst case.
    "Clearly" is two binomial standard errors, at least 2 points (`_tolerance`).
    """
    n = len(x)
    full = report.n_examples

    def correct_on_subset(name, **params):
        return _attack_and_score(name, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, **params)[2]

    def record(check, passed, detail, warning):
        report.sanity.append({"threat_model": tm, "check": check, "name": _CHECKS[check],
                              "status": "passed" if passed else "failed", "passed": bool(passed), **detail})
        if not passed:
            report.warnings.append(f"[{tm}] sanity check {check} failed: {warning}")

    def fold(eps, name, subset_correct):
        column = np.ones(full, bool)
        column[:n] = subset_correct
        report.check_columns.append((tm, eps, name, column))

    pgd_results = [r for r in report.results if r.threat_model == tm and r.attack == "pgd"]
    if not pgd_results:
        _skip_checks(report, tm, "no pgd attack in this evaluation", (1, 2))
    for r in pgd_results:
        base = {k: v for k, v in r.params.items() if k in ("eps_iter", "nb_iter", "restarts", "norm")}
        base["norm"] = attacks_lib.parse_norm(base.get("norm", "inf"))
        k = base["nb_iter"]
        # A cascaded row counts the attacks before it too: the checks need PGD-k on its own.
        pgd_k = r.correct[:n] if not r.after else correct_on_subset("pgd", eps=r.eps, **base)
        acc_k = float(np.mean(pgd_k))
        correct_2k = correct_on_subset("pgd", eps=r.eps, **{**base, "nb_iter": 2 * k})
        fold(r.eps, f"pgd-{2 * k} on the first {n}", correct_2k)
        acc_2k = float(np.mean(correct_2k))
        tol = _tolerance(acc_k, n)
        if acc_2k > acc_k + tol:
            why = (f"PGD-{2 * k} accuracy {acc_2k:.3f} > PGD-{k} {acc_k:.3f} at eps {r.eps} (more iterations "
                   "helped the defense: gradients are masked or the defense is random)")
        else:
            why = (f"PGD-{2 * k} accuracy {acc_2k:.3f} < PGD-{k} {acc_k:.3f} at eps {r.eps} (PGD-{k} had not "
                   f"converged: the numbers above overestimate robustness; the worst case includes PGD-{2 * k})")
        record(1, abs(acc_2k - acc_k) <= tol,
               {"eps": r.eps, f"pgd_{k}": acc_k, f"pgd_{2 * k}": acc_2k, "n": n, "tolerance": tol}, why)
        fgsm = [f for f in report.results if f.threat_model == tm and f.attack == "fgsm" and f.eps == r.eps
                and not f.after]
        acc_fgsm = float(np.mean(fgsm[0].correct[:n] if fgsm else correct_on_subset("fgsm", eps=r.eps,
                                                                                   norm=base["norm"])))
        tol = _tolerance(acc_fgsm, n)
        record(2, acc_k <= acc_fgsm + tol,
               {"eps": r.eps, "pgd": acc_k, "fgsm": acc_fgsm, "n": n, "tolerance": tol},
               f"PGD accuracy {acc_k:.3f} > FGSM {acc_fgsm:.3f} at eps {r.eps} "
               f"(an iterative attack should beat a single step: gradients may be masked)")
    large_eps = 0.5
    acc_large = float(np.mean(correct_on_subset("pgd", eps=large_eps, eps_iter=large_eps / 10, nb_iter=40)))
    record(3, acc_large <= 0.05, {"eps": large_eps, "pgd": acc_large, "n": n, "threshold": 0.05},
           f"PGD accuracy {acc_large:.3f} at eps {large_eps} is not ~0 (gradients are masked)")
    _gradient_free_check(report, tm, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, record, fold)


def _gradient_free_check(report, tm, attacked_fn, scored_fn, x, y, clean_correct, batch_size, seed, record, fold):
    """Check 4: a gradient-free attack on what the gradient attacks left robust must not break clearly more."""
    n = len(x)
    name = _GRADIENT_FREE_CHECK["attack"]
    eps_values = sorted({r.eps for r in report.results if r.threat_model == tm and r.eps
                         and attacks_lib.ATTACKS[r.attack].gradient})
    if not eps_values:
        _skip_checks(report, tm, "no gradient attack with an eps budget in this evaluation", (4,))
    params = {k: v for k, v in _GRADIENT_FREE_CHECK.items() if k != "attack"}
    for eps in eps_values:
        columns = [r.correct[:n] for r in report.results if r.threat_model == tm and r.eps == eps
                   and attacks_lib.ATTACKS[r.attack].gradient]
        columns += [c[:n] for t, e, _, c in report.check_columns if t == tm and e == eps]
        robust = np.all(np.stack([clean_correct, *columns]), axis=0)
        after = robust.copy()
        if robust.any():  # attack only what is left: the rest is already counted as broken
            after[robust] = _attack_and_score(name, attacked_fn, scored_fn, x[robust], y[robust],
                                              clean_correct[robust], batch_size, seed, eps=eps, **params)[2]
        fold(eps, f"{name} on the first {n}", after)
        acc_grad, acc_after = float(np.mean(robust)), float(np.mean(after))
        broken = int(robust.sum() - after.sum())
        tol = _tolerance(acc_grad, n)
        record(4, acc_grad - acc_after <= tol,
               {"eps": eps, "gradient_attacks": acc_grad, "with_gradient_free": acc_after,
                "broken_by_gradient_free_only": broken, "n": n, "tolerance": tol,
                "gradient_free_attack": dict(_GRADIENT_FREE_CHECK)},
               f"{name} broke {broken} of the {int(robust.sum())} examples every gradient attack left robust at "
               f"eps {eps} (accuracy {acc_grad:.3f} -> {acc_after:.3f}): a gradient-free attack does clearly "
               f"better, so gradients are masked; the worst case includes {name}")
