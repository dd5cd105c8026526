import numpy as np
import pytest
import tensorflow as tf

from tfpurify import losses


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def test_minimax_discriminator_loss_matches_hand_computation():
    real, fake_a, fake_b = np.array([2.0, -1.0]), np.array([0.5, -0.5]), np.array([1.0, 3.0])
    expected = (-np.mean(np.log(_sigmoid(real))) - 0.5 * np.mean(np.log(1 - _sigmoid(fake_a)))
                - 0.5 * np.mean(np.log(1 - _sigmoid(fake_b))))
    got = losses.minimax_discriminator_loss(tf.constant(real), [tf.constant(fake_a), tf.constant(fake_b)], [0.5, 0.5])
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_non_saturating_generator_loss():
    fake = np.array([0.0, 2.0])
    assert float(losses.non_saturating_generator_loss(tf.constant(fake))) == pytest.approx(
        -np.mean(np.log(_sigmoid(fake))), rel=1e-5)


def test_mutual_information_gap_matches_hand_computation():
    z_cat = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    z_cont = np.array([[0.5, -0.5], [1.0, 0.0]], np.float32)
    logits = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    mu = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ce = -(z_cat * log_softmax).sum(axis=1)
    sq = ((z_cont - mu) ** 2).sum(axis=1)
    expected = np.mean(ce + 2.0 * sq)
    got = losses.mutual_information_gap(z_cat, z_cont, logits, mu, continuous_weight=2.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_feature_matching_and_reconstruction():
    real = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    fake = np.array([[0.0, 0.0], [2.0, 2.0]], np.float32)
    assert float(losses.feature_matching_loss(real, fake)) == pytest.approx((2 - 1) ** 2 + (3 - 1) ** 2)
    assert float(losses.reconstruction_loss(real, fake)) == pytest.approx(np.mean((real - fake) ** 2))
    per_image = np.sum((real - fake) ** 2, axis=tuple(range(1, real.ndim))).mean()
    assert float(losses.reconstruction_loss(real, fake, "sum")) == pytest.approx(per_image, rel=1e-5)


def test_diversity_loss_is_mean_image_gap_over_mean_code_gap():
    a = [tf.zeros([2, 4, 4, 1]), tf.zeros([2, 4, 4, 1])]
    b = [tf.fill([2, 4, 4, 1], 0.2), tf.fill([2, 4, 4, 1], 0.4)]
    z1, z2 = tf.zeros([2, 3]), tf.fill([2, 3], 2.0)
    # the earlier form: image gaps 0.2 and 0.4 averaged over the trajectory (0.3), over the code gap 2
    assert float(losses.diversity_loss(a, b, z1, z2, form="batch_mean")) == pytest.approx(0.15, rel=1e-5)
    assert float(losses.diversity_loss(a[0], b[0], z1, z2, form="batch_mean")) == pytest.approx(0.1, rel=1e-5)
    # eq. 7 per example: L1 over 16 pixels (0.3 x 16 = 4.8) over the code's L1 gap (3 x 2 = 6)
    assert float(losses.diversity_loss(a, b, z1, z2)) == pytest.approx(0.8, rel=1e-5)


def test_diversity_loss_is_a_mean_of_per_example_ratios():
    a = tf.zeros([2, 4, 4, 1])
    b = tf.concat([tf.fill([1, 4, 4, 1], 0.5), tf.fill([1, 4, 4, 1], 0.25)], axis=0)  # L1 gaps 8 and 4
    z1, z2 = tf.zeros([2, 2]), tf.constant([[1.0, 1.0], [0.5, 0.5]])  # L1 gaps 2 and 1
    assert float(losses.diversity_loss(a, b, z1, z2)) == pytest.approx((8 / 2 + 4 / 1) / 2, rel=1e-5)  # not 12 / 3
    with pytest.raises(ValueError, match="diversity form"):
        losses.diversity_loss(a, b, z1, z2, form="max")


def test_classification_loss_matches_keras():
    logits = tf.constant([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = tf.constant([0, 1])
    keras_loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    assert float(losses.classification_loss(labels, logits)) == pytest.approx(float(keras_loss), rel=1e-6)
