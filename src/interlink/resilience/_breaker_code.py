"""Build ``@breaker``'s wrapper for one function.

The wrapper repeats the closed fast path of ``call``/``acall`` rather than calling them (one
Python frame is a third of the overhead budget) and takes the function's own parameters (see
``_signature.py``), so a closed call costs a read of the state word, the call itself and a bump
of the success counter. It is generated once per decorated function, like the pipeline's drivers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from interlink.errors import CircuitOpenError
from interlink.resilience._breaker_state import _FAST_MASK, _OPEN, _STATE_BITS
from interlink.resilience._signature import forwarding

if TYPE_CHECKING:
    from interlink.resilience.breaker import CircuitBreaker

__all__ = ["decorate"]

_TEMPLATE = """\
{def_} {name}({params}):
    _il_g = _il_b._g
    if _il_g & {fast_mask}:
        if _il_g & {state_bits} == {open_} and (_il_now := _il_clock()) < _il_b._open_until:
            _il_next(_il_b._rejected)
            if _il_b._events:
                _il_b._emit_rejected(_il_now)
            raise _il_Open(_il_name, _il_b._open_until - _il_now, "open")
        return {await_}_il_b.{guarded}(_il_fn, {packed_args}, {packed_kwargs})
    try:
        _il_r = {await_}_il_fn({args})
    except _il_BaseException as _il_e:
        _il_b.on_error(_il_g, _il_e)
        raise
    _il_n = _il_next(_il_succ)
    if not (_il_n & _il_b._mask):
        _il_b._tick_success(_il_n + 1)
    return _il_r
"""


def decorate(
    breaker: CircuitBreaker, fn: Callable[..., Any], *, is_async: bool
) -> Callable[..., Any]:
    """``fn`` wrapped by ``breaker``."""
    fwd = forwarding(fn)
    text = _TEMPLATE.format(
        def_="async def" if is_async else "def",
        name=fwd.name,
        params=fwd.params,
        args=fwd.args,
        packed_args=fwd.packed_args,
        packed_kwargs=fwd.packed_kwargs,
        await_="await " if is_async else "",
        guarded="_acall_guarded" if is_async else "_call_guarded",
        fast_mask=_FAST_MASK,
        state_bits=_STATE_BITS,
        open_=_OPEN,
    )
    ns: dict[str, Any] = {
        **fwd.defaults,
        "_il_b": breaker,
        "_il_fn": fn,
        "_il_clock": breaker._clock,
        "_il_name": breaker.name,
        "_il_next": next,
        "_il_succ": breaker._succ_counter,
        "_il_Open": CircuitOpenError,
        "_il_BaseException": BaseException,
    }
    exec(compile(text, f"<interlink breaker {breaker.name!r}>", "exec"), ns)
    wrapper: Callable[..., Any] = functools.wraps(fn)(ns[fwd.name])
    return wrapper
