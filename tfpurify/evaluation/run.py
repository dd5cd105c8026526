"""Robustness evaluation: clean accuracy, accuracy per attack and threat model, worst case.

Rules: every number names its threat model; an example counts as robust under an attack only if
it is classified correctly both clean and under that attack; the worst case is the mean over
examples of the per-example minimum over every attack of a threat model at one eps (including
the attacks the sanity checks ran); sanity checks 1-5 run with every gradient (none, white-box)
evaluation, failures become warnings in the report, never hidden, and a check that does not run
is recorded as skipped with its reason. Every setting that shaped a number (seed, attack
parameters, BPDA mode, EOT samples, detector weight and threshold, checks) is in the report.
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf

from tfpurify import attacks as attacks_lib
from tfpurify.adaptive import attacked_variants
from tfpurify.attacks.loop import Target
from tfpurify.classifiers import predict_logits
from tfpurify.data import validate_batch_size, validate_images
from tfpurify.defenses.base import adversarial_scores
from tfpurify.errors import AttackConfigError, InputValidationError
from tfpurify.evaluation.chunks import ChunkBoard, Chunks, chunk_key
from tfpurify.evaluation.report import AttackResult, RobustnessReport, jsonable
from tfpurify.evaluation.sanity import GRADIENT_FREE_CHECK, attack_and_score, run_sanity_checks, skip_checks
from tfpurify.metrics import detection_metrics

__all__ = ["THREAT_MODELS", "AttackSpec", "make_attack_specs", "evaluate", "scored_judge", "JUDGE_DRAWS", "draw_hits"]

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
        return self.params.get("eps", attacks_lib.get_attack(self.name).defaults.get("eps"))


# The warning (and the Markdown report's banner) of a report with gray-box rows and no white-box ones
GRAYBOX_ONLY = ("gray-box only: the attacks saw the classifier, never the defense; an attacker who knows the "
                "defense is not measured, so no number here is a robustness claim (add the whitebox threat model)")


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
             defense=None, classifier=None, dataset=None, progress=False, n_samples=10, detector=None,
             runs=None, cascade=True, score_draws=10, sanity_queries=None, checkpoint=None, resume=None,
             chunk_seconds=None, chunk_board=None, helper=False):
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
      sanity_checks: run checks 1-5 on the first `sanity_n` examples for gradient threat models;
        a check that does not run is recorded as skipped, with the reason.
      defense, classifier, dataset: names recorded in the report; None: taken from `model_fn` where it
        came from `classifiers.load_classifier` or `training.load_defended` (its `tfpurify_run`), else
        "none", "" and "".
      progress: progress bars over examples on every attack, the sanity checks' included, and before
        check 4 its estimated cost where it exceeds a minute.
      n_samples: how many examples to keep for the image grid.
      detector: a `Detector` with a calibrated threshold: adds ROC-AUC and TPR over successful
        adversarial examples of clean-correct inputs, FPR on clean inputs, "detected or correct",
        the whole system's accuracy and the accuracy on accepted inputs, per attack.
      runs: {role: {path, weights_sha256}} of the run folders evaluated, recorded in the settings
        (an export checks its report against them); None: taken from `model_fn` as the names are.
      cascade: at each (threat model, eps), run each attack only on the examples the attacks
        before it (in the order given) left robust, as AutoAttack does within itself: the worst
        case for less compute. An attack's row then counts robustness under it *and* the attacks
        before it (`after`, `n_attacked` in the row); with several white-box gradients, AutoAttack with the
        second and later ones leaves out its gradient-free Square, which the first ran on the same images (as
        the original runs it once; the row's `version` names the stages). False: every attack runs on every
        example and each row is that attack's own number.
      score_draws: where the scored pipeline is stochastic (its purifier's `stochastic`), each
        adversarial batch is classified this many times, the single draw of `accuracy` first and
        then fresh ones: the rows add `accuracy_all_draws` (robust in every draw, the worst of N) and
        `accuracy_majority` (robust in more than half). 1: the single draw only.
      sanity_queries: check 4's query budget (default 5000, AutoAttack's Square), recorded in the settings.
      checkpoint: None, or a callable given the report after every attack and sanity check (the CLI
        writes it then, so a killed evaluation keeps what it finished); the report's `finished` is
        False until `evaluate` returns.
      resume: an unfinished report that a `checkpoint` of an earlier call with the same arguments was given
        (kept with `save_state`: npz and JSON, no pickle): its finished attacks are kept and each cascade
        continues with the attack after the last one it finished, from the images and verdicts it had
        reached; a threat model whose sanity checks had not all finished runs them again. A finished report
        is returned as it is.
      chunk_seconds: with `checkpoint`, an attack on more than a few images (the sanity checks' included) runs
        in chunks of about this many seconds, the report kept after each, so that a killed evaluation resumes
        inside the attack (`tfpurify.evaluation.chunks`; each chunk draws its own random starts from `seed`).
        None: every attack runs on all its images at once.
      chunk_board: with `chunk_seconds`, a folder through which several processes evaluating the same thing share
        each attack's chunks (`tfpurify.evaluation.chunks.ChunkBoard`); None: this process attacks every chunk.
      helper: with `chunk_board`, this process only helps another that owns the evaluation (its `checkpoint`
        keeps nothing): once every chunk of an attack is done or held by others it raises
        `NothingToHelpWith` instead of waiting.

    Returns:
      RobustnessReport

    Raises:
      InputValidationError: bad images or labels, or a detector whose threshold was never set.
      AttackConfigError: unknown attack or threat model, bad attack parameters.
    """
    validate_batch_size(batch_size)
    if chunk_seconds is not None and (isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float))
                                      or not chunk_seconds > 0):
        raise InputValidationError(f"chunk_seconds must be a number > 0 or None, got {chunk_seconds!r}")
    if isinstance(score_draws, bool) or not isinstance(score_draws, (int, np.integer)) or score_draws < 1:
        raise InputValidationError(f"score_draws must be an integer >= 1, got {score_draws!r}")
    if sanity_queries is not None and (isinstance(sanity_queries, bool)
                                       or not isinstance(sanity_queries, (int, np.integer)) or sanity_queries < 1):
        raise InputValidationError(f"sanity_queries must be an integer >= 1, got {sanity_queries!r}")
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
    known = getattr(model_fn, "tfpurify_run", None) or {}
    defense = known.get("defense", "none") if defense is None else defense
    classifier = known.get("classifier", "") if classifier is None else classifier
    dataset = known.get("dataset", "") if dataset is None else dataset
    runs = known.get("runs") if runs is None else runs
    threat_models = [threat_model] if isinstance(threat_model, str) else list(threat_model)
    table = _Pipelines(model_fn, surrogate_fn, pipelines)
    for tm in threat_models:
        table.get(tm)  # fail before spending time on attacks
    specs = _as_specs(attacks)
    for spec in specs:
        attacks_lib.resolve_params(spec.name, **spec.params)

    if resume is not None:
        if resume.n_examples != len(x) or tuple(resume.threat_models) != tuple(threat_models):
            raise InputValidationError(
                f"resume: the report covers {resume.n_examples} examples under {', '.join(resume.threat_models)}, "
                f"this evaluation {len(x)} under {', '.join(threat_models)}")
        if resume.finished:
            return resume
    clean_pred = np.argmax(predict_logits(model_fn, x, batch_size), axis=1)
    clean_correct = clean_pred == y
    clean_of = {id(model_fn): clean_correct}  # clean correctness per scored pipeline
    clean_scores = None if detector is None else adversarial_scores(detector, x, batch_size)
    report = resume if resume is not None else RobustnessReport(
        n_examples=len(x), seed=seed, clean_accuracy=float(clean_correct.mean()),
        clean_correct=clean_correct, defense=defense, classifier=classifier, dataset=dataset,
        threat_models=tuple(threat_models), x_sample=x[:n_samples], y_sample=y[:n_samples], finished=False,
        clean_pred_sample=clean_pred[:n_samples],
        settings={"seed": seed, "batch_size": batch_size, "cascade": bool(cascade), "score_draws": int(score_draws),
                  "sanity_checks": {"enabled": bool(sanity_checks), "n": min(sanity_n, len(x)),
                                    "gradient_free_attack": {**GRADIENT_FREE_CHECK, **(
                                        {"n_queries": int(sanity_queries)} if sanity_queries else {})},
                                    "seconds": {}},
                  "threat_models": {}, **({"runs": runs} if runs else {}),
                  **({"chunk_seconds": chunk_seconds} if chunk_seconds is not None and checkpoint is not None else {})})
    if "graybox" in threat_models and "whitebox" not in threat_models and GRAYBOX_ONLY not in report.warnings:
        report.warnings.append(GRAYBOX_ONLY)
    if detector is not None:
        report.detector_scores["clean"] = clean_scores
        threshold = float(detector.threshold.numpy())
        report.settings["detector"] = {"threshold": threshold, **(detector.calibration or {})}
    for tm in threat_models:
        attacked, scored_fn = table.get(tm)
        # several attacked callables (white-box gradient modes, e.g. a BPDA surrogate and the exact
        # gradient): every attack runs with each, all in one cascade and one worst case
        variants = attacked_variants(attacked)
        attacked_fn = variants[0]  # the sanity checks' and the settings' one
        report.settings["threat_models"][tm] = dict(getattr(attacked_fn, "settings", {}))
        if len(variants) > 1:
            report.settings["threat_models"][tm]["variants"] = {
                v.variant: dict(getattr(v, "settings", {})) for v in variants}
        judges = {}
        if tm in _GRADIENT_THREAT_MODELS and attacked_fn is not scored_fn:
            for v in variants:
                judges[id(v)], report.settings["threat_models"][tm]["success_judged_on"] = scored_judge(v, scored_fn)
        if id(scored_fn) not in clean_of:
            clean_of[id(scored_fn)] = np.argmax(predict_logits(scored_fn, x, batch_size), axis=1) == y
        tm_clean = report.clean_by_threat_model[tm] = clean_of[id(scored_fn)]
        draws = score_draws if _stochastic(scored_fn) else 1
        if draws > 1:
            report.settings["threat_models"][tm]["scored_over_draws"] = draws
        state = report.progress_state.setdefault(tm, {"steps": 0, "chains": {}, "sanity": False})
        chains = state["chains"]  # eps -> (robust so far, current adversarial images, attacks so far, plain correct)
        chunks = Chunks(state.setdefault("chunks", {}), None if checkpoint is None else lambda: checkpoint(report),
                        chunk_seconds, None if chunk_board is None else ChunkBoard(chunk_board), helper)
        for step, (spec, variant_fn) in enumerate((spec, v) for spec in specs for v in variants):
            if step < state["steps"]:
                continue  # finished before the evaluation was resumed
            if variant_fn is not attacked_fn and not attacks_lib.get_attack(spec.name).gradient:
                continue  # a gradient-free attack sees no gradient: one run is all the variants would make
            if attacks_lib.get_attack(spec.name).needs_purifier and getattr(variant_fn, "purifier", None) is None:
                if variant_fn is attacked_fn:
                    report.warnings.append(f"{spec.name} skipped under {tm}: it attacks the purifier itself, which "
                                           "only the whitebox threat model of a defense run differentiates")
                continue
            judge = judges.get(id(variant_fn))
            spec_params = _for_threat_model(tm, spec)
            if cascade and variant_fn is not attacked_fn:  # the first variant ran the gradient-free stages here
                spec_params = attacks_lib.gradient_stages_only(
                    spec.name, attacks_lib.resolve_params(spec.name, **spec_params))
                if spec_params is None:
                    continue
            params = attacks_lib.resolve_params(spec.name, **spec_params)
            eps = params.pop("eps", None)
            name = spec.name
            if len(variants) > 1:
                params["gradient"] = variant_fn.variant
                name = f"{spec.name} [{variant_fn.variant}]"
            start_chain = (tm_clean, x, (), tm_clean)
            robust, x_cur, before, plain_cur = chains.get(eps, start_chain) if cascade else start_chain
            start = time.perf_counter()

            def attack(images, ok):  # this attack on images[lo:hi] (run at once, by `chunks.run`)
                return lambda lo, hi: attack_and_score(
                    spec.name, variant_fn, scored_fn, x[images[lo:hi]], y[images[lo:hi]], ok[images[lo:hi]],
                    batch_size, seed, progress, judge, **spec_params)

            def inputs(images, ok):  # what names this attack on the chunk board
                return (chunk_key(name, seed=seed, **spec_params), x[images], y[images], ok[images])

            if not before:
                everything = np.arange(len(x))
                x_adv, pred, correct, cost = chunks.run(f"step {step}", attack(everything, tm_clean), len(x),
                                                        inputs=inputs(everything, tm_clean))
                plain = pred == y
            else:  # only what the attacks before left robust; the rest keeps its adversarial image
                x_adv, correct, cost, plain = x_cur.copy(), robust.copy(), np.zeros(len(x)), plain_cur.copy()
                idx = np.flatnonzero(robust)
                if len(idx):
                    x_adv[idx], pred_idx, correct[idx], cost[idx] = chunks.run(f"step {step}", attack(idx, robust),
                                                                               len(idx), inputs=inputs(idx, robust))
                    plain[idx] = pred_idx == y[idx]
                    if np.all(np.isnan(cost[idx])):
                        cost[:] = np.nan  # this attack does not count its evaluations
                pred = np.argmax(predict_logits(scored_fn, x_adv[:n_samples], batch_size), axis=1)
            chains[eps] = (correct, x_adv, before + (name,), plain)
            hits = draw_hits(scored_fn, x_adv, y, plain, draws, batch_size) if draws > 1 else None
            report.results.append(AttackResult(
                tm, spec.name, eps, jsonable(params), float(correct.mean()),
                time.perf_counter() - start, correct, x_adv[:n_samples], pred[:n_samples],
                None if np.all(np.isnan(cost)) else float(np.nanmean(cost)),
                after=before, n_attacked=int(robust.sum()) if before else len(x), plain_correct=plain,
                score_draws=draws, all_draws_correct=None if hits is None else correct & (hits == draws),
                majority_correct=None if hits is None else tm_clean & (2 * hits > draws)))
            if detector is not None and tm != "none":
                adv_scores = adversarial_scores(detector, x_adv, batch_size)
                label = f"{tm}/{name}" + (f" (after {', '.join(before)})" if before else "")
                report.detector_scores[label + ("" if eps is None else f" {eps:g}")] = adv_scores
                report.detection.append(detection_metrics(
                    clean_scores, tm_clean, adv_scores, correct,
                    threshold, threat_model=tm, attack=name, eps=eps,
                    **({"after": list(before)} if before else {})))
            state["steps"] = step + 1
            if checkpoint is not None:
                checkpoint(report)
        state["steps"] = len(specs) * len(variants)
        if state["sanity"]:
            continue
        _forget_sanity(report, tm)  # checks that had not all finished run again
        if not sanity_checks:
            skip_checks(report, tm, "sanity checks were turned off (--no-sanity-checks)")
        elif tm not in _GRADIENT_THREAT_MODELS:
            skip_checks(report, tm, f"the checks detect gradient masking, and under {tm} the attacker does "
                                     "not differentiate the pipeline it is scored on")
        else:
            n = min(sanity_n, len(x))
            start = time.perf_counter()
            run_sanity_checks(report, tm, attacked_fn, scored_fn, x[:n], y[:n], tm_clean[:n], batch_size, seed,
                              progress, sanity_queries, checkpoint, chunks)
            report.settings["sanity_checks"]["seconds"][tm] = round(time.perf_counter() - start, 2)
        state["sanity"] = True
        chunks.forget()
    report.finished = True
    return report


def _forget_sanity(report, tm):
    """Removes what sanity checks of `tm` recorded: their verdicts, attack columns and warnings."""
    report.sanity[:] = [c for c in report.sanity if c.get("threat_model") != tm]
    report.check_columns[:] = [c for c in report.check_columns if c[0] != tm]
    report.warnings[:] = [w for w in report.warnings if not w.startswith(f"[{tm}] sanity check")]


def _stochastic(scored_fn):
    return bool(getattr(getattr(scored_fn, "purifier", None), "stochastic", False))


def draw_hits(scored_fn, x_adv, y, first, draws, batch_size=256):
    """[N] int: in how many of `draws` classifications of `x_adv` a stochastic pipeline is right.

    `first` ([N] bool) is the first draw's verdict, already scored; the other draws are fresh.
    """
    hits = np.asarray(first, bool).astype(np.int64)
    for _ in range(draws - 1):
        hits += np.argmax(predict_logits(scored_fn, x_adv, batch_size), axis=1) == y
    return hits


# A stochastic scored pipeline counts as fooled by an adversarial example, for leaving AutoAttack's
# stages, only when it is fooled in every one of this many fresh draws.
JUDGE_DRAWS = 3


def scored_judge(attacked_fn, scored_fn):
    """`(images, labels) -> [N] bool`: whether the pipeline that is scored is fooled, and a description.

    Fooled: its prediction is wrong (in each of JUDGE_DRAWS draws where its purifier is stochastic)
    and, where the attack is detector-aware, its detector does not flag the image. The staged attacks
    (AutoAttack, APGD's restarts) let an example go only when this confirms their own verdict, which is
    on the attacked callable (an EOT average, a BPDA surrogate).
    """
    stochastic = _stochastic(scored_fn)
    detector = getattr(scored_fn, "detector", None) if Target(attacked_fn).aware else None
    draws = JUDGE_DRAWS if stochastic else 1

    def judge(images, labels):
        fooled = tf.ones(tf.shape(labels), tf.bool)
        for _ in range(draws):
            wrong = tf.not_equal(tf.argmax(scored_fn(images), axis=1), tf.cast(labels, tf.int64))
            fooled = tf.logical_and(fooled, wrong)
        if detector is not None:
            fooled = tf.logical_and(fooled, tf.logical_not(detector.is_adversarial(images)))
        return fooled

    described = (f"the scored pipeline: wrong in {draws} of {draws} draws" if draws > 1 else
                 "the scored pipeline: wrong") + (" and not flagged" if detector is not None else "")
    return judge, described


def _for_threat_model(tm, spec):
    """The attack's parameters under `tm`: no early exit where the attacker does not see the scored pipeline.

    Under graybox and transfer, stopping when the attacked model is fooled yields the weakest
    example that fools it, which transfers worst: there, PGD/BIM/MIM take all their steps.
    """
    if tm in ("graybox", "transfer") and "early_exit" in attacks_lib.get_attack(spec.name).defaults:
        return {**spec.params, "early_exit": False}
    return spec.params
