"""Helpers shared by the frozen config dataclasses of classifiers and defenses."""

import dataclasses

from tfpurify.errors import InputValidationError

__all__ = ["ConfigBase"]


class ConfigBase:
    """Mixin for frozen config dataclasses: loading from JSON dicts and common validation."""

    @classmethod
    def from_dict(cls, d):
        """Builds the config from a dict, ignoring keys it does not know (e.g. `kind`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    def require_positive(self, *fields):
        """Raises InputValidationError unless every named field is > 0."""
        for field in fields:
            value = getattr(self, field)
            if value is None or value <= 0:
                raise InputValidationError(f"{field} must be > 0, got {value}")
