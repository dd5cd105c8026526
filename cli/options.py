"""Reusable click options and parsers shared by the commands."""

import click

from tfpurify.errors import InputValidationError

__all__ = ["dataset_option", "seed_option", "limit_option", "parse_list", "parse_float_list"]

dataset_option = click.option("--dataset", default="fashion_mnist", show_default=True,
                              help="fashion_mnist, mnist, cifar10 or svhn.")
seed_option = click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
limit_option = click.option("--limit", default=None, type=int, help="Use only the first N examples.")


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
