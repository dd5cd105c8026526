"""training: a run killed after its first epoch resumes where it was, every optimiser and schedule included."""

import numpy as np
import pytest
import tensorflow as tf

from tfpurify.training import train_defense

EPOCHS, LIMIT, BATCH = 3, 200, 50
STEPS = int(np.ceil(LIMIT * 0.9 / BATCH))  # training images per epoch (validation takes 10 %) / batch size

# Every defense with more than one optimiser or a schedule: its config, its optimisers, and its schedule
# state at the start of an epoch (a function of the epoch) as an uninterrupted run has it.
RESUMABLE = {
    "cowboy": ({"base_filters": 8, "z_dim": 8}, ("d_optimizer", "g_optimizer"), {}),
    # the AE term (our deviation, on here) switches on for the last ae_fraction (0.2) of the planned steps
    "fbgan": ({"base_filters": 8, "ae_fraction": 0.2}, ("d_optimizer", "g_optimizer", "e_optimizer"),
              {"ae_start_step": lambda epoch: round(0.8 * EPOCHS * STEPS)}),
    # the detector pre-trains for detector_pretrain_epochs (1) before the cleaner moves
    "gcln": ({"filters": 8, "residual_blocks": 1, "detector_filters": 8, "attack_steps": 1, "classifier": "CNN"},
             ("g_optimizer", "d_optimizer"), {"g_on": lambda epoch: float(epoch >= 1)}),
    "l2l_da": ({"generator_filters": 8, "steps": 2}, ("c_optimizer", "g_optimizer"), {}),
    "aaa": ({"filters": 8, "nb_iter": 2, "classifier": "CNN"}, ("optimizer",), {}),
    "pgd_at": ({"nb_iter": 2}, ("optimizer",), {}),
}


def _expected(optimizers, schedule, epoch):
    return {**{name: epoch * STEPS for name in optimizers}, **{name: f(epoch) for name, f in schedule.items()}}


class _Record(tf.keras.callbacks.Callback):
    """At each epoch's start (and the end of training): every optimiser's step count and the schedule state."""

    def __init__(self, optimizers, schedule):
        super().__init__()
        self.optimizers, self.schedule, self.seen = optimizers, schedule, {}

    def _state(self):
        state = {name: int(getattr(self.model, name).iterations.numpy()) for name in self.optimizers}
        return {**state, **{name: float(getattr(self.model, name).numpy()) for name in self.schedule}}

    def on_epoch_begin(self, epoch, logs=None):
        self.seen[epoch] = self._state()

    def on_train_end(self, logs=None):
        self.seen["end"] = self._state()


class _CrashAt(tf.keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated kill before epoch {epoch}")


@pytest.mark.parametrize("name", sorted(RESUMABLE))
def test_a_killed_run_resumes_with_its_optimisers_and_schedule(name, cnn_run, tmp_path):
    fields, optimizers, schedule = RESUMABLE[name]
    fields = {k: ((str(cnn_run),) if name == "aaa" else str(cnn_run)) if v == "CNN" else v for k, v in fields.items()}
    config = {**fields, "epochs": EPOCHS, "limit": LIMIT, "batch_size": BATCH}
    out = tmp_path / name

    killed = _Record(optimizers, schedule)
    with pytest.raises(KeyboardInterrupt):
        train_defense(name, config, out, callbacks=[killed, _CrashAt(1)], verbose=0)
    assert (out / "backup").exists() and not (out / "defense.weights.h5").exists()
    assert killed.seen == {0: _expected(optimizers, schedule, 0), 1: _expected(optimizers, schedule, 1)}

    resumed = _Record(optimizers, schedule)
    train_defense(name, config, out, callbacks=[resumed], verbose=0)
    assert resumed.seen == {**{epoch: _expected(optimizers, schedule, epoch) for epoch in range(1, EPOCHS)},
                            "end": _expected(optimizers, schedule, EPOCHS)}  # epoch 0 is not trained again
    assert (out / "defense.weights.h5").exists() and not (out / "backup").exists()
