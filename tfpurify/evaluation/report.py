"""What an evaluation measured: `AttackResult` per attack row, `RobustnessReport` for the whole run.

`tfpurify.reports` writes a report as JSON, Markdown and PNG; `rows()` gives the rows in the
benchmark results' schema (`defense, classifier, threat_model, attack, eps, params, accuracy`,
plus `plain_accuracy`, the papers' metric).
"""

import dataclasses
import io
import json
import math
import operator
import pathlib
import time
import zipfile

import numpy as np

from tfpurify.metrics import worst_case_accuracy
from tfpurify.runs import atomic_write_text

__all__ = ["AttackResult", "RobustnessReport", "jsonable", "save_state", "load_state", "kept_state", "KeptEvaluation"]


@dataclasses.dataclass
class AttackResult:
    threat_model: str
    attack: str
    eps: float
    params: dict
    accuracy: float
    seconds: float
    correct: np.ndarray = dataclasses.field(repr=False, default=None)
    x_adv_sample: np.ndarray = dataclasses.field(repr=False, default=None)
    pred_sample: np.ndarray = dataclasses.field(repr=False, default=None)
    grad_evals: float = None  # model evaluations per example (gradients, or queries); None: not counted
    # Cascade: the attacks that ran before this one at (threat_model, eps); this attack ran only on
    # the `n_attacked` examples they left robust, and `accuracy` is robust under all of them.
    after: tuple = ()
    n_attacked: int = None
    # The papers' metric: classified correctly under the attack, whatever happened clean.
    plain_correct: np.ndarray = dataclasses.field(repr=False, default=None)
    # A stochastic scored pipeline classifies each adversarial example `score_draws` times (the
    # single draw of `correct` first): robust in every draw, and in more than half of them.
    score_draws: int = 1
    all_draws_correct: np.ndarray = dataclasses.field(repr=False, default=None)
    majority_correct: np.ndarray = dataclasses.field(repr=False, default=None)

    @property
    def plain_accuracy(self):
        return None if self.plain_correct is None else float(np.mean(self.plain_correct))

    def to_dict(self):
        row = {"threat_model": self.threat_model, "attack": self.attack, "eps": self.eps,
               "params": jsonable(self.params), "accuracy": self.accuracy, "plain_accuracy": self.plain_accuracy,
               "grad_evals_per_example": None if self.grad_evals is None else round(self.grad_evals, 2),
               "seconds": round(self.seconds, 3)}
        if self.after:
            row.update(after=list(self.after), n_attacked=self.n_attacked)
        if self.score_draws > 1:
            row.update(score_draws=self.score_draws, accuracy_all_draws=float(np.mean(self.all_draws_correct)),
                       accuracy_majority=float(np.mean(self.majority_correct)))
        return row


@dataclasses.dataclass
class RobustnessReport:
    """Everything one evaluation measured; `reports.py` writes it as JSON, Markdown and PNG."""

    n_examples: int
    seed: int
    clean_accuracy: float
    clean_correct: np.ndarray = dataclasses.field(repr=False, default=None)
    results: list = dataclasses.field(default_factory=list)
    detection: list = dataclasses.field(default_factory=list)  # filled by detector defenses
    # The detector's scores: {"clean": [N], "<threat model>/<attack> <eps>": [N]} (the violin plot)
    detector_scores: dict = dataclasses.field(repr=False, default_factory=dict)
    warnings: list = dataclasses.field(default_factory=list)
    sanity: list = dataclasses.field(default_factory=list)
    finished: bool = True  # False while `evaluate` runs: a report written then holds what it had finished
    defense: str = "none"
    classifier: str = ""
    dataset: str = ""
    threat_models: tuple = ("none",)
    clean_by_threat_model: dict = dataclasses.field(default_factory=dict)  # tm -> [N] bool
    x_sample: np.ndarray = dataclasses.field(repr=False, default=None)
    y_sample: np.ndarray = dataclasses.field(repr=False, default=None)
    clean_pred_sample: np.ndarray = dataclasses.field(repr=False, default=None)
    settings: dict = dataclasses.field(default_factory=dict)  # everything that shaped the numbers
    # Attacks run by the sanity checks on the first examples, folded into the worst case:
    # [(threat_model, eps, name, [N] bool correct, True outside the checked subset)].
    check_columns: list = dataclasses.field(default_factory=list)
    # Common corruptions (`tfpurify.corruptions.evaluate_corruptions`): rows in the results schema,
    # and one image under each corruption at severities 0-5 for the grid picture.
    corruptions: list = dataclasses.field(default_factory=list)
    corruption_grid: dict = dataclasses.field(repr=False, default_factory=dict)
    # Where an unfinished `evaluate` stood, for `evaluate(resume=...)`: {threat model: {"steps": attack steps
    # finished, "chains": {eps: (robust, adversarial images, attacks so far, plain correct)}, "sanity": done}}.
    progress_state: dict = dataclasses.field(repr=False, default_factory=dict)

    def _worst_case_columns(self, threat_model, eps):
        """Clean, then every attack of (threat_model, eps): the attack rows and the sanity checks' attacks."""
        columns = [r.correct for r in self.results if r.threat_model == threat_model and r.eps == eps]
        columns += [c for tm, e, _, c in self.check_columns if tm == threat_model and e == eps]
        return [self.clean_by_threat_model.get(threat_model, self.clean_correct), *columns]

    def worst_case(self, threat_model, eps):
        """Fraction of examples correct clean and under every attack of (threat_model, eps).

        The attacks the sanity checks ran at this eps (PGD-2k, the gradient-free attack) count
        too: a report never prints a worst case that its own checks beat.
        """
        return worst_case_accuracy(self._worst_case_columns(threat_model, eps))

    def worst_case_correct(self, threat_model, eps):
        """[N] bool: which examples `worst_case` counts (correct clean and under every attack)."""
        return np.all(np.stack([np.asarray(c, dtype=bool) for c in self._worst_case_columns(threat_model, eps)]), axis=0)

    def plain_worst_case(self, threat_model, eps):
        """The papers' "Min" per example: correct under every attack of (threat_model, eps), clean aside.

        Over the report's attack rows only (the sanity checks score robust accuracy alone).
        """
        columns = [r.plain_correct for r in self.results
                   if r.threat_model == threat_model and r.eps == eps and r.plain_correct is not None]
        return worst_case_accuracy(columns) if columns else None

    def worst_case_over_draws(self, threat_model, eps):
        """(draws, robust in every draw, robust in the majority) under every attack of (threat_model, eps),
        or None where the scored pipeline was classified once. "Every draw" also counts the sanity
        checks' attacks (scored once: a draw like the first); "majority" the attack rows only."""
        rows = [r for r in self.results if r.threat_model == threat_model and r.eps == eps and r.score_draws > 1]
        if not rows:
            return None
        checks = [c for tm, e, _, c in self.check_columns if tm == threat_model and e == eps]
        clean = self.clean_by_threat_model.get(threat_model, self.clean_correct)
        every = worst_case_accuracy([clean, *checks, *(r.all_draws_correct for r in rows)])
        return rows[0].score_draws, every, worst_case_accuracy([r.majority_correct for r in rows])

    def worst_case_attacks(self, threat_model, eps):
        """Names of the attacks behind `worst_case(threat_model, eps)`."""
        names = [r.attack for r in self.results if r.threat_model == threat_model and r.eps == eps]
        return names + [f"{name} (sanity check)" for tm, e, name, _ in self.check_columns
                        if tm == threat_model and e == eps]

    def worst_cases(self):
        """[(threat_model, eps, accuracy)] for every (threat model, eps) with attacks."""
        keys = []
        for r in self.results:
            if (r.threat_model, r.eps) not in keys:
                keys.append((r.threat_model, r.eps))
        return [(tm, eps, self.worst_case(tm, eps)) for tm, eps in keys]

    def rows(self):
        """Rows in the benchmarks/results schema (clean row, attack rows, worst-case rows)."""
        def base(tm):  # in a defense's report, threat model "none" is the bare classifier
            return {"defense": "none" if tm == "none" else self.defense, "classifier": self.classifier}

        rows = [{**base("clean"), "threat_model": "clean", "attack": "none", "eps": 0, "params": {},
                 "accuracy": self.clean_accuracy, "plain_accuracy": self.clean_accuracy}]
        if self.defense != "none" and "none" in self.clean_by_threat_model:
            bare = float(np.mean(self.clean_by_threat_model["none"]))
            rows.append({**base("none"), "threat_model": "clean", "attack": "none", "eps": 0, "params": {},
                         "accuracy": bare, "plain_accuracy": bare})
        rows += [{**base(r.threat_model), **r.to_dict()} for r in self.results]
        for tm, eps, acc in self.worst_cases():
            row = {**base(tm), "threat_model": tm, "attack": "worst_case", "eps": eps,
                   "params": {"attacks": self.worst_case_attacks(tm, eps)}, "accuracy": acc,
                   "plain_accuracy": self.plain_worst_case(tm, eps)}
            over_draws = self.worst_case_over_draws(tm, eps)
            if over_draws is not None:
                row.update(zip(("score_draws", "accuracy_all_draws", "accuracy_majority"), over_draws))
            rows.append(row)
        return rows + [dict(r) for r in self.corruptions]

    def to_dict(self):
        return {
            "defense": self.defense, "classifier": self.classifier, "dataset": self.dataset,
            "n_examples": self.n_examples, "seed": self.seed, "threat_models": list(self.threat_models),
            "clean_accuracy": self.clean_accuracy,
            "settings": jsonable(self.settings),
            "rows": self.rows(), "detection": jsonable(self.detection),
            "sanity_checks": jsonable(self.sanity), "warnings": list(self.warnings), "finished": self.finished,
        }


def jsonable(value):
    """`value` with numpy scalars and arrays, tuples and infinite floats made plain JSON values."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return "inf" if math.isinf(v) else v
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# ---------------------------------------------------------------- an unfinished report, kept to resume it

def save_state(report, extra=None):
    """The report, everything `evaluate(resume=...)` needs of it included, as the bytes of an `.npz` file: its
    arrays as arrays and the rest as JSON (no pickle), with `extra` (a JSON value) beside it."""
    arrays = {}

    def encode(value):
        if isinstance(value, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {"__array__": key}
        if isinstance(value, _STATE_CLASSES_TUPLE):
            return {"__dataclass__": type(value).__name__,
                    "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
        if isinstance(value, dict):
            return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    text = json.dumps({"report": encode(report), "extra": extra})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, __json__=np.array(text), **arrays)
    return buffer.getvalue()


def load_state(blob):
    """(report, extra) from `save_state`'s bytes (arrays read without pickle)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files}
    state = json.loads(str(arrays.pop("__json__")))

    def decode(value):
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__tuple__" in value:
            return tuple(decode(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_hashable(decode(k)): decode(v) for k, v in value["__dict__"]}
        if "__dataclass__" in value:
            return _STATE_CLASSES[value["__dataclass__"]](**{k: decode(v) for k, v in value["fields"].items()})
        raise ValueError(f"not a saved report state: {sorted(value)}")

    return decode(state["report"]), state["extra"]


def kept_state(path, key, same=operator.eq):
    """(report, extra) kept at `path` by `save_state` for `key` (`same(extra["key"], key)`: how keys compare);
    (None, None) when the file is missing, unreadable or kept for another key (then the work is done again)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None, None
    try:
        report, extra = load_state(path.read_bytes())
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile):  # e.g. a truncated file
        return None, None
    return (report, extra) if isinstance(extra, dict) and same(extra.get("key"), key) else (None, None)


class KeptEvaluation:
    """An evaluation that survives being killed: `evaluate(..., checkpoint=kept.checkpoint, resume=kept.resume)`.

    `resume` is the unfinished report kept at `path` for `key` (a JSON value: what makes two evaluations the
    same one; `same` compares two keys), or None; `checkpoint(report)` keeps it there atomically after every
    attack and sanity check, with the seconds spent so far; `seconds()` counts those of the processes before
    this one too; `discard()` removes the file once the finished result is kept elsewhere."""

    def __init__(self, path, key, same=operator.eq):
        self.path, self.key = pathlib.Path(path), jsonable(key)
        self.resume, extra = kept_state(self.path, self.key, same)
        self.seconds_before = float(extra.get("seconds", 0.0)) if self.resume is not None else 0.0
        self._start = time.perf_counter()

    def seconds(self):
        return self.seconds_before + time.perf_counter() - self._start

    def checkpoint(self, report):
        atomic_write_text(self.path, save_state(report, {"key": self.key, "seconds": self.seconds()}))

    def discard(self):
        self.path.unlink(missing_ok=True)


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


_STATE_CLASSES = {"RobustnessReport": RobustnessReport, "AttackResult": AttackResult}
_STATE_CLASSES_TUPLE = tuple(_STATE_CLASSES.values())
