"""The attack registry: each attack's `AttackDef` by name, and the validation of its parameters.

Built-in attacks register when `tfpurify.attacks` loads (`gradient`, `autoattack`, `purifier`); a
defense that brings an attack (L2L-DA's learned generator) registers it from its own module, and
third-party packages through the entry-point group `tfpurify.attacks`
(`tfpurify.registry.load()`). Parameter names are cleverhans' own (`eps, eps_iter, nb_iter, norm,
clip_min, clip_max, y, targeted, rand_init`).
"""

import dataclasses
import math

import numpy as np

from tfpurify.errors import AttackConfigError

__all__ = ["ATTACKS", "AttackDef", "COMMON", "register_attack", "get_attack", "resolve_params", "parse_norm"]


@dataclasses.dataclass(frozen=True)
class AttackDef:
    """How to run one attack: its batch function, defaults and whether it is norm-bounded."""

    fn: callable            # (model_fn, x, y, params, loss_fn) -> adversarial batch (a tf.Tensor); None if staged
    defaults: dict          # every parameter the attack accepts, with its default
    bounded: bool = True    # True: result is projected into the eps-ball of `norm`
    graph: bool = True      # True: run inside tf.function; False: eager (cleverhans' CW)
    batch_size: int = None  # forced batch size (SPSA works on one example at a time)
    gradient: bool = True   # False for gradient-free attacks (SPSA)
    takes_loss: bool = False  # True: the attack gets a detector-aware target itself (its loss, logits, flags)
    prepare: callable = None  # params -> extra params built once, outside tf.function (SPSA's optimizer)
    cost: callable = None     # params -> model evaluations per example, for attacks that do not count them
    check: callable = None    # params -> None, raises AttackConfigError (attack-specific validation)
    # (model_fn, params) -> f(x, y) -> (x_adv, cost): built once per run, called eagerly per batch; it
    # traces its own stages and skips those with nothing left to attack (AutoAttack, APGD's restarts)
    staged: callable = None
    # staged attacks that take `judge=`: (images, labels) -> [N] bool, whether the pipeline that is
    # scored is fooled; an example leaves the stages only when the judge confirms (see run_attack)
    takes_judge: bool = False
    needs_purifier: bool = False  # attacks the purifier itself (`tfpurify.attacks.purifier`): white-box on a defense only
    needs_code: bool = False      # ... through its latent code (`Purifier.encode`)


# The parameters every norm-bounded attack takes, with their defaults.
COMMON = {"eps": 0.1, "norm": np.inf, "clip_min": 0.0, "clip_max": 1.0, "targeted": False}

ATTACKS = {}


def register_attack(name, attack_def):
    """Adds an attack (for example a learned one such as `l2l_da`) to the registry."""
    ATTACKS[name] = attack_def


def get_attack(name):
    """The `AttackDef` of `name`.

    Raises:
      AttackConfigError: no attack of that name is registered (learned and plug-in attacks
        register when `tfpurify.registry.load()` runs).
    """
    if name not in ATTACKS:
        raise AttackConfigError(f"unknown attack {name!r}; choose from {', '.join(sorted(ATTACKS))} (learned and "
                                "plug-in attacks register with tfpurify.registry.load())")
    return ATTACKS[name]


def parse_norm(norm):
    """Maps `inf`, `linf`, `np.inf`, `2`, `l2` to np.inf or 2; raises AttackConfigError otherwise."""
    if isinstance(norm, str):
        key = norm.strip().lower()
        table = {"inf": np.inf, "linf": np.inf, "np.inf": np.inf, "2": 2, "l2": 2}
        if key in table:
            return table[key]
    elif norm == np.inf or norm == 2:
        return np.inf if norm == np.inf else 2
    raise AttackConfigError(f"unknown norm {norm!r}; use inf or 2")


# AutoAttack's stages, as the original names them (its `attacks_to_run`), those of its versions, and those that
# use no gradient
AUTOATTACK_STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
AUTOATTACK_VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}
AUTOATTACK_GRADIENT_FREE = ("square",)


def gradient_stages_only(name, params):
    """Resolved `params` of attack `name` for a second run with another gradient on the images the first left
    robust: AutoAttack without its gradient-free stages (Square saw no gradient, and the original runs it once),
    None where no stage is left; any other attack's params as they are."""
    if name != "autoattack":
        return params
    version = params["version"]
    stages = AUTOATTACK_VERSIONS.get(version) or tuple(version.split(","))
    kept = [stage for stage in stages if stage not in AUTOATTACK_GRADIENT_FREE]
    if len(kept) == len(stages):
        return params
    return {**params, "version": ",".join(kept)} if kept else None


def resolve_params(name, **params):
    """Validates attack parameters and fills in defaults.

    Defaults: eps 0.1 (L-inf), step `eps_iter = eps / 4`, 40 iterations, one PGD restart.

    Raises:
      AttackConfigError: unknown attack or parameter, eps < 0, eps_iter > eps, unknown norm, ...
    """
    attack = get_attack(name)
    unknown = set(params) - set(attack.defaults)
    if unknown:
        raise AttackConfigError(
            f"{name} does not take {', '.join(sorted(unknown))}; it takes {', '.join(sorted(attack.defaults))}")
    p = {**attack.defaults, **{k: v for k, v in params.items() if v is not None}}
    p["norm"] = parse_norm(p["norm"])
    if name == "spsa" and p["norm"] != np.inf:
        raise AttackConfigError(f"{name} supports only norm inf")
    if name == "square" and p["norm"] not in (np.inf, 2):
        raise AttackConfigError(f"{name} supports norms inf and 2")
    if "version" in p and p["version"] not in ("standard", "rand"):  # else a comma list of stages (custom)
        stages = [stage.strip() for stage in str(p["version"]).split(",")]
        if not set(stages) <= set(AUTOATTACK_STAGES):
            raise AttackConfigError(f"autoattack version must be standard, rand, or a comma list of its stages "
                                    f"({', '.join(AUTOATTACK_STAGES)}), got {p['version']!r}")
        p["version"] = ",".join(stages)
    if "p_init" in p and (not _is_number(p["p_init"]) or not 0 < p["p_init"] <= 1):
        raise AttackConfigError(f"p_init must be in (0, 1], got {p['p_init']!r}")
    for flag in ("early_exit", "rescale_schedule"):
        if flag in p and not isinstance(p[flag], (bool, np.bool_)):
            raise AttackConfigError(f"{flag} must be true or false, got {p[flag]!r}")
    eps = p["eps"]
    if eps is not None:
        if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise AttackConfigError(f"eps must be a finite number >= 0, got {eps!r}")
        p["eps"] = eps = float(eps)
        if p["norm"] == np.inf and eps > p["clip_max"] - p["clip_min"]:
            raise AttackConfigError(f"eps {eps} is larger than the pixel range [{p['clip_min']}, {p['clip_max']}]")
    elif attack.bounded:
        raise AttackConfigError(f"{name} needs eps")
    if "eps_iter" in p:
        if p["eps_iter"] is None:
            p["eps_iter"] = eps / 4.0
        if not _is_number(p["eps_iter"]) or not (0 < p["eps_iter"] <= eps or p["eps_iter"] == eps == 0):
            raise AttackConfigError(f"eps_iter must be in (0, eps={eps}], got {p['eps_iter']!r}")
        p["eps_iter"] = float(p["eps_iter"])
    for key in ("nb_iter", "restarts", "binary_search_steps", "max_iterations", "spsa_samples", "n_restarts",
                "n_target_classes", "n_queries", "eot_iter"):
        if key in p:
            if not _is_number(p[key]) or int(p[key]) != p[key] or p[key] < 1:
                raise AttackConfigError(f"{key} must be an integer >= 1, got {p[key]!r}")
            p[key] = int(p[key])
    if name == "spsa" and p["spsa_samples"] % 2:
        raise AttackConfigError(f"spsa_samples must be even (SPSA mirrors each sample), got {p['spsa_samples']}")
    for key in ("learning_rate", "delta", "initial_const"):
        if key in p and (not _is_number(p[key]) or not p[key] > 0):
            raise AttackConfigError(f"{key} must be a number > 0, got {p[key]!r}")
    if "decay_factor" in p and (not _is_number(p["decay_factor"]) or p["decay_factor"] < 0):
        raise AttackConfigError(f"decay_factor must be a number >= 0, got {p['decay_factor']!r}")
    if p["clip_min"] >= p["clip_max"]:
        raise AttackConfigError(f"clip_min {p['clip_min']} must be below clip_max {p['clip_max']}")
    if attack.check is not None:
        attack.check(p)
    return p


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)
