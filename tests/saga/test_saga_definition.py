"""Saga definitions: checked when built, defaults pinned."""

from __future__ import annotations

import pytest

from interlink.saga import (
    COMPENSATION_RETRY,
    STEP_RETRY,
    SagaDefinition,
    Send,
    Step,
)
from interlink.saga.definition import MAX_INTERRUPTIONS, SEND_TIMEOUT


def act(ctx: object) -> None:
    return None


def test_defaults_are_pinned() -> None:
    """Step retries, compensation retries and the reply timeout have documented defaults."""
    assert (STEP_RETRY.retries, COMPENSATION_RETRY.retries) == (2, 10)
    assert STEP_RETRY.describe()["backoff"] == 0.1
    assert COMPENSATION_RETRY.describe()["max_backoff"] == 30.0
    assert (SEND_TIMEOUT, MAX_INTERRUPTIONS) == (30.0, 5)
    step = Step("a", act)
    saga = SagaDefinition("s", [step])
    assert saga.retry_of(step, compensating=False) is STEP_RETRY
    assert saga.retry_of(step, compensating=True) is COMPENSATION_RETRY
    assert step.compensate_on_failure


def test_shape_tells_the_machine_about_compensations() -> None:
    """The definition's shape lists the steps and whether each has an undo."""
    d = SagaDefinition("s", [Step("a", act, act), Step("b", act, compensate_on_failure=False)])
    assert [(s.name, s.has_compensation, s.compensate_on_failure) for s in d.shape.steps] == [
        ("a", True, True),
        ("b", False, False),
    ]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Step("bad name", act), "'name' must be 1-100 characters of [A-Za-z0-9_.-]"),
        (lambda: Step("a", 42), "'action' must be a callable or a Send: 42"),  # type: ignore[arg-type]
        (lambda: Step("a", act, "x"), "'compensation' must be a callable, a Send or None: 'x'"),  # type: ignore[arg-type]
        (lambda: Step("a", act, timeout=0), "'timeout' must be a finite number > 0: 0"),
        (
            lambda: Send("t", reply_topic="r", timeout=-1),
            "'timeout' must be a finite number > 0: -1",
        ),
        (lambda: Send("", reply_topic="r"), "'topic' must be a non-empty string: ''"),
        (lambda: SagaDefinition("s", []), "'steps' must be a non-empty sequence of Step: []"),
        (
            lambda: SagaDefinition("s", [Step("a", act), Step("a", act)]),
            "'steps' must have unique names: ['a'] repeat",
        ),
        (
            lambda: SagaDefinition("s", [Step("a", act)], timeout=0.0),
            "'timeout' must be a finite number > 0: 0.0",
        ),
        (
            lambda: SagaDefinition("s", [Step("a", act)], max_interruptions=0),
            "'max_interruptions' must be an integer >= 1: 0",
        ),
    ],
)
def test_bad_definitions_name_the_field(build: object, message: str) -> None:
    """Every check says which field, which rule, which value."""
    with pytest.raises(ValueError) as info:
        build()  # type: ignore[operator]
    assert message in str(info.value)


def test_validate_and_dump_use_the_data_model() -> None:
    """A pydantic model validates stored data and dumps to JSON-able data."""
    from pydantic import BaseModel

    class Order(BaseModel):
        item: str

    d = SagaDefinition("s", [Step("a", act)], data_model=Order)
    assert d.validate({"item": "x"}) == Order(item="x")
    assert d.dump(Order(item="x")) == {"item": "x"}
    assert SagaDefinition("s", [Step("a", act)]).validate({"any": 1}) == {"any": 1}
