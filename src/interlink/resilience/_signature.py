"""Give a generated wrapper the wrapped function's own parameters.

A decorator written as ``def wrapper(*args, **kwargs)`` packs a tuple and a fresh dict on every
call and unpacks them again to call the function: on a breaker's closed path that is a third of
its whole cost. For a function with a plain signature (no ``*args``/``**kwargs``) the wrapper can
take the same parameters and forward them by name instead, as the ``decorator`` package does;
anything else keeps the packing form. Generated names start with ``_il_`` so a parameter cannot
shadow them.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Forwarding", "forwarding"]

PREFIX = "_il_"


@dataclass(frozen=True, slots=True)
class Forwarding:
    """Source fragments for a wrapper of one function."""

    name: str  # the wrapper's ``def`` name: TypeErrors for bad arguments then name the function
    params: str  # the wrapper's parameter list
    args: str  # the call's argument list
    packed_args: str  # the positional arguments as a tuple expression
    packed_kwargs: str  # the keyword arguments as a dict expression
    defaults: dict[str, Any]  # names the parameter list refers to


_GENERIC = Forwarding(
    name="wrapper",
    params=f"*{PREFIX}args, **{PREFIX}kwargs",
    args=f"*{PREFIX}args, **{PREFIX}kwargs",
    packed_args=f"{PREFIX}args",
    packed_kwargs=f"{PREFIX}kwargs",
    defaults={},
)


def forwarding(fn: Callable[..., Any]) -> Forwarding:
    """How a wrapper of ``fn`` takes and forwards its arguments.

    Only a plain function's own code says what it accepts: a wrapper made with
    ``functools.wraps`` may accept other arguments than the function it reports, and a
    ``__signature__`` may be set to anything, so those keep the packing form.
    """
    plain = inspect.isfunction(fn) or inspect.ismethod(fn)
    if not plain or getattr(fn, "__signature__", None) is not None:
        return _GENERIC
    try:
        sig = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return _GENERIC
    params: list[str] = []
    args: list[str] = []
    positional: list[str] = []
    keywords: list[str] = []
    defaults: dict[str, Any] = {}
    kinds = inspect.Parameter
    slash_done = star_done = False
    for i, p in enumerate(sig.parameters.values()):
        if (
            p.kind in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
            or p.name.startswith(PREFIX)
            or not p.name.isidentifier()
            or keyword.iskeyword(p.name)
        ):
            return _GENERIC
        if p.kind is not kinds.POSITIONAL_ONLY and not slash_done:
            if any(q.kind is kinds.POSITIONAL_ONLY for q in sig.parameters.values()):
                params.append("/")
            slash_done = True
        if p.kind is kinds.KEYWORD_ONLY and not star_done:
            params.append("*")
            star_done = True
        text = p.name
        if p.default is not kinds.empty:
            defaults[f"{PREFIX}d{i}"] = p.default
            text += f"={PREFIX}d{i}"
        params.append(text)
        if p.kind is kinds.KEYWORD_ONLY:
            args.append(f"{p.name}={p.name}")
            keywords.append(f"{p.name!r}: {p.name}")
        else:
            args.append(p.name)
            positional.append(p.name)
    if not slash_done and params:  # every parameter positional-only
        params.append("/")
    raw = getattr(fn, "__name__", "")
    name = raw if raw.isidentifier() and not keyword.iskeyword(raw) else "wrapper"
    if name.startswith(PREFIX):
        name = "wrapper"
    return Forwarding(
        name=name,
        params=", ".join(params),
        args=", ".join(args),
        packed_args="(" + "".join(f"{a}, " for a in positional) + ")",
        packed_kwargs="{" + ", ".join(keywords) + "}",
        defaults=defaults,
    )
