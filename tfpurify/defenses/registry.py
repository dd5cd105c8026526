"""The defense registry: name -> (model class, config class), and rebuilding a defense from its run folder.

A defense module decorates its model class with `@register("name", NameConfig)`. The built-in
defenses and the plug-ins of the entry-point group `tfpurify.defenses` are imported by
`tfpurify.registry.load()`, from the top (the CLI, the training and tuning jobs), never from here.
"""

import dataclasses
import json
import pathlib

import tensorflow as tf

from tfpurify.config import field_value, runtime_fields
from tfpurify.defenses.base import Detector
from tfpurify.errors import InputValidationError, RunFolderError
from tfpurify.runs import read_run, restore_weights

__all__ = ["REGISTRY", "WEIGHTS", "CALIBRATION", "register", "get_defense", "build_defense", "is_detector",
           "load_defense"]

REGISTRY = {}
WEIGHTS = "defense.weights.h5"
CALIBRATION = "calibration.json"


def register(name, config_class):
    """Class decorator: registers a defense model class under `name` with its config class."""

    def decorate(model_class):
        model_class.registry_name = name
        model_class.config_class = config_class
        REGISTRY[name] = (model_class, config_class)
        return model_class

    return decorate


def get_defense(name):
    """(ModelClass, ConfigClass) of a registered defense, or a clear error."""
    if name not in REGISTRY:
        raise RunFolderError(f"unknown defense {name!r}; registered: {', '.join(sorted(REGISTRY)) or 'none'} "
                             "(built-in and plug-in defenses register with tfpurify.registry.load())")
    return REGISTRY[name]


def build_defense(name, config):
    """Builds (and calls once, so its weights exist) a registered defense from its config."""
    model_class, config_class = get_defense(name)
    if not isinstance(config, config_class):
        config = config_class.from_dict(dict(config))
    model = model_class(config, config.input_shape)
    model(tf.zeros((1, *config.input_shape)))
    return model


def is_detector(model):
    """True for a defense whose detector is present and switched on."""
    return isinstance(model, Detector) and model.detector_enabled


def load_defense(run_dir, overrides=None):
    """Rebuilds a defense from its run folder's config and restores its weights.

    Args:
      run_dir: a defense run folder.
      overrides: {field: value} for the config's runtime fields (how the trained model is used,
        e.g. a purifier's search steps); any other field is an error. A value given as text
        (`"5"`, `"false"`) is read as the field's type.

    Returns:
      (model, config)
    """
    cfg = read_run(run_dir, "defense")
    _, config_class = get_defense(cfg.get("defense"))
    config = config_class.from_dict(cfg)
    if overrides:
        allowed = runtime_fields(config_class)
        wrong = sorted(set(overrides) - set(allowed))
        if wrong:
            options = ", ".join("--" + k.replace("_", "-") for k in wrong)
            raise InputValidationError(f"{options} does not apply to a {cfg['defense']} run (it takes "
                                       f"{', '.join('--' + k.replace('_', '-') for k in allowed) or 'none'})")
        fields = {f.name: f for f in dataclasses.fields(config_class)}
        config = dataclasses.replace(config, **{k: field_value(fields[k], v) if isinstance(v, str) else v
                                                for k, v in overrides.items()})
    model = restore_weights(build_defense(cfg["defense"], config), run_dir, WEIGHTS)
    calibration = pathlib.Path(run_dir) / CALIBRATION
    if is_detector(model) and calibration.is_file():
        try:
            model.calibration = json.loads(calibration.read_text())
        except (OSError, ValueError) as e:
            raise RunFolderError(f"{calibration}: unreadable ({e})") from None
    return model, config
