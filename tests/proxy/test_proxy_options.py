"""The proxy's limits objects refuse a limit that is not positive, naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from interlink.proxy import Limits, PoolLimits


@pytest.mark.parametrize("kind", [Limits, PoolLimits])
def test_every_limit_must_be_positive(kind: type[Limits] | type[PoolLimits]) -> None:
    """Zero is refused in every field: an integer field asks for an integer, any other for a
    finite number."""
    for field in dataclasses.fields(kind):
        rule = "an integer >= 1" if field.type == "int" else "a finite number > 0"
        with pytest.raises(ValueError, match=f"^'{field.name}' must be {rule}: 0$"):
            kind(**{field.name: 0})


def test_a_count_limit_refuses_a_fraction() -> None:
    """A byte count is a whole number."""
    with pytest.raises(ValueError, match=r"^'max_body_bytes' must be an integer >= 1: 1.5$"):
        Limits(max_body_bytes=1.5)  # type: ignore[arg-type]


def test_a_time_limit_refuses_infinity() -> None:
    """A timeout is finite."""
    with pytest.raises(ValueError, match=r"^'pool_timeout' must be a finite number > 0: inf$"):
        PoolLimits(pool_timeout=float("inf"))
