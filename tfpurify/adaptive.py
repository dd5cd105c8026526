"""Adaptive (white-box) attack targets: BPDA, EOT and detector-aware losses.

- BPDA (Athalye et al. 2018): the forward pass goes through the real purifier, the backward pass
  through `purifier.attack_surrogate` (e.g. straight-through rounding, a few unrolled steps).
- EOT: for stochastic purifiers, the attacked logits are log E[softmax] over `eot_samples`
  draws, so each gradient step averages over the randomness.
- Detector-aware: where a detector exists, the attack loss subtracts its adversarial score, so the
  attacker tries to fool the classifier and evade the detector at once.
"""

import tensorflow as tf

from tfpurify.defenses.base import Purifier

__all__ = ["bpda", "eot", "DetectorAwareTarget", "whitebox_target", "threat_model_pipelines"]


def bpda(purifier):
    """x -> purifier.purify(x) forward, with gradients of purifier.attack_surrogate(x)."""
    if type(purifier).attack_surrogate is Purifier.attack_surrogate:
        return lambda x: purifier.purify(x)  # differentiable as it is

    def forward_real_backward_surrogate(x):
        surrogate = purifier.attack_surrogate(x)
        return surrogate + tf.stop_gradient(purifier.purify(x) - surrogate)

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
    score: maximizing it fools the classifier while lowering the adversarial score.
    """

    def __init__(self, logits_fn, score_fn, weight=1.0):
        self.logits_fn, self.score_fn, self.weight = logits_fn, score_fn, float(weight)

    def __call__(self, x):
        score = tf.reshape(tf.cast(self.score_fn(x), tf.float32), [-1, 1])
        return tf.concat([self.logits_fn(x), self.weight * score], axis=1)

    @staticmethod
    def logits(outputs):
        return outputs[:, :-1]

    @staticmethod
    def attack_loss(labels, logits):  # cleverhans passes keywords: labels=, logits=
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits[:, :-1])
        return ce - logits[:, -1]


def whitebox_target(defended, eot_samples=1, detector_weight=1.0):
    """What a white-box attacker differentiates: classifier(BPDA(purifier)(x)), EOT, detector."""
    purify = (lambda x: x) if defended.purifier is None else bpda(defended.purifier)

    def logits(x):
        return defended.classifier(purify(x))

    stochastic = defended.purifier is not None and defended.purifier.stochastic
    target = eot(logits, eot_samples) if stochastic else logits
    if defended.detector is not None and detector_weight > 0:
        return DetectorAwareTarget(target, defended.detector.adversarial_score, detector_weight)
    return target


def threat_model_pipelines(defended, surrogate=None, eot_samples=1, detector_weight=1.0):
    """{threat model: (attacked callable, scored callable)} for a defended classifier.

    none: the bare classifier attacked and scored (the undefended row); graybox: the bare
    classifier attacked, the defense scored; whitebox: end to end (BPDA, EOT, detector-aware);
    transfer: an independent surrogate attacked, the defense scored. A bare classifier (no
    purifier, no detector) has no graybox or whitebox entry: they would repeat `none`.
    """
    pipelines = {"none": (defended.classifier, defended.classifier)}
    if defended.purifier is not None or defended.detector is not None:
        pipelines["graybox"] = (defended.classifier, defended)
        pipelines["whitebox"] = (whitebox_target(defended, eot_samples, detector_weight), defended)
    if surrogate is not None:
        pipelines["transfer"] = (surrogate, defended)
    return pipelines
