"""Attack registry, batched and run inside `tf.function`.

FGSM, CW-L2 and SPSA come from `cleverhans.tf2.attacks`; PGD, BIM and MIM run cleverhans' update
rules on tfpurify's own graph loop with a per-example early exit, and APGD-CE, APGD-DLR, APGD-T,
Square and AutoAttack (which cleverhans does not have) live in `tfpurify.autoattack`.
`run_attack(name, model_fn, x, y=None, **params)` accepts any callable returning logits, so a
whole purifier -> classifier pipeline can be attacked end to end. Parameter names are
cleverhans' own (`eps, eps_iter, nb_iter, norm, clip_min, clip_max, y, targeted, rand_init`).
Results always lie in [clip_min, clip_max] and, for norm-bounded attacks, inside the eps-ball.
`y=None` attacks the model's own predictions (no label leaking).
"""

import dataclasses
import functools
import math

import numpy as np
import tensorflow as tf
import tqdm
from cleverhans.tf2.attacks.carlini_wagner_l2 import carlini_wagner_l2
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.spsa import SPSAAdam, margin_logit_loss, projected_optimization

from tfpurify import autoattack
from tfpurify.data import validate_images
from tfpurify.errors import AttackConfigError

__all__ = ["ATTACKS", "AttackDef", "register_attack", "get_attack", "resolve_params", "run_attack", "parse_norm"]


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
    needs_purifier: bool = False  # attacks the purifier itself (`tfpurify.ae_attacks`): white-box on a defense only
    needs_code: bool = False      # ... through its latent code (`Purifier.encode`)


def _fgsm(model_fn, x, y, p, loss_fn):
    return fast_gradient_method(model_fn, x, p["eps"], p["norm"], loss_fn, clip_min=p["clip_min"],
                                clip_max=p["clip_max"], y=y, targeted=p["targeted"])


def _iterative(model_fn, x, y, p, loss_fn):
    """PGD / BIM / MIM (cleverhans' rules) on tfpurify's graph loop; returns (x_adv, gradient evaluations)."""
    x_adv, _, evals = autoattack.iterative_gradient(
        model_fn, x, y, p["eps"], p["eps_iter"], p["nb_iter"], p["norm"], rand_init=p.get("rand_init", False),
        decay_factor=p.get("decay_factor"), early_exit=p["early_exit"], targeted=p["targeted"])
    return x_adv, evals


def _apgd(loss):
    """Staged APGD: one traced run, called once per restart on what the restarts before left robust."""

    def build(model_fn, p):
        once = tf.function(lambda x, y, active: autoattack.apgd(
            model_fn, x, y, p["eps"], p["norm"], p["nb_iter"], loss, active=active, eot_iter=p["eot_iter"]))

        def run(x, y):
            n = tf.shape(x)[:1]
            x_adv, _, cost = autoattack.first_success([functools.partial(once, x, y)] * p["n_restarts"], x,
                                                      tf.zeros(n, tf.bool), tf.zeros(n), keep_last=True)
            return x_adv, cost

        return run

    return build


def _apgd_t(model_fn, x, y, p, loss_fn):
    x_adv, _, cost = autoattack.apgd_targeted(model_fn, x, y, p["eps"], p["norm"], p["nb_iter"],
                                              p["n_target_classes"])
    return x_adv, cost


def _square(model_fn, x, y, p, loss_fn):
    x_adv, _, queries = autoattack.square(model_fn, x, y, p["eps"], p["n_queries"], p["p_init"])
    return x_adv, queries


def _autoattack(model_fn, p):
    run = autoattack.AutoAttack(model_fn, p["eps"], p["norm"], p["version"], p["nb_iter"], p["n_target_classes"],
                                p["n_queries"], p["eot_iter"])
    return lambda x, y: run(x, y)[::2]  # (x_adv, cost)


def _cw_l2(model_fn, x, y, p, loss_fn):
    # cleverhans 4.0.0's CW-L2 misbehaves when given true labels for an untargeted attack (it
    # raised accuracy in our tests); untargeted it attacks the predictions, which for robust
    # accuracy is equivalent: an already misclassified example counts as wrong either way.
    adv = carlini_wagner_l2(
        model_fn, x, y=y.numpy() if p["targeted"] else None, targeted=p["targeted"], batch_size=len(x),
        clip_min=p["clip_min"], clip_max=p["clip_max"],
        binary_search_steps=p["binary_search_steps"], max_iterations=p["max_iterations"],
        abort_early=True, confidence=p["confidence"], initial_const=p["initial_const"],
        learning_rate=p["learning_rate"])
    return tf.convert_to_tensor(adv)


def _spsa_optimizer(p):
    """cleverhans' SPSA optimizer, built outside any `tf.function` (it is a Keras optimizer).

    cleverhans 4.0.0's `SPSAAdam.__init__` passes `lr=` to Keras 2.15's Adam, which ignores it:
    its step would stay at Adam's 0.001 whatever `learning_rate` is asked for. We set it after
    construction, so `learning_rate` means what it says.
    """
    optimizer = SPSAAdam(lr=p["learning_rate"], delta=p["delta"], num_samples=p["spsa_samples"], num_iters=1)
    optimizer.learning_rate = p["learning_rate"]
    return optimizer


def _spsa(model_fn, x, y, p, loss_fn):
    """cleverhans' SPSA (Uesato et al. 2018): `spsa()`'s margin loss and `projected_optimization`.

    Run through cleverhans' own pieces rather than `spsa()`, which builds its Keras optimizer inside
    the call and so cannot be traced: traced, SPSA runs about 3x faster than eagerly. The search
    stops on an example once it is misclassified (cleverhans' `early_stop_loss_threshold=0`), which
    keeps the first successful adversarial example.
    """
    sign = 1.0 if p["targeted"] else -1.0

    def margin(images, labels):
        logits = model_fn(images)
        return sign * margin_logit_loss(logits, labels, nb_classes=logits.shape[-1])

    return projected_optimization(margin, x, y, p["eps"], p["nb_iter"], p["optimizer"], p["clip_min"],
                                  p["clip_max"], early_stop_loss_threshold=0.0)


_COMMON = {"eps": 0.1, "norm": np.inf, "clip_min": 0.0, "clip_max": 1.0, "targeted": False}
_ITERATIVE = {**_COMMON, "eps_iter": None, "nb_iter": 40, "early_exit": True}
_APGD = {"eps": 0.1, "norm": np.inf, "clip_min": 0.0, "clip_max": 1.0, "nb_iter": 100, "n_restarts": 1,
         "eot_iter": 1}

ATTACKS = {
    "fgsm": AttackDef(_fgsm, dict(_COMMON), takes_loss=True, cost=lambda p: 1),
    "pgd": AttackDef(_iterative, {**_ITERATIVE, "rand_init": True, "restarts": 1}, takes_loss=True),
    "bim": AttackDef(_iterative, dict(_ITERATIVE), takes_loss=True),
    "mim": AttackDef(_iterative, {**_ITERATIVE, "decay_factor": 1.0}, takes_loss=True),
    "apgd_ce": AttackDef(None, dict(_APGD), takes_loss=True, staged=_apgd("ce")),
    "apgd_dlr": AttackDef(None, dict(_APGD), takes_loss=True, staged=_apgd("dlr")),
    "apgd_t": AttackDef(_apgd_t, {**_APGD, "n_target_classes": 9}, takes_loss=True),
    "square": AttackDef(_square, {**_COMMON, "n_queries": 5000, "p_init": 0.8}, gradient=False, takes_loss=True),
    "autoattack": AttackDef(
        None, {**_APGD, "version": "standard", "n_target_classes": 9, "n_queries": 5000, "eot_iter": 20},
        takes_loss=True, staged=_autoattack),
    "cw_l2": AttackDef(
        _cw_l2,
        {"eps": None, "norm": 2, "clip_min": 0.0, "clip_max": 1.0, "targeted": False,
         "binary_search_steps": 5, "max_iterations": 100, "confidence": 0.0,
         "initial_const": 1.0, "learning_rate": 0.01},
        bounded=False, graph=False),
    "spsa": AttackDef(
        _spsa,
        {**_COMMON, "nb_iter": 100, "learning_rate": 0.01, "delta": 0.01, "spsa_samples": 128},
        batch_size=1, gradient=False, prepare=lambda p: {"optimizer": _spsa_optimizer(p)},
        cost=lambda p: p["nb_iter"] * p["spsa_samples"]),
}


def register_attack(name, attack_def):
    """Adds an attack (for example a learned one such as `l2l_da`) to the registry."""
    ATTACKS[name] = attack_def


def get_attack(name):
    """The `AttackDef` of `name`; learned attacks register when their defense module loads."""
    if name not in ATTACKS:
        import tfpurify.defenses  # noqa: F401  (registers l2l_da and any other learned attack)
    if name not in ATTACKS:
        raise AttackConfigError(f"unknown attack {name!r}; choose from {', '.join(sorted(ATTACKS))}")
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
    if name in ("spsa", "square") and p["norm"] != np.inf:
        raise AttackConfigError(f"{name} supports only norm inf")
    if "version" in p and p["version"] not in ("standard", "rand"):
        raise AttackConfigError(f"autoattack version must be standard or rand, got {p['version']!r}")
    if "p_init" in p and (not _is_number(p["p_init"]) or not 0 < p["p_init"] <= 1):
        raise AttackConfigError(f"p_init must be in (0, 1], got {p['p_init']!r}")
    if "early_exit" in p and not isinstance(p["early_exit"], (bool, np.bool_)):
        raise AttackConfigError(f"early_exit must be true or false, got {p['early_exit']!r}")
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


def _project(x_adv, x, p):
    """Puts results back into the eps-ball and the pixel range (guards numerical drift)."""
    x_adv = np.clip(x_adv, p["clip_min"], p["clip_max"])
    eps = p.get("eps")
    if eps is None:
        return x_adv
    delta = x_adv - x
    if p["norm"] == np.inf:
        delta = np.clip(delta, -eps, eps)
    else:
        norms = np.sqrt(np.sum(delta.reshape(len(x), -1) ** 2, axis=1)).reshape((-1,) + (1,) * (x.ndim - 1))
        delta = delta * np.minimum(1.0, eps / np.maximum(norms, 1e-12))
    return np.clip(x + delta, p["clip_min"], p["clip_max"]).astype(np.float32)


def _check_differentiable(model_fn, x):
    """Fails clearly when the attacked pipeline has no input gradient (a non-differentiable op)."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model_fn(x)
    if tape.gradient(logits, x) is None:
        raise AttackConfigError(
            "the attacked model has no gradient with respect to its input (a non-differentiable op "
            "such as rounding); attack it through a BPDA surrogate (Purifier.attack_surrogate) or use spsa")


def _batch_runner(attack, model_fn, p):
    """Returns f(x, y) -> (x_adv, cost, per-example attack loss, hit, flagged) for one batch.

    `hit`: the prediction equals y; `flagged`: a detector-aware target's detector fires (else all
    False). Loss, hit and flagged are only computed when restarts need comparing.
    """

    # A target with `attack_loss` (adaptive.DetectorAwareTarget) returns more than logits: its
    # own loss goes to cleverhans; attacks that take no loss see its logits only.
    loss_fn = getattr(model_fn, "attack_loss", None)
    target = autoattack.Target(model_fn)
    logits_fn = model_fn if not target.aware else (lambda images: target.parts(images)[0])
    attacked_fn = model_fn if attack.takes_loss else logits_fn
    if attack.prepare is not None:
        p = {**p, **attack.prepare(p)}
    staged = attack.staged(attacked_fn, p) if attack.staged is not None else None

    def step(x, y):
        y_used = y if y is not None else tf.argmax(logits_fn(x), axis=1)
        result = staged(x, y_used) if staged is not None else attack.fn(attacked_fn, x, y_used, p, loss_fn)
        x_adv, cost = result if isinstance(result, tuple) else (result, None)
        if cost is None:
            cost = tf.fill(tf.shape(x)[:1], float(attack.cost(p)) if attack.cost else float("nan"))
        none = tf.zeros(tf.shape(x)[:1], tf.bool)
        if p.get("restarts", 1) == 1:  # nothing to compare: skip the extra forward pass
            return x_adv, cost, tf.zeros(tf.shape(x)[:1]), none, none
        outputs = model_fn(x_adv)
        logits, _, flagged = target.split(outputs)
        if loss_fn is None:
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y_used, logits)
        else:
            loss = loss_fn(labels=y_used, logits=outputs)
        hit = tf.equal(tf.argmax(logits, axis=1), tf.cast(y_used, tf.int64))
        return x_adv, cost, loss, hit, flagged

    return tf.function(step) if attack.graph and staged is None else step


def run_attack(name, model_fn, x, y=None, batch_size=256, seed=0, progress=False, return_cost=False, **params):
    """Crafts adversarial examples for `x` against `model_fn`.

    Args:
      name: attack name in `ATTACKS` (fgsm, pgd, bim, mim, cw_l2, spsa, ...).
      model_fn: callable mapping a float32 image batch to logits (a classifier, or a whole
        purifier -> classifier pipeline).
      x: images [N, H, W, C] in [0, 1].
      y: true labels [N] (untargeted) or target labels (targeted=True); None attacks the model's
        own predictions.
      batch_size: examples per attack batch (the last batch is padded, so one trace serves all).
      seed: seeds TensorFlow's random ops (random starts) for reproducibility.
      progress: show a tqdm progress bar over batches.
      return_cost: also return the model evaluations spent per example (gradient evaluations for
        gradient attacks, queries for Square and SPSA; NaN where an attack does not count them).
      **params: attack parameters, see `resolve_params`. `restarts` (pgd) keeps, per example, the
        restart that reaches the attack's goal (fools the model, and against a detector-aware
        target also evades the detector), or else the one with the highest attack loss.

    Returns:
      float32 numpy array like `x`, inside the eps-ball (bounded attacks) and [clip_min, clip_max];
      with `return_cost`, the pair (x_adv, cost [N]).
    """
    p = resolve_params(name, **params)
    x = validate_images(x)
    if y is not None:
        y = np.asarray(y, dtype=np.int64).reshape(-1)
        if len(y) != len(x):
            raise AttackConfigError(f"x has {len(x)} examples but y has {len(y)} labels")
    if p.get("targeted") and y is None:
        raise AttackConfigError("a targeted attack needs target labels y")
    if len(x) == 0 or (p.get("eps") == 0.0 and ATTACKS[name].bounded):
        return (x.copy(), np.zeros(len(x), np.float32)) if return_cost else x.copy()
    attack = ATTACKS[name]
    if attack.needs_purifier and getattr(model_fn, "purifier", None) is None:
        raise AttackConfigError(f"{name} attacks a purifier: use it under the whitebox threat model of a defense run "
                                "(tfpurify eval DEFENSE_RUN --classifier RUN --threat-model whitebox)")
    if attack.needs_code and not getattr(model_fn.purifier, "has_code", False):
        raise AttackConfigError(f"{name} needs a purifier with a latent code (aaa, denoising_ae, fbgan); "
                                f"{type(model_fn.purifier).__name__} has none")
    if attack.gradient:
        _check_differentiable(model_fn, x[:1])
    batch_size = attack.batch_size or min(int(batch_size), len(x))  # never pad beyond the data
    tf.random.set_seed(seed)
    step = _batch_runner(attack, model_fn, p)  # traced afresh, so `seed` takes effect
    restarts = p.get("restarts", 1)
    out = np.empty_like(x)
    cost = np.zeros(len(x), np.float32)
    starts = range(0, len(x), batch_size)
    for start in tqdm.tqdm(starts, desc=name, disable=not progress, unit="batch"):
        xb = x[start:start + batch_size]
        n = len(xb)
        yb = None if y is None else y[start:start + batch_size]
        if n < batch_size and attack.graph:  # pad so the traced graph keeps one shape
            pad = batch_size - n
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            yb = None if yb is None else np.concatenate([yb, np.repeat(yb[-1:], pad)])
        xt = tf.constant(xb)
        yt = None if yb is None else tf.constant(yb)
        best, best_loss, best_goal = None, None, None
        for _ in range(restarts):
            adv, spent, loss, hit, flagged = (t.numpy() for t in step(xt, yt))
            cost[start:start + n] += spent[:n]
            goal = (hit if p.get("targeted") else ~hit) & ~flagged  # fooled and, if watched, not flagged
            loss = -loss if p.get("targeted") else loss  # higher is better for the attacker
            if best is None:
                best, best_loss, best_goal = adv, loss, goal
                continue
            better = (goal & ~best_goal) | ((goal == best_goal) & (loss > best_loss))
            best[better], best_loss[better], best_goal[better] = adv[better], loss[better], goal[better]
        out[start:start + n] = best[:n]
    out = _project(out, x, p)
    return (out, cost) if return_cost else out


from tfpurify import ae_attacks  # noqa: E402,F401  (registers pgd_recon and latent)
