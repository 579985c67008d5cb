"""Argument checks shared by every policy's constructor, the one form of their
``describe()``, and the read-only view of what they checked (``ReadOnly``).

Each check raises ``ValueError`` naming the parameter, the rule and the value, e.g.
``'failure_rate_threshold' must be in (0, 1]: 1.5``; tests compare the text. ``True`` and
``False`` are refused wherever a number is expected: Python counts them as ints, but a threshold
of ``True`` is a mistake, not a 100 % setting.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import TYPE_CHECKING, Any, Generic, Never, Self, TypeVar, overload

__all__ = [
    "ReadOnly",
    "at_least",
    "described",
    "fraction",
    "non_negative",
    "positive",
    "positive_fields",
    "positive_int",
]

T = TypeVar("T")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fraction(name: str, value: float) -> float:
    """``value`` must be a number in (0, 1]."""
    if not _number(value) or not (0.0 < value <= 1.0):
        raise ValueError(f"'{name}' must be in (0, 1]: {value!r}")
    return float(value)


def positive(name: str, value: float) -> float:
    """``value`` must be a finite number > 0."""
    if not _number(value) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"'{name}' must be a finite number > 0: {value!r}")
    return float(value)


def non_negative(name: str, value: float) -> float:
    """``value`` must be a finite number >= 0."""
    if not _number(value) or not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"'{name}' must be a finite number >= 0: {value!r}")
    return float(value)


def at_least(name: str, value: int, minimum: int) -> int:
    """``value`` must be an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"'{name}' must be an integer >= {minimum}: {value!r}")
    return value


def positive_int(name: str, value: int) -> int:
    """``value`` must be an int >= 1."""
    return at_least(name, value, 1)


def positive_fields(options: Any) -> None:
    """Every field of the dataclass instance ``options`` must be > 0: an ``int`` field an
    integer >= 1, any other a finite number (a limits object, where 0 would mean "never")."""
    for field in dataclasses.fields(options):
        check = positive_int if field.type in ("int", int) else positive
        check(field.name, getattr(options, field.name))


def described(
    policy: str, name: str, source: object, settings: tuple[str, ...]
) -> dict[str, object]:
    """A policy's ``describe()``: ``{"policy": policy, "name": name}``, then each setting
    read from the attribute of that name on ``source`` (the policy or its options), keyed
    without a leading ``_``, so that every policy describes itself in the same form."""
    description: dict[str, object] = {"policy": policy, "name": name}
    for attribute in settings:
        description[attribute.lstrip("_")] = getattr(source, attribute)
    return description


class ReadOnly(property, Generic[T]):
    """A read-only attribute showing the private one a policy set in ``__init__``:
    ``ratio: ReadOnly[float] = ReadOnly("_ratio", "Retries allowed per first attempt.")``, in
    place of a ``@property`` that returns it (the getter is an ``operator.attrgetter``, so
    ``"options.name"`` reads a field of a field)."""

    def __init__(self, attribute: str, doc: str) -> None:
        super().__init__(operator.attrgetter(attribute), doc=doc)

    if TYPE_CHECKING:  # what the type checker sees: reads give a T, writes are refused

        @overload
        def __get__(self, instance: None, owner: type | None = None, /) -> Self: ...
        @overload
        def __get__(self, instance: object, owner: type | None = None, /) -> T: ...
        def __get__(self, instance: object, owner: type | None = None, /) -> Any: ...
        def __set__(self, instance: object, value: Never, /) -> None: ...
