"""GCLN (paper 003, "Generative cleaning networks with quantized nonlinear transform for deep neural
network defense", ICLR 2020 submission): a cleaning network behind a quantized block-DCT
transform, trained against a detector of attacked images.

- Cleaning network G: `layers.BlockDCTQuantize` (8x8 orthonormal DCT, coefficients rounded to
  steps of `quant_step` on the 0-255 scale, inverse DCT; paper 3.2) destroys the attack's noise
  pattern, then a convolutional encoder-decoder with residual blocks restores the image content.
- Detector D: a binary CNN, clean (logit > 0) vs attacked. It is first trained alone for
  `detector_pretrain_epochs` on clean images vs PGD images made on the target classifier (paper
  3.3), then plays the min-max of eq. 6 against G: clean x_o real, G(x*) fake.
- G minimizes lambda * L_P + (1 - lambda) * L_A (eq. 3, `perceptual_weight` = lambda, paper 0.5):
  L_P = ||F(x_o) - F(G(x*))||^2 (eq. 4), L_A = -log D(G(x*)) (eq. 5).
- x* are made on the fly each step: PGD (`attack_steps`, `attack_eps`, random start) on the
  target classifier, which never changes. Several `attack_eps` train the cleaner at each of them
  (the examples of a batch split evenly between them): train at every eps it is evaluated at. With `recycle`, recovered images the classifier gets
  right join D's clean pool (paper 3.3, last paragraph).

Deviations, all stated as config fields: F (the paper's ImageNet VGG-19 cannot be downloaded here
and does not fit 28x28 grey images) is by default the target classifier's penultimate features,
or any Keras model file the user gives (`feature_model`; inputs resized and grey tiled to its
channels). D also keeps seeing the raw attacked images x* as "attacked" during the game (weight
`raw_attack_weight`, default 0.5 of the fake term): without them D would only learn "output of G
vs clean", and GCLN is also used as a detector of attacked *inputs*.

GCLN is a `Detector` (score: D's probability that an input is attacked, threshold calibrated on
validation images). `purify` (what is served) has the quantizer's true gradient, zero almost
everywhere; its straight-through estimate, with which the cleaner trains, is the BPDA a white-box
attacker uses (`attack_surrogate`), and one pass of the cleaner gives both halves of BPDA
(`purify_and_surrogate`).
"""

import dataclasses

import tensorflow as tf

from tfpurify import losses
from tfpurify.classifiers import load_classifier
from tfpurify.defenses.adversarial_training import pgd_examples
from tfpurify.defenses.base import DefenseConfig, Detector, Purifier, apply_gradients
from tfpurify.defenses.registry import register
from tfpurify.errors import InputValidationError
from tfpurify.layers import BlockDCTQuantize, LeakyReLU

__all__ = ["GCLNConfig", "GCLN"]

keras = tf.keras
layers = tf.keras.layers


@dataclasses.dataclass(frozen=True)
class GCLNConfig(DefenseConfig):
    """GCLN: quantized block-DCT cleaning network, attack detector, perceptual + adversarial loss."""

    classifier: str = None          # the target classifier run (attacks, features, recycling)
    quant_step: float = 10.0        # q on the 0-255 scale (paper: 5 and 10; best 8-12, Fig. 3)
    dct_block: int = 8
    perceptual_weight: float = 0.5  # lambda in eq. 3 (paper: 0.5)
    filters: int = 32
    residual_blocks: int = 4
    detector_filters: int = 32
    detector_pretrain_epochs: int = 1
    raw_attack_weight: float = 0.5  # share of D's fake term on raw x* (the rest on G(x*))
    attack_eps: tuple = (0.1,)      # one or more budgets (the examples of a batch split between them)
    attack_steps: int = 7
    recycle: bool = False
    feature_model: str = None       # a Keras model file for F; None: the classifier's penultimate features
    learning_rate: float = 2e-4
    beta_1: float = 0.5
    batch_size: int = 64
    epochs: int = 10

    def __post_init__(self):
        super().__post_init__()
        if self.quant_step < 0:
            raise InputValidationError(f"quant_step must be >= 0 (0: no quantization), got {self.quant_step}")
        if not 0.0 <= self.perceptual_weight <= 1.0:
            raise InputValidationError(f"perceptual_weight must be in [0, 1], got {self.perceptual_weight}")
        if not 0.0 <= self.raw_attack_weight < 1.0:
            raise InputValidationError(f"raw_attack_weight must be in [0, 1), got {self.raw_attack_weight}")
        values = (self.attack_eps,) if isinstance(self.attack_eps, (int, float, str)) else tuple(self.attack_eps)
        try:
            values = tuple(float(v) for v in values)
        except ValueError:
            raise InputValidationError(f"attack_eps must be numbers, got {self.attack_eps!r}") from None
        if not values or not all(0.0 < v <= 1.0 for v in values):
            raise InputValidationError(f"attack_eps must be in (0, 1], got {self.attack_eps}")
        object.__setattr__(self, "attack_eps", values)
        if self.detector_pretrain_epochs < 0 or self.residual_blocks < 0:
            raise InputValidationError("detector_pretrain_epochs and residual_blocks must be >= 0")
        self.require_positive("dct_block", "filters", "detector_filters", "attack_steps")


def build_cleaner(input_shape, cfg):
    """G: quantized DCT -> conv encoder (stride 2) -> residual blocks -> decoder -> sigmoid image."""
    f = cfg.filters
    x = keras.Input(input_shape)
    h = BlockDCTQuantize(cfg.quant_step, cfg.dct_block, name="quantized_dct")(x)
    h = layers.Conv2D(f, 3, padding="same", activation="relu")(h)
    h = layers.Conv2D(2 * f, 3, 2, padding="same", activation="relu")(h)
    for _ in range(cfg.residual_blocks):
        r = layers.Conv2D(2 * f, 3, padding="same", activation="relu")(h)
        h = layers.Add()([h, layers.Conv2D(2 * f, 3, padding="same")(r)])
    h = layers.Conv2DTranspose(f, 3, 2, padding="same", activation="relu")(h)
    image = layers.Conv2D(input_shape[-1], 3, padding="same", activation="sigmoid")(h)
    return keras.Model(x, image, name="cleaner")


def build_detector(input_shape, cfg):
    """D: two stride-2 convolutions (LeakyReLU 0.2) and a dense logit; > 0 means clean."""
    f = cfg.detector_filters
    x = keras.Input(input_shape)
    h = LeakyReLU(0.2)(layers.Conv2D(f, 3, 2, padding="same")(x))
    h = LeakyReLU(0.2)(layers.Conv2D(2 * f, 3, 2, padding="same")(h))
    return keras.Model(x, layers.Dense(1)(layers.Flatten()(h)), name="detector")


class _DetectorPretraining(keras.callbacks.Callback):
    """G trains only after the first `detector_pretrain_epochs` epochs (paper 3.3: D first)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.g_on.assign(float(epoch >= self.model.config.detector_pretrain_epochs))


@register("gcln", GCLNConfig)
class GCLN(Purifier, Detector):
    """Cleaning network G (quantized DCT first) and detector D; the target classifier stays frozen."""

    needs_classifier = True  # its config names the classifier run it protects

    def __init__(self, config=GCLNConfig(), input_shape=(28, 28, 1), **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.image_shape = tuple(input_shape)
        self.cleaner = build_cleaner(self.image_shape, config)
        self.detector_net = build_detector(self.image_shape, config)
        self._init_detector()
        self.g_on = tf.Variable(1.0, trainable=False, name="g_on")
        names = ("d_loss", "g_loss", "perceptual", "adversarial", "recovered_accuracy")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        # the target classifier and F are not part of the defense's weights (loaded from their runs)
        object.__setattr__(self, "_target", None)
        object.__setattr__(self, "_features", None)

    labelled = True

    @property
    def metrics(self):
        return list(self.trackers.values())

    # ------------------------------------------------------------------ target classifier and F
    @property
    def target_classifier(self):
        if self._target is None:
            if self.config.classifier is None:
                raise InputValidationError("gcln trains against the classifier it protects: --classifier RUN")
            classifier, cconfig = load_classifier(self.config.classifier)
            if cconfig.dataset != self.config.dataset:
                raise InputValidationError(f"the classifier run is on {cconfig.dataset}, this run on {self.config.dataset}")
            classifier.trainable = False
            object.__setattr__(self, "_target", classifier)
        return self._target

    def feature_extractor(self):
        """F: the classifier's penultimate features, or the `feature_model` file (frozen)."""
        if self._features is None:
            if self.config.feature_model is None:
                c = self.target_classifier
                model = keras.Model(c.inputs, c.layers[-2].output, name="features")
            else:
                try:
                    model = keras.models.load_model(self.config.feature_model, compile=False)
                except (OSError, ValueError, ImportError) as e:
                    raise InputValidationError(f"feature_model {self.config.feature_model}: unreadable ({e})") from None
            model.trainable = False
            object.__setattr__(self, "_features", model)
        return self._features

    def _features_of(self, images):
        model = self.feature_extractor()
        size, channels = model.input_shape[1:3], model.input_shape[-1]
        if tuple(size) != tuple(images.shape[1:3]):
            images = tf.image.resize(images, size)
        if channels != images.shape[-1]:
            images = tf.tile(images, [1, 1, 1, channels // images.shape[-1]])
        return tf.reshape(model(images, training=False), [tf.shape(images)[0], -1])

    # ------------------------------------------------------------------ purifier and detector
    @property
    def quantizer(self):
        return self.cleaner.get_layer("quantized_dct")

    def purify(self, x, training=False):
        """The served cleaner: the quantizer's true gradient (rounding: zero almost everywhere)."""
        with self.quantizer.gradient(straight_through=False):
            return self.cleaner(x, training=training)

    def attack_surrogate(self, x):
        """BPDA: the cleaner with the quantizer's straight-through (identity) gradient, as trained."""
        with self.quantizer.gradient(straight_through=True):
            return self.cleaner(x)

    def purify_and_surrogate(self, x):
        """Both halves of BPDA from one pass: the straight-through cleaner's forward value is the served
        one (up to float rounding of x + (Q(x) - x)), its gradient the surrogate's."""
        out = self.attack_surrogate(x)
        return out, out

    def adversarial_score(self, x):
        """D's probability that `x` is attacked, [N]."""
        return tf.sigmoid(-tf.reshape(self.detector_net(x, training=False), [-1]))

    # ------------------------------------------------------------------ training (eqs. 3-6)
    def compile_for_training(self):
        self.target_classifier  # noqa: B018  (fails early, before fit, without a classifier run)

        def adam():
            return keras.optimizers.Adam(self.config.learning_rate, beta_1=self.config.beta_1)

        self.compile(g_optimizer=adam(), d_optimizer=adam())

    def compile(self, g_optimizer, d_optimizer, **kwargs):
        super().compile(**kwargs)
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer

    def training_callbacks(self, validation=None):
        return [_DetectorPretraining()]

    def _objective(self, x, y, training):
        cfg = self.config
        classifier = self.target_classifier
        eps = tf.gather(tf.constant(cfg.attack_eps), tf.range(tf.shape(x)[0]) % len(cfg.attack_eps))[:, None, None, None]
        x_adv = pgd_examples(classifier, x, y, eps, eps / 4.0, cfg.attack_steps)
        recovered = self.cleaner(x_adv, training=training)
        real = self.detector_net(x, training=training)
        fake_raw = self.detector_net(x_adv, training=training)
        fake = self.detector_net(recovered, training=training)
        correct = tf.cast(tf.equal(tf.argmax(classifier(recovered, training=False), axis=1),
                                   tf.cast(y, tf.int64)), tf.float32)
        d_loss = losses.minimax_discriminator_loss(real, [fake_raw, fake],
                                                   [cfg.raw_attack_weight, 1.0 - cfg.raw_attack_weight])
        if cfg.recycle:  # recovered images the classifier gets right count as clean for D
            recycled = self.detector_net(tf.stop_gradient(recovered), training=training)
            d_loss += losses.weighted_bce(1.0, recycled, correct)
        perceptual = losses.perceptual_loss(self._features_of(x), self._features_of(recovered))
        adversarial = losses.non_saturating_generator_loss(fake)
        g_loss = cfg.perceptual_weight * perceptual + (1.0 - cfg.perceptual_weight) * adversarial
        return {"d_loss": d_loss, "g_loss": g_loss, "perceptual": perceptual, "adversarial": adversarial,
                "recovered_accuracy": tf.reduce_mean(correct)}

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            values = self._objective(x, y, training=True)
            g_loss = self.g_on * values["g_loss"]  # zero while D pre-trains
        apply_gradients(self.d_optimizer, values["d_loss"], d_tape, self.detector_net.trainable_weights)
        apply_gradients(self.g_optimizer, g_loss, g_tape, self.cleaner.trainable_weights)
        return self.track(values)

    def test_step(self, data):
        x, y = data
        return self.track(self._objective(x, y, training=False))

    def call(self, x, training=False):
        self.detector_net(x, training=training)  # build both networks
        return self.purify(x, training=training)

    def pictures(self, x):
        quantize = self.cleaner.get_layer("quantized_dct")
        return {"cleaning": {"input": x, "quantized DCT": quantize.quantize(tf.constant(x)).numpy(),
                             "cleaned": self.purify(x).numpy()}}

    def get_config(self):
        return dataclasses.asdict(self.config)
