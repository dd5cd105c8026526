"""Hyperparameter search over any registered defense with keras-tuner.

`--param NAME=LOW:HIGH[:log]` (an int or float range) or `--param NAME=a,b,c` (a choice) maps onto
a field of the defense's config dataclass (`dataclasses.replace`, so the config validates every
sampled value). Each trial trains the defense on the training part of the *training* split and,
after every epoch, measures the objective on a slice of its validation part (never the test
split): `robust_accuracy` (white-box PGD through the defended pipeline, BPDA/EOT as in
`tfpurify eval`), `clean_accuracy`, or `worst_case` (correct clean, under FGSM and under PGD).
Random search and Hyperband; the tuner's directory makes a search resumable (finished trials are
not redone).
"""

import csv
import dataclasses
import json
import math
import pathlib

import keras_tuner
import numpy as np
import tensorflow as tf

from tfpurify import adaptive, attacks, data, registry
from tfpurify.classifiers import load_classifier, predict_logits
from tfpurify.config import field_type, parse_value
from tfpurify.defenses.base import DefendedClassifier, RobustClassifier
from tfpurify.defenses.registry import build_defense, get_defense, is_detector
from tfpurify.errors import InputValidationError
from tfpurify.metrics import binomial_tolerance
from tfpurify.runs import atomic_write_text

__all__ = ["ParamSpec", "parse_param", "parse_assignment", "OBJECTIVES", "TUNERS", "objective_metrics",
           "DefenseHyperModel", "tune"]

OBJECTIVES = ("robust_accuracy", "clean_accuracy", "worst_case")
TUNERS = ("random", "hyperband")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One searched config field: a range (`low`, `high`, `log`) or a choice (`values`)."""

    name: str
    kind: str            # "int", "float" or "choice"
    low: float = None
    high: float = None
    log: bool = False
    values: tuple = ()

    def sample(self, hp):
        if self.kind == "int":
            return hp.Int(self.name, int(self.low), int(self.high), sampling="log" if self.log else "linear")
        if self.kind == "float":
            return hp.Float(self.name, self.low, self.high, sampling="log" if self.log else "linear")
        return hp.Choice(self.name, list(self.values))


def parse_param(text, config_class):
    """Parses `NAME=LOW:HIGH[:log]` or `NAME=a,b,c` against the fields of `config_class`.

    Raises:
      InputValidationError: no `=`, unknown field, a value of the wrong type, an empty range
        (low >= high), log scale with low <= 0, or a range over a non-numeric field.
    """
    if "=" not in text:
        raise InputValidationError(f"--param {text!r}: expected NAME=LOW:HIGH[:log] or NAME=a,b,c")
    name, spec = (part.strip() for part in text.split("=", 1))
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if name not in fields:
        raise InputValidationError(f"--param {name}: not a field of {config_class.__name__} "
                                   f"(fields: {', '.join(sorted(fields))})")
    kind = field_type(fields[name])
    what = f"--param {name}"
    if ":" in spec:
        parts = spec.split(":")
        log = len(parts) == 3 and parts[2].strip() == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise InputValidationError(f"{what}: expected LOW:HIGH or LOW:HIGH:log, got {spec!r}")
        if kind not in (int, float):
            raise InputValidationError(f"{what}: a range needs a numeric field ({name} is {kind.__name__}); "
                                       "give a choice a,b,c")
        low, high = (parse_value(p, kind, what) for p in parts[:2])
        if not low < high:
            raise InputValidationError(f"{what}: empty range {low}:{high} (LOW must be below HIGH)")
        if log and low <= 0:
            raise InputValidationError(f"{what}: a log range needs LOW > 0, got {low}")
        return ParamSpec(name, kind.__name__, low, high, log)
    values = tuple(parse_value(v, kind, what) for v in spec.split(",") if v.strip())
    if not values:
        raise InputValidationError(f"{what}: empty choice")
    return ParamSpec(name, "choice", values=tuple(dict.fromkeys(values)))


def parse_assignment(text, config_class):
    """`NAME=VALUE` -> (name, value typed as the config field), or InputValidationError."""
    if "=" not in text:
        raise InputValidationError(f"--set {text!r}: expected NAME=VALUE")
    name, value = (part.strip() for part in text.split("=", 1))
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if name not in fields:
        raise InputValidationError(f"--set {name}: not a field of {config_class.__name__}")
    return name, parse_value(value, field_type(fields[name]), f"--set {name}")


def defended_for(model, classifier):
    """The `DefendedClassifier` a trial is scored on: a purifier in front of `classifier`, or the
    robust classifier itself."""
    if isinstance(model, RobustClassifier):
        return DefendedClassifier(model)
    if classifier is None:
        raise InputValidationError(f"tuning {model.registry_name} needs the classifier it protects: --classifier RUN")
    return DefendedClassifier(classifier, purifier=model, detector=model if is_detector(model) else None)


def objective_metrics(defended, x, y, eps=0.1, nb_iter=10, eot_samples=4, batch_size=256):
    """{clean_accuracy, robust_accuracy (white-box PGD), worst_case (clean, FGSM and PGD)} on (x, y).

    Where the white-box attacker has several gradients (a BPDA surrogate and the exact gradient of an
    iterative purifier), each attack counts an example broken when any of them breaks it.
    """
    attacked, scored = adaptive.threat_model_pipelines(defended, eot_samples=eot_samples)["whitebox"]
    targets = adaptive.attacked_variants(attacked)

    def correct(images):
        return np.argmax(predict_logits(scored, images, batch_size), axis=1) == y

    def robust(name, **params):
        return np.all([correct(attacks.run_attack(name, t, x, y, batch_size=batch_size, eps=eps, **params))
                       for t in targets], axis=0)

    clean = correct(x)
    pgd = clean & robust("pgd", nb_iter=nb_iter)
    fgsm = clean & robust("fgsm")
    return {"clean_accuracy": float(np.mean(clean)), "robust_accuracy": float(np.mean(pgd)),
            "worst_case": float(np.mean(pgd & fgsm))}


class _ObjectiveCallback(tf.keras.callbacks.Callback):
    """Adds the objective metrics (`val_slice` of the training split) to each epoch's logs."""

    def __init__(self, hypermodel):
        super().__init__()
        self.hypermodel = hypermodel

    def on_epoch_end(self, epoch, logs=None):
        hm = self.hypermodel
        if is_detector(self.model):
            self.model.calibrate(hm.x_val, hm.target_fpr)
        values = objective_metrics(defended_for(self.model, hm.classifier), hm.x_val, hm.y_val, hm.eps, hm.nb_iter,
                                   hm.eot_samples)
        if logs is not None:
            logs.update(values)
        print(f"  epoch {epoch + 1}: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in values.items()), flush=True)


class DefenseHyperModel(keras_tuner.HyperModel):
    """A keras-tuner hypermodel over a registered defense: `build` samples the config, `fit` trains
    it and reports the objective metrics after every epoch."""

    def __init__(self, name, base_config, params, classifier=None, train=None, val=None, eps=0.1, nb_iter=10,
                 eot_samples=4, target_fpr=0.05, verbose=0):
        super().__init__(name=f"tfpurify-{name}")
        self.defense, self.base_config, self.params = name, base_config, list(params)
        self.classifier = classifier
        (self.x_train, self.y_train), (self.x_val, self.y_val) = train, val
        self.eps, self.nb_iter, self.eot_samples = eps, nb_iter, eot_samples
        self.target_fpr, self.verbose = target_fpr, verbose
        self.trials_started = 0

    def config_for(self, hp):
        values = {p.name: p.sample(hp) for p in self.params}
        try:
            return dataclasses.replace(self.base_config, **values)
        except InputValidationError as e:  # an invalid combination: this trial fails, the search goes on
            raise keras_tuner.errors.FailedTrialError(str(e)) from None

    def build(self, hp):
        model = build_defense(self.defense, self.config_for(hp))
        model.compile_for_training()
        return model

    def fit(self, hp, model, *args, callbacks=(), epochs=None, initial_epoch=0, **kwargs):
        cfg = model.config
        self.trials_started += 1
        print(f"trial {self.trials_started}: " + ", ".join(f"{p.name}={getattr(cfg, p.name)}" for p in self.params)
              + f" ({_epochs(epochs or cfg.epochs)} on {len(self.x_train)} images)", flush=True)
        dataset = model.make_dataset(self.x_train, self.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
        return model.fit(dataset, epochs=epochs or cfg.epochs, initial_epoch=initial_epoch, verbose=self.verbose,
                         callbacks=[_ObjectiveCallback(self), *model.training_callbacks(), *callbacks])


def _epochs(n):
    return f"{n} epoch" + ("" if n == 1 else "s")


def separation_warning(rows, objective, n_val):
    """A warning when the validation slice cannot tell the best trial from the runner-up (their scores
    differ by less than two binomial standard errors on `n_val` images), or None."""
    scores = sorted((r["score"] for r in rows if r["score"] is not None), reverse=True)
    if len(scores) < 2:
        return None
    best, second = scores[0], scores[1]
    margin = binomial_tolerance(min(max(best, 1 / n_val), 1 - 1 / n_val), n_val)
    if best - second > margin:
        return None
    return (f"the validation slice ({n_val} images) cannot separate the trials: the best {objective} "
            f"({100 * best:.1f} %) and the runner-up ({100 * second:.1f} %) differ by less than two binomial "
            f"standard errors (+-{100 * margin:.1f} points); the best is a tie or noise: raise --val-limit "
            "(and --limit) or train longer")


def _trial_rows(tuner, params, objective, epochs=None):
    rows = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        metrics = {name: trial.metrics.get_best_value(name) for name in OBJECTIVES if trial.metrics.exists(name)}
        rows.append({"trial": trial.trial_id, "status": trial.status,
                     **{p.name: trial.hyperparameters.values.get(p.name) for p in params},
                     "epochs": trial.hyperparameters.values.get("tuner/epochs", epochs),
                     **{name: metrics.get(name) for name in OBJECTIVES}, "score": trial.score})
    return rows


def _write_tables(out, rows, params, objective, warning=None):
    keys = list(rows[0]) if rows else ["trial"]
    with open(out / ".trials.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    (out / ".trials.csv.tmp").replace(out / "trials.csv")

    def fmt(v):
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    ranked = sorted(rows, key=lambda r: -math.inf if r["score"] is None else r["score"], reverse=True)
    lines = [f"# Tuning: objective {objective} (validation slice of the training split)", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in ranked]
    if warning:
        lines += ["", f"WARNING: {warning}"]
    atomic_write_text(out / "trials.md", "\n".join(lines) + "\n")


def _plot(out, rows, params, objective):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get(objective) is not None]
    fig, axes = plt.subplots(1, len(params), figsize=(3.6 * len(params), 3.2), squeeze=False)
    for ax, p in zip(axes[0], params):
        xs = [r[p.name] for r in done]
        if p.kind == "choice":
            labels = [str(v) for v in p.values]
            xs = [labels.index(str(v)) for v in xs]
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels)
        elif p.log:
            ax.set_xscale("log")
        ax.scatter(xs, [100 * r[objective] for r in done])
        ax.set_xlabel(p.name)
        ax.set_ylabel(f"{objective} (%)")
    fig.tight_layout()
    tmp = out / ".objective.png.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out / "objective.png")


def tune(name, params, out, base_config=None, classifier_run=None, objective="robust_accuracy", tuner="random",
         trials=10, max_epochs=3, eps=0.1, nb_iter=10, eot_samples=4, val_limit=500, seed=0, verbose=0,
         objective_classifier_run=None, search_epochs=None, search_limit=None):
    """Searches `params` of defense `name`; writes trials.csv/.md, objective.png and best/config.json under `out`.

    Args:
      name: a registered defense.
      params: `ParamSpec`s (see `parse_param`).
      out: output folder; keras-tuner's own state lives in `out/tuner`, so a search resumes.
      base_config: the defense config the params modify (default: the config class's defaults).
      classifier_run: the classifier a purifier protects (robust classifiers need none).
      objective_classifier_run: the classifier the objective is measured with, if not that one
        (AAA: a transfer classifier never seen in training).
      objective: one of OBJECTIVES.
      tuner: "random" (`trials` trials of `search_epochs` epochs, default `base_config.epochs`) or
        "hyperband" (up to `max_epochs` epochs per trial).
      search_epochs, search_limit: the search's own sizes (epochs per random-search trial, the first
        N training examples): the trials use them, the recommended best/config.json keeps
        `base_config`'s (the search's sizes are recorded in `best/search.json`).

    Returns:
      (best config, rows of the trials table)
    """
    registry.load()
    model_class, config_class = get_defense(name)
    base_config = base_config or config_class()
    if objective not in OBJECTIVES:
        raise InputValidationError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    if tuner not in TUNERS:
        raise InputValidationError(f"unknown tuner {tuner!r}; choose from {', '.join(TUNERS)}")
    if not params:
        raise InputValidationError("nothing to tune: give at least one --param")
    if trials < 1 or max_epochs < 1 or val_limit < 1:
        raise InputValidationError("--trials, --max-epochs and --val-limit must be >= 1")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise InputValidationError(f"a field is tuned twice: {', '.join(names)}")
    if classifier_run is None and not issubclass(model_class, RobustClassifier):
        raise InputValidationError(f"tuning {name} needs the classifier it protects: --classifier RUN")
    scored_run = objective_classifier_run or classifier_run
    classifier = load_classifier(scored_run)[0] if scored_run else None
    sizes = {"epochs": search_epochs, "limit": search_limit}
    search_config = dataclasses.replace(base_config, **{k: v for k, v in sizes.items() if v is not None})
    (x_train, y_train), (x_val, y_val) = data.load_train_val(search_config.dataset, search_config.limit,
                                                             search_config.val_fraction, search_config.seed)
    hypermodel = DefenseHyperModel(name, search_config, params, classifier, (x_train, y_train),
                                   (x_val[:val_limit], y_val[:val_limit]), eps, nb_iter, eot_samples, verbose=verbose)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(objective=keras_tuner.Objective(objective, "max"), directory=str(out), project_name="tuner",
                  overwrite=False, seed=seed, max_consecutive_failed_trials=3)
    if tuner == "random":
        search = keras_tuner.RandomSearch(hypermodel, max_trials=trials, **common)
    else:
        search = keras_tuner.Hyperband(hypermodel, max_epochs=max_epochs, factor=3, **common)
    search.search(verbose=0)  # keras-tuner's own display takes any non-IPython process for a notebook
    rows = _trial_rows(search, params, objective, search_config.epochs if tuner == "random" else None)
    warning = separation_warning(rows, objective, len(x_val[:val_limit]))
    _write_tables(out, rows, params, objective, warning)
    _plot(out, rows, params, objective)
    best_hp = search.get_best_hyperparameters(1)
    if not best_hp:
        raise InputValidationError(f"no trial of {name} finished; see {out / 'tuner'}")
    best = dataclasses.replace(base_config, **{p.name: best_hp[0].values[p.name] for p in params})
    (out / "best").mkdir(exist_ok=True)
    atomic_write_text(out / "best" / "config.json",
                      json.dumps({"kind": "defense", "defense": name, **dataclasses.asdict(best)}, indent=2) + "\n")
    searched = {"tuner": tuner, "objective": objective, "train_examples": len(x_train),
                "val_examples": len(x_val[:val_limit]),
                "epochs_per_trial": search_config.epochs if tuner == "random" else f"up to {max_epochs}",
                "eps": eps, "nb_iter": nb_iter, "warning": warning}
    atomic_write_text(out / "best" / "search.json", json.dumps(searched, indent=2) + "\n")
    return best, rows
