"""Reusable click options and parsers shared by the commands."""

import math

import click

from tfpurify.errors import InputValidationError

__all__ = ["Number", "COUNT", "SEED", "POSITIVE", "NON_NEGATIVE", "FRACTION", "dataset_option", "seed_option",
           "limit_option", "parse_list", "parse_float_list", "option_type", "registries", "runtime_options",
           "runtime_overrides"]


class Number(click.ParamType):
    """A number option checked while the command line is parsed, before any work: one line and exit 1.

    Args:
      kind: int or float.
      low, high: the bounds; `open_low` / `open_high` exclude them.
    """

    def __init__(self, kind, low=None, high=None, open_low=False, open_high=False):
        self.kind, self.low, self.high, self.open_low, self.open_high = kind, low, high, open_low, open_high
        self.name = f"{kind.__name__} {self._range()}".strip()

    def _range(self):
        low = "" if self.low is None else f"{'>' if self.open_low else '>='} {self.low:g}"
        high = "" if self.high is None else f"{'<' if self.open_high else '<='} {self.high:g}"
        return " and ".join(part for part in (low, high) if part)

    def convert(self, value, param, ctx):
        option = param.opts[0] if param is not None and param.opts else "a number option"
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            raise InputValidationError(f"{option}: {value!r} is not {'an integer' if self.kind is int else 'a number'}") \
                from None
        if not math.isfinite(number):
            raise InputValidationError(f"{option} must be a finite number, got {value}")
        too_low = self.low is not None and (number <= self.low if self.open_low else number < self.low)
        too_high = self.high is not None and (number >= self.high if self.open_high else number > self.high)
        if too_low or too_high:
            raise InputValidationError(f"{option} must be {self._range()}, got {value}")
        return number


COUNT = Number(int, low=1)                   # batch sizes, limits, iterations, restarts, epochs, trials
SEED = Number(int, low=0)
ZERO_OR_MORE = Number(int, low=0)             # counts where 0 turns a step off (fine-tuning updates)
POSITIVE = Number(float, low=0.0, open_low=True)                          # step sizes, learning rates
NON_NEGATIVE = Number(float, low=0.0)                                     # weights
FRACTION = Number(float, low=0.0, high=1.0, open_low=True, open_high=True)  # rates such as a target FPR

dataset_option = click.option("--dataset", default="fashion_mnist", show_default=True,
                              help="fashion_mnist, mnist, cifar10 or svhn.")
seed_option = click.option("--seed", default=0, show_default=True, type=SEED, help="Random seed.")
limit_option = click.option("--limit", default=None, type=COUNT, help="Use only the first N examples.")


def registries():
    """(defenses, attacks): the registries, built-ins and installed plug-ins loaded (once, `tfpurify.registry.load`)."""
    from tfpurify import registry

    return registry.load()


def option_type(field):
    """The click type of a config field (`tfpurify.config.field_type`)."""
    from tfpurify.config import field_type

    return field_type(field)


def runtime_options(command):
    """Adds one option per runtime field of the registered defenses (`--clean-steps` ...), default unset.

    They change how a trained run is used, without retraining; a run whose defense has no such
    field rejects the option with one line.
    """
    import dataclasses

    seen = {}
    for name, (_, config_class) in sorted(registries()[0].items()):
        for field in dataclasses.fields(config_class):
            if field.metadata.get("runtime"):
                seen.setdefault(field.name, (field, []))[1].append(name)
    for key, (field, names) in sorted(seen.items(), reverse=True):
        command = click.option(f"--{key.replace('_', '-')}", f"runtime_{key}", type=option_type(field), default=None,
                               help=f"{'/'.join(names)} runs: overrides the trained run's {key} [default: the "
                                    f"run's own value; {field.default} unless it was trained with another].")(command)
    return command


def runtime_overrides(kwargs):
    """Pops the runtime options out of a command's keyword arguments: {field: value} of those given."""
    keys = [k for k in kwargs if k.startswith("runtime_")]
    return {k[len("runtime_"):]: v for k, v in ((k, kwargs.pop(k)) for k in keys) if v is not None}


def parse_list(text, what):
    """'fgsm, pgd' -> ['fgsm', 'pgd']; an empty list is an error."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise InputValidationError(f"{what} is empty")
    return items


def parse_float_list(text, what):
    """'0.1,0.2' -> [0.1, 0.2]; anything that is not a number is an error."""
    values = []
    for item in parse_list(text, what):
        try:
            values.append(float(item))
        except ValueError:
            raise InputValidationError(f"{what}: {item!r} is not a number") from None
    return values
