"""Attacks by family, one registry, one runner.

- `registry`: `AttackDef`, `ATTACKS`, `register_attack`, `get_attack`, `resolve_params`, `gradient_stages_only`.
- `loop`: the graph loop every iterative gradient attack shares (`iterative_gradient`, `on_active`).
- `gradient`: cleverhans' FGSM, CW-L2 and SPSA; PGD, BIM and MIM on the shared loop.
- `autoattack`: APGD-CE, APGD-DLR, APGD-T, Square and AutoAttack.
- `fab`: FAB-T, the targeted minimum-norm attack of AutoAttack's standard version.
- `purifier`: attacks on a purifier itself (`pgd_recon`, `latent`), white-box on a defense run.
- `run`: `run_attack(name, model_fn, x, y, **params)`, batched and seeded, on any callable
  returning logits (a classifier or a whole purifier -> classifier pipeline).

Importing this package registers the built-in attacks. A defense that brings an attack
(L2L-DA's learned `l2l_da`) registers it from its own module, and plug-ins through the
entry-point group `tfpurify.attacks`; both load with `tfpurify.registry.load()`.
"""

from tfpurify.attacks import autoattack, fab, gradient, purifier  # noqa: F401  (each registers its attacks)
from tfpurify.attacks.registry import (ATTACKS, COMMON, AttackDef, get_attack, gradient_stages_only, parse_norm,
                                       register_attack, resolve_params)
from tfpurify.attacks.run import run_attack

__all__ = ["ATTACKS", "COMMON", "AttackDef", "register_attack", "get_attack", "resolve_params", "run_attack",
           "parse_norm", "gradient_stages_only"]
