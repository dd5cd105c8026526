"""Cowboy (paper 001: Santhanam & Grnarova 2018, "Defending against adversarial attacks by leveraging
an entire GAN"): a GAN's discriminator detects adversarial inputs, and a latent search that also
uses the discriminator cleans them.

- GAN: a DCGAN-family generator G(z), z ~ N(0, I), and discriminator D(x) (a logit), trained on
  clean images with the standard game (eq. 1) for the paper's `train_steps` (2K generator steps on
  MNIST and Fashion-MNIST, 40K on SVHN and CIFAR-10; `epochs` only bounds it). No batch norm in either network (paper 4: batch
  norm and dropout only in the classifier); one-sided label smoothing and spectral norm in D are
  config options, off by default (paper 4.3: no stabilizing tricks).
- Detection (paper 3.3-3.4): `adversarial_score(x) = -log D(x)`. Two thresholds, both measured
  when training ends and kept in `calibration.json`: a target false-positive rate on clean
  validation images, and the paper's L^p average of D over FGSM examples made on the validation
  images against the classifier run named in `classifier` (`threshold_rule` picks which flags).
- Detect, then clean (the paper's pipeline, `clean_only_detected`, default on): only inputs the
  detector flags are cleaned; the rest reach the classifier as they are (`--clean-only-detected
  false` cleans everything, our earlier default).
- Cleaning (Algorithm 1, eq. 4): minimize L(z) = ||G(z) - x||^2 / (2 sigma^2) - log D(G(z)) by
  gradient descent in z from `clean_restarts` random starts per image, tiled into one batch,
  keeping per image the restart with the lowest L. `mode="defense_gan"` drops the D term
  (L = ||G(z) - x||^2, Samangouei et al. 2018). The search is one graph loop, so it runs inside
  an exported SavedModel's signatures.

Faster than the paper's 5000 steps (config fields, all changeable at eval time without
retraining): Adam in z, a warm start (each restart begins at the best of several random codes,
scored in forward passes only), per-example early stopping (`patience`) and pruning to the best
restart after `prune_after` steps. Pixels are in [0, 1] here, in [-1, 1] in the paper: the squared
error is 4x smaller, so our sigma s is the paper's sigma 2s (sigma 0.5 here = 1 there).

Adaptive evaluation: the random starts make cleaning stochastic (EOT over z0) unless
`cleaning_seed` fixes them (the same codes for every image, so an image's cleaning does not depend
on the batch it is served in); BPDA treats cleaning as the identity by default (Athalye et al. 2018
broke Defense-GAN that way), or differentiates the last `bpda_unroll` descent steps from the
found code. The served cleaning is itself differentiable: backpropagating through `purify` (or an
exported SavedModel) gives the exact gradient through every step of the search, with memory bounded
by recomputing blocks of `grad_checkpoint` steps (`tf.recompute_grad`).
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from tfpurify import losses, metrics
from tfpurify.attacks import run_attack
from tfpurify.attacks.loop import on_active
from tfpurify.classifiers import load_classifier
from tfpurify.config import runtime_field
from tfpurify.defenses.base import DefenseConfig, Detector, Purifier, adversarial_scores, apply_gradients
from tfpurify.defenses.registry import register
from tfpurify.errors import InputValidationError
from tfpurify.layers import LeakyReLU

__all__ = ["CowboyConfig", "Cowboy"]

keras = tf.keras
layers = tf.keras.layers
_runtime = runtime_field  # changes only how a trained run is used: `tfpurify eval` can override it


@dataclasses.dataclass(frozen=True)
class CowboyConfig(DefenseConfig):
    """Cowboy: a DCGAN whose discriminator detects and whose latent search with -log D cleans."""

    z_dim: int = 64
    base_filters: int = 32
    label_smoothing: float = 0.0   # one-sided, on D's real targets (0: the paper's plain game)
    spectral_norm: bool = False    # on D's layers (off: the paper's plain game)
    learning_rate: float = 2e-4
    beta_1: float = 0.5
    batch_size: int = 64
    # the paper's GAN schedule: generator steps (None: 2K on MNIST and Fashion-MNIST, 40K on SVHN and
    # CIFAR-10; 0: every step of `epochs`); the run that trained ~16.9K steps used 0 and 20 epochs
    train_steps: int = None
    epochs: int = 100                       # at most (`train_steps` ends training first)
    # cleaning (Algorithm 1); each of these can be changed at eval time
    mode: str = _runtime("cowboy")          # "cowboy" (eq. 4) or "defense_gan" (no D term)
    sigma: float = _runtime(1.0)            # eq. 4's sigma, pixels in [0, 1] (the paper's [-1, 1]: 2 sigma)
    clean_steps: int = _runtime(50)         # descent steps per restart (paper: 5000)
    clean_restarts: int = _runtime(3)       # random starts per image (Defense-GAN: 10)
    z_optimizer: str = _runtime("adam")     # "adam" or "sgd" (momentum, lr x0.1 after 80 % of the steps)
    z_learning_rate: float = _runtime(0.05)
    z_momentum: float = _runtime(0.7)       # sgd only (Defense-GAN: 0.7)
    warm_start: int = _runtime(16)          # random codes scored per image before descending (0: off)
    patience: int = _runtime(0)             # stop an example after this many steps without improvement
    prune_after: int = _runtime(0)          # after this many steps keep only each image's best restart
    clean_only_detected: bool = _runtime(True)  # the paper's detect-then-clean (False: clean every input)
    cleaning_seed: int = _runtime(None)     # the same starting codes for every image (deterministic); None: fresh
    bpda_unroll: int = _runtime(0)          # white-box: differentiate this many steps from the found code
    grad_checkpoint: int = _runtime(10)     # exact gradient: steps per block recomputed backward (0: keep all)
    # detection threshold (paper 3.4)
    threshold_rule: str = "fpr"    # "fpr" (target FPR on clean validation images) or "paper"
    threshold_p: float = 1.0       # the L^p average of D over adversarial examples (1: the mean)
    threshold_eps: float = 0.1     # FGSM budget of those examples
    classifier: str = None         # classifier run they are made on (needed by the paper's rule)

    def __post_init__(self):
        super().__post_init__()
        if self.train_steps is None:  # the paper's, per data set
            object.__setattr__(self, "train_steps", 2000 if self.dataset in ("mnist", "fashion_mnist") else 40000)
        if self.train_steps < 0:
            raise InputValidationError(f"train_steps must be >= 0 (0: every step of epochs), got {self.train_steps}")
        if self.mode not in ("cowboy", "defense_gan"):
            raise InputValidationError(f"mode must be cowboy or defense_gan, got {self.mode!r}")
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma > 0):
            raise InputValidationError(f"sigma must be a finite number > 0 (mode defense_gan drops the D term), "
                                       f"got {self.sigma!r}")
        for name in ("clean_steps", "warm_start", "patience", "prune_after", "bpda_unroll", "grad_checkpoint"):
            if getattr(self, name) < 0:
                raise InputValidationError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.require_positive("z_dim", "base_filters", "clean_restarts", "z_learning_rate", "threshold_p")
        if self.z_optimizer not in ("adam", "sgd"):
            raise InputValidationError(f"z_optimizer must be adam or sgd, got {self.z_optimizer!r}")
        if not 0.0 <= self.z_momentum < 1.0:
            raise InputValidationError(f"z_momentum must be in [0, 1), got {self.z_momentum}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise InputValidationError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.threshold_rule not in ("fpr", "paper"):
            raise InputValidationError(f"threshold_rule must be fpr or paper, got {self.threshold_rule!r}")
        if self.threshold_rule == "paper" and self.classifier is None:
            raise InputValidationError("threshold_rule paper needs --classifier RUN (FGSM examples are made on it)")
        if not 0.0 < self.threshold_eps <= 1.0:
            raise InputValidationError(f"threshold_eps must be in (0, 1], got {self.threshold_eps}")

    @property
    def passes_per_image(self):
        """Generator passes per image at most: the warm start plus every descent step of every restart."""
        rounds = math.ceil(self.warm_start / self.clean_restarts) if self.warm_start else 0
        return (rounds + self.clean_steps) * self.clean_restarts


class _StopAfterSteps(keras.callbacks.Callback):
    """Ends training once the generator has taken `train_steps` steps (a resumed run counts its earlier ones)."""

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.g_optimizer.iterations) >= self.model.config.train_steps:
            self.model.stop_training = True


def _check_shape(input_shape):
    if input_shape[0] != input_shape[1] or input_shape[0] % 4:
        raise InputValidationError(f"Cowboy needs square images with a side divisible by 4, got {input_shape}")
    return input_shape[0] // 4


def build_generator(input_shape, cfg):
    """G(z): dense -> two stride-2 transposed convolutions (ReLU) -> sigmoid image in [0, 1] (DCGAN, no BN)."""
    k, f = _check_shape(input_shape), cfg.base_filters
    z = keras.Input((cfg.z_dim,))
    h = layers.Reshape((k, k, 4 * f))(layers.Dense(k * k * 4 * f, activation="relu")(z))
    h = layers.Conv2DTranspose(2 * f, 5, 2, padding="same", activation="relu")(h)
    h = layers.Conv2DTranspose(f, 5, 2, padding="same", activation="relu")(h)
    image = layers.Conv2D(input_shape[-1], 5, padding="same", activation="sigmoid")(h)
    return keras.Model(z, image, name="generator")


def build_discriminator(input_shape, cfg):
    """D(x): two stride-2 convolutions (LeakyReLU 0.2) -> a logit (DCGAN, no BN)."""
    _check_shape(input_shape)
    f = cfg.base_filters
    wrap = layers.SpectralNormalization if cfg.spectral_norm else (lambda layer: layer)
    x = keras.Input(input_shape)
    h = LeakyReLU(0.2)(wrap(layers.Conv2D(f, 5, 2, padding="same"))(x))
    h = LeakyReLU(0.2)(wrap(layers.Conv2D(2 * f, 5, 2, padding="same"))(h))
    logit = wrap(layers.Dense(1))(layers.Flatten()(h))
    return keras.Model(x, logit, name="discriminator")


@register("cowboy", CowboyConfig)
class Cowboy(Purifier, Detector):
    """Generator and discriminator of a GAN; detection by -log D(x), cleaning by latent search."""

    def __init__(self, config=CowboyConfig(), input_shape=(28, 28, 1), **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.image_shape = tuple(input_shape)
        self.generator = build_generator(self.image_shape, config)
        self.discriminator = build_discriminator(self.image_shape, config)
        self._init_detector()
        names = ("d_loss", "g_loss", "d_real", "d_fake")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    # The served cleaning is differentiable end to end (the search's gradient in x is exact): white-box
    # evaluations attack it with its BPDA surrogate and with the exact gradient (`adaptive`, bpda auto).
    exact_gradient = True

    @property
    def stochastic(self):
        """Random starting codes: white-box attacks average over them (EOT) unless a seed fixes them."""
        return self.config.cleaning_seed is None

    # ------------------------------------------------------------------ training (eq. 1)
    def compile_for_training(self):
        def adam():
            return keras.optimizers.Adam(self.config.learning_rate, beta_1=self.config.beta_1)

        self.compile(d_optimizer=adam(), g_optimizer=adam())

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

    def training_callbacks(self, validation=None):
        return [_StopAfterSteps()] if self.config.train_steps else []

    def _losses_on(self, x, training):
        z = tf.random.normal([tf.shape(x)[0], self.config.z_dim])
        fake = self.generator(z, training=training)
        real_logits = self.discriminator(x, training=training)
        fake_logits = self.discriminator(fake, training=training)
        d_loss = losses.minimax_discriminator_loss(real_logits, fake_logits, label_smoothing=self.config.label_smoothing)
        g_loss = losses.non_saturating_generator_loss(fake_logits)
        return d_loss, g_loss, real_logits, fake_logits

    def train_step(self, x):
        with tf.GradientTape() as d_tape, tf.GradientTape() as g_tape:
            d_loss, g_loss, real_logits, fake_logits = self._losses_on(x, training=True)
        apply_gradients(self.d_optimizer, d_loss, d_tape, self.discriminator.trainable_weights)
        apply_gradients(self.g_optimizer, g_loss, g_tape, self.generator.trainable_weights)
        return self._track(d_loss, g_loss, real_logits, fake_logits)

    def test_step(self, x):
        return self._track(*self._losses_on(x, training=False))

    def _track(self, d_loss, g_loss, real_logits, fake_logits):
        return self.track({"d_loss": d_loss, "g_loss": g_loss, "d_real": tf.reduce_mean(tf.sigmoid(real_logits)),
                           "d_fake": tf.reduce_mean(tf.sigmoid(fake_logits))})

    def call(self, x, training=False):
        """D's logit (and G built): a Keras call must not run the whole search; `purify` cleans."""
        self.generator(tf.zeros([1, self.config.z_dim]), training=training)
        return self.discriminator(x, training=training)

    # ------------------------------------------------------------------ detection (paper 3.3-3.4)
    def adversarial_score(self, x):
        """-log D(x), shape [N]: higher = less like the training data."""
        return losses.discriminator_score(self.discriminator(x, training=False))

    def calibrate(self, x_clean, target_fpr=0.05, x_adv=None):
        """Measures both thresholds on validation images and keeps the one `threshold_rule` names.

        The target-FPR threshold as every detector (`Detector.calibrate`); with `classifier` set,
        also the paper's: FGSM at `threshold_eps` on `x_clean` against that classifier, then the
        L^p average (p = `threshold_p`) of D over those examples; an input is flagged when D falls
        below it, i.e. when -log D rises above -log of it.
        """
        result = super().calibrate(x_clean, target_fpr, x_adv)
        result = {**result, "rule": self.config.threshold_rule, "threshold_fpr": result["threshold"]}
        if self.config.classifier is not None:
            classifier, _ = load_classifier(self.config.classifier)
            x_fgsm = run_attack("fgsm", classifier, x_clean, eps=self.config.threshold_eps)
            d = np.exp(-adversarial_scores(self, x_fgsm).astype(np.float64))  # D(x) back from -log D(x)
            p = self.config.threshold_p
            paper = float(-np.log(max(np.mean(d ** p) ** (1.0 / p), 1e-12)))
            clean_scores = adversarial_scores(self, x_clean)
            result.update(threshold_paper=paper, fpr_paper=metrics.flag_rate(clean_scores, paper),
                          paper_attack={"attack": "fgsm", "eps": self.config.threshold_eps, "p": p,
                                        "classifier": self.config.classifier})
            if self.config.threshold_rule == "paper":
                self.threshold.assign(paper)
                result.update(threshold=paper, fpr=result["fpr_paper"])
                if x_adv is not None:  # the detection rate at the threshold in use
                    result.update(tpr=metrics.flag_rate(adversarial_scores(self, x_adv), paper))
        self.calibration = result
        return result

    # ------------------------------------------------------------------ cleaning (Algorithm 1, eq. 4)
    def _draw(self, n, salt):
        """Starting codes for n images, [n * R, z_dim] (row i * R + r is restart r of image i).

        Fresh each call; with `cleaning_seed`, the same R codes for every image, so that an image's
        cleaning is one function of that image alone, whichever batch serves or attacks it.
        """
        cfg = self.config
        if cfg.cleaning_seed is None:
            return tf.random.normal([n * cfg.clean_restarts, cfg.z_dim])
        codes = tf.random.stateless_normal([cfg.clean_restarts, cfg.z_dim], seed=[cfg.cleaning_seed, salt])
        return tf.tile(codes, [n, 1])

    def search_loss(self, z, x):
        """L(z) per row: eq. 4 (cowboy) or ||G(z) - x||^2 (defense_gan)."""
        generated = self.generator(z, training=False)
        logits = self.discriminator(generated, training=False) if self.config.mode == "cowboy" else None
        return losses.latent_search_loss(x, generated, logits, self.config.sigma)

    def search(self, x):
        """The latent search on a batch: (best code z* [N, z_dim], its loss [N], generator passes [N]).

        Per image, the restart with the lowest L wins.
        """
        n, restarts, d = tf.shape(x)[0], self.config.clean_restarts, self.config.z_dim
        z_best, loss_best, passes = self.search_rows(x)
        loss_best = tf.reshape(loss_best, [n, restarts])
        z_star = tf.gather(tf.reshape(z_best, [n, restarts, d]), tf.argmin(loss_best, axis=1), batch_dims=1)
        return z_star, tf.reduce_min(loss_best, axis=1), tf.reduce_sum(tf.reshape(passes, [n, restarts]), axis=1)

    def search_rows(self, x):
        """Every restart's result: (best code [N * R, z_dim], its loss [N * R], passes [N * R]).

        Restarts are tiled into the batch (row i * R + r is restart r of image i); only rows still
        descending go through G and D (early stopping and pruning save real compute).
        """
        cfg = self.config
        n, restarts, d = tf.shape(x)[0], cfg.clean_restarts, cfg.z_dim
        rows = n * restarts
        x_rows = tf.repeat(x, restarts, axis=0)
        z = self._draw(n, 0)
        passes = tf.zeros([rows])
        if cfg.warm_start:  # each restart starts at the best of `rounds` random codes
            loss = self.search_loss(z, x_rows)
            for r in range(1, math.ceil(cfg.warm_start / restarts)):
                candidate = self._draw(n, r)
                candidate_loss = self.search_loss(candidate, x_rows)
                better = candidate_loss < loss
                z, loss = tf.where(better[:, None], candidate, z), tf.where(better, candidate_loss, loss)
            passes += float(math.ceil(cfg.warm_start / restarts))

        def loss_and_grad(codes, images):
            if not tf.executing_eagerly():  # also where `tf.recompute_grad` has stopped the tapes
                value = self.search_loss(codes, images)
                return value, tf.gradients(tf.reduce_sum(value), codes)[0]
            with tf.GradientTape() as tape:
                tape.watch(codes)
                value = self.search_loss(codes, images)
                total = tf.reduce_sum(value)
            return value, tape.gradient(total, codes)

        b1, b2 = 0.9, 0.999

        def body(i, z, m, v, z_best, loss_best, stall, active, passes, x_rows):
            loss, grad = on_active(active, loss_and_grad, z, x_rows)
            improved = tf.logical_and(active, loss < loss_best - 1e-4 * tf.abs(loss_best))
            z_best = tf.where(improved[:, None], z, z_best)
            loss_best = tf.where(improved, loss, loss_best)
            stall = tf.where(improved, tf.zeros_like(stall), stall + 1)
            t = tf.cast(i + 1, tf.float32)
            if cfg.z_optimizer == "adam":
                m_new, v_new = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * tf.square(grad)
                step = cfg.z_learning_rate * (m_new / (1 - b1 ** t)) / (tf.sqrt(v_new / (1 - b2 ** t)) + 1e-8)
            else:  # Defense-GAN: momentum SGD, learning rate x0.1 after 80 % of the steps
                m_new, v_new = cfg.z_momentum * m + grad, v
                lr = tf.where(tf.cast(i, tf.float32) >= 0.8 * cfg.clean_steps, 0.1, 1.0) * cfg.z_learning_rate
                step = lr * m_new
            act = active[:, None]
            z, m, v = tf.where(act, z - step, z), tf.where(act, m_new, m), tf.where(act, v_new, v)
            passes += tf.cast(active, tf.float32)
            if cfg.patience:
                active = tf.logical_and(active, stall < cfg.patience)
            if cfg.prune_after:  # keep each image's best restart only
                best_row = tf.one_hot(tf.argmin(tf.reshape(loss_best, [n, restarts]), axis=1), restarts, on_value=True,
                                      off_value=False, dtype=tf.bool)
                prune = tf.logical_and(tf.equal(i + 1, cfg.prune_after), tf.logical_not(tf.reshape(best_row, [-1])))
                active = tf.logical_and(active, tf.logical_not(prune))
            return i + 1, z, m, v, z_best, loss_best, stall, active, passes

        def steps(first, last):
            """Steps first..last-1 as one graph loop on float state (what `tf.recompute_grad` takes)."""
            def run(z, m, v, z_best, loss_best, stall, active, passes, images):
                def cond(i, *state):
                    return tf.logical_and(i < last, tf.reduce_any(state[6]))

                state = (tf.constant(first), z, m, v, z_best, loss_best, tf.cast(stall, tf.int32), active > 0.5,
                         passes)
                out = tf.while_loop(cond, lambda *s: body(*s, images), state)[1:]
                return (*out[:5], tf.cast(out[5], tf.float32), tf.cast(out[6], tf.float32), out[7])

            return run

        if cfg.clean_steps:
            zeros = tf.zeros_like(z)
            start_loss = loss if cfg.warm_start else tf.fill([rows], np.finfo(np.float32).max)
            state = (z, zeros, zeros, z, start_loss, tf.zeros([rows]), tf.ones([rows]), passes)
            # The served search is differentiable end to end (the exact gradient of an attacker that
            # backpropagates through the loop); its memory is bounded by recomputing each block of
            # `grad_checkpoint` steps in the backward pass instead of keeping every step's activations.
            checkpoint = cfg.grad_checkpoint and not tf.executing_eagerly()  # eagerly: every step kept
            block = cfg.grad_checkpoint if checkpoint else cfg.clean_steps
            for first in range(0, cfg.clean_steps, block):
                run = steps(first, min(first + block, cfg.clean_steps))
                state = (tf.recompute_grad(run) if checkpoint else run)(*state, x_rows)
            _, _, _, z_best, loss_best, _, _, passes = state
        else:
            z_best, loss_best = z, loss if cfg.warm_start else self.search_loss(z, x_rows)
        return z_best, loss_best, passes

    def clean(self, x):
        """G(z*) for every image of the batch (Algorithm 1), differentiable through the whole search.

        The gradient of G(z*) with respect to x is the exact one of the loop as it runs: through every
        descent step's dependence on x (second order, through the gradient in z), the warm start's and
        the restarts' choices held fixed. Its memory is bounded by `grad_checkpoint`. Called eagerly,
        it runs as one traced function (traced once per batch shape).
        """
        if not tf.executing_eagerly():
            return self._clean(x)
        if getattr(self, "_traced_clean", None) is None:
            object.__setattr__(self, "_traced_clean", tf.function(self._clean))  # untracked: not saved
        return self._traced_clean(x)

    def _clean(self, x):
        return self.generator(self.search(x)[0], training=False)

    def purify(self, x, training=False):
        x = tf.convert_to_tensor(x, tf.float32)
        if not self.config.clean_only_detected:
            return self.clean(x)
        flagged = self.is_adversarial(x)
        cleaned = on_active(flagged, lambda images: (self.clean(images),), x)[0]
        return tf.where(flagged[:, None, None, None], cleaned, x)

    def attack_surrogate(self, x, unroll=None):
        """BPDA: the identity (default), or `unroll` (default `bpda_unroll`) descent steps from the found
        code, differentiated."""
        unroll = self.config.bpda_unroll if unroll is None else unroll
        if not unroll:
            return x
        return self._unrolled(x, tf.stop_gradient(self.search(tf.stop_gradient(x))[0]), unroll)

    def purify_and_surrogate(self, x, unroll=None):
        """BPDA's two halves. The forward pass searches on a stopped input (the surrogate carries the
        gradient; the tape keeps nothing of the search); with `unroll` steps (default `bpda_unroll`) one
        search serves both: G(z*) forward, the steps unrolled from z* backward (with `clean_only_detected`
        the detector gates the forward pass: two calls)."""
        x = tf.convert_to_tensor(x, tf.float32)
        unroll = self.config.bpda_unroll if unroll is None else unroll
        if not unroll or self.config.clean_only_detected:
            return self.purify(tf.stop_gradient(x)), self.attack_surrogate(x, unroll)
        z = tf.stop_gradient(self.search(tf.stop_gradient(x))[0])
        return self.generator(z, training=False), self._unrolled(x, z, unroll)

    def _unrolled(self, x, z, steps):
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(z)
                total = tf.reduce_sum(self.search_loss(z, x))
            z = z - self.config.z_learning_rate * tape.gradient(total, z)
        return self.generator(z, training=False)

    def pictures(self, x):
        x = np.asarray(x)
        return {"cleaning": {"input": x, "cleaned": self.purify(x).numpy()},
                "samples": {"G(z)": self.generator(tf.random.normal([len(x), self.config.z_dim])).numpy()}}

    def get_config(self):
        return dataclasses.asdict(self.config)
