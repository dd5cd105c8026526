"""Loads every defense and attack once: the built-ins and the plug-ins other packages install.

Importing this module registers the built-in defenses (each `tfpurify.defenses` module registers
itself, L2L-DA its learned attack `l2l_da` too) and the built-in attacks. `load()` then imports,
once, the plug-ins of two entry-point groups:

- `tfpurify.defenses`: a module whose `@tfpurify.defenses.register("name", NameConfig)` class is
  a defense; the entry point's name is the defense's name.
- `tfpurify.attacks`: a module that calls `tfpurify.attacks.register_attack("name", AttackDef(...))`;
  the entry point's name is the attack's name.

A plug-in package declares them in its `pyproject.toml`, e.g.
`[project.entry-points."tfpurify.defenses"] my_defense = "my_package.my_defense"`.

`load()` is called from the top only: the CLI, and the whole jobs (`tfpurify.training`,
`tfpurify.tuning`) before they look a defense up by name. A library user who looks names up
herself calls it first. Lower modules never load plug-ins.
"""

import functools
import importlib.metadata

from tfpurify import attacks  # noqa: F401  (importing the package registers the built-in attacks)
from tfpurify.attacks.registry import ATTACKS
from tfpurify.defenses import aaa, adversarial_training, cowboy, denoising_ae, fbgan, gcln, l2l_da  # noqa: F401
from tfpurify.defenses.registry import REGISTRY
from tfpurify.errors import PluginError

__all__ = ["GROUPS", "load"]

GROUPS = {"tfpurify.defenses": REGISTRY, "tfpurify.attacks": ATTACKS}


@functools.cache
def load():
    """Imports the plug-ins of the entry-point groups, once.

    Returns:
      (defenses, attacks): the registries, {name: (ModelClass, ConfigClass)} and {name: AttackDef}.

    Raises:
      PluginError: a plug-in fails to import, or does not register the name its entry point
        promises.
    """
    for group, registry in GROUPS.items():
        for entry in importlib.metadata.entry_points(group=group):
            try:
                entry.load()
            except Exception as e:  # a plug-in's own bug: name it, in one line
                raise PluginError(f"plug-in {entry.name!r} ({entry.value}, group {group}) fails to load: "
                                  f"{type(e).__name__}: {e}") from e
            if entry.name not in registry:
                raise PluginError(f"plug-in {entry.value} (group {group}) loaded but registered no "
                                  f"{group.split('.')[-1][:-1]} named {entry.name!r}")
    return REGISTRY, ATTACKS
