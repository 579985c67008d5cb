"""Shared pieces of the saga tests: stores on both backends, a run helper, recorded steps."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from interlink.saga import SagaStore, StepContext

T = TypeVar("T")

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def run(coro: Coroutine[Any, Any, T], seconds: float = 20.0) -> T:
    """Run ``coro`` on a fresh loop, failing (not hanging) after ``seconds``; on a timeout
    the stacks of every task still alive are printed, to show what hung."""

    async def guarded() -> T:
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if not done:
            for other in asyncio.all_tasks():
                other.print_stack(file=sys.stderr)
            task.cancel()
        return await task

    return asyncio.run(guarded())


def unique_table() -> str:
    return f"sagas_{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def opened(url: str, table: str) -> AsyncIterator[SagaStore]:
    """The store, open, and dropped afterwards (tables are unique per test)."""
    store = SagaStore.from_url(url, table=table)
    await store.open()
    try:
        yield store
    finally:
        await store.drop()
        await store.close()


class Recorder:
    """Steps that record what ran, and fail on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str]] = []  # (phase, step, attempt, key)
        self.fail: dict[str, int] = {}  # step (or "comp:step") -> failures left (-1: forever)

    def _maybe_fail(self, name: str) -> None:
        left = self.fail.get(name, 0)
        if left:
            self.fail[name] = left - 1 if left > 0 else left
            raise RuntimeError(f"{name} failed")

    def action(self, name: str, result: Any = None) -> Any:
        async def act(ctx: StepContext) -> Any:
            self.calls.append(("action", ctx.step, ctx.attempt, ctx.idempotency_key))
            self._maybe_fail(name)
            return result

        return act

    def compensation(self, name: str) -> Any:
        def undo(ctx: StepContext) -> None:  # a def: runs in a worker thread
            self.calls.append(("compensation", ctx.step, ctx.attempt, ctx.idempotency_key))
            self._maybe_fail(f"comp:{name}")

        return undo

    def phases(self) -> list[tuple[str, str]]:
        return [(phase, step) for phase, step, _, _ in self.calls]
