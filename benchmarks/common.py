"""Helpers shared by the benchmark scripts: environment facts, results writing, a training time budget."""

import json
import os
import pathlib
import platform
import time

import tensorflow as tf

from tfpurify import registry
from tfpurify.runs import atomic_write_text
from tfpurify.reports import attack_label

registry.load()  # benchmark scripts stand at the top: every defense and attack, installed plug-ins included

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def environment():
    return {"cpu_count": os.cpu_count(), "gpu": bool(tf.config.list_physical_devices("GPU")),
            "tensorflow": tf.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def machine():
    """One line for reports: cores, architecture, TensorFlow version."""
    env = environment()
    return (f"{env['cpu_count']} cores, {env['machine']}, {'GPU' if env['gpu'] else 'no GPU'}, "
            f"TensorFlow {env['tensorflow']}")


def rows_table(rows):
    """Markdown table of result rows (threat model always shown)."""
    lines = ["| defense | classifier | threat model | attack | eps | accuracy | plain | parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r.get("params", {}).items()
                           if k not in ("clip_min", "clip_max", "targeted"))  # the same in every row
        eps = "-" if r["eps"] is None else f"{r['eps']:g}"
        plain = "-" if r.get("plain_accuracy") is None else f"{100 * r['plain_accuracy']:.1f} %"
        lines.append(f"| {r['defense']} | {r['classifier']} | {r['threat_model']} | {attack_label(r)} | "
                     f"{eps} | {100 * r['accuracy']:.1f} % | {plain} | {params} |")
    return "\n".join(lines)


def kept_json(path, compute):
    """`compute()`'s JSON value, written to `path` (atomically) the first time and read from it after: a
    rerun of a benchmark does only the work still missing."""
    path = pathlib.Path(path)
    if not path.exists():
        atomic_write_text(path, json.dumps(compute(), indent=1) + "\n")
    return json.loads(path.read_text())


def kept_evaluation(path, key):
    """`tfpurify.evaluation.report.KeptEvaluation` at `path` for `key`, saying so when it continues one: a
    benchmark part stopped mid-way continues with the attack after the last one it finished, and its
    `seconds()` count the stopped processes' too."""
    from tfpurify.evaluation.report import KeptEvaluation

    kept = KeptEvaluation(path, key)
    if kept.resume is not None:
        print(f"{path}: continuing the evaluation kept there", flush=True)
    return kept


KEPT_BELOW = "<!-- Written by hand: a rerun of the benchmark keeps everything below this line. -->"


def write_results(name, results, markdown):
    """Writes benchmarks/results/<name>.json and its .md twin (atomically). Where the .md already holds the
    line `KEPT_BELOW`, that line and the text after it (a reading of the numbers written by hand) follow the new
    markdown instead of being lost."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    md_path = RESULTS / f"{name}.md"
    kept = ""
    if md_path.exists():
        _, marker, after = md_path.read_text().partition(KEPT_BELOW)
        if marker:
            kept = "\n\n" + marker + after.rstrip()
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(md_path, markdown.rstrip() + kept + "\n")
    print(markdown)


class TimeBudget(tf.keras.callbacks.Callback):
    """Stops `fit` after `seconds` (checked after every batch and every epoch, validation included; None: never)
    and counts the images seen. A validation pass that runs past the budget comes on top of it, but no epoch
    starts after it.

    `clock` "wall" counts wall time; "cpu" this process's CPU time (every thread), which other jobs on
    the machine do not eat into: models trained side by side with other work get equal budgets.
    `ledger`: a JSON file of the totals so far (wall and CPU seconds, images, processes), rewritten at the end
    of every epoch; where it exists at the start, a resumed run (Keras `BackupAndRestore` restarts at the last
    finished epoch) adds to its totals and spends only what is left of the budget. The work of an epoch a
    killed process did not finish is neither counted nor kept."""

    def __init__(self, seconds, batch_size, clock="wall", ledger=None):
        super().__init__()
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be wall or cpu, got {clock!r}")
        self.seconds, self.batch_size, self.clock = seconds, batch_size, clock
        self.spent = time.process_time if clock == "cpu" else time.perf_counter
        self.images, self.budget_start, self.first_batch_end, self.last_batch_end = 0, None, None, None
        self.ledger = None if ledger is None else pathlib.Path(ledger)
        self.before = {"train_seconds": 0.0, "cpu_seconds": 0.0, "images": 0, "processes": 0}
        if self.ledger is not None and self.ledger.exists():
            self.before.update(json.loads(self.ledger.read_text()))
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_begin(self, logs=None):
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()
        self.budget_start = self.spent() - self.before["cpu_seconds" if self.clock == "cpu" else "train_seconds"]

    def on_train_batch_end(self, batch, logs=None):
        self.images += self.batch_size
        self.last_batch_end = time.perf_counter()
        if self.first_batch_end is None:  # the first step includes tracing the step function
            self.first_batch_end = self.last_batch_end
        self._stop_when_spent()

    def _stop_when_spent(self):
        if self.seconds is not None and self.spent() - self.budget_start > self.seconds:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._stop_when_spent()  # a validation pass may have spent the rest: start no epoch for one batch
        if self.ledger is not None:
            atomic_write_text(self.ledger, json.dumps(self.totals()) + "\n")

    def totals(self):
        """Wall and CPU seconds and images of this process added to the ledger's, and how many processes."""
        return {"train_seconds": self.before["train_seconds"] + time.perf_counter() - self.wall_start,
                "cpu_seconds": self.before["cpu_seconds"] + time.process_time() - self.cpu_start,
                "images": self.before["images"] + self.images, "processes": self.before["processes"] + 1}

    def steady_images_per_second(self):
        """Images/s after the first (tracing) step, validation passes included."""
        elapsed = (self.last_batch_end or 0) - (self.first_batch_end or 0)
        return round((self.images - self.batch_size) / elapsed, 1) if elapsed > 0 else None


def timed_training(run, batch_size, train, seconds=None, clock="wall"):
    """Calls `train(callbacks)` with a `TimeBudget` of `seconds` of `clock` time among the callbacks (None: no
    budget, timed only) and writes run/timing.json: wall and CPU seconds (every thread of this process), images
    seen, images/s, steady images/s, the clock. A killed run resumes from its last finished epoch, and its
    record adds up every process's finished epochs (`processes` says how many took part where more than one)."""
    run = pathlib.Path(run)
    ledger = run / "timing.partial.json"
    budget = TimeBudget(seconds, batch_size, clock, ledger=ledger)
    train([budget])
    totals = budget.totals()
    record = {"train_seconds": round(totals["train_seconds"], 1), "cpu_seconds": round(totals["cpu_seconds"], 1),
              "budget_clock": clock, "images": totals["images"],
              "images_per_second": round(totals["images"] / totals["train_seconds"], 1),
              "steady_images_per_second": budget.steady_images_per_second()}
    if totals["processes"] > 1:
        record["processes"] = totals["processes"]
    atomic_write_text(run / "timing.json", json.dumps(record) + "\n")
    ledger.unlink(missing_ok=True)


def train_on_budget(name, config, run, seconds=None, clock="wall"):
    """Trains defense `name` into `run` for `seconds` of `clock` time (wall or cpu, see `TimeBudget`; None:
    the config's epochs, timed) unless the run exists, and returns its timing record (see `timed_training`)."""
    from tfpurify.training import train_defense

    run = pathlib.Path(run)
    timing = run / "timing.json"
    if not (run / "defense.weights.h5").exists():
        timed_training(run, config.batch_size,
                       lambda callbacks: train_defense(name, config, run, callbacks=callbacks, verbose=2),
                       seconds, clock)
    return json.loads(timing.read_text()) if timing.exists() else {}  # a run trained elsewhere: no timing
