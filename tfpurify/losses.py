"""Loss functions, pure and numerically tested (after TF-GAN's losses_impl).

Each returns a scalar (mean over the batch) unless it says otherwise.
"""

import tensorflow as tf

__all__ = [
    "minimax_discriminator_loss",
    "non_saturating_generator_loss",
    "mutual_information_gap",
    "feature_matching_loss",
    "reconstruction_loss",
    "classification_loss",
    "diversity_loss",
    "discriminator_score",
    "latent_search_loss",
    "perceptual_loss",
    "weighted_bce",
]


def _bce(labels_value, logits):
    logits = tf.convert_to_tensor(logits)
    labels = tf.fill(tf.shape(logits), tf.cast(labels_value, logits.dtype))
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def minimax_discriminator_loss(real_logits, fake_logits, fake_weights=None, label_smoothing=0.0):
    """-log D(real) - sum_k w_k log(1 - D(fake_k)) (Goodfellow et al. 2014; FBGAN eq. 6).

    Args:
      real_logits: discriminator logits on real pairs.
      fake_logits: one tensor or a list of tensors of logits on fake pairs.
      fake_weights: weights of the fake terms (default equal weights summing to 1).
      label_smoothing: one-sided label smoothing (Salimans et al. 2016): real targets 1 - this.
    """
    fakes = fake_logits if isinstance(fake_logits, (list, tuple)) else [fake_logits]
    weights = fake_weights or [1.0 / len(fakes)] * len(fakes)
    return _bce(1.0 - label_smoothing, real_logits) + tf.add_n([w * _bce(0.0, f) for w, f in zip(weights, fakes)])


def non_saturating_generator_loss(fake_logits):
    """-log D(fake): the generator's non-saturating GAN loss."""
    return _bce(1.0, fake_logits)


def mutual_information_gap(z_categorical, z_continuous, categorical_logits, continuous_mean, continuous_weight=1.0):
    """FBGAN eq. 5: dist(z, phi(x)) = H(z_c, c(x)) + C * sum_i ||z_i - mu_i(x)||^2.

    Args:
      z_categorical: one-hot categorical codes [N, K].
      z_continuous: continuous codes [N, n].
      categorical_logits: Q's logits for the categorical code [N, K].
      continuous_mean: Q's means mu_i(x) [N, n].
      continuous_weight: the constant C.

    Returns:
      Mean over the batch of the MI gap (a variational upper bound on -I(z; G(z)) up to H(z)).
    """
    ce = tf.nn.softmax_cross_entropy_with_logits(labels=z_categorical, logits=categorical_logits)
    sq = tf.reduce_sum(tf.square(z_continuous - continuous_mean), axis=1)
    return tf.reduce_mean(ce + continuous_weight * sq)


def feature_matching_loss(real_features, fake_features):
    """||E[f(real)] - E[f(fake)]||^2 over the batch (Salimans et al. 2016)."""
    return tf.reduce_sum(tf.square(tf.reduce_mean(real_features, axis=0) - tf.reduce_mean(fake_features, axis=0)))


def reconstruction_loss(x, x_reconstructed, reduction="mean"):
    """Squared error averaged over the batch: per pixel, E ||G(E(x)) - x||^2 / dim ("mean"), or per
    image, E ||G(E(x)) - x||^2 ("sum", dim times larger)."""
    squared = tf.square(x - x_reconstructed)
    if reduction == "sum":
        return tf.reduce_mean(tf.reduce_sum(tf.reshape(squared, [tf.shape(x)[0], -1]), axis=1))
    return tf.reduce_mean(squared)


def classification_loss(labels, logits):
    """Mean over the batch of the softmax cross-entropy of integer labels: the classifier loss L(x, y)."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int64), logits))


def diversity_loss(x_adv_1, x_adv_2, z_1, z_2, eps=1e-8, form="example"):
    """L2L-DA eq. 7 (after Yang et al. 2019), a scalar the attack generator *maximizes*.

    Args:
      x_adv_1, x_adv_2: adversarial images from the same inputs with latent codes z_1, z_2; lists of
        tensors (the trajectory x_adv^(1..T)) are averaged over t.
      z_1, z_2: the latent codes [N, d].
      form: "example" (eq. 7): per example, the trajectory's mean L1 distance ||x_adv(z1) - x_adv(z2)||_1
        over ||z1 - z2||_1, then the mean over the batch; "batch_mean" (our earlier form): the mean
        absolute image gap over the mean absolute code gap of the whole batch, which is smaller by
        about (pixels / code size), 98x on 28x28 images with 8 codes.
    """
    xs_1 = x_adv_1 if isinstance(x_adv_1, (list, tuple)) else [x_adv_1]
    xs_2 = x_adv_2 if isinstance(x_adv_2, (list, tuple)) else [x_adv_2]
    if form == "batch_mean":
        image_gap = tf.add_n([tf.reduce_mean(tf.abs(a - b)) for a, b in zip(xs_1, xs_2)]) / len(xs_1)
        return image_gap / (tf.reduce_mean(tf.abs(z_1 - z_2)) + eps)
    if form != "example":
        raise ValueError(f"diversity form must be example or batch_mean, got {form!r}")

    def l1(t):  # per example
        return tf.reduce_sum(tf.abs(tf.reshape(t, [tf.shape(t)[0], -1])), axis=1)

    image_gap = tf.add_n([l1(a - b) for a, b in zip(xs_1, xs_2)]) / len(xs_1)
    return tf.reduce_mean(image_gap / (l1(z_1 - z_2) + eps))


def discriminator_score(logits):
    """-log D(x) = softplus(-logit), per example [N]: Cowboy's adversarial score (higher = less real)."""
    return tf.nn.softplus(-tf.reshape(logits, [-1]))


def latent_search_loss(x, x_generated, d_logits=None, sigma=1.0):
    """Cowboy eq. 4, per example [N]: ||G(z) - x||^2 / (2 sigma^2) - log D(G(z)).

    The squared error is summed over pixels (the paper's norm). Without `d_logits` it is
    Defense-GAN's ||G(z) - x||^2 (Samangouei et al. 2018, eq. 2 of the Cowboy paper).
    """
    squared = tf.reduce_sum(tf.reshape(tf.square(x_generated - x), [tf.shape(x)[0], -1]), axis=1)
    if d_logits is None:
        return squared
    return squared / (2.0 * sigma ** 2) + discriminator_score(d_logits)


def perceptual_loss(features, features_reconstructed):
    """GCLN eq. 4: ||F(x_o) - F(G(x*))||^2 per example (summed over features), averaged over the batch."""
    diff = tf.reshape(features - features_reconstructed, [tf.shape(features)[0], -1])
    return tf.reduce_mean(tf.reduce_sum(tf.square(diff), axis=1))


def weighted_bce(label_value, logits, weights):
    """Sigmoid cross-entropy against a constant label, averaged with per-example weights (0 when all are 0)."""
    logits = tf.reshape(logits, [-1])
    weights = tf.cast(tf.reshape(weights, [-1]), logits.dtype)
    per_example = tf.nn.sigmoid_cross_entropy_with_logits(tf.fill(tf.shape(logits), tf.cast(label_value, logits.dtype)),
                                                          logits)
    return tf.reduce_sum(weights * per_example) / tf.maximum(tf.reduce_sum(weights), 1.0)
