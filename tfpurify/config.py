"""Helpers shared by the frozen config dataclasses of classifiers and defenses."""

import dataclasses

from tfpurify.data import dataset_info
from tfpurify.errors import InputValidationError

__all__ = ["ConfigBase", "TrainingConfig", "runtime_field", "runtime_fields", "field_type", "field_value", "parse_value"]


def field_type(field):
    """The Python type of a config field: its annotation (`classifier: str = None`), else its default's type."""
    if field.type in (bool, int, float, str):
        return field.type
    if isinstance(field.default, (bool, int, float, str)):
        return type(field.default)
    return str


def parse_value(text, kind, what):
    """Text read as `kind` (bool, int, float or str); `what` names it in the one-line error."""
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        return kind(text)
    except ValueError:
        wanted = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise InputValidationError(f"{what}: {text!r} is not {wanted}") from None


def field_value(field, text):
    """A config field's value from text (`clean_steps=5`, `clean_only_detected=false`)."""
    return parse_value(text, field_type(field), field.name)


def runtime_field(default):
    """A config field that changes only how a trained run is used (e.g. a purifier's search
    steps): `tfpurify eval` can override it without retraining."""
    return dataclasses.field(default=default, metadata={"runtime": True})


def runtime_fields(config_class):
    """Names of a config class's `runtime_field`s."""
    return [f.name for f in dataclasses.fields(config_class) if f.metadata.get("runtime")]


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


@dataclasses.dataclass(frozen=True)
class TrainingConfig(ConfigBase):
    """Data and schedule fields every trained model (classifier or defense) shares."""

    dataset: str = "fashion_mnist"
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    val_fraction: float = 0.1
    limit: int = None  # the first N training examples; None (or 0, which clears a limit) for all of them
    seed: int = 0

    def __post_init__(self):
        dataset_info(self.dataset)  # raises DatasetUnavailableError for unknown names
        if self.limit == 0:
            object.__setattr__(self, "limit", None)
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 0):
            raise InputValidationError(f"limit must be a positive integer, 0 or None (all examples), got {self.limit!r}")
        self.require_positive("epochs", "batch_size", "learning_rate")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputValidationError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def input_shape(self):
        return dataset_info(self.dataset).input_shape

    @property
    def num_classes(self):
        return dataset_info(self.dataset).num_classes
