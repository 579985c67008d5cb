"""``with`` and ``async with`` for objects that close: ``__enter__``/``__aenter__`` return the
object, ``__exit__``/``__aexit__`` call its ``close()``/``aclose()`` (what
``contextlib.AbstractContextManager`` leaves to each class); for objects that connect in
``open()`` and close in ``aclose()``, or run between ``start()`` and ``stop()``, ``async with``
calls the two."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["AsyncClosing", "AsyncOpening", "AsyncStarting", "Closing"]


class Closing:
    """``with obj:`` closes ``obj`` on the way out."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosing:
    """``async with obj:`` awaits ``obj.aclose()`` on the way out."""

    __slots__ = ()

    async def aclose(self) -> None:
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncOpening(AsyncClosing):
    """``async with obj:`` awaits ``obj.open()`` on the way in and ``obj.aclose()`` on the way
    out (a store, an orchestrator, a relay: objects that connect before they work)."""

    __slots__ = ()

    async def open(self) -> None:
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    async def __aenter__(self) -> Self:
        await self.open()
        return self


class AsyncStarting:
    """``async with obj:`` awaits ``obj.start()`` on the way in and ``obj.stop()`` on the way
    out (a server, a registration, a broker: objects that run between the two)."""

    __slots__ = ()

    async def start(self) -> object:
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    async def stop(self) -> None:
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
