"""FBGAN: featurized bidirectional GAN purifier (paper 000, "Featurized Bidirectional GAN:
adversarial defense via adversarially learned semantic inference", ICLR 2019 submission).

An encoder E maps an image to a small semantic code z = (one categorical code, n continuous
codes); a generator G maps codes back to images; a discriminator D(x, z) tells real pairs
(x, E(x)) from fake pairs (G(z), z) and (G(E(x)), E(x)); an auxiliary head Q sharing D's image
branch predicts the codes of G(z) (the mutual-information gap, eq. 5). Purification is
x~ = G(E(x)); with `white_box_regularization` (paper 4.2.2) the categorical code becomes its
one-hot argmax and the continuous codes are clipped to [-1, 1] first.

The paper's choices are the defaults: no auto-encoder term on MNIST and Fashion-MNIST (the paper
adds ||G(E(x)) - x||^2 only on complicated data such as SVHN, for about the last 1 % of the steps:
`ae_fraction` 0.01 there), and E minimising eq. 6's reconstructed-pair term like G
(`encoder_adversarial`). Deviations from the paper, all config fields: `latent_cycle_weight`
(default 1) adds the MI gap of E itself on generated images, E(G(z)) ~ z, which the BiGAN optimum
implies and which makes E invert G within a CPU budget (0 = paper); `ae_fraction` > 0 on
Fashion-MNIST (our earlier default 0.2) adds the AE term there; E and G use weight normalization
without data-dependent init; D uses dropout and no normalization.

With a `classifier` run named (used for nothing else), every epoch's `history.csv` row holds the
categorical code's `purity` and `generated_accuracy` (G(one-hot k) classified as category k's
majority label) on a validation slice, and the AE term's switch-on step prints both: a class that
migrates out of the categorical code shows while training.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tfpurify import losses
from tfpurify.classifiers import load_classifier
from tfpurify.config import runtime_field
from tfpurify.defenses.base import DefenseConfig, Purifier, apply_gradients
from tfpurify.defenses.registry import register
from tfpurify.errors import InputValidationError
from tfpurify.layers import LeakyReLU, weight_norm

__all__ = ["FBGANConfig", "FBGAN"]

keras = tf.keras
layers = tf.keras.layers


@dataclasses.dataclass(frozen=True)
class FBGANConfig(DefenseConfig):
    """FBGAN featurized bidirectional GAN: codes, sizes, loss weights (paper eq. 5-6)."""

    n_categories: int = 10
    n_continuous: int = 8          # paper: 4 for MNIST, 8 for Fashion-MNIST
    base_filters: int = 32
    d_dropout: float = 0.2
    lambda_mi: float = 1.0         # weight of the MI gap (paper: 1)
    continuous_weight: float = 1.0  # C in eq. 5
    latent_cycle_weight: float = 1.0
    # eq. 6: E minimises log(1 - D(G(E(x)), E(x))) as G does (False: E trains on feature matching and
    # the latent cycle only, our earlier default)
    encoder_adversarial: bool = True
    # auto-encoder term ||G(E(x)) - x||^2 for the last fraction of steps. None: the paper's, per data
    # set: none on MNIST and Fashion-MNIST, the last 1 % of steps on SVHN and CIFAR-10. Our earlier
    # Fashion-MNIST default, 0.2 (per-image sum, straight-through codes), lifted the served function's
    # clean accuracy from 65.0 to 76.7 % in 8 epochs but moved the class into the continuous codes
    # (benchmarks/results/fbgan_variants_fmnist.md, fbgan_fmnist_ae20_e40.md)
    ae_fraction: float = None
    ae_weight: float = 1.0
    ae_reduction: str = "sum"      # "sum" per image (the paper's ||.||^2), or "mean" over pixels (784x weaker)
    # train the reconstructed pair, the real pair's code and the AE term on the code `purify` feeds G:
    # one-hot argmax (straight-through: the softmax's gradient) and clipped continuous codes
    straight_through: bool = True
    # paper 4.2.2: one-hot argmax and clipped codes before G; changes only how a trained run purifies,
    # so `tfpurify eval/export RUN --white-box-regularization false` serves the other function
    white_box_regularization: bool = runtime_field(True)
    # a classifier run for the training diagnostics only (G(one-hot k) accuracy in history.csv)
    classifier: str = None
    learning_rate: float = 2e-4
    beta_1: float = 0.5
    batch_size: int = 64
    epochs: int = 10

    def __post_init__(self):
        super().__post_init__()
        if self.ae_fraction is None:  # the paper's, per data set
            object.__setattr__(self, "ae_fraction", 0.0 if self.dataset in ("mnist", "fashion_mnist") else 0.01)
        if self.n_categories < 2 or self.n_continuous < 0:
            raise InputValidationError("FBGAN needs n_categories >= 2 and n_continuous >= 0")
        if not 0.0 <= self.ae_fraction <= 1.0:
            raise InputValidationError(f"ae_fraction must be in [0, 1], got {self.ae_fraction}")
        if self.ae_reduction not in ("mean", "sum"):
            raise InputValidationError(f"ae_reduction must be mean or sum, got {self.ae_reduction!r}")
        if not 0.0 <= self.d_dropout < 1.0:
            raise InputValidationError(f"d_dropout must be in [0, 1), got {self.d_dropout}")

    @property
    def latent_dim(self):
        return self.n_categories + self.n_continuous


def _check_shape(input_shape):
    if input_shape[0] != input_shape[1] or input_shape[0] % 4:
        raise InputValidationError(f"FBGAN needs square images with a side divisible by 4, got {input_shape}")
    return input_shape[0] // 4  # 7 for 28x28, 8 for 32x32


def build_encoder(input_shape, cfg):
    """E(x): six weight-normalized ELU convolutions -> (categorical logits, continuous codes)."""
    k, f = _check_shape(input_shape), cfg.base_filters
    x = keras.Input(input_shape)
    h = x
    for filters, kernel, stride in ((f, 3, 1), (2 * f, 4, 2), (2 * f, 3, 1), (4 * f, 4, 2), (4 * f, 3, 1)):
        h = weight_norm(layers.Conv2D(filters, kernel, stride, padding="same", activation="elu"))(h)
    h = layers.Flatten()(weight_norm(layers.Conv2D(8 * f, k, padding="valid", activation="elu"))(h))
    categorical_logits = weight_norm(layers.Dense(cfg.n_categories))(h)
    continuous = weight_norm(layers.Dense(cfg.n_continuous))(h)
    return keras.Model(x, [categorical_logits, continuous], name="encoder")


def build_generator(input_shape, cfg):
    """G(z): six weight-normalized ELU transposed convolutions -> image in [0, 1]."""
    k, f = _check_shape(input_shape), cfg.base_filters
    z = keras.Input((cfg.latent_dim,))
    h = layers.Reshape((1, 1, cfg.latent_dim))(z)
    h = weight_norm(layers.Conv2DTranspose(8 * f, k, padding="valid", activation="elu"))(h)
    for filters, kernel, stride in ((4 * f, 3, 1), (2 * f, 4, 2), (2 * f, 3, 1), (f, 4, 2)):
        h = weight_norm(layers.Conv2DTranspose(filters, kernel, stride, padding="same", activation="elu"))(h)
    image = weight_norm(layers.Conv2DTranspose(input_shape[-1], 3, padding="same", activation="sigmoid"))(h)
    return keras.Model(z, image, name="generator")


def build_discriminator(input_shape, cfg):
    """D(x, z) -> (logit, features for feature matching, Q's categorical logits, Q's means).

    Image branch: five convolutions (shared with Q); code branch: two dense layers; head: three
    dense layers on their concatenation (paper Fig. 2).
    """
    k, f = _check_shape(input_shape), cfg.base_filters
    x, z = keras.Input(input_shape), keras.Input((cfg.latent_dim,))
    h = x
    for filters, kernel, stride in ((f, 4, 2), (2 * f, 3, 1), (4 * f, 4, 2), (4 * f, 3, 1)):
        h = layers.Dropout(cfg.d_dropout)(LeakyReLU(0.2)(layers.Conv2D(filters, kernel, stride, "same")(h)))
    x_features = layers.Flatten()(LeakyReLU(0.2)(layers.Conv2D(8 * f, k, padding="valid")(h)))
    q = LeakyReLU(0.2)(layers.Dense(4 * f)(x_features))
    q_categorical, q_continuous = layers.Dense(cfg.n_categories)(q), layers.Dense(cfg.n_continuous)(q)
    hz = LeakyReLU(0.2)(layers.Dense(8 * f)(z))
    hz = LeakyReLU(0.2)(layers.Dense(8 * f)(hz))
    joint = layers.Concatenate()([x_features, hz])
    joint = layers.Dropout(cfg.d_dropout)(LeakyReLU(0.2)(layers.Dense(16 * f)(joint)))
    features = LeakyReLU(0.2)(layers.Dense(16 * f)(joint))
    logit = layers.Dense(1)(features)
    return keras.Model([x, z], [logit, features, q_categorical, q_continuous], name="discriminator")


class _AutoEncoderSchedule(keras.callbacks.Callback):
    """Switches the auto-encoder term on for the last `ae_fraction` of the training steps; with a
    validation slice and a classifier, logs the code's diagnostics every epoch (and prints them at
    the switch-on step)."""

    def __init__(self, validation=None, n=1000):
        super().__init__()
        self.validation = None if validation is None else (validation[0][:n], np.asarray(validation[1][:n]))
        self.classifier = None

    def on_train_begin(self, logs=None):
        fraction = self.model.config.ae_fraction
        total = int(self.params.get("epochs") or 1) * int(self.params.get("steps") or 1)
        start = total + 1 if fraction == 0 else int(round((1.0 - fraction) * total))
        self.model.ae_start_step.assign(start)
        if self.validation is not None and self.model.config.classifier is not None:
            self.classifier = load_classifier(self.model.config.classifier)[0]

    def _diagnose(self):
        x, y = self.validation
        d = self.model.diagnostics(x, y, self.classifier) if self.classifier is not None else \
            {"purity": self.model.code_purity(x, y)[0]}
        return {"purity": d["purity"], **({"generated_accuracy": d["generated_accuracy_mean"]}
                                            if self.classifier is not None else {})}

    def on_train_batch_begin(self, batch, logs=None):
        if self.validation is not None and int(self.model.g_optimizer.iterations) == int(self.model.ae_start_step):
            values = self._diagnose()
            print(f"AE term on at step {int(self.model.ae_start_step)}: "
                  + ", ".join(f"{k} {100 * v:.1f} %" for k, v in values.items()), flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if self.validation is not None and logs is not None:
            logs.update(self._diagnose())


@register("fbgan", FBGANConfig)
class FBGAN(Purifier):
    """Encoder, generator and discriminator/Q trained with the FBGAN game (eq. 6)."""

    def __init__(self, config=FBGANConfig(), input_shape=(28, 28, 1), **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.image_shape = tuple(input_shape)
        self.encoder = build_encoder(self.image_shape, config)
        self.generator = build_generator(self.image_shape, config)
        self.discriminator = build_discriminator(self.image_shape, config)
        self.ae_start_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="ae_start_step")
        names = ("d_loss", "g_loss", "e_loss", "mi_gap", "recon_error")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    # ------------------------------------------------------------------ codes and images
    has_code = True

    def encode(self, x, training=False):
        """E(x) = [softmax(categorical logits), continuous codes], shape [N, latent_dim]."""
        categorical_logits, continuous = self.encoder(x, training=training)
        return tf.concat([tf.nn.softmax(categorical_logits), continuous], axis=1)

    def generate(self, z, training=False):
        return self.generator(z, training=training)

    def regularize(self, z):
        """Paper 4.2.2: one-hot argmax of the categorical code, continuous codes clipped to [-1, 1]."""
        categorical, continuous = self._split(z)
        one_hot = tf.one_hot(tf.argmax(categorical, axis=1), self.config.n_categories, dtype=z.dtype)
        return tf.concat([one_hot, tf.clip_by_value(continuous, -1.0, 1.0)], axis=1)

    def straight_through_code(self, z):
        """`regularize(z)` forward (what `purify` feeds G); backward, the softmax code's gradient."""
        categorical, continuous = self._split(z)
        one_hot = tf.one_hot(tf.argmax(categorical, axis=1), self.config.n_categories, dtype=z.dtype)
        return tf.concat([categorical + tf.stop_gradient(one_hot - categorical),
                          tf.clip_by_value(continuous, -1.0, 1.0)], axis=1)

    def sample_prior(self, n):
        """p(z): uniform one-hot categorical code, continuous codes uniform in [-1, 1]."""
        categories = tf.random.uniform([n], 0, self.config.n_categories, dtype=tf.int32)
        continuous = tf.random.uniform([n, self.config.n_continuous], -1.0, 1.0)
        return tf.concat([tf.one_hot(categories, self.config.n_categories), continuous], axis=1)

    def _split(self, z):
        return z[:, :self.config.n_categories], z[:, self.config.n_categories:]

    def purify(self, x, training=False):
        z = self.encode(x, training=training)
        if self.config.white_box_regularization:
            z = self.regularize(z)
        return self.generator(z, training=training)

    def attack_surrogate(self, x):
        """BPDA for the argmax: the softmax code (clipped continuous codes) is differentiated."""
        categorical, continuous = self._split(self.encode(x))
        if self.config.white_box_regularization:
            continuous = tf.clip_by_value(continuous, -1.0, 1.0)
        return self.generator(tf.concat([categorical, continuous], axis=1))

    # ------------------------------------------------------------------ training
    def compile_for_training(self):
        def adam():
            return keras.optimizers.Adam(self.config.learning_rate, beta_1=self.config.beta_1)

        self.compile(d_optimizer=adam(), g_optimizer=adam(), e_optimizer=adam())

    def compile(self, d_optimizer, g_optimizer, e_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer, self.e_optimizer = d_optimizer, g_optimizer, e_optimizer

    def training_callbacks(self, validation=None):
        return [_AutoEncoderSchedule(validation)]

    def _mi_gap(self, z, categorical_logits, continuous_mean):
        z_categorical, z_continuous = self._split(z)
        return losses.mutual_information_gap(z_categorical, z_continuous, categorical_logits, continuous_mean,
                                              self.config.continuous_weight)

    def train_step(self, x):
        cfg = self.config
        z = self.sample_prior(tf.shape(x)[0])
        ae_on = tf.cast(self.g_optimizer.iterations >= self.ae_start_step, tf.float32) * cfg.ae_weight
        with tf.GradientTape() as d_tape, tf.GradientTape() as g_tape, tf.GradientTape() as e_tape:
            e = self.encode(x, training=True)
            if cfg.straight_through:  # D and the AE term see the code purify uses
                e = self.straight_through_code(e)
            x_fake, x_rec = self.generator(z, training=True), self.generator(e, training=True)
            real, real_features, _, _ = self.discriminator([x, e], training=True)
            fake, fake_features, q_categorical, q_continuous = self.discriminator([x_fake, z], training=True)
            rec, _, _, _ = self.discriminator([x_rec, e], training=True)
            mi_gap = self._mi_gap(z, q_categorical, q_continuous)  # eq. 5 on z ~ p(z), for G and Q
            recon = losses.reconstruction_loss(x, x_rec, cfg.ae_reduction)
            # discriminator (and Q): (x, E(x)) real; (G(z), z) and (G(E(x)), E(x)) fake, weighted 1/2 (eq. 6)
            d_loss = losses.minimax_discriminator_loss(real, [fake, rec], [0.5, 0.5]) + cfg.lambda_mi * mi_gap
            # generator: fool D on both fake pairs, keep z recoverable from G(z)
            g_loss = (0.5 * (losses.non_saturating_generator_loss(fake) + losses.non_saturating_generator_loss(rec))
                      + cfg.lambda_mi * mi_gap + ae_on * recon)
            # encoder: feature matching on D's joint features (paper 3.3), plus E(G(z)) ~ z
            cycle_logits, cycle_continuous = self.encoder(tf.stop_gradient(x_fake), training=True)
            e_loss = (losses.feature_matching_loss(real_features, fake_features) + ae_on * recon
                      + cfg.latent_cycle_weight * self._mi_gap(z, cycle_logits, cycle_continuous))
            if cfg.encoder_adversarial:  # eq. 6: min over G and E of the reconstructed pair's term
                e_loss += 0.5 * losses.non_saturating_generator_loss(rec)
        apply_gradients(self.d_optimizer, d_loss, d_tape, self.discriminator.trainable_weights)
        apply_gradients(self.g_optimizer, g_loss, g_tape, self.generator.trainable_weights)
        apply_gradients(self.e_optimizer, e_loss, e_tape, self.encoder.trainable_weights)
        return self.track(dict(d_loss=d_loss, g_loss=g_loss, e_loss=e_loss, mi_gap=mi_gap, recon_error=recon))

    def test_step(self, x):
        z = self.sample_prior(tf.shape(x)[0])
        e, x_fake = self.encode(x), self.generator(z)
        if self.config.straight_through:
            e = self.straight_through_code(e)
        x_rec = self.generator(e)
        real, real_features, _, _ = self.discriminator([x, e])
        fake, fake_features, q_categorical, q_continuous = self.discriminator([x_fake, z])
        rec, _, _, _ = self.discriminator([x_rec, e])
        mi_gap = self._mi_gap(z, q_categorical, q_continuous)
        return self.track(dict(
            d_loss=losses.minimax_discriminator_loss(real, [fake, rec], [0.5, 0.5]) + self.config.lambda_mi * mi_gap,
            g_loss=0.5 * (losses.non_saturating_generator_loss(fake) + losses.non_saturating_generator_loss(rec)),
            e_loss=losses.feature_matching_loss(real_features, fake_features),
            mi_gap=mi_gap, recon_error=losses.reconstruction_loss(x, x_rec, self.config.ae_reduction)))

    def call(self, x, training=False):
        self.discriminator([x, self.encode(x)], training=training)  # build every player
        return self.purify(x, training=training)

    # ------------------------------------------------------------------ diagnostics
    def code_purity(self, x, y, batch_size=256):
        """(purity, majority label per category (-1 if empty)): the share of images whose E(x) category's
        majority label is their own label."""
        y = np.asarray(y)
        codes = np.concatenate([np.argmax(self._split(self.encode(x[i:i + batch_size]))[0].numpy(), axis=1)
                                for i in range(0, len(x), batch_size)])
        labels, agree = [], 0
        for k in range(self.config.n_categories):
            members = y[codes == k]
            if len(members) == 0:
                labels.append(-1)
                continue
            majority = int(np.bincount(members).argmax())
            labels.append(majority)
            agree += int(np.sum(members == majority))
        return agree / len(y), labels

    def diagnostics(self, x, y, classifier, per_category=100, batch_size=256):
        """Where purification loses accuracy: is the categorical code the bottleneck?

        Returns:
          dict: `purity`, the share of images whose E(x) category's majority label is their own
          label (how well the argmax clusters agree with the classes); `category_labels`, the
          majority label of each category (-1 if empty); `generated_accuracy`, per category k, how
          often `classifier` gives G(one-hot k, random continuous codes) the label that category
          stands for (its majority label), and their mean.
        """
        n_cat = self.config.n_categories
        purity, labels = self.code_purity(x, y, batch_size)
        generated = []
        for k in range(n_cat):
            continuous = tf.random.uniform([per_category, self.config.n_continuous], -1.0, 1.0)
            images = self.generator(tf.concat([tf.one_hot(tf.fill([per_category], k), n_cat), continuous], axis=1))
            pred = np.argmax(np.asarray(classifier(images)), axis=1)
            generated.append(float(np.mean(pred == labels[k])) if labels[k] >= 0 else None)
        known = [g for g in generated if g is not None]
        return {"purity": purity, "category_labels": labels, "generated_accuracy": generated,
                "generated_accuracy_mean": float(np.mean(known)) if known else None}

    # ------------------------------------------------------------------ pictures
    def latent_traversal(self, category=0, steps=8):
        """Paper Fig. 3: row i varies continuous code i over [-1, 1], all other codes fixed at 0."""
        values = tf.linspace(-1.0, 1.0, steps)
        rows = {}
        for i in range(self.config.n_continuous):
            continuous = tf.one_hot(tf.fill([steps], i), self.config.n_continuous) * values[:, None]
            categorical = tf.one_hot(tf.fill([steps], category), self.config.n_categories)
            rows[f"code {i}"] = self.generator(tf.concat([categorical, continuous], axis=1)).numpy()
        return rows

    def category_grid(self, per_category=8):
        """Paper Fig. 3a: row k is categorical code k with random continuous codes."""
        rows = {}
        for k in range(self.config.n_categories):
            continuous = tf.random.uniform([per_category, self.config.n_continuous], -1.0, 1.0)
            categorical = tf.one_hot(tf.fill([per_category], k), self.config.n_categories)
            rows[f"category {k}"] = self.generator(tf.concat([categorical, continuous], axis=1)).numpy()
        return rows

    def pictures(self, x):
        return {"reconstruction": {"input": x, "G(E(x))": self.purify(x).numpy()},
                "latent_traversal": self.latent_traversal(),
                "categories": self.category_grid()}

    def get_config(self):
        return dataclasses.asdict(self.config)
