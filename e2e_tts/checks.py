"""Value checks of the config dataclasses (``__post_init__``).

A failed check is a :class:`FieldError` that names its field, so that the config loader
(:func:`e2e_tts.config.load_config`) can name the full key and the file or command line that set it.
"""

from __future__ import annotations

from typing import Any, Iterable


class FieldError(ValueError):
    """A dataclass field with a value it must not have."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def one_of(config: Any, field: str, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    value = getattr(config, field)
    if value not in choices:
        raise FieldError(field, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def each_one_of(config: Any, field: str, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    unknown = [value for value in getattr(config, field) if value not in choices]
    if unknown:
        raise FieldError(field, f"names unknown {unknown}; known: {', '.join(map(str, choices))}")


def at_least(config: Any, field: str, minimum: float) -> None:
    value = getattr(config, field)
    if not value >= minimum:  # NaN fails too
        raise FieldError(field, f"must be >= {minimum}, got {value!r}")


def positive(config: Any, field: str) -> None:
    value = getattr(config, field)
    if not value > 0:
        raise FieldError(field, f"must be > 0, got {value!r}")


def within(config: Any, field: str, low: float, high: float) -> None:
    value = getattr(config, field)
    if not low <= value <= high:
        raise FieldError(field, f"must be in [{low}, {high}], got {value!r}")
