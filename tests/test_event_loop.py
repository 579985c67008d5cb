"""The loop switch of tests/conftest.py really changes the loop the tests run on."""

from __future__ import annotations

import asyncio

import pytest
from support import LOOP_VARIABLE, requested_loop, until


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_async_tests_run_on_the_requested_loop() -> None:
    """asyncio.run() builds the loop INTERLINK_TEST_LOOP names (uvloop's, or asyncio's own)."""
    module = asyncio.run(_loop_module())
    assert module.partition(".")[0] == requested_loop()


def test_an_unset_variable_means_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the variable the tests run on asyncio's own loop."""
    monkeypatch.delenv(LOOP_VARIABLE, raising=False)
    assert requested_loop() == "asyncio"


def test_an_unknown_loop_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt loop stops the run with a message naming the variable and the value."""
    monkeypatch.setenv(LOOP_VARIABLE, "uv-loop")
    with pytest.raises(
        pytest.UsageError, match="INTERLINK_TEST_LOOP must be one of asyncio, uvloop: 'uv-loop'"
    ):
        requested_loop()


async def _ready_after(calls: list[int], n: int) -> bool:
    calls.append(1)
    return len(calls) >= n


def test_until_polls_plain_and_async_conditions() -> None:
    """until() keeps asking until the condition holds, awaiting async ones."""
    plain: list[int] = []
    waiting: list[int] = []

    async def main() -> None:
        await until(lambda: plain.append(1) or len(plain) >= 3, within=5)
        await until(lambda: _ready_after(waiting, 3), within=5)

    asyncio.run(main())
    assert len(plain) == 3
    assert len(waiting) == 3


def test_until_fails_naming_what_it_waited_for() -> None:
    """A condition that never holds fails after ``within`` with the given description."""
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for the moon"):
        asyncio.run(until(lambda: False, within=0.05, what="the moon"))
