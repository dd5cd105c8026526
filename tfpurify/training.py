"""Training and loading defenses through the registry, under a `tf.distribute` strategy.

A defense run folder holds `config.json` (`kind: defense`, `defense: <name>` and the config
fields), `defense.weights.h5`, `history.csv` and, while training, `backup/` (Keras
`BackupAndRestore`), so a killed run resumes from its last finished epoch. A detector is
calibrated on the validation split when training ends (never on the test split): its threshold
is saved with the weights and what the calibration measured in `calibration.json`.
"""

import dataclasses
import json
import pathlib

import tensorflow as tf

from tfpurify import data as data_lib
from tfpurify import registry
from tfpurify.classifiers import load_classifier
from tfpurify.defenses import registry as defenses_registry
from tfpurify.defenses.base import DefendedClassifier, RobustClassifier
from tfpurify.defenses.registry import CALIBRATION, WEIGHTS, build_defense, get_defense, is_detector
from tfpurify.errors import InputValidationError, RunFolderError
from tfpurify.runs import atomic_write_text, finish_run, read_config, run_callbacks, start_run, weights_digest

__all__ = ["STRATEGIES", "make_strategy", "build_defense", "is_detector", "train_defense", "load_defense",
           "load_defended", "config_dict"]

STRATEGIES = ("default", "mirrored", "multiworker")


def make_strategy(name="default"):
    """`default` (one device), `mirrored` (all local devices) or `multiworker` (reads TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise InputValidationError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def config_dict(name, config):
    """A defense run's config.json: kind, defense name and the config's fields."""
    return {"kind": "defense", "defense": name, **dataclasses.asdict(config)}


def train_defense(name, config, out_dir, strategy="default", callbacks=(), verbose=2, target_fpr=0.05):
    """Trains a registered defense with `fit` on the training split and writes its run folder.

    Args:
      name: registry name (e.g. "denoising_ae").
      config: the defense's config dataclass (or a dict of its fields).
      out_dir: run folder; an unfinished run with the same config resumes.
      strategy: a name from STRATEGIES or a `tf.distribute.Strategy`; the model and its
        optimizers are built inside its scope.
      callbacks: extra Keras callbacks.
      verbose: Keras progress-bar verbosity.
      target_fpr: a detector's threshold flags this fraction of clean validation images.

    Returns:
      (model, history dict)
    """
    registry.load()
    _, config_class = get_defense(name)
    if not isinstance(config, config_class):
        config = config_class.from_dict(dict(config))
    if not 0.0 < target_fpr < 1.0:
        raise InputValidationError(f"target_fpr must be in (0, 1), got {target_fpr}")
    strategy = make_strategy(strategy) if isinstance(strategy, str) else strategy
    # the data first: a config that cannot train (no such data, a bad limit) leaves no run folder behind
    (x_train, y_train), (x_val, y_val) = data_lib.load_train_val(
        config.dataset, config.limit, config.val_fraction, config.seed)
    out_dir = start_run(out_dir, config_dict(name, config))
    tf.keras.utils.set_random_seed(config.seed)

    with strategy.scope():
        model = build_defense(name, config)
        model.compile_for_training()
    history = model.fit(
        model.make_dataset(x_train, y_train, config.batch_size, shuffle=True, seed=config.seed),
        validation_data=model.make_dataset(x_val, y_val, config.batch_size),
        epochs=config.epochs,
        # the defense's own callbacks first: what they add to an epoch's logs reaches history.csv
        callbacks=[*model.training_callbacks((x_val, y_val)), *run_callbacks(out_dir), *callbacks],
        verbose=verbose,
    )
    if is_detector(model):  # before the final save, so the threshold is saved with the weights
        calibration = model.calibrate(x_val, target_fpr)
        atomic_write_text(pathlib.Path(out_dir) / CALIBRATION,
                          json.dumps({**calibration, "split": "validation"}, indent=2) + "\n")
    finish_run(model, out_dir, WEIGHTS)
    return model, history.history


def load_defense(run_dir, overrides=None):
    """Rebuilds a defense (built-in or plug-in) from its run folder and restores its weights.

    `tfpurify.defenses.registry.load_defense` after `tfpurify.registry.load()`; `overrides` are
    runtime config fields (see there).

    Returns:
      (model, config)
    """
    registry.load()
    return defenses_registry.load_defense(run_dir, overrides)


def load_defended(run_dir, classifier_run=None, overrides=None):
    """A `DefendedClassifier` from a defense run + classifier run, or from a classifier run alone.

    `overrides`: runtime config fields of the defense (see `load_defense`).

    For a defense that is itself a classifier (adversarial training), `classifier_run` is
    optional: the plain classifier behind the report's `none` rows (usually the run it started from).

    Returns:
      (defended, info) where info names the defense, classifier, dataset and configs, and `runs`
      holds each run folder with the SHA-256 of its weights (what a report was made for).
    """
    if read_config(run_dir).get("kind") == "classifier":
        if classifier_run is not None:
            raise RunFolderError(f"{run_dir} is a classifier run; --classifier is only for defense runs")
        if overrides:
            raise InputValidationError(f"{run_dir} is a classifier run: defense options do not apply to it")
        classifier, cconfig = load_classifier(run_dir)
        defended = DefendedClassifier(classifier)
        info = {"defense": "none", "config": cconfig.to_dict(), "classifier": cconfig.arch}
        runs = {"classifier": classifier.tfpurify_run["runs"]["classifier"]}  # digested by load_classifier
    else:
        defense, dconfig = load_defense(run_dir, overrides)
        robust = isinstance(defense, RobustClassifier)
        if classifier_run is None and not robust:
            raise RunFolderError(f"{run_dir} is a defense run: name the classifier it protects with --classifier RUN")
        classifier, cconfig = load_classifier(classifier_run) if classifier_run else (None, None)
        if cconfig is not None and cconfig.dataset != dconfig.dataset:
            raise RunFolderError(f"the defense was trained on {dconfig.dataset}, the classifier on {cconfig.dataset}")
        if robust:  # the defense is the classifier; `classifier` is the plain one, for the `none` rows
            defended = DefendedClassifier(defense, undefended=classifier)
        else:
            defended = DefendedClassifier(classifier, purifier=defense if hasattr(defense, "purify") else None,
                                          detector=defense if is_detector(defense) else None)
        info = {"defense": defense.registry_name, "config": config_dict(defense.registry_name, dconfig),
                "classifier": defense.arch if robust else cconfig.arch}
        runs = {"defense": {"path": str(run_dir), "weights_sha256": weights_digest(run_dir, WEIGHTS),
                            **({"runtime": {k: getattr(dconfig, k) for k in overrides}} if overrides else {})}}
        if classifier_run:
            runs["undefended" if robust else "classifier"] = classifier.tfpurify_run["runs"]["classifier"]
    dataset = (cconfig or dconfig).dataset
    defended(tf.zeros((1, *(cconfig or dconfig).input_shape)))  # build, so export can track it
    # what `evaluation.evaluate` records when it is not told (past Keras' attribute tracking: no model state)
    object.__setattr__(defended, "tfpurify_run", {"defense": info["defense"], "classifier": info["classifier"],
                                                  "dataset": dataset, "runs": runs})
    return defended, {**info, "dataset": dataset, "classifier_config": cconfig.to_dict() if cconfig else None,
                      "runs": runs}
