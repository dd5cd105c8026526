"""AAA (paper 004, "Adversarially-Trained Autoencoder Augmentation"): an autoencoder adversarially
trained end to end in front of one or more frozen, naturally trained classifiers.

Each training step picks one native classifier F at random (ensemble adversarial training, paper
4), crafts PGD examples through F(G(.)) (the adaptive adversary of eq. 2; the paper's 40 steps of
0.01 at eps 0.2 on Fashion-MNIST), and updates only the autoencoder G on

- `xent`: cross-entropy of F(G(x_adv)),
- `mse`: mean squared error between G(x_adv) and the clean x,
- `xent+mse`: both, the second weighted by `mse_weight` (lambda in eq. 3, which "balances the
  magnitudes of the two losses"; the paper gives no value). By default lambda balances them at every
  step, xent / mse of the batch (treated as a constant), so both terms weigh the same; a number
  fixes it (1, our earlier default, left the per-pixel MSE at 1-3 % of the loss: `xent+mse` trained
  like `xent`),

with Adam at 1e-3 and the learning rate reduced when the validation loss has not improved for
`lr_patience` epochs. The classifiers never change and are not part of the saved defense: the run
names them (`classifier`, one or more classifier runs). At test time G protects any classifier,
native or never seen (`tfpurify eval RUN --classifier OTHER_RUN`: the paper's transfer setting).
The PGD loop is tfpurify's graph loop, one per native classifier in the traced step
(`tf.switch_case` runs only the chosen one).
"""

import dataclasses

import tensorflow as tf

from tfpurify import losses
from tfpurify.attacks.loop import iterative_gradient
from tfpurify.classifiers import load_classifier
from tfpurify.defenses.base import DefenseConfig, Purifier, apply_gradients
from tfpurify.defenses.registry import register
from tfpurify.errors import InputValidationError

__all__ = ["AAAConfig", "AAA", "LOSSES"]

keras = tf.keras
layers = tf.keras.layers
LOSSES = ("xent", "mse", "xent+mse")


@dataclasses.dataclass(frozen=True)
class AAAConfig(DefenseConfig):
    """AAA: a convolutional (28x28) or U-Net (32x32) autoencoder trained by PGD through frozen classifiers."""

    classifier: tuple = ()        # native classifier runs (one picked at random per step)
    loss: str = "xent+mse"        # xent, mse or xent+mse (paper Tables 4-5)
    mse_weight: float = None      # lambda of eq. 3; None: xent / mse each step (the magnitudes balanced)
    eps: float = 0.2              # the paper's Fashion-MNIST budget
    eps_iter: float = 0.01
    nb_iter: int = 40
    rand_init: bool = True
    filters: int = 32
    architecture: str = "auto"    # conv, unet, or auto (conv for grey images, unet for colour)
    lr_patience: int = 5
    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 10

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.classifier, str):  # one run given as a string
            object.__setattr__(self, "classifier", (self.classifier,))
        object.__setattr__(self, "classifier", tuple(self.classifier))
        if self.loss not in LOSSES:
            raise InputValidationError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.architecture not in ("auto", "conv", "unet"):
            raise InputValidationError(f"architecture must be auto, conv or unet, got {self.architecture!r}")
        if not 0.0 < self.eps <= 1.0 or not 0.0 < self.eps_iter <= self.eps:
            raise InputValidationError(f"need 0 < eps_iter <= eps <= 1, got eps {self.eps}, eps_iter {self.eps_iter}")
        if self.mse_weight is not None and self.mse_weight < 0:
            raise InputValidationError(f"mse_weight must be >= 0 (or unset: balanced), got {self.mse_weight}")
        self.require_positive("nb_iter", "filters", "lr_patience")


def build_conv_autoencoder(input_shape, f):
    """The paper's convolutional AE for 28x28: two stride-2 convolutions down, two up, sigmoid out."""
    x = keras.Input(input_shape)
    h = layers.Conv2D(f, 3, 2, padding="same", activation="relu")(x)
    h = layers.Conv2D(2 * f, 3, 2, padding="same", activation="relu", name="code")(h)
    h = layers.Conv2DTranspose(2 * f, 3, 2, padding="same", activation="relu")(h)
    h = layers.Conv2DTranspose(f, 3, 2, padding="same", activation="relu")(h)
    return keras.Model(x, layers.Conv2D(input_shape[-1], 3, padding="same", activation="sigmoid")(h),
                       name="autoencoder")


def build_unet_autoencoder(input_shape, f):
    """A small U-Net AE (skip connections between encoder and decoder), for 32x32 colour images."""
    if input_shape[0] % 4 or input_shape[1] % 4:
        raise InputValidationError(f"the U-Net autoencoder needs sides divisible by 4, got {input_shape}")
    x = keras.Input(input_shape)
    e1 = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    e2 = layers.Conv2D(2 * f, 3, 2, padding="same", activation="relu")(e1)
    b = layers.Conv2D(4 * f, 3, 2, padding="same", activation="relu", name="code")(e2)
    d2 = layers.Conv2DTranspose(2 * f, 3, 2, padding="same", activation="relu")(b)
    d2 = layers.Conv2D(2 * f, 3, padding="same", activation="relu")(layers.Concatenate()([d2, e2]))
    d1 = layers.Conv2DTranspose(f, 3, 2, padding="same", activation="relu")(d2)
    d1 = layers.Conv2D(f, 3, padding="same", activation="relu")(layers.Concatenate()([d1, e1]))
    return keras.Model(x, layers.Conv2D(input_shape[-1], 1, activation="sigmoid")(d1), name="autoencoder")


@register("aaa", AAAConfig)
class AAA(Purifier):
    """Autoencoder G adversarially trained through frozen native classifiers; purify(x) = G(x)."""

    needs_classifier = True  # its config names the classifier runs it is trained through

    def __init__(self, config=AAAConfig(), input_shape=(28, 28, 1), **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.image_shape = tuple(input_shape)
        unet = config.architecture == "unet" or (config.architecture == "auto" and self.image_shape[-1] == 3)
        self.autoencoder = (build_unet_autoencoder if unet else build_conv_autoencoder)(self.image_shape, config.filters)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "xent", "mse")}
        self.adv_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy")
        object.__setattr__(self, "_natives", None)  # not part of the defense's weights
        # the bottleneck (the U-Net's skip connections bypass it), sharing the autoencoder's layers
        object.__setattr__(self, "_encoder", keras.Model(self.autoencoder.input,
                                                         self.autoencoder.get_layer("code").output))

    labelled = True

    @property
    def metrics(self):
        return [*self.trackers.values(), self.adv_accuracy]

    @property
    def native_classifiers(self):
        """The frozen classifiers of `config.classifier`, loaded once."""
        if self._natives is None:
            if not self.config.classifier:
                raise InputValidationError("aaa is trained through the classifiers it protects: --classifier RUN "
                                           "(repeat it for an ensemble)")
            natives = []
            for run in self.config.classifier:
                model, cconfig = load_classifier(run)
                if cconfig.dataset != self.config.dataset:
                    raise InputValidationError(f"{run} is a classifier on {cconfig.dataset}, this run is on "
                                               f"{self.config.dataset}")
                model.trainable = False
                natives.append(model)
            object.__setattr__(self, "_natives", natives)
        return self._natives

    def purify(self, x, training=False):
        return self.autoencoder(x, training=training)

    has_code = True

    def encode(self, x, training=False):
        """The autoencoder's bottleneck activations."""
        return self._encoder(x, training=training)

    def adversarial_examples(self, classifier, x, y):
        """PGD through classifier(G(.)): the adaptive adversary of eq. 2, no gradient to any weight."""
        c = self.config
        x_adv, _, _ = iterative_gradient(
            lambda images: classifier(self.autoencoder(images, training=False), training=False), x, y, c.eps,
            c.eps_iter, c.nb_iter, rand_init=c.rand_init, early_exit=False)
        return tf.stop_gradient(x_adv)

    def _objective(self, classifier, x, y, training):
        x_adv = self.adversarial_examples(classifier, x, y)
        cleaned = self.autoencoder(x_adv, training=training)
        logits = classifier(cleaned, training=False)
        xent = losses.classification_loss(y, logits)
        mse = losses.reconstruction_loss(x, cleaned)
        return xent, mse, logits

    def _loss(self, xent, mse):
        """Eq. 3. Unset lambda balances the magnitudes (both terms weigh xent), from the global batch's
        means under a distribution strategy, so that every replica weighs the same."""
        if self.config.loss != "xent+mse":
            return {"xent": xent, "mse": mse}[self.config.loss]
        weight = self.config.mse_weight
        if weight is None:
            ctx = tf.distribute.get_replica_context()
            xent_all, mse_all = xent, mse
            if ctx is not None and ctx.num_replicas_in_sync > 1:
                xent_all, mse_all = ctx.all_reduce("MEAN", xent), ctx.all_reduce("MEAN", mse)
            weight = tf.stop_gradient(xent_all / (mse_all + 1e-12))
        return xent + weight * mse

    def _on_random_native(self, x, y, training):
        natives = self.native_classifiers
        if len(natives) == 1:
            return self._objective(natives[0], x, y, training)
        index = tf.random.uniform([], 0, len(natives), dtype=tf.int32)  # ensemble adversarial training
        return tf.switch_case(index, [lambda c=c: self._objective(c, x, y, training) for c in natives])

    # ------------------------------------------------------------------ training (eq. 2-3)
    def compile_for_training(self):
        self.native_classifiers  # noqa: B018  (fails early without a classifier run)
        self.compile(optimizer=keras.optimizers.Adam(self.config.learning_rate))

    def training_callbacks(self, validation=None):
        return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=self.config.lr_patience)]

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            xent, mse, logits = self._on_random_native(x, y, training=True)
            loss = self._loss(xent, mse)  # outside the native's branch: its all-reduce runs on every replica
        apply_gradients(self.optimizer, loss, tape, self.autoencoder.trainable_weights)
        return self._track(loss, xent, mse, y, logits)

    def test_step(self, data):
        x, y = data
        xent, mse, logits = self._on_random_native(x, y, training=False)
        return self._track(self._loss(xent, mse), xent, mse, y, logits)

    def _track(self, loss, xent, mse, y, logits):
        for name, value in (("loss", loss), ("xent", xent), ("mse", mse)):
            self.trackers[name].update_state(value)
        self.adv_accuracy.update_state(y, logits)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        return dataclasses.asdict(self.config)
