"""PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks"): the baseline every purifier in this package is measured against.

Each training step crafts PGD examples against the classifier as it is at that step (k steps of
`eps_iter` inside the L-inf ball of radius `eps`, from a uniform random start, the classifier in
inference mode), then updates the classifier on
`clean_weight * L(x) + adv_weight * L(x_adv)`, `clean_weight` defaulting to `1 - adv_weight` (Madry:
`adv_weight` 1; Goodfellow et al.'s half-and-half mix: 0.5; L2L-DA's classifier loss L(x) + L(x_adv):
both 1), with Adam (default) or, as L2L-DA's paper trains its classifier, SGD with momentum and weight
decay (`optimizer`, `momentum`, `weight_decay`), so the two can be compared with the same optimiser
and loss. The PGD loop is tfpurify's graph loop (`attacks.loop.iterative_gradient`,
no early exit), so one traced step holds one copy of the model however large k is. It may start
from a trained classifier run (`classifier`), which it fine-tunes.
"""

import dataclasses

import tensorflow as tf

from tfpurify import losses
from tfpurify.attacks.loop import iterative_gradient
from tfpurify.defenses.base import RobustClassifier, RobustClassifierConfig, apply_gradients, make_optimizer
from tfpurify.defenses.registry import register
from tfpurify.errors import InputValidationError

__all__ = ["PGDATConfig", "PGDAdversarialTraining", "pgd_examples"]


@dataclasses.dataclass(frozen=True)
class PGDATConfig(RobustClassifierConfig):
    """PGD adversarial training (Madry et al.): eps, PGD steps and step size, clean/adversarial mix."""

    eps: float = 0.1
    nb_iter: int = 10
    eps_iter: float = None  # default eps / 4 (tfpurify's PGD default)
    rand_init: bool = True
    adv_weight: float = 1.0  # loss = clean_weight L(x) + adv_weight L(x_adv)
    clean_weight: float = None  # default 1 - adv_weight
    optimizer: str = "adam"   # or "sgd" (with momentum)
    momentum: float = 0.9     # sgd only
    weight_decay: float = 0.0
    epochs: int = 5

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.eps <= 1.0:
            raise InputValidationError(f"eps must be in (0, 1], got {self.eps}")
        self.require_positive("nb_iter")
        if self.eps_iter is not None and not 0.0 < self.eps_iter <= self.eps:
            raise InputValidationError(f"eps_iter must be in (0, eps={self.eps}], got {self.eps_iter}")
        if not 0.0 <= self.adv_weight <= 1.0:
            raise InputValidationError(f"adv_weight must be in [0, 1], got {self.adv_weight}")
        if self.clean_weight is not None and not 0.0 <= self.clean_weight <= 1.0:
            raise InputValidationError(f"clean_weight must be in [0, 1], got {self.clean_weight}")
        if self.optimizer not in ("adam", "sgd"):
            raise InputValidationError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        for name in ("momentum", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise InputValidationError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def clean_share(self):
        """The weight of L(x) in the loss."""
        return 1.0 - self.adv_weight if self.clean_weight is None else self.clean_weight

    @property
    def step_size(self):
        return self.eps / 4.0 if self.eps_iter is None else self.eps_iter


def pgd_examples(classifier, x, y, eps, eps_iter, nb_iter, rand_init=True):
    """PGD examples against `classifier` in inference mode, no early exit, no gradient to its weights."""
    x_adv, _, _ = iterative_gradient(
        lambda images: classifier(images, training=False), x, y, eps, eps_iter, nb_iter,
        rand_init=rand_init, early_exit=False)
    return tf.stop_gradient(tf.clip_by_value(x_adv, 0.0, 1.0))


@register("pgd_at", PGDATConfig)
class PGDAdversarialTraining(RobustClassifier):
    """A reference classifier trained on PGD examples crafted against itself each step."""

    def __init__(self, config=PGDATConfig(), input_shape=(28, 28, 1), **kwargs):
        super().__init__(config, input_shape, loss_names=("loss", "clean_loss", "adv_loss"), **kwargs)

    def compile_for_training(self):
        self.start_from_classifier_run()
        c = self.config
        self.compile(optimizer=make_optimizer(c.optimizer, c.learning_rate, c.momentum, c.weight_decay))

    def _objective(self, x, y, training):
        """PGD examples on the current weights, then the mixed loss (clean and adversarial logits too)."""
        c = self.config
        x_adv = pgd_examples(self.classifier, x, y, c.eps, c.step_size, c.nb_iter, c.rand_init)
        logits, adv_logits = self.classifier(x, training=training), self.classifier(x_adv, training=training)
        clean_loss = losses.classification_loss(y, logits)
        adv_loss = losses.classification_loss(y, adv_logits)
        loss = c.clean_share * clean_loss + c.adv_weight * adv_loss
        return {"loss": loss, "clean_loss": clean_loss, "adv_loss": adv_loss}, logits, adv_logits

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            values, logits, adv_logits = self._objective(x, y, training=True)
        apply_gradients(self.optimizer, values["loss"], tape, self.classifier.trainable_variables)
        return self.update_metrics(values, y, logits, y, adv_logits)

    def test_step(self, data):
        x, y = data
        values, logits, adv_logits = self._objective(x, y, training=False)
        return self.update_metrics(values, y, logits, y, adv_logits)
