"""Registry of defenses: name -> (ModelClass, ConfigClass).

Adding a defense is adding a module that decorates its model class with `@register("name",
NameConfig)` and importing it at the bottom of this file; `tfpurify train <name>`, `eval` and
`export` then find it.
"""

from tfpurify.defenses.base import (DefendedClassifier, DefenseConfig, Detector, Purifier, RobustClassifier,
                                    RobustClassifierConfig)
from tfpurify.errors import RunFolderError

__all__ = ["REGISTRY", "register", "get_defense", "DefendedClassifier", "DefenseConfig", "Detector", "Purifier",
           "RobustClassifier", "RobustClassifierConfig"]

REGISTRY = {}


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
        raise RunFolderError(f"unknown defense {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


from tfpurify.defenses import aaa, adversarial_training, cowboy, denoising_ae, fbgan, gcln, l2l_da  # noqa: E402,F401  (each registers itself)
