"""Defenses: what every defense plugs into (`base`), the registry (`registry`), one module per defense.

Adding a defense is adding a module that decorates its model class with `@register("name",
NameConfig)` (from `tfpurify.defenses.registry`) and naming it in `tfpurify.registry`'s built-ins,
or, from another package, in the entry-point group `tfpurify.defenses`. `tfpurify.registry.load()`
imports them all once; `tfpurify train <name>`, `eval` and `export` then find it. This package
imports none of its defense modules itself.
"""

from tfpurify.defenses.base import (DefendedClassifier, DefenseConfig, Detector, Purifier, RobustClassifier,
                                    RobustClassifierConfig)
from tfpurify.defenses.registry import REGISTRY, get_defense, register

__all__ = ["REGISTRY", "register", "get_defense", "DefendedClassifier", "DefenseConfig", "Detector", "Purifier",
           "RobustClassifier", "RobustClassifierConfig"]
