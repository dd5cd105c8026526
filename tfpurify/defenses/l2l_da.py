"""L2L-DA: adversarial training against a learned, recursive, stochastic attack generator
(Jang, Zhao, Hong & Lee, "Adversarial Defense via Learning to Generate Diverse Attacks", ICCV 2019).

A generator g_phi(x, y, z, delta_t, grad_t) proposes a step; the attack recurses T times (eq. 5):

    delta_{t+1} = Proj_eps(delta_t + eps_step * g_phi(x, y, z, delta_t, grad_t / ||grad_t||_F))
    x_adv_{t+1} = clip(x + delta_{t+1}, 0, 1),   delta_0 = 0,   eps_step = eps / 4,

delta kept as projected onto the eps-ball only (`pixel_clipped_delta` resets it to the perturbation
that survives the pixel clipping, our earlier form),

where grad_t is the classifier's loss gradient at x_adv_t. `train_step` is Algorithm 1: the batch
is duplicated with two latent draws z1, z2; the generator maximizes L_cls (the classifier loss
averaged over the T steps, eq. 6) + lambda * L_div (eq. 7, per example: `diversity_form`); the
classifier minimizes L(x) + L(x_adv_T). Both use SGD with momentum 0.9 and weight decay 1e-5, as the
paper's section 5.1; the classifier may start from a trained classifier run. The authors' code also clips
both players' gradients to global norm 1 and steps the classifier's learning rate x0.1 at half of its
updates; the paper states neither, so both are off by default and one field away (`clip_norm=1`,
`lr_decay_at=0.5`).

One deviation, measured: the gradient fed to the generator is grad / ||grad||_F (the paper) times
sqrt(number of pixels), i.e. unit root-mean-square per pixel. Without that constant the gradient
channel is ~30x smaller than the image channels beside it, and 60 training steps on Fashion-MNIST
left the learned attack at 68 % accuracy on a plain `cnn` (FGSM: 9 %); with it, 2 % after the
same 60 steps, with SGD or Adam alike.

The generator is a small U-Net: the image, delta_t and the normalized gradient are concatenated at
the input, z is tiled spatially and concatenated at the input and before the first two
convolutions, and the label enters through class-conditional batch normalization. The gradient fed
to the generator is treated as data (no second-order term), as in the authors' code.

Ablations of the paper's Table 1 are config fields: `recursive` (False: one step of size eps, the
L2L baseline's form), `diversity` (False: lambda = 0), `use_delta` and `use_label`.

The trained generator is also an attack, `l2l_da` in `tfpurify.attacks`, usable against any
model (`tfpurify eval --attacks l2l_da --l2l-da-run RUN`): as the paper does before using it as an
attack, the generator is first fine-tuned against its target (`finetune_steps`, default 20 updates of
Algorithm 1's objective on the batch being attacked, from the trained weights every batch; the paper
gives no number; 0: the generator as trained), then several z draws per example, the worst kept.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tfpurify import losses
from tfpurify.attacks import AttackDef, register_attack
from tfpurify.defenses.base import RobustClassifier, RobustClassifierConfig, apply_gradients, make_optimizer
from tfpurify.defenses.registry import load_defense, register
from tfpurify.errors import AttackConfigError, InputValidationError
from tfpurify.layers import ConditionalBatchNorm

__all__ = ["L2LDAConfig", "L2LDA", "AttackGenerator", "ClassifierStepDecay", "attack_trajectory", "attacker_objective"]

keras = tf.keras
layers = tf.keras.layers


@dataclasses.dataclass(frozen=True)
class L2LDAConfig(RobustClassifierConfig):
    """L2L-DA: eps, recursion steps, latent size, diversity weight, optimizers, ablation flags."""

    eps: float = 0.1
    steps: int = 10                  # T (paper and authors' code: 10)
    eps_step: float = None           # default eps / 4 (paper 5.1); eps when recursive is off
    z_dim: int = 8
    diversity_weight: float = 0.02   # lambda (authors' code: 0.02 MNIST, 0.5 CIFAR-10)
    diversity_form: str = "example"  # eq. 7 per example (paper); "batch_mean": our earlier, ~98x smaller form
    pixel_clipped_delta: bool = False  # True: delta reset to the pixel-clipped perturbation (our earlier eq. 5)
    generator_filters: int = 32
    learning_rate: float = 0.01      # classifier SGD
    generator_optimizer: str = "sgd"  # the paper's (momentum as below); or "adam"
    generator_learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5       # both players (paper 5.1)
    clip_norm: float = 0.0           # both players' gradients clipped to this global norm (0: not; authors' code: 1)
    lr_decay_at: float = 0.0         # the classifier's learning rate x lr_gamma after this fraction of the planned
    lr_gamma: float = 0.1            # updates (0: never; authors' code: x0.1 at half); the paper states neither
    recursive: bool = True
    diversity: bool = True
    use_delta: bool = True
    use_label: bool = True
    batch_size: int = 100            # paper: 100 (doubled inside the step, z1 and z2)
    epochs: int = 5

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.eps <= 1.0:
            raise InputValidationError(f"eps must be in (0, 1], got {self.eps}")
        self.require_positive("steps", "z_dim", "generator_filters", "generator_learning_rate")
        if self.eps_step is not None and not 0.0 < self.eps_step <= self.eps:
            raise InputValidationError(f"eps_step must be in (0, eps={self.eps}], got {self.eps_step}")
        if self.diversity_form not in ("example", "batch_mean"):
            raise InputValidationError(f"diversity_form must be example or batch_mean, got {self.diversity_form!r}")
        if self.generator_optimizer not in ("adam", "sgd"):
            raise InputValidationError(f"generator_optimizer must be adam or sgd, got {self.generator_optimizer!r}")
        for name in ("diversity_weight", "momentum", "weight_decay", "clip_norm"):
            if getattr(self, name) < 0:
                raise InputValidationError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.lr_decay_at < 1.0:
            raise InputValidationError(f"lr_decay_at must be in [0, 1) (0: never), got {self.lr_decay_at}")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise InputValidationError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")

    @property
    def n_steps(self):
        return self.steps if self.recursive else 1

    @property
    def step_size(self):
        if not self.recursive:
            return self.eps
        return self.eps / 4.0 if self.eps_step is None else self.eps_step


class AttackGenerator(keras.Model):
    """g_phi(x, y, z, delta, grad) -> a step in [-1, 1]^(H x W x C): a U-Net with z and y injected."""

    def __init__(self, image_shape, num_classes, z_dim=8, filters=32, use_delta=True, use_label=True, **kwargs):
        super().__init__(**kwargs)
        self.image_shape, self.z_dim = tuple(image_shape), int(z_dim)
        self.use_delta, self.use_label = use_delta, use_label
        f, channels = filters, image_shape[-1]
        # no biases before a normalization: it would remove them
        self.down = [layers.Conv2D(f, 3, padding="same", use_bias=False),
                     layers.Conv2D(2 * f, 4, strides=2, padding="same", use_bias=False),
                     layers.Conv2D(4 * f, 4, strides=2, padding="same", use_bias=False)]
        self.up = [layers.Conv2DTranspose(2 * f, 4, strides=2, padding="same", use_bias=False),
                   layers.Conv2DTranspose(f, 4, strides=2, padding="same", use_bias=False)]
        self.norms = [self._norm(num_classes) for _ in range(len(self.down) + len(self.up))]
        self.out = layers.Conv2D(channels, 3, padding="same", activation="tanh")

    def _norm(self, num_classes):
        # statistics of the global batch under tf.distribute: the attacker does not change with the device count
        return ConditionalBatchNorm(num_classes) if self.use_label else layers.BatchNormalization(synchronized=True)

    def _normalize(self, i, h, y, training):
        norm = self.norms[i]
        return tf.nn.relu(norm([h, y], training=training) if self.use_label else norm(h, training=training))

    def call(self, inputs, training=False):
        x, y, z, delta, grad = inputs
        tiled = lambda h: tf.tile(z[:, None, None, :], [1, tf.shape(h)[1], tf.shape(h)[2], 1])  # noqa: E731
        h = tf.concat([x, delta, grad] if self.use_delta else [x, grad], axis=-1)
        skips = []
        for i, conv in enumerate(self.down):  # z joins the input and the first two convolutions
            h = self._normalize(i, conv(tf.concat([h, tiled(h)], axis=-1) if i < 2 else h), y, training)
            skips.append(h)
        for j, deconv in enumerate(self.up):
            skip = skips[-2 - j]
            h = self._normalize(len(self.down) + j, deconv(h), y, training)
            h = tf.concat([h[:, :tf.shape(skip)[1], :tf.shape(skip)[2]], skip], axis=-1)  # crop: odd sizes
        return self.out(h)


def attack_trajectory(generator, model_fn, x, y, z, eps, eps_step, steps, training=False, pixel_clipped_delta=False):
    """Runs the recursion of eq. 5 against `model_fn` (images -> logits).

    Returns:
      (x_adv^(1..T) list, per-example loss of `model_fn` at each x_adv^(t) [T tensors of N],
      logits at x_adv^(T))
    """
    delta = tf.zeros_like(x)
    x_adv = x
    trajectory, step_losses = [], []
    with tf.GradientTape() as tape:  # the first gradient: at the clean input
        tape.watch(x_adv)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y, model_fn(x_adv))
    grad = tape.gradient(loss, x_adv)
    size = tf.sqrt(tf.cast(tf.reduce_prod(tf.shape(x)[1:]), x.dtype))
    for t in range(steps):
        # grad / ||grad||_F (the paper), times sqrt(pixels): unit root-mean-square per pixel, so the
        # gradient channel is on the scale of the image channels it is concatenated with
        norms = tf.sqrt(tf.reduce_sum(tf.square(grad), axis=[1, 2, 3], keepdims=True))
        direction = generator([x, y, z, delta, tf.stop_gradient(size * grad / (norms + 1e-12))], training=training)
        delta = tf.clip_by_value(delta + eps_step * direction, -eps, eps)  # Proj_S: the eps-ball only
        x_adv = tf.clip_by_value(x + delta, 0.0, 1.0)  # Proj_X
        if pixel_clipped_delta:  # our earlier form: the perturbation that is actually applied
            delta = x_adv - x
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = model_fn(x_adv)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        if t + 1 < steps:
            grad = tape.gradient(loss, x_adv)
        trajectory.append(x_adv)
        step_losses.append(loss)
    return trajectory, step_losses, logits


def attacker_objective(generator, model_fn, x, y, z_dim, eps, step_size, steps, diversity_form, *, training,
                       pixel_clipped_delta):
    """Algorithm 1, lines 2-8: the doubled batch (z1, z2), its trajectories against `model_fn`, L_cls and L_div.

    Returns:
      (x2, y2, x_adv^(T) of the doubled batch, L_cls (the mean loss over the T steps), L_div)
    """
    n = tf.shape(x)[0]
    z1, z2 = tf.random.normal([n, z_dim]), tf.random.normal([n, z_dim])
    x2, y2 = tf.concat([x, x], axis=0), tf.concat([y, y], axis=0)
    trajectory, step_losses, _ = attack_trajectory(generator, model_fn, x2, y2, tf.concat([z1, z2], axis=0), eps,
                                                   step_size, steps, training=training,
                                                   pixel_clipped_delta=pixel_clipped_delta)
    cls = tf.reduce_mean(tf.stack(step_losses))
    div = losses.diversity_loss([t[:n] for t in trajectory], [t[n:] for t in trajectory], z1, z2, form=diversity_form)
    return x2, y2, trajectory[-1], cls, div


class ClassifierStepDecay(keras.callbacks.Callback):
    """The classifier's learning rate, times `gamma` once `at` of the planned updates (epochs x steps per
    epoch) are done: the authors' code steps it x0.1 at half of its updates. Counted by the classifier
    optimizer's updates, so that a resumed run steps at the same update."""

    def __init__(self, learning_rate, gamma, at):
        super().__init__()
        self.learning_rate, self.gamma, self.at = float(learning_rate), float(gamma), float(at)
        self.boundary = None

    def on_train_begin(self, logs=None):
        steps = self.params.get("steps")
        if not steps:
            raise InputValidationError("lr_decay_at needs the number of steps per epoch, which this data set does "
                                       "not tell")
        self.boundary = int(self.at * self.params["epochs"] * steps)

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.c_optimizer
        decayed = int(optimizer.iterations) >= self.boundary
        optimizer.learning_rate.assign(self.learning_rate * (self.gamma if decayed else 1.0))


@register("l2l_da", L2LDAConfig)
class L2LDA(RobustClassifier):
    """A classifier adversarially trained against a learned recursive stochastic attack generator."""

    def __init__(self, config=L2LDAConfig(), input_shape=(28, 28, 1), **kwargs):
        super().__init__(config, input_shape, loss_names=("cls_loss", "adv_loss", "div_loss", "gen_loss"), **kwargs)
        self.generator = AttackGenerator(self.image_shape, config.num_classes, config.z_dim,
                                         config.generator_filters, config.use_delta, config.use_label,
                                         name="attack_generator")

    def call(self, x, training=False):
        if not self.generator.built:  # build the generator with the classifier, so weights save and load
            n = tf.shape(x)[0]
            self.generator([x, tf.zeros([n], tf.int64), tf.zeros([n, self.config.z_dim]), x, x], training=False)
        return self.classifier(x, training=training)

    def compile_for_training(self):
        c = self.config
        self.start_from_classifier_run()
        self.compile(
            c_optimizer=make_optimizer("sgd", c.learning_rate, c.momentum, c.weight_decay, c.clip_norm),
            g_optimizer=_generator_optimizer(c))

    def training_callbacks(self, validation=None):
        c = self.config
        return [ClassifierStepDecay(c.learning_rate, c.lr_gamma, c.lr_decay_at)] if c.lr_decay_at else []

    def compile(self, c_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.c_optimizer, self.g_optimizer = c_optimizer, g_optimizer

    def _attack(self, x, y, training):
        """Algorithm 1, lines 2-8 against this classifier (see `attacker_objective`)."""
        c = self.config
        return attacker_objective(self.generator, lambda images: self.classifier(images, training=False), x, y,
                                  c.z_dim, c.eps, c.step_size, c.n_steps, c.diversity_form, training=training,
                                  pixel_clipped_delta=c.pixel_clipped_delta)

    def generator_step(self, x, y):
        """Algorithm 1, lines 2-9: the generator ascends L_cls + lambda L_div; returns what the classifier needs."""
        weight = self.config.diversity_weight if self.config.diversity else 0.0
        with tf.GradientTape() as g_tape:
            x2, y2, x_adv, cls, div = self._attack(x, y, training=True)
            gen_loss = -(cls + weight * div)  # the generator maximizes L_cls + lambda L_div
        apply_gradients(self.g_optimizer, gen_loss, g_tape, self.generator.trainable_variables)
        return y2, tf.stop_gradient(x_adv), div, gen_loss

    def classifier_step(self, x, y, y2, x_adv):
        """Algorithm 1, line 10: the classifier descends L(x) + L(x_adv^(T))."""
        with tf.GradientTape() as c_tape:
            logits = self.classifier(x, training=True)
            adv_logits = self.classifier(x_adv, training=True)
            adv_loss = losses.classification_loss(y2, adv_logits)
            cls_loss = losses.classification_loss(y, logits) + adv_loss
        apply_gradients(self.c_optimizer, cls_loss, c_tape, self.classifier.trainable_variables)
        return logits, adv_logits, cls_loss, adv_loss

    def train_step(self, data):
        x, y = data
        y = tf.cast(y, tf.int64)
        y2, x_adv, div, gen_loss = self.generator_step(x, y)
        logits, adv_logits, cls_loss, adv_loss = self.classifier_step(x, y, y2, x_adv)
        return self.update_metrics({"cls_loss": cls_loss, "adv_loss": adv_loss, "div_loss": div, "gen_loss": gen_loss},
                                   y, logits, y2, adv_logits)

    def test_step(self, data):
        x, y = data
        y = tf.cast(y, tf.int64)
        weight = self.config.diversity_weight if self.config.diversity else 0.0
        x2, y2, x_adv, cls, div = self._attack(x, y, training=False)
        logits, adv_logits = self.classifier(x, training=False), self.classifier(x_adv, training=False)
        clean_loss, adv_loss = losses.classification_loss(y, logits), losses.classification_loss(y2, adv_logits)
        return self.update_metrics({"cls_loss": clean_loss + adv_loss, "adv_loss": adv_loss, "div_loss": div,
                                    "gen_loss": -(cls + weight * div)}, y, logits, y2, adv_logits)


# ---------------------------------------------------------------------- the learned attack


def _generator_optimizer(config):
    return make_optimizer(config.generator_optimizer, config.generator_learning_rate, config.momentum,
                          config.weight_decay, config.clip_norm)


def _load_generator(p):
    """The generator and its recursion settings from an l2l_da run (built once, outside tf.function); with
    `finetune_steps`, a copy of its weights to restore before each batch and the run's own optimizer."""
    model, config = load_defense(p["generator_run"])
    if not isinstance(model, L2LDA):
        raise AttackConfigError(f"{p['generator_run']} is not an l2l_da run")
    prepared = {"generator": model.generator, "steps": config.n_steps, "step_ratio": config.step_size / config.eps,
                "z_dim": config.z_dim, "pixel_clipped_delta": config.pixel_clipped_delta}
    if p["finetune_steps"]:
        generator = model.generator
        optimizer = _generator_optimizer(config)  # the run's own, as the generator trained
        optimizer.build(generator.trainable_variables)
        prepared["finetune"] = {
            "trained": [tf.Variable(v, trainable=False) for v in generator.variables], "optimizer": optimizer,
            "diversity_weight": config.diversity_weight if config.diversity else 0.0,
            "diversity_form": config.diversity_form}
    return prepared


def _finetune(model_fn, x, y, p):
    """The paper's fine-tuning of the learned attacker against its target: from the trained weights (restored,
    optimizer state cleared), `finetune_steps` generator updates ascending L_cls + lambda L_div (Algorithm 1's
    objective) against `model_fn` on the batch being attacked."""
    generator, tune = p["generator"], p["finetune"]
    for variable, trained in zip(generator.variables, tune["trained"]):
        variable.assign(trained)
    for variable in tune["optimizer"].variables:
        variable.assign(tf.zeros_like(variable))
    for _ in tf.range(p["finetune_steps"]):
        with tf.GradientTape() as tape:
            _, _, _, cls, div = attacker_objective(
                generator, model_fn, x, y, p["z_dim"], p["eps"], p["step_ratio"] * p["eps"], p["steps"],
                tune["diversity_form"], training=True, pixel_clipped_delta=p["pixel_clipped_delta"])
            loss = -(cls + tune["diversity_weight"] * div)
        apply_gradients(tune["optimizer"], loss, tape, generator.trainable_variables)


def _check(p):
    if not p.get("generator_run"):
        raise AttackConfigError("l2l_da needs a trained generator: an l2l_da run folder (--l2l-da-run RUN)")
    if p["norm"] != np.inf:
        raise AttackConfigError("l2l_da supports only norm inf")
    if not isinstance(p["draws"], int) or p["draws"] < 1:
        raise AttackConfigError(f"draws must be an integer >= 1, got {p['draws']!r}")
    if isinstance(p["finetune_steps"], bool) or not isinstance(p["finetune_steps"], int) or p["finetune_steps"] < 0:
        raise AttackConfigError(f"finetune_steps must be an integer >= 0, got {p['finetune_steps']!r}")


def _l2l_da_attack(model_fn, x, y, p, loss_fn):
    """`draws` latent samples per example, after fine-tuning the generator against `model_fn` (`finetune_steps`);
    keeps the first draw that fools the model, else the highest loss."""
    y = tf.cast(y, tf.int64)
    if p["finetune_steps"]:
        _finetune(model_fn, x, y, p)
    best, best_loss, best_fooled = x, tf.fill(tf.shape(y), -np.inf), tf.zeros(tf.shape(y), tf.bool)
    for _ in range(p["draws"]):
        z = tf.random.normal([tf.shape(x)[0], p["z_dim"]])
        trajectory, step_losses, logits = attack_trajectory(
            p["generator"], model_fn, x, y, z, p["eps"], p["step_ratio"] * p["eps"], p["steps"],
            pixel_clipped_delta=p["pixel_clipped_delta"])
        fooled = tf.not_equal(tf.argmax(logits, axis=1), y)
        better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (step_losses[-1] > best_loss))
        best = tf.where(better[:, None, None, None], trajectory[-1], best)
        best_loss = tf.where(better, step_losses[-1], best_loss)
        best_fooled = best_fooled | fooled
    # gradient evaluations of the target per example: the draws' steps, and per fine-tuning step two trajectories
    return best, tf.fill(tf.shape(y), float(p["draws"] * p["steps"] + 2 * p["finetune_steps"] * (p["steps"] + 1)))


register_attack("l2l_da", AttackDef(
    _l2l_da_attack,
    {"eps": 0.1, "norm": np.inf, "clip_min": 0.0, "clip_max": 1.0, "targeted": False, "generator_run": None,
     "draws": 10, "finetune_steps": 20},
    prepare=_load_generator, check=_check))
