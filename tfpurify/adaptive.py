"""Adaptive (white-box) attack targets: BPDA, EOT and detector-aware losses.

- BPDA (Athalye et al. 2018): the forward pass goes through the real purifier, the backward pass
  through `purifier.attack_surrogate` (e.g. straight-through rounding, a few unrolled steps).
- EOT: for stochastic purifiers, the attacked logits are log E[softmax] over `eot_samples`
  draws, so each gradient step averages over the randomness.
- Detector-aware: where a detector exists, the attack loss subtracts its adversarial score, so the
  attacker tries to fool the classifier and evade the detector at once.

The threat model `whitebox_no_bpda` attacks the served pipeline with its own gradients and no
surrogate: the protocol of papers that report white-box numbers without BPDA. Where a
non-differentiable part (an argmax, a quantizer) carries the decision, its zero gradients blind the
attack and the sanity checks should flag it; where the decision also passes through differentiable
parts (FBGAN's clipped continuous codes) the attack still works. Either way it is a row to set
beside a paper's number, never a robustness claim.
"""

import inspect
import types

import tensorflow as tf

from tfpurify.classifiers import penultimate
from tfpurify.defenses.base import Purifier
from tfpurify.errors import AttackConfigError

__all__ = ["BPDA_MODES", "parse_bpda", "bpda", "eot", "DetectorAwareTarget", "whitebox_target",
           "threat_model_pipelines", "binarizer", "attacked_variants"]

# How a white-box attacker gets gradients through a purifier (`--bpda`, a comma list):
#   surrogate: the purifier's own BPDA backward pass (`Purifier.attack_surrogate`; Cowboy: the identity,
#     or `bpda_unroll` descent steps); identity: the identity backward pass, for any purifier;
#   unroll:K: K descent steps unrolled from the found code (purifiers whose surrogate takes `unroll`);
#   exact: plain backpropagation through the served purifier (Cowboy: through every step of its search);
#   auto: surrogate, and exact too where the purifier is differentiable end to end (`exact_gradient`).
BPDA_MODES = ("auto", "surrogate", "identity", "unroll:K", "exact")


def parse_bpda(text):
    """'surrogate,exact' -> ('surrogate', 'exact'); checks each mode (unroll:K needs an integer K >= 1)."""
    modes = tuple(m.strip() for m in str(text).split(",") if m.strip())
    if not modes:
        raise AttackConfigError(f"bpda: give one or more of {', '.join(BPDA_MODES)}")
    for mode in modes:
        if mode.startswith("unroll:"):
            k = mode[len("unroll:"):]
            if not k.isdigit() or int(k) < 1:
                raise AttackConfigError(f"bpda {mode!r}: unroll:K needs an integer K >= 1")
        elif mode not in BPDA_MODES:
            raise AttackConfigError(f"unknown bpda mode {mode!r}; choose from {', '.join(BPDA_MODES)}")
    return modes


def _has_surrogate(purifier):
    """True where the purifier's class overrides `Purifier.attack_surrogate` (a BPDA backward pass)."""
    return type(purifier).attack_surrogate is not Purifier.attack_surrogate


def _unrolls(purifier):
    return "unroll" in inspect.signature(purifier.purify_and_surrogate).parameters


def bpda(purifier, mode="surrogate"):
    """x -> purifier.purify(x) forward, with the gradients `mode` names (see `BPDA_MODES`)."""
    if mode == "exact" or (mode == "surrogate" and not _has_surrogate(purifier)):
        return lambda x: purifier.purify(x)  # differentiable as it is (or zero where it is not)
    if mode == "identity":
        return lambda x: x + tf.stop_gradient(purifier.purify(tf.stop_gradient(x)) - x)
    unroll = {}
    if mode.startswith("unroll:"):
        if not _unrolls(purifier):
            raise AttackConfigError(f"bpda {mode}: {type(purifier).__name__} has no descent steps to unroll "
                                    "(a latent-search purifier such as cowboy has)")
        unroll = {"unroll": int(mode[len("unroll:"):])}

    def forward_real_backward_surrogate(x):
        purified, surrogate = purifier.purify_and_surrogate(x, **unroll)
        return surrogate + tf.stop_gradient(purified - surrogate)

    return forward_real_backward_surrogate


def eot(logits_fn, samples):
    """Expectation over Transformation: log of the mean softmax over `samples` draws.

    The input batch is tiled `samples` times so the draws run as one batch.
    """
    if samples <= 1:
        return logits_fn

    def averaged(x):
        n = tf.shape(x)[0]
        logits = logits_fn(tf.tile(x, [samples, 1, 1, 1]))
        probs = tf.reshape(tf.nn.softmax(logits), [samples, n, -1])
        return tf.math.log(tf.reduce_mean(probs, axis=0) + 1e-12)

    return averaged


class DetectorAwareTarget:
    """A callable returning [logits | weight * score]; `run_attack` uses its `attack_loss`.

    `attack_loss(labels, logits=outputs)` = cross-entropy of the logits minus the weighted detector
    score: maximizing it fools the classifier while lowering the adversarial score. `flagged(outputs)`
    says where the detector fires at `threshold` (None: never), so restarts are picked by the
    attack's own goal: fooled and not flagged.
    """

    def __init__(self, logits_fn, score_fn, weight=1.0, threshold=None):
        if not weight > 0:
            raise AttackConfigError(f"the detector weight of a detector-aware target must be > 0, got {weight}")
        self.logits_fn, self.score_fn, self.weight = logits_fn, score_fn, float(weight)
        self.threshold = threshold

    def __call__(self, x):
        score = tf.reshape(tf.cast(self.score_fn(x), tf.float32), [-1, 1])
        return tf.concat([self.logits_fn(x), self.weight * score], axis=1)

    @staticmethod
    def logits(outputs):
        return outputs[:, :-1]

    def flagged(self, outputs):
        if self.threshold is None:
            return tf.zeros(tf.shape(outputs)[:1], tf.bool)
        return outputs[:, -1] / self.weight > tf.cast(self.threshold, outputs.dtype)

    @staticmethod
    def attack_loss(labels, logits):  # cleverhans passes keywords: labels=, logits=
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits[:, :-1])
        return ce - logits[:, -1]


def whitebox_target(defended, eot_samples=1, detector_weight=1.0, use_bpda=True, bpda_mode="surrogate"):
    """What a white-box attacker differentiates: classifier(BPDA(purifier)(x)), EOT, detector.

    bpda_mode: how gradients pass the purifier (`BPDA_MODES`; not `auto`). use_bpda=False (or
    `exact`): plain backpropagation through `purifier.purify`, the served function itself (the
    `whitebox_no_bpda` threat model); where it passes no gradient at all (a bare `tf.round`), the
    attacker gets zeros, as plain backpropagation would, and runs blind instead of stopping. The
    returned callable carries `settings`: the BPDA mode, EOT samples and detector weight that shaped
    it, for the report.
    """
    purifier = defended.purifier
    mode = bpda_mode if use_bpda else "exact"
    surrogate = purifier is not None and (_has_surrogate(purifier) or mode == "identity")
    if purifier is None:
        purify = lambda x: x  # noqa: E731
    elif mode == "exact":
        purify = lambda x: purifier.purify(x) + 0.0 * x  # noqa: E731
    else:
        purify = bpda(purifier, mode)

    def logits(x):
        return defended.classifier(purify(x))

    stochastic = purifier is not None and purifier.stochastic
    target = eot(logits, eot_samples) if stochastic else logits
    aware = defended.detector is not None and detector_weight > 0
    if aware:
        target = DetectorAwareTarget(target, defended.detector.adversarial_score, detector_weight,
                                     defended.detector.threshold)
    elif target is logits:
        target = lambda x: logits(x)  # noqa: E731  (a fresh callable to carry the settings)
    if purifier is not None:  # for the attacks on the purifier itself (tfpurify.attacks.purifier)
        target.purifier, target.purify = purifier, purify
    target.settings = {
        "attacked": "end to end (purifier and classifier)" if purifier is not None else "classifier",
        "bpda": "none" if purifier is None else (
            "off (purifier differentiable)" if not surrogate
            else ("exact: plain gradients through the served purifier, every step of its search"
                  if getattr(purifier, "exact_gradient", False) else
                  "off: plain gradients of the served pipeline, no surrogate (the papers' protocol; where a "
                  "non-differentiable part carries the decision, the sanity checks should flag masking)")
            if mode == "exact"
            else "identity (straight through the purifier)" if mode == "identity"
            else f"{type(purifier).__name__}.attack_surrogate, {mode[len('unroll:'):]} descent steps unrolled"
            if mode.startswith("unroll:")
            else f"{type(purifier).__name__}.attack_surrogate"),
        "eot_samples": int(eot_samples) if stochastic else 1,
        "detector_weight": float(detector_weight) if aware else 0.0,
    }
    return target


def binarizer(classifier, purifier, make_target):
    """Sanity check 5's handle on a pipeline (`tfpurify.evaluation.binarization`), or None where the
    classifier has no last Dense layer: head -> (attacked, scored), the same pipeline with `head` in
    the classifier's place and no detector, built by `make_target(pipeline)`; with `features` (the
    classifier's penultimate layer) and `purify`."""
    features = penultimate(classifier)
    if features is None:
        return None
    purify = (lambda x: x) if purifier is None else purifier.purify

    def binarize(head):
        pipeline = types.SimpleNamespace(classifier=head, purifier=purifier, detector=None)

        def scored(images):
            return head(purify(images))

        scored.purifier = purifier
        return make_target(pipeline), scored

    binarize.features, binarize.purify = features, purify
    return binarize


def _binarizable(target, classifier, purifier, make_target):
    """`target` with `binarize` set where the pipeline has a readout to replace (see `binarizer`)."""
    binarize = binarizer(classifier, purifier, make_target)
    if binarize is not None:
        target.binarize = binarize
    return target


def attacked_variants(attacked):
    """A threat model's attacked callables as a list: one, or one per white-box gradient mode."""
    return list(attacked) if isinstance(attacked, (list, tuple)) else [attacked]


def _described(fn, **settings):
    """`fn` wrapped in a callable that carries `settings` (the model itself stays untouched)."""
    wrapped = lambda x: fn(x)  # noqa: E731
    wrapped.settings = settings
    return wrapped


def _whitebox_variants(defended, eot_samples, detector_weight, modes):
    """The white-box attacked callable, or a list of them, one per gradient mode (each tagged `variant`)."""
    purifier = defended.purifier
    chosen = []
    for mode in modes:
        if mode == "auto":
            picks = ["surrogate"] + (["exact"] if purifier is not None and getattr(purifier, "exact_gradient", False)
                                     else [])
        else:
            picks = [mode]
        for pick in picks:
            if purifier is None or (pick in ("surrogate", "exact") and not _has_surrogate(purifier)):
                pick = "surrogate"  # nothing to choose: the pipeline is differentiable as it is
            if pick not in chosen:
                chosen.append(pick)
    targets = []
    for mode in chosen:
        target = whitebox_target(defended, eot_samples, detector_weight, bpda_mode=mode)
        target.variant = mode
        targets.append(_binarizable(target, defended.classifier, purifier, lambda p, m=mode: whitebox_target(
            p, eot_samples, 0.0, bpda_mode=m)))
    return targets[0] if len(targets) == 1 else targets


def threat_model_pipelines(defended, surrogate=None, eot_samples=1, detector_weight=1.0, bpda="auto"):
    """{threat model: (attacked callable, scored callable)} for a defended classifier.

    none: the bare classifier attacked and scored (the undefended row); graybox: the bare
    classifier attacked, the defense scored; whitebox: end to end (BPDA, EOT, detector-aware);
    whitebox_no_bpda: end to end with plain gradients, no BPDA surrogate (the papers' protocol,
    the same as whitebox where the purifier is differentiable); transfer: an independent surrogate
    attacked, the defense scored. A bare classifier (no purifier, no detector) has no graybox or
    whitebox entry: they would repeat `none`. An adversarially trained classifier is attacked
    directly under graybox and whitebox (the same thing), and `none` is its `undefended`
    classifier, if it has one (else None: not available).

    bpda: the white-box gradient modes (`BPDA_MODES`, a comma list or tuple). With more than one,
    `whitebox` holds a list of attacked callables (each with `variant`, its mode): every attack runs
    with each, and all count in the white-box worst case. `auto`: the purifier's surrogate, and the
    exact gradient too where the purifier is differentiable end to end (Cowboy's search).
    """
    modes = parse_bpda(",".join(bpda) if isinstance(bpda, (list, tuple)) else bpda)
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
        raise AttackConfigError(f"eot_samples must be an integer >= 1, got {eot_samples!r}")
    if not detector_weight >= 0:
        raise AttackConfigError(f"detector_weight must be >= 0 (0: the attack ignores the detector), got {detector_weight}")
    if getattr(defended, "robust_classifier", False):
        # adversarial training: the defense is the classifier, so gray-box and white-box coincide
        robust = _binarizable(_described(defended.classifier, attacked="the adversarially trained classifier itself "
                                                                       "(gray-box = white-box: no purifier)"),
                              getattr(defended.classifier, "classifier", None), None, lambda p: p.classifier)
        pipelines = {"whitebox": (robust, defended), "graybox": (robust, defended), "none": None}
        if defended.undefended is not None:
            pipelines["none"] = (_described(defended.undefended, attacked="plain classifier"), defended.undefended)
        if surrogate is not None:
            pipelines["transfer"] = (_described(surrogate, attacked="surrogate classifier"), defended)
        return pipelines
    classifier = _binarizable(_described(defended.classifier, attacked="classifier"), defended.classifier, None,
                              lambda p: p.classifier)
    pipelines = {"none": (classifier, defended.classifier)}
    if defended.purifier is not None or defended.detector is not None:
        pipelines["graybox"] = (classifier, defended)
        pipelines["whitebox"] = (_whitebox_variants(defended, eot_samples, detector_weight, modes), defended)
        pipelines["whitebox_no_bpda"] = (whitebox_target(defended, eot_samples, detector_weight, use_bpda=False),
                                         defended)
    if surrogate is not None:
        pipelines["transfer"] = (_described(surrogate, attacked="surrogate classifier"), defended)
    return pipelines
