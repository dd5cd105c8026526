"""The leaderboard: every entry (zoo entries or run folders) under one fixed protocol, in one table.

`PROTOCOL` is the protocol: Fashion-MNIST, the first 1000 test images (fewer, at least 200, where the
evaluation would not fit an hour of CPU: see below), L-inf eps 0.1 and 0.2, gray-box and
white-box threat models; per (eps, threat model) FGSM, PGD-100 with 2 restarts and AutoAttack
(`standard`, or `rand` for a stochastic pipeline) in a cascade, white-box also the attacks on the
purifier itself (`pgd_recon`, and `latent` where it has a code), through every white-box gradient
(`--bpda auto`), EOT 8, 10 draws scored for a stochastic pipeline, and the sanity checks (white-box,
first 200 images), whose attacks join the worst case.

An entry whose evaluation would exceed `minutes_per_entry` by a pilot (its first white-box cell on 20
images, timed; it stops once its time alone puts 200 images over the budget) gets the largest n that fits, at
least 200. Each (entry, eps, threat model) is a cell, cached as JSON in `<out>/cache/<entry>/` once finished,
with the protocol and the runs it measured (paths, weights' SHA-256, runtime options): a rerun
evaluates only the cells it lacks or whose protocol or weights changed (a killed cell, or pilot, resumes with
its next attack, or next chunk of images of one: CHUNK_SECONDS; several processes on one `out` share the cells,
each claiming one before it measures it, and a process left with nothing but cells others hold helps them with
the chunks of their attacks, through `<cell>.chunks/`);
a zoo entry's cells count wherever the zoo lies (its files are checked against the manifest's
SHA-256), a run folder's only at its path. Written: `<out>/<dataset>.json`
(rows, protocol, machine), `.md` and a static `.html` (the table and the accuracy-vs-eps picture),
sorted by the white-box worst case at the first eps. Every accuracy has its 95 % Wilson interval.
"""

import dataclasses
import functools
import hashlib
import html
import json
import operator
import pathlib
import platform
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from tfpurify import adaptive, data, evaluation, export, metrics, reports
from tfpurify.errors import InputValidationError, RunFolderError
from tfpurify.evaluation.chunks import NothingToHelpWith
from tfpurify.evaluation.report import KeptEvaluation, jsonable
from tfpurify.runs import atomic_write_text, claim
from tfpurify.training import load_defended
from tfpurify.zoo import PREFIX, deviation_summary, is_reference, read_manifest, record_leaderboard, resolve, zoo_dir
from tfpurify.zoo import entries as zoo_entries

__all__ = ["Protocol", "PROTOCOL", "Entry", "entry_from_text", "zoo_entry", "run", "write"]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What every entry is measured with (the defaults are the leaderboard's; tests shrink them)."""

    dataset: str = "fashion_mnist"
    n: int = 1000
    min_n: int = 200
    eps: tuple = (0.1, 0.2)
    attacks: tuple = ("fgsm", "pgd", "autoattack")
    purifier_attacks: tuple = ("pgd_recon", "latent")  # white-box, on a purifier (latent: one with a code)
    pgd_steps: int = 100
    pgd_restarts: int = 2
    eot_samples: int = 8
    score_draws: int = 10
    sanity_checks: bool = True
    sanity_n: int = 200
    sanity_queries: int = 5000  # check 4's Square budget (AutoAttack's)
    batch_size: int = 256
    seed: int = 0
    minutes_per_entry: float = 60.0  # longer by the pilot: the largest n that fits (None: no limit, no pilot)
    pilot_n: int = 20                # images of the pilot that estimates it

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PROTOCOL = Protocol()


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row: a name, the run folders it loads, its runtime options, the images it is measured on."""

    name: str
    run: str
    classifier: str = None
    overrides: dict = dataclasses.field(default_factory=dict)
    n: int = None  # None: the protocol's
    manifest: dict = dataclasses.field(default_factory=dict)  # zoo entries: the paper, budget, ...
    zoo: str = None  # zoo entries: the zoo folder they came from


def zoo_entry(name, root=None):
    """A zoo entry (its files checked against the manifest) as a leaderboard entry."""
    name = name[len(PREFIX):] if is_reference(name) else name
    manifest = read_manifest(name, root)
    run_dir, classifier, overrides = resolve(name, root=root)
    return Entry(name, run_dir, classifier, overrides, manifest.get("leaderboard", {}).get("n"), manifest,
                 str(zoo_dir(root)))


def entry_from_text(text, root=None):
    """`zoo:NAME`, or `NAME=RUN[:CLASSIFIER_RUN]` for a run folder outside the zoo."""
    if is_reference(text):
        return zoo_entry(text, root)
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise InputValidationError(f"entry {text!r}: expected zoo:NAME or NAME=RUN[:CLASSIFIER_RUN]")
    run_dir, _, classifier = rest.partition(":")
    return Entry(name, run_dir, classifier or None)


def all_zoo_entries(root=None):
    return [zoo_entry(m["name"], root) for m in zoo_entries(root)]


def _cell_path(out, entry, threat_model, eps):
    return pathlib.Path(out) / "cache" / entry.name / f"{threat_model}-{eps:g}.json"


def _specs(protocol, eps, stochastic, purifier_attacks=()):
    return evaluation.make_attack_specs(
        [*protocol.attacks, *purifier_attacks], [eps], nb_iter=protocol.pgd_steps, restarts=protocol.pgd_restarts,
        version="rand" if stochastic else "standard")


def _own_attacks(defended, protocol):
    """The protocol's attacks on the purifier itself that this entry takes: none without a purifier, `latent`
    only where the purifier has a code."""
    purifier = defended.purifier
    if purifier is None:
        return ()
    return tuple(a for a in protocol.purifier_attacks if a != "latent" or getattr(purifier, "has_code", False))


# A cell's attacks run in chunks of about this many seconds, the cell's partial report kept after each (None:
# each attack at once, kept when it finishes).
CHUNK_SECONDS = 600.0


class _PilotLongEnough(Exception):
    """The pilot has taken long enough to say that the protocol's minimum n is over the budget (its seconds)."""


def _evaluate_cell(defended, info, entry, x, y, threat_model, eps, protocol, pipelines, progress, white, grid=None,
                   partial=None, stop_after=None, board=None, helper=False):
    """One (entry, eps, threat model) cell. `partial`: (path, key, same) where the unfinished report is kept
    after every attack, chunk of one (CHUNK_SECONDS) and sanity check (`KeptEvaluation`), and resumed from when
    `same` finds its key equal (the cell's runs, protocol and n; a zoo entry's runs without their paths, as its
    finished cells). `stop_after`: with `partial`, seconds (those of the processes before this one counted) after
    which the evaluation stops at its next checkpoint: `_PilotLongEnough`, the partial report kept. `board`: a
    folder through which processes share the chunks of the cell's attacks; `helper`: this process only helps the
    one that holds the cell (from its partial report, keeping nothing): it returns None, or raises
    `NothingToHelpWith` when every chunk of the attack it reached is done or held."""
    stochastic = bool(getattr(defended.purifier, "stochastic", False))
    start = time.perf_counter()
    kept = None if partial is None else KeptEvaluation(*partial)

    def stop_if_long_enough():
        seconds = kept.seconds()
        if stop_after is not None and seconds > stop_after:
            raise _PilotLongEnough(seconds)

    def checkpoint(report):
        if helper:
            return  # the report is the holder's to keep
        kept.checkpoint(report)
        stop_if_long_enough()

    if kept is not None:
        stop_if_long_enough()
    report = evaluation.evaluate(
        defended, x, y, _specs(protocol, eps, stochastic, _own_attacks(defended, protocol) if white else ()),
        threat_model=threat_model, pipelines=pipelines,
        batch_size=protocol.batch_size, seed=protocol.seed,
        sanity_checks=protocol.sanity_checks and white, sanity_n=protocol.sanity_n,
        defense=info["defense"], classifier=info["classifier"], dataset=info["dataset"], progress=progress,
        detector=defended.detector, runs=info["runs"], cascade=True, score_draws=protocol.score_draws,
        sanity_queries=protocol.sanity_queries, checkpoint=None if kept is None else checkpoint,
        resume=None if kept is None else kept.resume, chunk_seconds=CHUNK_SECONDS, chunk_board=board, helper=helper)
    if helper:
        return None
    seconds = time.perf_counter() - start if kept is None else kept.seconds()
    if grid is not None:  # the entry's picture: clean test images and the white-box adversarial examples
        reports.save_report_grid(report, grid, data.dataset_info(protocol.dataset).class_names)
    clean = report.clean_by_threat_model.get(threat_model, report.clean_correct)
    robust = report.worst_case_correct(threat_model, eps)
    over = report.worst_case_over_draws(threat_model, eps)
    return {"entry": entry.name, "threat_model": threat_model, "eps": eps, "n": len(x), "seconds": seconds,
            "clean_correct": np.asarray(clean, bool).tolist(), "robust": robust.tolist(),
            "plain_worst_case": report.plain_worst_case(threat_model, eps),
            "attacks": report.worst_case_attacks(threat_model, eps),
            "all_draws": None if over is None else over[1], "majority": None if over is None else over[2],
            "rows": [r for r in report.rows() if r["threat_model"] == threat_model],
            "sanity": [{k: c.get(k) for k in ("check", "name", "status")} for c in report.sanity],
            "detection": [d for d in report.detection if d.get("threat_model") == threat_model],
            "warnings": list(report.warnings), "stochastic": stochastic}


def _threat_models(defended, info):
    """{column: threat model evaluated}: a bare classifier is attacked as it is (`none`) in both columns; an
    adversarially trained one once (gray-box = white-box)."""
    if info["defense"] == "none":
        return {"graybox": "none", "whitebox": "none"}
    if defended.robust_classifier:
        return {"graybox": "whitebox", "whitebox": "whitebox"}
    return {"graybox": "graybox", "whitebox": "whitebox"}


def _purification_rate(defended, x, repeats=2):
    """Images per second through the purifier (None without one), the best of `repeats` passes."""
    if defended.purifier is None:
        return None
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(defended.purify(x))
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def _images_that_fit(defended, info, entry, protocol, pipelines, models, out, log, progress=False):
    """(n, estimate, at_least): the protocol's n, or the largest n (at least `min_n`) whose evaluation fits
    `minutes_per_entry` by a pilot: the white-box cell at the first eps (sanity checks off) on `pilot_n`
    images, timed, times the number of cells (an over-estimate: gray-box cells cost less; the sanity checks'
    fixed-size runs are not in it). A pilot stopped half-way resumes with its next attack, as a cell does (an
    entry's latent search can make the pilot itself take hours); it stops once its time alone puts `min_n`
    images over the budget (`at_least`: the estimate is then a lower bound)."""
    key = {"runs": info["runs"], "protocol": _cell_protocol(protocol.to_dict()), "pilot_n": protocol.pilot_n}
    path = pathlib.Path(out) / "cache" / entry.name / "pilot.json"
    partial, same = path.with_suffix(".partial.npz"), _runs_compare(entry)
    cells = len(set(models.values())) * len(protocol.eps)
    # pilot seconds beyond which even min_n images exceed the budget: n = min_n whatever the rest would take
    enough = protocol.minutes_per_entry * 60 * protocol.pilot_n / (cells * protocol.min_n)

    def pilot():
        x, y = data.load_dataset(protocol.dataset, "test", limit=protocol.pilot_n)
        quiet = dataclasses.replace(protocol, sanity_checks=False)
        log(f"{entry.name}: pilot, {models['whitebox']} at eps {protocol.eps[0]:g} on {len(x)} images")
        try:
            cell = _evaluate_cell(defended, info, entry, x, y, models["whitebox"], protocol.eps[0], quiet, pipelines,
                                  progress, True, partial=(partial, key, same), stop_after=enough)
        except _PilotLongEnough as stopped:
            seconds = stopped.args[0]
            log(f"{entry.name}: the pilot stopped after {seconds:.0f} s: {protocol.min_n} images already exceed "
                f"{protocol.minutes_per_entry:g} min")
            return {"seconds_per_image": seconds / len(x), "at_least": True}
        return {"seconds_per_image": cell["seconds"] / len(x), "at_least": False}

    measured = _shared({"pilot": (path.with_suffix(".claim"), lambda: _kept(path, key, same),
                                  lambda: _keep(path, key, pilot()), f"{entry.name}: the pilot")}, log)["pilot"]
    if not isinstance(measured, dict):  # kept before the pilot could stop early
        measured = {"seconds_per_image": measured, "at_least": False}
    per_image, at_least = measured["seconds_per_image"], measured["at_least"]
    partial.unlink(missing_ok=True)
    minutes = per_image * cells * protocol.n / 60
    if minutes <= protocol.minutes_per_entry:
        return protocol.n, minutes, at_least
    fit = int(protocol.minutes_per_entry * 60 / (per_image * cells))
    n = max(protocol.min_n, fit)
    estimate = per_image * cells * n / 60
    about = "at least" if at_least else "about"
    log(f"{entry.name}: {about} {minutes:.0f} min on {protocol.n} images by a pilot on {protocol.pilot_n}; "
        + (f"{n} images fit {protocol.minutes_per_entry:g} min" if fit >= protocol.min_n else
           f"the protocol's minimum, {n} images, takes {about} {estimate:.0f} min, over its "
           f"{protocol.minutes_per_entry:g}-min budget"))
    return n, estimate, at_least


def evaluate_entry(entry, out, protocol, progress=False, log=print):
    """The entry's row: every cell it lacks evaluated (and cached), then its numbers."""
    defended, info = load_defended(entry.run, entry.classifier, entry.overrides)
    pipelines = adaptive.threat_model_pipelines(defended, eot_samples=protocol.eot_samples)
    models = _threat_models(defended, info)
    if entry.n is not None or protocol.minutes_per_entry is None:
        n, estimate, at_least = entry.n or protocol.n, None, False
    else:
        n, estimate, at_least = _images_that_fit(defended, info, entry, protocol, pipelines, models, out, log,
                                                 progress)
    x, y = data.load_dataset(protocol.dataset, "test", limit=n)
    runs = jsonable(info["runs"])  # what the cells were measured on, as their JSON holds it
    same = _runs_compare(entry)

    def finished(path):
        cached = json.loads(path.read_text()) if path.is_file() else None
        if (cached is not None and cached.get("n") == len(x) and _same_protocol(cached.get("protocol"), protocol)
                and same(cached.get("runs"), runs)):
            return cached
        return None

    def measure(path, threat_model, eps):
        partial = path.with_suffix(".partial.npz")
        log(f"{entry.name}: {threat_model} at eps {eps:g} on {len(x)} images"
            + (" (resumed where it stopped, if it was measured as now)" if partial.is_file() else ""))
        white = threat_model == models["whitebox"]  # the sanity checks run there (a bare classifier: `none`)
        grid = _grid_path(out, protocol, entry) if white and eps == protocol.eps[0] else None
        cell = {**_evaluate_cell(defended, info, entry, x, y, threat_model, eps, protocol, pipelines, progress,
                                 white, grid, (partial, key(), same), board=board(path)),
                "protocol": protocol.to_dict(), "runs": runs}
        atomic_write_text(path, json.dumps(jsonable(cell)))
        partial.unlink(missing_ok=True)
        shutil.rmtree(path.with_suffix(".chunks"), ignore_errors=True)
        return cell

    def key():  # what makes a kept partial report this cell's
        return {"runs": runs, "n": len(x), "protocol": _cell_protocol(protocol.to_dict())}

    def board(path):  # the cell's chunk board, for these weights and this protocol only (not a killed earlier one's)
        digest = hashlib.sha256(json.dumps(jsonable(_without_paths(key())), sort_keys=True).encode()).hexdigest()
        return path.with_suffix(".chunks") / digest[:12]

    looked = {}  # cell -> its partial report's time stamp when this process last found nothing to help with

    def help_with(path, threat_model, eps):
        """Helps the process that holds the cell with the chunks of its attacks; whether it looked again."""
        partial = path.with_suffix(".partial.npz")
        stamp = partial.stat().st_mtime_ns if partial.is_file() else None
        if CHUNK_SECONDS is None or looked.get(path, "never") == stamp:
            return False  # no chunks to share, or nothing changed since the last look
        try:
            _evaluate_cell(defended, info, entry, x, y, threat_model, eps, protocol, pipelines, progress,
                           threat_model == models["whitebox"], None, (partial, key(), same), board=board(path),
                           helper=True)
        except NothingToHelpWith:
            pass
        looked[path] = stamp
        return True

    jobs = {}
    for column, threat_model in models.items():
        for eps in protocol.eps:
            path = _cell_path(out, entry, threat_model, eps)
            jobs[column, eps] = (path.with_suffix(".claim"), functools.partial(finished, path),
                                 functools.partial(measure, path, threat_model, eps),
                                 f"{entry.name}: {threat_model} at eps {eps:g}",
                                 functools.partial(help_with, path, threat_model, eps))
    cells = _shared(jobs, log)
    serving = _cached(pathlib.Path(out) / "cache" / entry.name / "serving.json", info["runs"],
                      lambda: _serving_latency(defended, info, protocol, x), same)
    row = _row(entry, info, cells, protocol, len(x), _purification_rate(defended, x[:256]), serving)
    row["estimated_minutes"] = estimate
    if at_least:
        row["estimate_is_a_lower_bound"] = True  # the pilot stopped once min_n was over the budget
    return row


# Seconds between two looks at work another process holds.
_POLL_SECONDS = 30


def _shared(jobs, log):
    """{key: value} of `jobs` ({key: (claim path, finished, compute, what[, help])}), each computed by whichever
    of several `tfpurify leaderboard` processes claims it first (`runs.claim`); `finished()` is its kept value or
    None. Work another running process holds is left to it: this process goes on with the rest, then waits for
    it (polling; `help()`, where given, meanwhile helps with it and says whether it did), and takes it over if
    that process is gone."""
    values, told = {}, set()
    while True:
        progressed = False
        for key, (claim_path, finished, compute, what, *helper) in jobs.items():
            if key in values:
                continue
            value = finished()
            if value is None:
                with claim(claim_path) as holder:
                    if holder is None:
                        value = finished()  # finished by another process between the look and the claim?
                        value = compute() if value is None else value
                    else:
                        if key not in told:
                            told.add(key)
                            log(f"{what}: measured by {holder}; this process goes on with the rest, then waits for it"
                                + (" and helps it with the chunks of its attacks" if helper else ""))
                        progressed = any(h() for h in helper) or progressed
            if value is not None:
                values[key], progressed = value, True
        if len(values) == len(jobs):
            return values
        if not progressed:
            time.sleep(_POLL_SECONDS)


# Protocol fields added after cells were first cached: what a cell cached without the field was measured with.
_BEFORE_THE_FIELD = {"sanity_queries": 5000, "purifier_attacks": []}


# Fields that choose the images, not how a cell measures them (a cell keeps its own n).
_NOT_THE_CELLS = ("n", "min_n", "minutes_per_entry", "pilot_n")


def _filled(protocol_dict):
    """A protocol's fields, with what was done before a field existed where a cached one lacks it."""
    return {**_BEFORE_THE_FIELD, **protocol_dict}


def _cell_protocol(protocol_dict):
    return {k: v for k, v in _filled(protocol_dict).items() if k not in _NOT_THE_CELLS}


def _same_protocol(cached, protocol):
    """A cached cell was measured as this protocol measures a cell (a field added since it was cached counts
    with what was done before the field existed)."""
    return isinstance(cached, dict) and _cell_protocol(cached) == _cell_protocol(protocol.to_dict())


def _same_table_protocol(recorded, protocol):
    """A table or a manifest's row was made under this protocol, images chosen alike included (a field added
    since counts with what was done before it existed, as for a cell)."""
    return isinstance(recorded, dict) and _filled(recorded) == _filled(protocol.to_dict())


def _grid_path(out, protocol, entry):
    return pathlib.Path(out) / f"{protocol.dataset}_{entry.name}.png"


def _without_paths(value):
    """`value` without its "path" keys."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k != "path"}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


def _same_runs(a, b):
    """Whether two records of a zoo entry's runs name the same runs wherever the zoo lies: its files were
    checked against the manifest's SHA-256 when it was loaded, so the weights' hashes and the runtime options
    say which runs they are, and a committed cache serves any checkout. (Runs outside a zoo are compared with
    their paths: their other files are not hashed.)"""
    return _without_paths(a) == _without_paths(b)


def _runs_compare(entry):
    return _same_runs if entry.zoo is not None else operator.eq


def _kept(path, key, same=operator.eq):
    """The JSON value kept at `path` for `key` (`same`: how keys compare), else None."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if same(stored.get("key"), jsonable(key)):
            return stored["value"]
    return None


def _keep(path, key, value):
    """Keeps `value` at `path` with `key` (what it was computed for); returns it."""
    atomic_write_text(path, json.dumps(jsonable({"key": key, "value": value})))
    return value


def _cached(path, key, compute, same=operator.eq):
    """`compute()`'s JSON value, kept at `path` with `key` (what it was computed for) and computed again only
    for another key (`same`: how keys compare)."""
    value = _kept(path, key, same)
    return _keep(path, key, compute()) if value is None else value


def _serving_latency(defended, info, protocol, x, calls=(30, 5)):
    """Milliseconds per request (p50, p99) of the exported SavedModel's `serving_default` at batch 1 and
    256, loaded as TF Serving would load it (`tf.saved_model.load`), on this machine."""
    shape = data.dataset_info(protocol.dataset).input_shape
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        path = export.export_saved_model(defended, folder, "entry", 1, shape,
                                         metadata={"defense": info["defense"], "classifier": info["classifier"]})
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        for batch, count in zip((1, 256), calls):
            images = tf.constant(np.resize(x, (batch, *shape)))
            serve(images=images)  # the first call traces and warms up
            times = []
            for _ in range(count):
                start = time.perf_counter()
                serve(images=images)["probabilities"].numpy()
                times.append(1000 * (time.perf_counter() - start))
            result[f"batch {batch}"] = {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
                                        "calls": count}
    return result


def _interval(correct):
    correct = np.asarray(correct, bool)
    low, high = metrics.accuracy_interval(int(correct.sum()), len(correct))
    return {"accuracy": float(correct.mean()), "low": low, "high": high}


def _row(entry, info, cells, protocol, n, rate, serving):
    first = protocol.eps[0]
    row = {"entry": entry.name, "defense": info["defense"], "classifier": info["classifier"],
           "dataset": protocol.dataset, "n": n, "runtime": entry.overrides,
           "clean": _interval(cells["whitebox", first]["clean_correct"]),
           "purification_images_per_second": rate, "serving_latency_ms": serving,
           "picture": _grid_path("", protocol, entry).name,
           "seconds": sum(c["seconds"] for c in cells.values()),
           "paper": entry.manifest.get("paper"), "deviation": entry.manifest.get("deviation"),
           "training": entry.manifest.get("training")}
    for (column, eps), cell in sorted(cells.items()):
        key = f"{column} {eps:g}"
        row[key] = {**_interval(cell["robust"]), "plain": cell["plain_worst_case"], "attacks": cell["attacks"],
                    "all_draws": cell["all_draws"], "majority": cell["majority"]}
    measured = {(c["threat_model"], c["eps"]): c for c in cells.values()}  # a cell serving both columns counts once
    sanity = [c for cell in measured.values() for c in cell["sanity"]]
    row["sanity"] = {"failed": sorted({c["name"] for c in sanity if c["status"] == "failed"}),
                     "passed": sum(c["status"] == "passed" for c in sanity)}
    detection = [d for d in cells["whitebox", first]["detection"] if d.get("roc_auc") is not None]
    row["detection_roc_auc"] = min((d["roc_auc"] for d in detection), default=None)
    row["warnings"] = sorted({w for cell in cells.values() for w in cell["warnings"]})
    return row


def run(entries, out, protocol=None, progress=False, log=print, record=False, keep_others=False):
    """Evaluates every entry (resuming from the cache) and writes the leaderboard; returns its rows.
    `protocol`: None for `PROTOCOL`. `record`: every zoo entry's row is written into its manifest.
    `keep_others`: the rows of other entries in the table already at `out` stay (`kept_rows`)."""
    protocol = protocol or PROTOCOL
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise InputValidationError(f"entry names must differ: {', '.join(sorted(names))}")
    rows = [evaluate_entry(entry, out, protocol, progress, log) for entry in entries]
    kept = kept_rows(out, protocol, names) if keep_others else []
    if kept:
        log(f"kept from {out}'s table (same protocol, not evaluated now): {', '.join(r['entry'] for r in kept)}")
    rows += kept
    rows.sort(key=lambda r: (-r[f"whitebox {protocol.eps[0]:g}"]["accuracy"], r["entry"]))
    write(rows, out, protocol)
    if record:
        by_name = {e.name: e for e in entries}
        roots = {e.zoo for e in entries if e.zoo is not None}
        for rank, row in enumerate(rows, 1):
            entry = by_name.get(row["entry"])  # None: a row kept from the table
            if entry is not None and entry.zoo is not None:
                record_leaderboard(entry.name, _manifest_row(row, rank, out, protocol, entry.zoo), entry.zoo)
            elif entry is None and len(roots) == 1:
                _rerank(row, rank, next(iter(roots)), protocol)
    return rows


def _rerank(row, rank, root, protocol):
    """A kept row's new rank, written into the manifest of the zoo entry that recorded that row (same n and
    protocol); any other manifest is left alone."""
    try:
        manifest = read_manifest(row["entry"], root)
    except RunFolderError:
        return
    recorded = manifest.get("leaderboard") or {}
    if (recorded.get("n") == row["n"] and _same_table_protocol(recorded.get("protocol"), protocol)
            and recorded.get("rank") != rank):
        record_leaderboard(row["entry"], {**recorded, "rank": rank}, root)


def kept_rows(out, protocol, evaluated):
    """The rows of the table already at `out` (`<dataset>.json`) whose entries are not in `evaluated`, where it
    was made under this protocol: evaluating some entries adds or updates their rows and keeps the others."""
    path = pathlib.Path(out) / f"{protocol.dataset}.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(table, dict) or not _same_table_protocol(table.get("protocol"), protocol):
        return []
    return [r for r in table.get("rows", []) if isinstance(r, dict) and r.get("entry") not in evaluated]


def _manifest_row(row, rank, out, protocol, root):
    """What a zoo manifest keeps of its leaderboard row: n, rank, every accuracy with its interval, the checks, and
    where the table is: relative to the folder holding the zoo (`root`) where it lies beneath it, so that a
    manifest names no path of the machine that measured it."""
    table = (pathlib.Path(out) / f"{protocol.dataset}.md").resolve()
    base = zoo_dir(root).resolve().parent
    table = table.relative_to(base) if table.is_relative_to(base) else table
    cells = {k: {f: v[f] for f in ("accuracy", "low", "high", "plain") if f in v} for k, v in row.items()
             if k.split(" ")[0] in ("whitebox", "graybox") and isinstance(v, dict)}
    return {"n": row["n"], "rank": rank, "clean": row["clean"], **cells, "sanity": row["sanity"],
            "detection_roc_auc": row["detection_roc_auc"], "table": table.as_posix(),
            "protocol": protocol.to_dict()}


def _pct(cell):
    return "-" if cell is None else f"{100 * cell['accuracy']:.1f} ({100 * cell['low']:.1f}-{100 * cell['high']:.1f})"


def _table(rows, protocol):
    eps = [f"{e:g}" for e in protocol.eps]
    head = _lead_head(eps) + [f"paper's plain, white-box {eps[0]}", "sanity checks", "detector ROC-AUC",
                              "purified images/s", "SavedModel ms p50/p99, batch 1; 256", "training", "paper's number"]
    body = []
    for i, r in enumerate(rows, 1):
        plain = r[f"whitebox {eps[0]}"]["plain"]
        sanity = ("failed: " + ", ".join(r["sanity"]["failed"])) if r["sanity"]["failed"] else (
            f"{r['sanity']['passed']} passed" if r["sanity"]["passed"] else "-")
        body.append(_lead_cells(i, r, eps, protocol)
                    + ["-" if plain is None else f"{100 * plain:.1f}", sanity,
                       "-" if r["detection_roc_auc"] is None else f"{r['detection_roc_auc']:.3f}",
                       "-" if r["purification_images_per_second"] is None
                       else f"{r['purification_images_per_second']:.0f}",
                       _latency(r["serving_latency_ms"]), _training(r.get("training")), _paper_cell(r)])
    return head, body


def _lead_head(eps):
    """The headers of `_lead_cells`' columns."""
    return (["#", "entry", "defense + classifier", "n", "clean"] + [f"white-box {e}" for e in eps]
            + [f"gray-box {e}" for e in eps])


def _lead_cells(rank, row, eps, protocol):
    """The columns both tables open with: rank, entry, defense + classifier, n (flagged below the protocol's
    minimum), clean, and the white-box and gray-box worst case at each eps."""
    n = f"{row['n']}" + (" (below the protocol's minimum)" if row["n"] < protocol.min_n else "")
    return ([str(rank), row["entry"], f"{row['defense']} + {row['classifier']}", n, _pct(row["clean"])]
            + [_pct(row.get(f"whitebox {e}")) for e in eps] + [_pct(row.get(f"graybox {e}")) for e in eps])


def _paper_cell(row):
    """The paper's own number with its threat model, or "-"; where the entry deviates from its paper (its
    manifest's `deviation`), what it changed."""
    paper = row.get("paper") or {}
    cell = f"{paper['number']} ({paper.get('threat_model', '?')})" if "number" in paper else "-"
    return cell + (f"; this entry deviates: {deviation_summary(row['deviation'])}" if row.get("deviation") else "")


def summary_table(rows, protocol):
    """The compact table the README opens with: the full table's first columns (rank, entry, n, clean, white-box
    and gray-box worst cases with their intervals) and the paper's own number with its threat model; markdown
    lines."""
    eps = [f"{e:g}" for e in protocol.eps]
    head = _lead_head(eps) + ["paper's number (its threat model)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        lines.append("| " + " | ".join(_lead_cells(i, r, eps, protocol) + [_paper_cell(r)]) + " |")
    return lines


def _latency(serving):
    return "; ".join(f"{serving[k]['p50']:.0f}/{serving[k]['p99']:.0f}" for k in ("batch 1", "batch 256"))


def _training(training):
    """A zoo manifest's training budget: CPU-minutes (else wall-minutes) and images seen where stated."""
    if not training:
        return "-"
    parts = []
    if training.get("cpu_minutes") is not None:
        parts.append(f"{training['cpu_minutes']:g} CPU-min")
    elif training.get("wall_minutes") is not None:  # a run timed by the clock only
        parts.append(f"{training['wall_minutes']:g} wall-min")
    if training.get("images_seen") is not None:
        parts.append(f"{training['images_seen']:,} images")
    return ", ".join(parts) or "-"


def _intro(protocol):
    return (f"{protocol.dataset}, the first {protocol.n} test images (fewer where an entry says so, column n), "
            f"L-inf eps {', '.join(f'{e:g}' for e in protocol.eps)}; per threat model and eps "
            f"{', '.join(protocol.attacks)} (PGD {protocol.pgd_steps} steps x {protocol.pgd_restarts} restarts; "
            f"AutoAttack rand for a stochastic pipeline)"
            + (f", white-box also {', '.join(protocol.purifier_attacks)} on a purifier (latent: one with a code)"
               if protocol.purifier_attacks else "")
            + f" in a cascade, every white-box gradient, EOT "
            f"{protocol.eot_samples}, {protocol.score_draws} draws scored where stochastic"
            + (f", and the sanity checks (white-box, first {protocol.sanity_n} images) joining the worst case"
               if protocol.sanity_checks else ", no sanity checks")
            + ". Accuracies in percent: the worst case per example over every attack, with the 95 % Wilson "
              "interval. Sorted by the white-box worst case at the first eps.")


def write(rows, out, protocol):
    """`<out>/<dataset>.json`, `.md`, `.html`, `<dataset>_summary.md` (the compact table) and `<dataset>_eps.png`
    (accuracy against eps per entry)."""
    out = pathlib.Path(out)
    machine = f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}"
    atomic_write_text(out / f"{protocol.dataset}.json", json.dumps(
        jsonable({"protocol": protocol.to_dict(), "machine": machine, "rows": rows}), indent=2) + "\n")
    head, body = _table(rows, protocol)
    summary = summary_table(rows, protocol)
    atomic_write_text(out / f"{protocol.dataset}_summary.md", "\n".join(summary) + "\n")  # what the README shows
    lines = [f"# Leaderboard: {protocol.dataset}", "", _intro(protocol), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += ["", f"![white-box accuracy against eps]({protocol.dataset}_eps.png)"]
    lines += [f"![{r['entry']}]({r['picture']})" for r in rows if (out / r["picture"]).is_file()]
    atomic_write_text(out / f"{protocol.dataset}.md", "\n".join(lines) + "\n")
    picture = out / f"{protocol.dataset}_eps.png"
    reports.save_accuracy_curves(picture, [0.0, *protocol.eps], {
        r["entry"]: [r["clean"]["accuracy"]] + [r[f"whitebox {e:g}"]["accuracy"] for e in protocol.eps] for r in rows},
        "white-box worst case (%)")
    table = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Leaderboard: {protocol.dataset}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #999;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>Leaderboard: {html.escape(protocol.dataset)}</h1><p>{html.escape(_intro(protocol))}</p>"
            f"<table id='leaderboard'><thead><tr>{table}</tr></thead><tbody>{trs}</tbody></table>"
            f"<p>{_img(picture.name, 'white-box accuracy against eps')}</p>"
            + "".join(f"<h2>{html.escape(r['entry'])}</h2><p>{_img(r['picture'], r['entry'] + ': test images')}</p>"
                      for r in rows if (out / r["picture"]).is_file()) +
            f"<p>Machine: {html.escape(machine)}.</p></body></html>\n")
    atomic_write_text(out / f"{protocol.dataset}.html", page)


def _img(source, alt):
    """An image the page marks `data-loaded` yes or no once the browser has tried it."""
    return (f"<img src='{html.escape(source)}' alt='{html.escape(alt)}' "
            "onload=\"this.dataset.loaded='yes'\" onerror=\"this.dataset.loaded='no'\">")
