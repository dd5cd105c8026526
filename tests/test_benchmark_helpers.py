"""The benchmarks' shared helpers that their numbers rest on: a training budget that survives a killed
process (a resumed run adds to the time and images already spent), and evaluations kept in run folders."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("benchmark_common", ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fit(budget, epochs):
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
    model.compile("sgd", "mse")
    model.fit(np.zeros((32, 2)), np.zeros((32, 1)), batch_size=8, epochs=epochs, callbacks=[budget], verbose=0)


def test_a_resumed_training_adds_to_its_ledger_and_spends_only_what_is_left(common, tmp_path):
    ledger = tmp_path / "timing.partial.json"
    first = common.TimeBudget(None, 8, ledger=ledger)
    _fit(first, 2)
    written = json.loads(ledger.read_text())
    assert written["images"] == 64 and written["processes"] == 1 and written["train_seconds"] > 0

    second = common.TimeBudget(None, 8, ledger=ledger)  # the next process
    _fit(second, 1)
    totals = second.totals()
    assert totals["images"] == 96 and totals["processes"] == 2
    assert totals["train_seconds"] > written["train_seconds"] and totals["cpu_seconds"] > written["cpu_seconds"]
    assert json.loads(ledger.read_text())["images"] == 96

    for clock, key in (("wall", "train_seconds"), ("cpu", "cpu_seconds")):
        ledger.write_text(json.dumps({**totals, key: 100.0}))  # the budget already spent: stop at once
        spent = common.TimeBudget(50, 8, clock, ledger=ledger)
        _fit(spent, 3)
        assert spent.images == 8, clock
        ledger.write_text(json.dumps({**totals, key: 0.0}))  # budget left: train on
        left = common.TimeBudget(50, 8, clock, ledger=ledger)
        _fit(left, 3)
        assert left.images == 96, clock


def test_kept_json_computes_once_and_reads_back(common, tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"rows": [{"accuracy": 0.5}]}

    path = tmp_path / "eval.json"
    assert common.kept_json(path, compute) == {"rows": [{"accuracy": 0.5}]}
    assert common.kept_json(path, compute) == {"rows": [{"accuracy": 0.5}]} and len(calls) == 1
