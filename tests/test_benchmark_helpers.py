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


def _fit(budget, epochs, before=()):
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
    model.compile("sgd", "mse")
    model.fit(np.zeros((32, 2)), np.zeros((32, 1)), batch_size=8, epochs=epochs, callbacks=[*before, budget],
              verbose=0)


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


def test_a_budget_spent_by_an_epochs_validation_starts_no_further_epoch(common):
    now = [0.0]
    budget = common.TimeBudget(50, 8, "cpu")
    budget.spent = lambda: now[0]
    validation_runs_past = tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: now.__setitem__(0, 60.0))
    _fit(budget, 3, before=[validation_runs_past])
    assert budget.images == 32  # the first epoch's 4 batches, and not one batch of the second


def test_kept_json_computes_once_and_reads_back(common, tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"rows": [{"accuracy": 0.5}]}

    path = tmp_path / "eval.json"
    assert common.kept_json(path, compute) == {"rows": [{"accuracy": 0.5}]}
    assert common.kept_json(path, compute) == {"rows": [{"accuracy": 0.5}]} and len(calls) == 1


def test_a_zoo_training_record_says_how_many_epochs_a_budget_left(tmp_path, monkeypatch):
    """zoo_fmnist's manifest record: the epochs planned and the epochs trained (a run stopped by its CPU budget
    after 2 of 200 planned epochs says 2; inside its third, 2.0 from the images seen, not history.csv's 3 rows),
    with the timing's minutes and images."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("benchmark_zoo_fmnist", ROOT / "benchmarks" / "zoo_fmnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss\n0,1.0\n1,0.5\n")
    record = module._record({"train_seconds": 600, "cpu_seconds": 300, "images": 1000}, 200, history=history)
    assert record == {"epochs_planned": 200, "epochs_trained": 2, "wall_minutes": 10.0, "cpu_minutes": 5.0,
                      "images_seen": 1000}
    assert module._record({}, 5, history=tmp_path / "missing.csv") == {"epochs_planned": 5}
    # with the training part's size, the images seen say where inside an epoch the budget stopped it
    assert module._epoch_images({"dataset": "fashion_mnist", "val_fraction": 0.1, "limit": None}) == 54000
    assert module._epoch_images({"dataset": "fashion_mnist", "val_fraction": 0.2, "limit": 1000}) == 800
    three_rows = tmp_path / "three.csv"
    three_rows.write_text("epoch,loss\n0,1.0\n1,0.5\n2,0.4\n")  # the third epoch stopped after 160 images
    assert module._record({"images": 108160}, 200, history=three_rows, epoch_images=54000)["epochs_trained"] == 2.0
    assert module._record({"images": 93056}, 200, history=three_rows, epoch_images=54000)["epochs_trained"] == 1.72


def test_a_published_seed_is_kept_only_when_it_was_measured_as_asked(tmp_path, monkeypatch):
    """The equal-updates comparison keeps a seed whose run folders are gone from its published results, but only
    if the same updates, eps, test images and configs (all but the seed) made them."""
    import argparse
    import sys
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("l2l_da_fmnist", ROOT / "benchmarks" / "l2l_da_fmnist.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    published = json.loads((ROOT / "benchmarks/results/l2l_da_fmnist_equal_updates540.json").read_text())
    published["configs"]["l2l_da"].pop("clip_norm", None)  # published before the field existed: its default
    path = tmp_path / "results.json"
    path.write_text(json.dumps(published))
    monkeypatch.chdir(tmp_path)  # the configs name the classifier run relative to the working folder
    for run in ("runs/bench-cnn", "runs/other-cnn"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "config.json").write_text(json.dumps({"kind": "classifier", "arch": "cnn"}))
    args = argparse.Namespace(eps=0.1, equal_updates=540, n=500)
    kept = bench.published_seeds(path, pathlib.Path("runs/bench-cnn"), args)
    assert 0 in kept and set(kept) == set(published["seeds"])
    assert {r["seed"] for r in kept[0]["rows"]} == {0}
    assert set(kept[0]["training"]) == {"pgd_at seed 0", "l2l_da seed 0"}

    other_n = argparse.Namespace(**{**vars(args), "n": 1000})
    assert bench.published_seeds(path, pathlib.Path("runs/bench-cnn"), other_n) == {}
    assert bench.published_seeds(path, pathlib.Path("runs/other-cnn"), args) == {}
    published["configs"]["l2l_da"]["clip_norm"] = 1.0  # the field, but not as asked
    path.write_text(json.dumps(published))
    assert bench.published_seeds(path, pathlib.Path("runs/bench-cnn"), args) == {}
    published["configs"]["l2l_da"]["momentum"] = 0.5
    path.write_text(json.dumps(published))
    assert bench.published_seeds(path, pathlib.Path("runs/bench-cnn"), args) == {}
    assert bench.published_seeds(tmp_path / "missing.json", pathlib.Path("runs/bench-cnn"), args) == {}


def test_a_rerun_keeps_the_reading_written_below_the_marker_and_nothing_else(common, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    common.write_results("b", {"accuracy": 0.5}, "| a |\n|---|\n| 0.5 |\n")
    assert (tmp_path / "b.md").read_text() == "| a |\n|---|\n| 0.5 |\n"  # no marker: the file is the markdown
    (tmp_path / "b.md").write_text("| a |\n|---|\n| 0.5 |\n\n" + common.KEPT_BELOW + "\nReading: 0.5 is low.\n")
    common.write_results("b", {"accuracy": 0.7}, "| a |\n|---|\n| 0.7 |")
    kept = "\n\n" + common.KEPT_BELOW + "\nReading: 0.5 is low.\n"
    assert (tmp_path / "b.md").read_text() == "| a |\n|---|\n| 0.7 |" + kept
    assert json.loads((tmp_path / "b.json").read_text()) == {"accuracy": 0.7}
    common.write_results("b", {"accuracy": 0.7}, "| a |\n|---|\n| 0.7 |")  # a second rerun keeps it once
    assert (tmp_path / "b.md").read_text().count("Reading: 0.5 is low.") == 1
