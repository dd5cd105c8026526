import numpy as np
import pytest
import tensorflow as tf
from scipy.fft import dctn

from tfpurify.layers import BlockDCTQuantize, WeightNormalization, dct_matrix, weight_norm


def test_dct_matches_scipys_orthonormal_dct_ii():
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 24, 3)).astype(np.float32)
    coeffs = BlockDCTQuantize(step=8.0).coefficients(x).numpy()  # [N, C, H/8, W/8, 8, 8]
    assert coeffs.shape == (2, 3, 2, 3, 8, 8)
    block = 255.0 * x[1, 8:16, 16:24, 2]
    np.testing.assert_allclose(coeffs[1, 2, 1, 2], dctn(block, norm="ortho"), rtol=1e-4, atol=1e-3)
    c = dct_matrix(8)
    np.testing.assert_allclose(c @ c.T, np.eye(8), atol=1e-6)


def test_a_tiny_step_gives_the_input_back_and_padding_is_cropped():
    x = np.random.default_rng(1).random((3, 28, 28, 1)).astype(np.float32)  # 28 is not a multiple of 8
    out = BlockDCTQuantize(step=1e-4).quantize(tf.constant(x)).numpy()
    assert out.shape == x.shape
    np.testing.assert_allclose(out, x, atol=1e-4)
    np.testing.assert_array_equal(BlockDCTQuantize(step=0).quantize(tf.constant(x)).numpy(), x)


def test_quantization_matches_a_numpy_reference_and_stays_in_range():
    x = np.random.default_rng(2).random((1, 8, 8, 1)).astype(np.float32)
    step = 10.0
    c = dct_matrix(8).astype(np.float64)
    expected = c.T @ (np.round(c @ (255.0 * x[0, :, :, 0]) @ c.T / step) * step) @ c / 255.0
    out = BlockDCTQuantize(step=step).quantize(tf.constant(x)).numpy()[0, :, :, 0]
    np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1e-4)
    assert np.abs(out - x[0, :, :, 0]).max() > 1e-3  # it does change the image


def test_gradient_is_straight_through_and_it_traces():
    layer = BlockDCTQuantize(step=12.0)
    x = tf.constant(np.random.default_rng(3).random((2, 28, 28, 1)).astype(np.float32))
    weights = tf.random.normal(x.shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(layer(x) * weights)
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), weights.numpy(), atol=1e-6)
    traced = tf.function(layer, input_signature=[tf.TensorSpec([None, 28, 28, 1])])
    np.testing.assert_allclose(traced(x).numpy(), layer.quantize(x).numpy(), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError):
        BlockDCTQuantize(step=-1.0)


def test_leaky_relu_is_keras_function_without_the_grappler_error(capfd):
    from tfpurify.layers import LeakyReLU

    x = tf.random.normal((4, 28, 28, 1), seed=1)
    np.testing.assert_array_equal(LeakyReLU(0.2)(x).numpy(), tf.keras.layers.LeakyReLU(0.2)(x).numpy())
    layers = tf.keras.layers
    inputs = tf.keras.Input((28, 28, 1))
    h = LeakyReLU(0.2)(layers.Conv2D(8, 5, 2, padding="same")(inputs))
    model = tf.keras.Model(inputs, layers.Dense(1)(layers.Flatten()(LeakyReLU(0.2)(layers.Conv2D(8, 5, 2)(h)))))

    @tf.function
    def step(images):  # a discriminator's step: the fusion Conv2D + BiasAdd + LeakyRelu fails with Keras' layer
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(model(images))
        return tape.gradient(loss, [images, *model.trainable_variables])

    capfd.readouterr()
    step(x)
    assert "remapper failed" not in capfd.readouterr().err


def test_quantizer_gradient_is_straight_through_or_true_as_asked():
    layer = BlockDCTQuantize(10.0)
    x = tf.random.uniform((2, 16, 16, 1), 0.2, 0.8, seed=3)

    def gradient():
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(layer(x))
        g = tape.gradient(out, x)
        return np.zeros(x.shape, np.float32) if g is None else g.numpy()

    np.testing.assert_array_equal(gradient(), np.ones(x.shape, np.float32))  # the identity's
    with layer.gradient(straight_through=False):
        np.testing.assert_array_equal(gradient(), np.zeros(x.shape, np.float32))  # rounding's
        np.testing.assert_allclose(layer(x).numpy(), layer.quantize(x).numpy())
    assert layer.straight_through  # restored after the block


@pytest.mark.parametrize("make, shape", [
    (lambda: tf.keras.layers.Conv2D(5, 3, padding="same", activation="elu"), (4, 6, 6, 3)),
    (lambda: tf.keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same"), (4, 6, 6, 3)),
    (lambda: tf.keras.layers.Dense(7), (4, 9))], ids=["conv", "conv_transpose", "dense"])
def test_weight_norm_is_tfas_layer_initialized_when_built(make, shape):
    """Ours sets g = ||v|| when built; tfa's (its parent class) in its first call: the same outputs, gradients and
    variables, in the same order and under the same names."""
    tfa_class = WeightNormalization.__mro__[1]
    assert tfa_class.__module__.startswith("tensorflow_addons")
    x = tf.constant(np.random.default_rng(3).normal(size=shape), tf.float32)
    ours, theirs = weight_norm(make()), tfa_class(make(), data_init=False)
    ours.build(shape)
    theirs.build(shape)
    assert [w.name for w in ours.weights] == [w.name.replace(theirs.name, ours.name) for w in theirs.weights]
    assert ours.name.startswith("weight_normalization")  # the auto-name (and weight names) of tfa's layer
    theirs.v.assign(ours.v)  # the same kernel; tfa's g stays 1 and its flag unset until its first call
    ours.layer.bias.assign(tf.fill(ours.layer.bias.shape, 0.1))
    theirs.layer.bias.assign(ours.layer.bias)
    norms = np.linalg.norm(ours.v.numpy().reshape(-1, ours.layer_depth), axis=0)
    np.testing.assert_allclose(ours.g.numpy(), norms, rtol=1e-6)
    assert bool(ours._initialized.numpy()) and not bool(theirs._initialized.numpy())
    grads = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            out = layer(x)
            loss = tf.reduce_sum(tf.sin(out))
        grads.append((out.numpy(), [g.numpy() for g in tape.gradient(loss, [layer.g, layer.v])]))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(theirs.g.numpy(), ours.g.numpy(), rtol=1e-6)  # tfa's first call: the same g
    ours.set_weights([w + 0.5 for w in theirs.get_weights()[:-1]] + [theirs.get_weights()[-1]])  # loads both ways
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=1e-5, atol=1e-6)
