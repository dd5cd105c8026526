"""Each defense's networks layer by layer as its module documents them, and its config's boundaries.

A changed kernel, stride, width, activation or slope still trains and still passes the behaviour
tests, yet it is no longer the architecture the reports name: pinned here. Fast (no training).
"""

import numpy as np
import pytest
import tensorflow as tf

from tfpurify.defenses.aaa import AAA, AAAConfig
from tfpurify.defenses.adversarial_training import PGDATConfig
from tfpurify.defenses.denoising_ae import DenoisingAEConfig
from tfpurify.defenses.fbgan import FBGAN, FBGANConfig
from tfpurify.defenses.gcln import GCLNConfig
from tfpurify.defenses.l2l_da import L2LDAConfig
from tfpurify.defenses.registry import build_defense
from tfpurify.errors import InputValidationError

from tests.toys import layer_specs


def _conv(filters, kernel, stride, activation, padding="same"):
    return (filters, (kernel, kernel), (stride, stride), padding, activation)


def test_gcln_cleaner_and_detector():
    model = build_defense("gcln", {"filters": 4, "residual_blocks": 2, "detector_filters": 5, "quant_step": 6.0,
                                   "dct_block": 4})
    residual = [_conv(8, 3, 1, "relu"), _conv(8, 3, 1, "linear"), "Add"]
    assert layer_specs(model.cleaner) == [("BlockDCTQuantize", 6.0, 4), _conv(4, 3, 1, "relu"), _conv(8, 3, 2, "relu"),
                                          *residual, *residual, _conv(4, 3, 2, "relu"), _conv(1, 3, 1, "sigmoid")]
    assert layer_specs(model.detector_net) == [_conv(5, 3, 2, "linear"), ("LeakyReLU", 0.2), _conv(10, 3, 2, "linear"),
                                               ("LeakyReLU", 0.2), "Flatten", (1, (), (), None, "linear")]
    assert model.cleaner.name == "cleaner" and model.detector_net.name == "detector"
    x = tf.random.uniform([2, 28, 28, 1])
    h = model.cleaner.layers[3](model.cleaner.layers[2](model.cleaner.layers[1](x)))  # quantize, conv, conv down
    block = model.cleaner.layers[4:7]
    np.testing.assert_allclose(block[2]([h, block[1](block[0](h))]).numpy(), (h + block[1](block[0](h))).numpy(),
                               rtol=1e-6)
    assert [m.name for m in model.metrics] == ["d_loss", "g_loss", "perceptual", "adversarial", "recovered_accuracy"]


def test_aaa_autoencoders():
    conv = build_defense("aaa", {"filters": 4})
    assert layer_specs(conv.autoencoder) == [_conv(4, 3, 2, "relu"), _conv(8, 3, 2, "relu"), _conv(8, 3, 2, "relu"),
                                             _conv(4, 3, 2, "relu"), _conv(1, 3, 1, "sigmoid")]
    assert conv.autoencoder.layers[2].name == "code" and conv.autoencoder.name == "autoencoder"
    unet = build_defense("aaa", {"filters": 4, "architecture": "unet"})
    assert layer_specs(unet.autoencoder) == [
        _conv(4, 3, 1, "relu"), _conv(8, 3, 2, "relu"), _conv(16, 3, 2, "relu"), _conv(8, 3, 2, "relu"), "Concatenate",
        _conv(8, 3, 1, "relu"), _conv(4, 3, 2, "relu"), "Concatenate", _conv(4, 3, 1, "relu"),
        _conv(1, 1, 1, "sigmoid", "valid")]
    for architecture, shape, unet_expected in (("auto", (28, 28, 1), False), ("auto", (32, 32, 3), True),
                                               ("conv", (32, 32, 3), False), ("unet", (28, 28, 1), True)):
        model = AAA(AAAConfig(filters=4, architecture=architecture), input_shape=shape)
        assert ("Concatenate" in layer_specs(model.autoencoder)) == unet_expected, (architecture, shape)
        assert model.purify(tf.zeros((1, *shape))).shape == (1, *shape)
    for shape in ((30, 30, 3), (32, 30, 3), (30, 32, 3)):
        with pytest.raises(InputValidationError, match="sides divisible by 4"):
            AAA(AAAConfig(filters=4, architecture="unet"), input_shape=shape)
    assert [m.name for m in conv.metrics] == ["loss", "xent", "mse", "adv_accuracy"]


def test_denoising_autoencoder():
    model = build_defense("denoising_ae", {"filters": 4})
    assert layer_specs(model.autoencoder) == [_conv(4, 3, 1, "relu"), "AveragePooling2D", _conv(4, 3, 1, "relu"),
                                              _conv(4, 3, 1, "relu"), "UpSampling2D", _conv(4, 3, 1, "relu"),
                                              _conv(1, 3, 1, "sigmoid")]
    assert model.autoencoder.name == "autoencoder"
    model.compile_for_training()
    assert model.loss == "mse"


def test_l2l_da_attack_generator():
    model = build_defense("l2l_da", {"arch": "lenet5", "z_dim": 3, "generator_filters": 4})
    g = model.generator
    model(tf.zeros([2, 28, 28, 1]))
    specs = [(layer.filters, layer.kernel_size, layer.strides, layer.padding, layer.use_bias)
             for layer in (*g.down, *g.up)]
    assert specs == [(4, (3, 3), (1, 1), "same", False), (8, (4, 4), (2, 2), "same", False),
                     (16, (4, 4), (2, 2), "same", False), (8, (4, 4), (2, 2), "same", False),
                     (4, (4, 4), (2, 2), "same", False)]
    assert (g.out.filters, g.out.kernel_size, g.out.activation.__name__) == (1, (3, 3), "tanh")
    # z joins the input and the first two convolutions: x, delta, grad and z, then 4 + z, then no z
    assert [layer.kernel.shape[2] for layer in g.down] == [3 + 3, 4 + 3, 8]
    # (transposed kernels are [k, k, out, in]): the bottom, then the first up-sampling beside its skip
    assert [layer.kernel.shape[3] for layer in g.up] == [16, 8 + 8]
    assert g.out.kernel.shape[2] == 4 + 4  # the last up-sampling concatenated with the first skip
    assert len(g.norms) == 5 and all(n.gamma.shape == (10, c) for n, c in zip(g.norms, (4, 8, 16, 8, 4)))
    plain = build_defense("l2l_da", {"arch": "lenet5", "z_dim": 3, "generator_filters": 4, "use_label": False,
                                     "use_delta": False})
    plain(tf.zeros([2, 28, 28, 1]))
    assert plain.generator.down[0].kernel.shape[2] == 2 + 3
    assert all(type(n).__name__ == "BatchNormalization" and n.synchronized for n in plain.generator.norms)
    assert [m.name for m in model.metrics] == ["cls_loss", "adv_loss", "div_loss", "gen_loss", "accuracy",
                                               "adv_accuracy"]


CONFIGS = {
    GCLNConfig: ([{"quant_step": 0.0}, {"perceptual_weight": 0.0}, {"perceptual_weight": 1.0}, {"raw_attack_weight": 0.0},
                  {"attack_eps": 1.0}, {"detector_pretrain_epochs": 0, "residual_blocks": 0}],
                 [({"quant_step": -0.1}, "quant_step"), ({"perceptual_weight": -0.1}, "perceptual_weight"),
                  ({"perceptual_weight": 1.1}, "perceptual_weight"), ({"raw_attack_weight": 1.0}, "raw_attack_weight"),
                  ({"raw_attack_weight": -0.1}, "raw_attack_weight"), ({"attack_eps": 0.0}, "attack_eps"),
                  ({"attack_eps": 1.1}, "attack_eps"), ({"detector_pretrain_epochs": -1}, "detector_pretrain_epochs"),
                  ({"residual_blocks": -1}, "residual_blocks"), ({"dct_block": 0}, "dct_block must be > 0"),
                  ({"filters": 0}, "filters must be > 0"), ({"detector_filters": 0}, "detector_filters must be > 0"),
                  ({"attack_steps": 0}, "attack_steps must be > 0")]),
    AAAConfig: ([{"eps": 1.0, "eps_iter": 1.0}, {"mse_weight": 0.0}, {"loss": "mse"}, {"architecture": "conv"}],
                [({"eps": 0.0}, "eps_iter <= eps"), ({"eps": 1.1}, "eps_iter <= eps"),
                 ({"eps": 0.1, "eps_iter": 0.0}, "eps_iter <= eps"), ({"eps": 0.1, "eps_iter": 0.2}, "eps_iter <= eps"),
                 ({"mse_weight": -0.1}, "mse_weight"), ({"nb_iter": 0}, "nb_iter must be > 0"),
                 ({"filters": 0}, "filters must be > 0"), ({"lr_patience": 0}, "lr_patience must be > 0"),
                 ({"loss": "l1"}, "loss must be one of"), ({"architecture": "vgg"}, "architecture must be")]),
    PGDATConfig: ([{"eps": 1.0}, {"eps": 0.1, "eps_iter": 0.1}, {"adv_weight": 0.0}, {"adv_weight": 1.0}],
                  [({"eps": 0.0}, "eps must be in"), ({"eps": 1.1}, "eps must be in"), ({"nb_iter": 0}, "nb_iter"),
                   ({"eps": 0.1, "eps_iter": 0.0}, "eps_iter must be in"), ({"adv_weight": -0.1}, "adv_weight"),
                   ({"adv_weight": 1.1}, "adv_weight")]),
    L2LDAConfig: ([{"eps": 1.0}, {"eps": 0.1, "eps_step": 0.1}, {"diversity_weight": 0.0, "momentum": 0.0,
                                                                  "weight_decay": 0.0}],
                  [({"eps": 0.0}, "eps must be in"), ({"eps": 1.1}, "eps must be in"), ({"steps": 0}, "steps must be"),
                   ({"z_dim": 0}, "z_dim must be"), ({"generator_filters": 0}, "generator_filters must be"),
                   ({"generator_learning_rate": 0.0}, "generator_learning_rate must be"),
                   ({"eps": 0.1, "eps_step": 0.0}, "eps_step must be in"),
                   ({"generator_optimizer": "rmsprop"}, "generator_optimizer must be"),
                   ({"diversity_weight": -0.1}, "diversity_weight must be >= 0"),
                   ({"momentum": -0.1}, "momentum must be >= 0"), ({"weight_decay": -1e-5}, "weight_decay must be")]),
    FBGANConfig: ([{"n_categories": 2, "n_continuous": 0}, {"ae_fraction": 0.0}, {"ae_fraction": 1.0},
                   {"d_dropout": 0.0}, {"ae_reduction": "mean"}],
                  [({"n_categories": 1}, "n_categories >= 2"), ({"n_continuous": -1}, "n_continuous >= 0"),
                   ({"ae_fraction": -0.1}, "ae_fraction must be in"), ({"ae_fraction": 1.1}, "ae_fraction must be in"),
                   ({"ae_reduction": "max"}, "ae_reduction must be"), ({"d_dropout": 1.0}, "d_dropout must be in"),
                   ({"d_dropout": -0.1}, "d_dropout must be in")]),
    DenoisingAEConfig: ([{"noise_std": 0.0}, {"filters": 1}],
                        [({"noise_std": -0.1}, "noise_std must be >= 0"), ({"filters": 0}, "filters must be >= 1")]),
}


@pytest.mark.parametrize("config", list(CONFIGS), ids=lambda c: c.__name__)
def test_config_boundaries(config):
    good, bad = CONFIGS[config]
    for fields in good:
        config(**fields)
    for fields, match in bad:
        with pytest.raises(InputValidationError, match=match):
            config(**fields)


def test_configs_normalize_what_they_are_given_and_robust_classifiers_take_the_image_shape():
    from tfpurify.defenses.adversarial_training import PGDAdversarialTraining

    assert AAAConfig(classifier=["a", "b"]).classifier == ("a", "b") and AAAConfig(classifier="a").classifier == ("a",)
    from tfpurify.defenses.l2l_da import L2LDA

    model = PGDAdversarialTraining(PGDATConfig(arch="lenet5", dataset="cifar10"), (32, 32, 3), name="robust")
    assert model.classifier.input_shape == (None, 32, 32, 3) and model.name == "robust"
    model = L2LDA(L2LDAConfig(arch="lenet5", dataset="cifar10", generator_filters=4), (32, 32, 3), name="learned")
    assert model.classifier.input_shape == (None, 32, 32, 3) and model.name == "learned"
    assert model.generator.name == "attack_generator"


def test_derived_steps():
    assert PGDATConfig(eps=0.2).step_size == pytest.approx(0.05)
    assert PGDATConfig(eps=0.2, eps_iter=0.01).step_size == 0.01
    assert (L2LDAConfig(eps=0.2).n_steps, L2LDAConfig(eps=0.2).step_size) == (10, pytest.approx(0.05))
    assert (L2LDAConfig(eps=0.2, eps_step=0.03).step_size, L2LDAConfig(recursive=False, eps_step=0.03).step_size) \
        == (0.03, 0.1)
    assert L2LDAConfig(recursive=False, steps=7).n_steps == 1


def test_fbgan_encoder_generator_and_discriminator():
    model = build_defense("fbgan", {"base_filters": 2, "n_continuous": 3, "d_dropout": 0.3})
    wn = "WeightNormalization"

    def dense(units):
        return (units, (), (), None, "linear")

    assert layer_specs(model.encoder) == [
        wn, _conv(2, 3, 1, "elu"), wn, _conv(4, 4, 2, "elu"), wn, _conv(4, 3, 1, "elu"), wn, _conv(8, 4, 2, "elu"),
        wn, _conv(8, 3, 1, "elu"), wn, _conv(16, 7, 1, "elu", "valid"), "Flatten", wn, dense(10), wn, dense(3)]
    assert layer_specs(model.generator) == [
        "Reshape", wn, _conv(16, 7, 1, "elu", "valid"), wn, _conv(8, 3, 1, "elu"), wn, _conv(4, 4, 2, "elu"),
        wn, _conv(4, 3, 1, "elu"), wn, _conv(2, 4, 2, "elu"), wn, _conv(1, 3, 1, "sigmoid")]
    leaky, drop = ("LeakyReLU", 0.2), ("Dropout", 0.3)
    assert layer_specs(model.discriminator) == [
        _conv(2, 4, 2, "linear"), leaky, drop, _conv(4, 3, 1, "linear"), leaky, drop, _conv(8, 4, 2, "linear"), leaky,
        drop, _conv(8, 3, 1, "linear"), leaky, drop, dense(16), _conv(16, 7, 1, "linear", "valid"), leaky, leaky,
        dense(16), "Flatten", leaky, "Concatenate", dense(32), leaky, drop, dense(32), dense(8), leaky, leaky, dense(1),
        dense(10), dense(3)]
    assert [m.name for m in (model.encoder, model.generator, model.discriminator)] == ["encoder", "generator",
                                                                                      "discriminator"]
    assert model.generator(tf.zeros([1, 13])).shape == (1, 28, 28, 1)
    for shape in ((28, 32, 1), (30, 30, 1)):
        with pytest.raises(InputValidationError, match="square images with a side divisible by 4"):
            FBGAN(FBGANConfig(base_filters=2), shape)


@pytest.mark.parametrize("fraction,start", [(0.5, 6), (0.25, 9), (0.0, 13), (1.0, 0)])
def test_fbgan_auto_encoder_term_starts_for_the_last_fraction_of_the_steps(fraction, start):
    model = build_defense("fbgan", {"base_filters": 2, "ae_fraction": fraction})
    (schedule,) = model.training_callbacks()
    schedule.set_model(model)
    schedule.set_params({"epochs": 3, "steps": 4})
    schedule.on_train_begin()
    assert int(model.ae_start_step.numpy()) == start
