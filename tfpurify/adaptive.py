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

import tensorflow as tf

from tfpurify.defenses.base import Purifier
from tfpurify.errors import AttackConfigError

__all__ = ["bpda", "eot", "DetectorAwareTarget", "whitebox_target", "threat_model_pipelines"]


def _has_surrogate(purifier):
    """True where the purifier's class overrides `Purifier.attack_surrogate` (a BPDA backward pass)."""
    return type(purifier).attack_surrogate is not Purifier.attack_surrogate


def bpda(purifier):
    """x -> purifier.purify(x) forward, with gradients of purifier.attack_surrogate(x)."""
    if not _has_surrogate(purifier):
        return lambda x: purifier.purify(x)  # differentiable as it is

    def forward_real_backward_surrogate(x):
        purified, surrogate = purifier.purify_and_surrogate(x)
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


def whitebox_target(defended, eot_samples=1, detector_weight=1.0, use_bpda=True):
    """What a white-box attacker differentiates: classifier(BPDA(purifier)(x)), EOT, detector.

    use_bpda=False: plain backpropagation through `purifier.purify`, the served function itself
    (the `whitebox_no_bpda` threat model); where it passes no gradient at all (a bare `tf.round`),
    the attacker gets zeros, as plain backpropagation would, and runs blind instead of stopping.
    The returned callable carries `settings`: the BPDA mode, EOT samples and detector weight that
    shaped it, for the report.
    """
    purifier = defended.purifier
    surrogate = purifier is not None and _has_surrogate(purifier)
    if purifier is None:
        purify = lambda x: x  # noqa: E731
    else:
        purify = bpda(purifier) if use_bpda else (lambda x: purifier.purify(x) + 0.0 * x)  # noqa: E731

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
            else f"{type(purifier).__name__}.attack_surrogate" if use_bpda
            else "off: plain gradients of the served pipeline, no surrogate (the papers' protocol; where a "
                 "non-differentiable part carries the decision, the sanity checks should flag masking)"),
        "eot_samples": int(eot_samples) if stochastic else 1,
        "detector_weight": float(detector_weight) if aware else 0.0,
    }
    return target


def _described(fn, **settings):
    """`fn` wrapped in a callable that carries `settings` (the model itself stays untouched)."""
    wrapped = lambda x: fn(x)  # noqa: E731
    wrapped.settings = settings
    return wrapped


def threat_model_pipelines(defended, surrogate=None, eot_samples=1, detector_weight=1.0):
    """{threat model: (attacked callable, scored callable)} for a defended classifier.

    none: the bare classifier attacked and scored (the undefended row); graybox: the bare
    classifier attacked, the defense scored; whitebox: end to end (BPDA, EOT, detector-aware);
    whitebox_no_bpda: end to end with plain gradients, no BPDA surrogate (the papers' protocol,
    the same as whitebox where the purifier is differentiable); transfer: an independent surrogate
    attacked, the defense scored. A bare classifier (no purifier, no detector) has no graybox or
    whitebox entry: they would repeat `none`. An adversarially trained classifier is attacked
    directly under graybox and whitebox (the same thing), and `none` is its `undefended`
    classifier, if it has one (else None: not available).
    """
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
        raise AttackConfigError(f"eot_samples must be an integer >= 1, got {eot_samples!r}")
    if not detector_weight >= 0:
        raise AttackConfigError(f"detector_weight must be >= 0 (0: the attack ignores the detector), got {detector_weight}")
    if getattr(defended, "robust_classifier", False):
        # adversarial training: the defense is the classifier, so gray-box and white-box coincide
        robust = _described(defended.classifier, attacked="the adversarially trained classifier itself "
                                                          "(gray-box = white-box: no purifier)")
        pipelines = {"whitebox": (robust, defended), "graybox": (robust, defended), "none": None}
        if defended.undefended is not None:
            pipelines["none"] = (_described(defended.undefended, attacked="plain classifier"), defended.undefended)
        if surrogate is not None:
            pipelines["transfer"] = (_described(surrogate, attacked="surrogate classifier"), defended)
        return pipelines
    classifier = _described(defended.classifier, attacked="classifier")
    pipelines = {"none": (classifier, defended.classifier)}
    if defended.purifier is not None or defended.detector is not None:
        pipelines["graybox"] = (classifier, defended)
        pipelines["whitebox"] = (whitebox_target(defended, eot_samples, detector_weight), defended)
        pipelines["whitebox_no_bpda"] = (whitebox_target(defended, eot_samples, detector_weight, use_bpda=False),
                                         defended)
    if surrogate is not None:
        pipelines["transfer"] = (_described(surrogate, attacked="surrogate classifier"), defended)
    return pipelines
