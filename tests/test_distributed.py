"""Every registered defense takes a `fit` step under MirroredStrategy on two logical CPUs, and a
deterministic step there equals the single-device step.

Logical devices must be configured before TensorFlow starts, so the test runs in a fresh process.
"""

import os
import subprocess
import sys


from tfpurify.defenses import REGISTRY

SCRIPT = """
import inspect
import sys
import tempfile
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tfpurify.classifiers import ClassifierConfig, train_classifier
from tfpurify.training import build_defense, make_strategy
from tfpurify.defenses import get_defense

strategy = make_strategy("mirrored")
assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
rng = np.random.default_rng(0)
x = rng.random((16, 28, 28, 1)).astype("float32")
y = rng.integers(0, 10, 16)
classifier_run = None
# small players and short inner loops: what is tested is how a step is shared between replicas, not its size
# (tracing L2L-DA's 10 recursive steps took 2 of this test's 4 minutes)
SMALL = {"l2l_da": {"steps": 2, "generator_filters": 8}, "fbgan": {"base_filters": 8},
         "gcln": {"filters": 8, "residual_blocks": 1, "detector_filters": 8, "attack_steps": 2},
         "aaa": {"nb_iter": 3, "filters": 8}}
for name in sys.argv[1:]:
    model_class, config_class = get_defense(name)
    extra = dict(SMALL.get(name, {}))
    if getattr(model_class, "needs_classifier", False):  # a tiny classifier run for it to protect
        if classifier_run is None:
            classifier_run = tempfile.mkdtemp() + "/cnn"
            train_classifier(ClassifierConfig(arch="cnn", epochs=1, limit=200, batch_size=64), classifier_run,
                             verbose=0)
        extra["classifier"] = classifier_run
    with strategy.scope():
        model = build_defense(name, config_class(batch_size=8, **extra))
        model.compile_for_training()
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(model.make_dataset(x, y, 8), epochs=1, steps_per_epoch=1, verbose=0)
    losses = {k: v[-1] for k, v in history.history.items()}
    assert all(np.isfinite(v) for v in losses.values()), (name, losses)
    changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    assert changed == len(before), f"{name}: {changed} of {len(before)} weights moved"
    print("OK", name, losses, flush=True)

# One deterministic step of every defense on one device and under the strategy: the same weights, as
# each replica's gradient is its share of the global batch's. Deterministic: SGD for every player
# (its step scales with the gradient, unlike Adam's), no dropout, and the random draws (latent codes,
# noise, random starts) replaced by fixed values that are the same for every example, so that how the
# batch is split between replicas does not change what each example gets.
def _pattern(shape):
    shape = tf.convert_to_tensor(shape, tf.int32)
    inner = tf.reduce_prod(shape[1:]) if shape.shape[0] else 1
    row = tf.sin(tf.range(tf.cast(inner, tf.float32)) * 1.7 + 0.3)  # in [-1, 1], varies along an example
    if shape.shape[0] == 0:
        return tf.reshape(row[0], [])
    return tf.broadcast_to(tf.reshape(row, tf.concat([[1], shape[1:]], 0)), shape)


def fixed_uniform(shape, minval=0, maxval=None, dtype=tf.float32, seed=None, name=None):
    dtype = tf.as_dtype(dtype)
    maxval = 1 if maxval is None else maxval
    u = 0.5 + 0.5 * _pattern(shape)
    if dtype.is_integer:
        return tf.cast(minval + tf.floor(u * 0.999 * float(maxval - minval)), dtype)
    return tf.cast(minval + u * (maxval - minval), dtype)


def fixed_normal(shape, mean=0.0, stddev=1.0, dtype=tf.float32, seed=None, name=None):
    return tf.cast(mean + stddev * _pattern(shape), dtype)


tf.random.uniform, tf.random.normal = fixed_uniform, fixed_normal
DETERMINISTIC = {"pgd_at": {"rand_init": False, "nb_iter": 3}, "denoising_ae": {"noise_std": 0.0},
                 "fbgan": {"d_dropout": 0.0}}
single = tf.distribute.get_strategy()
for name in sys.argv[1:]:
    model_class, config_class = get_defense(name)
    fields = {**SMALL.get(name, {}), **DETERMINISTIC.get(name, {}), "batch_size": 16}
    if getattr(model_class, "needs_classifier", False):
        fields["classifier"] = classifier_run
    models = []
    for scope in (single, strategy):
        with scope.scope():
            model = build_defense(name, config_class(**fields))
            model.compile_for_training()
            players = [p for p in inspect.signature(model.compile).parameters if p.endswith("optimizer")]
            model.compile(**{p: tf.keras.optimizers.SGD(0.01) for p in players},
                          **({"loss": "mse"} if name == "denoising_ae" else {}))
        models.append(model)
    models[1].set_weights(models[0].get_weights())
    start = [w.numpy() for w in models[0].trainable_weights]
    for model in models:
        model.fit(model.make_dataset(x, y, 16), epochs=1, steps_per_epoch=1, verbose=0)
    one, two = ([w.numpy() for w in m.trainable_weights] for m in models)
    moved = [float(np.abs(a - b).max()) for a, b in zip(start, one)]
    apart = [float(np.abs(a - b).max()) for a, b in zip(one, two)]
    # every weight moved (each player took its step), and to the same place under the strategy, up to
    # float rounding (a weight near 1 has float32 steps of 6e-8)
    off = [(i, d, m) for i, (d, m) in enumerate(zip(apart, moved)) if not (m > 0 and d <= 1e-3 * m + 2e-7)]
    assert not off, (name, off[:5])
    print("SAME", name, min(moved), max(apart), flush=True)
"""


def test_every_defense_takes_a_fit_step_under_mirrored_strategy_on_two_cpus():
    """One process for all defenses (the logical devices are set once, before TensorFlow starts)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    names = sorted(REGISTRY)
    result = subprocess.run([sys.executable, "-c", SCRIPT, *names], capture_output=True, text=True,
                            timeout=900, env=env)
    done = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("OK ")]
    same = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("SAME ")]
    assert result.returncode == 0 and done == names and same == names, \
        (done, same, result.stderr[-3000:])
