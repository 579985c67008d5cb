"""Fallback: sources, their order, cache age, error filtering, sync and async paths."""

from __future__ import annotations

import asyncio

import pytest

from interlink.errors import BulkheadFull, RejectedError
from interlink.resilience.events import FallbackUsed, PolicyEvent
from interlink.resilience.fallback import Fallback
from interlink.testing import FakeClock


def fail(exc: BaseException) -> None:
    """A call that fails with ``exc``."""
    raise exc


async def afail(exc: BaseException) -> None:
    """An async call that fails with ``exc``."""
    raise exc


def sources(seen: list[PolicyEvent]) -> list[str]:
    """The sources named by the FallbackUsed events."""
    return [e.source for e in seen if isinstance(e, FallbackUsed)]


# -- configuration ------------------------------------------------------------------------------


def test_nothing_to_fall_back_to_is_refused() -> None:
    """A fallback without any source is a configuration error."""
    with pytest.raises(
        ValueError,
        match=r"^'value', 'handler' or 'cache_last_success' must be given: nothing to fall back",
    ):
        Fallback()


def test_handler_must_be_callable() -> None:
    """A handler that cannot be called is refused, with its value."""
    with pytest.raises(ValueError, match=r"^'handler' must be callable: 42$"):
        Fallback(handler=42)  # type: ignore[arg-type]


def test_value_and_handler_are_exclusive() -> None:
    """value would never be used next to a handler, so both together are refused."""
    with pytest.raises(ValueError, match=r"^'value' and 'handler' are exclusive"):
        Fallback([], handler=lambda e: [])


@pytest.mark.parametrize("max_age", [0, -1.0])
def test_max_age_must_be_positive(max_age: float) -> None:
    """A cache that is always stale is refused."""
    with pytest.raises(ValueError, match=rf"^'max_age' must be a finite number > 0: {max_age}$"):
        Fallback(cache_last_success=True, max_age=max_age)


def test_max_age_needs_the_cache() -> None:
    """max_age without cache_last_success would age nothing."""
    with pytest.raises(ValueError, match=r"^'max_age' needs 'cache_last_success=True'"):
        Fallback(0, max_age=5)


@pytest.mark.parametrize("on", [(), (ValueError, 3), "ValueError", BaseException])
def test_on_must_be_exception_types_or_a_predicate(on: object) -> None:
    """on accepts Exception subclasses or a callable, nothing else."""
    with pytest.raises(ValueError, match=r"^'on' must be an Exception subclass, a tuple of them"):
        Fallback(0, on=on)  # type: ignore[arg-type]


def test_cache_alone_is_valid() -> None:
    """cache_last_success=True alone is a complete configuration."""
    assert Fallback(cache_last_success=True).describe()["sources"] == ["cache"]


def test_describe_lists_the_configuration() -> None:
    """describe() names the sources in the order they are tried."""
    fb = Fallback(handler=repr, cache_last_success=True, max_age=60, on=KeyError, name="menu")
    assert fb.describe() == {
        "policy": "fallback",
        "name": "menu",
        "sources": ["cache", "handler"],
        "max_age": 60.0,
        "on": (KeyError,),
    }


# -- sources ------------------------------------------------------------------------------------


def test_success_passes_through() -> None:
    """A successful call returns its own result."""
    assert Fallback(0).call(sum, [1, 2]) == 3


def test_value_answers_a_failure() -> None:
    """With only a value, a failure returns the value."""
    assert Fallback("default").call(fail, OSError()) == "default"


def test_none_is_a_valid_value() -> None:
    """value=None is a fallback answer, not "no value"."""
    assert Fallback(None).call(fail, OSError()) is None


def test_handler_answers_with_the_error() -> None:
    """The handler receives the error and its result is the answer."""
    fb = Fallback(handler=lambda e: f"handled {e}")
    assert fb.call(fail, OSError("down")) == "handled down"


def test_cache_answers_with_the_last_success() -> None:
    """After a success, a failure returns that last good result."""
    fb = Fallback(cache_last_success=True)
    fb.call(list, "ab")
    assert fb.call(fail, OSError()) == ["a", "b"]


def test_cache_without_a_success_reraises() -> None:
    """A cache-only fallback with nothing cached lets the original error through."""
    error = OSError("first call failed")
    with pytest.raises(OSError) as info:
        Fallback(cache_last_success=True).call(fail, error)
    assert info.value is error


def test_cache_comes_before_handler() -> None:
    """A fresh cached value wins over the handler."""
    seen: list[PolicyEvent] = []
    fb = Fallback(handler=lambda e: "handler", cache_last_success=True, listeners=[seen.append])
    assert fb.call(fail, OSError()) == "handler"
    fb.call(str, "good")
    assert fb.call(fail, OSError()) == "good"
    assert sources(seen) == ["handler", "cache"]


def test_value_is_used_until_something_is_cached() -> None:
    """cache + value: the value covers failures before the first success."""
    fb = Fallback("static", cache_last_success=True)
    assert fb.call(fail, OSError()) == "static"
    fb.call(str, "live")
    assert fb.call(fail, OSError()) == "live"


def test_stale_cache_is_skipped() -> None:
    """A cached value older than max_age is not served; the next source answers."""
    clock = FakeClock()
    fb = Fallback("static", cache_last_success=True, max_age=30, clock=clock)
    fb.call(str, "live")
    clock.advance(30)
    assert fb.call(fail, OSError()) == "live"
    clock.advance(0.5)
    assert fb.call(fail, OSError()) == "static"


def test_stale_cache_alone_reraises() -> None:
    """With only a stale cache, the original error propagates."""
    clock = FakeClock()
    fb = Fallback(cache_last_success=True, max_age=1, clock=clock)
    fb.call(str, "live")
    clock.advance(2)
    with pytest.raises(OSError, match="down"):
        fb.call(fail, OSError("down"))


def test_last_success_reports_value_and_age() -> None:
    """last_success is (value, seconds since it was stored), None before any."""
    clock = FakeClock(10.0)
    fb = Fallback(cache_last_success=True, clock=clock)
    assert fb.last_success is None
    fb.call(str, "menu")
    clock.advance(4)
    assert fb.last_success == ("menu", 4.0)


def test_nothing_is_cached_without_cache_last_success() -> None:
    """remember() is a no-op unless caching is on."""
    fb = Fallback(0)
    fb.remember("x")
    fb.call(str, "y")
    assert fb.last_success is None


def test_handler_error_propagates_chained() -> None:
    """A handler that fails raises its own error, with the original as context."""

    def handler(e: Exception) -> str:
        raise LookupError("no fallback either")

    original = OSError("down")
    with pytest.raises(LookupError) as info:
        Fallback(handler=handler).call(fail, original)
    assert info.value.__context__ is original


# -- which errors -------------------------------------------------------------------------------


def test_on_types_filter_errors() -> None:
    """Only errors matching `on` fall back; others propagate."""
    fb = Fallback("x", on=(KeyError, OSError))
    assert fb.call(fail, FileNotFoundError()) == "x"
    with pytest.raises(ValueError, match="bad"):
        fb.call(fail, ValueError("bad"))


def test_on_predicate_filters_errors() -> None:
    """A predicate decides per error."""
    fb = Fallback("x", on=lambda e: "retryable" in str(e))
    assert fb.call(fail, OSError("retryable")) == "x"
    with pytest.raises(OSError, match="fatal"):
        fb.call(fail, OSError("fatal"))


def test_rejections_fall_back_by_default() -> None:
    """A policy rejection (the call never ran) is an Exception like any other."""
    assert Fallback("x", on=RejectedError).call(fail, BulkheadFull("b", 1, 0)) == "x"


def test_keyboard_interrupt_never_falls_back() -> None:
    """KeyboardInterrupt propagates even though a fallback is configured."""
    with pytest.raises(KeyboardInterrupt):
        Fallback("x").call(fail, KeyboardInterrupt())


def test_cancellation_never_falls_back() -> None:
    """CancelledError propagates out of acall."""
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(Fallback("x").acall(afail, asyncio.CancelledError()))


def test_recover_refuses_non_exceptions() -> None:
    """recover() re-raises a BaseException that is not an Exception."""
    with pytest.raises(SystemExit):
        Fallback("x").recover(SystemExit(2))


# -- primitives ---------------------------------------------------------------------------------


def test_remember_then_recover() -> None:
    """The pipeline's primitives: remember a success, recover from the next failure."""
    fb = Fallback(cache_last_success=True)
    fb.remember({"dish": "soup"})
    assert fb.recover(OSError()) == {"dish": "soup"}


def test_recover_reraises_when_nothing_applies() -> None:
    """recover() raises the very error it was given when no source applies."""
    error = KeyError("k")
    with pytest.raises(KeyError) as info:
        Fallback(0, on=OSError).recover(error)
    assert info.value is error


def test_arecover_awaits_an_async_handler() -> None:
    """arecover() runs an async handler."""

    async def handler(e: Exception) -> str:
        await asyncio.sleep(0)
        return f"async {type(e).__name__}"

    assert asyncio.run(Fallback(handler=handler).arecover(OSError())) == "async OSError"


def test_recover_with_async_handler_is_a_type_error() -> None:
    """The sync path cannot run an async handler and says so."""

    async def handler(e: Exception) -> str:
        return "never"

    with pytest.raises(TypeError, match=r"^fallback 'fallback' has an async handler"):
        Fallback(handler=handler).call(fail, OSError())


def test_handler_returning_a_coroutine_is_a_type_error_in_sync_code() -> None:
    """A sync handler that returns a coroutine is refused on the sync path (and closed)."""

    async def compute() -> str:
        return "never"

    fb = Fallback(handler=lambda e: compute())
    with pytest.raises(TypeError, match=r"handler returned an awaitable"):
        fb.recover(OSError())


# -- async --------------------------------------------------------------------------------------


def test_acall_uses_sync_and_async_handlers() -> None:
    """acall accepts either kind of handler."""

    async def ahandler(e: Exception) -> str:
        return "async"

    async def main() -> list[object]:
        return [
            await Fallback(handler=lambda e: "sync").acall(afail, OSError()),
            await Fallback(handler=ahandler).acall(afail, OSError()),
        ]

    assert asyncio.run(main()) == ["sync", "async"]


def test_acall_caches_and_serves_the_last_success() -> None:
    """acall remembers successes and serves them on failure."""
    fb = Fallback(cache_last_success=True)

    async def ok() -> str:
        return "fresh"

    async def main() -> list[object]:
        return [await fb.acall(ok), await fb.acall(afail, OSError())]

    assert asyncio.run(main()) == ["fresh", "fresh"]


def test_acall_reraises_unhandled_errors() -> None:
    """acall lets errors outside `on` through."""
    with pytest.raises(ValueError, match="v"):
        asyncio.run(Fallback(0, on=OSError).acall(afail, ValueError("v")))


# -- decorator and events -----------------------------------------------------------------------


def test_decorates_def_and_async_def() -> None:
    """@fallback keeps the function's kind and name on both kinds of function."""
    fb = Fallback("fallback")

    @fb
    def sync(ok: bool) -> str:
        """Doc."""
        if not ok:
            raise OSError
        return "sync"

    @fb
    async def asy(ok: bool) -> str:
        if not ok:
            raise OSError
        return "async"

    assert (sync(True), sync(False), sync.__name__, sync.__doc__) == (
        "sync",
        "fallback",
        "sync",
        "Doc.",
    )
    assert asyncio.iscoroutinefunction(asy)
    assert (asyncio.run(asy(True)), asyncio.run(asy(False))) == ("async", "fallback")


def test_fallback_used_event_names_source_and_error() -> None:
    """Listeners see which source answered which kind of error, and when."""
    clock = FakeClock(3.0)
    seen: list[PolicyEvent] = []
    fb = Fallback(0, name="menu", clock=clock, listeners=[seen.append])
    fb.call(fail, TimeoutError())
    assert seen == [
        FallbackUsed(kind="fallback", name="menu", at=3.0, source="value", error="TimeoutError")
    ]


def test_no_event_when_nothing_answers() -> None:
    """An error that propagates is not reported as a fallback."""
    seen: list[PolicyEvent] = []
    fb = Fallback(cache_last_success=True, listeners=[seen.append])
    with pytest.raises(OSError):
        fb.call(fail, OSError())
    assert seen == []
