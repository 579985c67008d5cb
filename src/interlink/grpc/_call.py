"""The call object of the fast path (see ``_unary``): grpc's call for the attempt in flight, its
outcome booked once where it is awaited, a failure handed to the pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

if TYPE_CHECKING:
    from ._unary import AioUnaryInterceptor

_Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Any]
# what settling a fast call needs: the interceptor, the breaker's permit, and to go on after a
# failed first attempt: continuation, details, request, idempotent?, whether the per-attempt
# timeout bound the first attempt, the clock reading at its start, the call's timeout
_Job = tuple[
    "AioUnaryInterceptor",
    int,
    _Continuation,
    grpc.aio.ClientCallDetails,
    Any,
    bool,
    bool,
    float,
    float | None,
]


class _Call(grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    """A unary call on the fast path: grpc's call for the attempt in flight; see the module
    docstring of ``_unary``. Awaiting it, or asking for its status, settles the outcome once."""

    __slots__ = ("_awaited", "_call", "_callbacks", "_job", "_outcome", "_settled_here")

    def __init__(self, call: Any, job: _Job | None) -> None:
        self._call = call
        self._job: _Job | None = job
        #: someone awaits the first attempt, and will settle the call
        self._awaited = False
        #: settled by the first attempt (answered or cancelled), the pipeline not involved
        self._settled_here = False
        #: after a failure, the outcome of the pipeline's run (shared by every awaiter)
        self._outcome: asyncio.Future[Any] | None = None
        self._callbacks: list[Callable[[Any], object]] | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        if self._outcome is None:
            self._awaited = True
            try:
                response = yield from self._call.__await__()
            except Exception as exc:  # grpc's error for a status, or what else the call raised
                if self._job is not None:  # the first to see the failure hands it over
                    return (yield from self.recover(exc).__await__())
                if self._outcome is None:  # settled here already (cancelled): as it ended
                    raise
            except BaseException:  # cancelled: settled, with nothing to book
                if not self._settled_here:
                    self._settled_here = True
                    self._job = None
                    self._fire()
                raise
            else:
                job = self._job
                if job is not None:  # the first to see the answer books it
                    self._job = None  # it holds grpc's call in a cycle with this one
                    self._settled_here = True
                    owner = job[0]
                    if owner._deposit is not None:
                        owner._deposit()
                    breaker = owner._breaker
                    if breaker is not None:  # breaker.on_success(permit) of a CLOSED permit
                        n = next(breaker._succ_counter)
                        if not (n & breaker._mask):
                            breaker._tick_success(n + 1)
                    if owner._remember is not None:
                        owner._remember(response)
                    callbacks = self._callbacks
                    if callbacks is not None:  # grpc's channel always gives one
                        self._callbacks = None
                        for callback in callbacks:
                            callback(self)
                return response
        return (yield from self._outcome)

    async def recover(self, first: BaseException) -> Any:
        """Run the pipeline after the first attempt failed with ``first`` (once)."""
        job = self._job
        assert job is not None  # only a failed, unsettled call gets here
        self._job = None
        outcome = self._outcome = asyncio.get_running_loop().create_future()
        try:
            response = await job[0]._replay(self, job, first)
        except Exception as exc:
            outcome.set_exception(exc)
            outcome.exception()  # retrieved: an awaiter raises it, nobody need log it
            raise
        except BaseException:
            outcome.cancel()
            raise
        else:
            outcome.set_result(response)
        finally:
            self._fire()
        return response

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for callback in callbacks:
                callback(self)

    def _attempt_done(self, call: object) -> None:
        # the first attempt ended and a done callback waits: settle the call if nobody will
        if not self._awaited and not self.done():
            # the task settles the call and then fires the callbacks; they hold the call
            asyncio.ensure_future(self._settled())  # noqa: RUF006

    async def _settled(self) -> Any:
        """The grpc call whose status the caller sees, once the outcome is known (None when
        the fallback answered). Any other error is raised, as grpc.aio's intercepted calls do
        with an interceptor's error."""
        try:
            await self
        except grpc.aio.AioRpcError:
            pass  # the status is the answer
        except asyncio.CancelledError:
            if not self.cancelled():  # our own task is being cancelled
                raise
        return self._call

    def cancel(self) -> bool:
        """Cancel the attempt in flight."""
        call = self._call
        return call is not None and bool(call.cancel())

    def cancelled(self) -> bool:
        """Whether the attempt that settled the call was cancelled."""
        call = self._call
        return call is not None and bool(call.cancelled())

    def done(self) -> bool:
        """Whether the outcome is settled."""
        return self._settled_here or (self._outcome is not None and self._outcome.done())

    def add_done_callback(self, callback: Callable[[Any], object]) -> None:
        """Call ``callback(self)`` once the outcome is settled (settling it if need be)."""
        if self._settled_here or (self._outcome is not None and self._outcome.done()):
            callback(self)
        elif self._call is None and self._outcome is not None:  # run by a task: see _direct
            self._outcome.add_done_callback(lambda _: callback(self))
        elif self._callbacks is None:
            self._callbacks = [callback]
            self._call.add_done_callback(self._attempt_done)
        else:
            self._callbacks.append(callback)

    def time_remaining(self) -> float | None:
        """What is left of the attempt in flight's gRPC deadline."""
        call = self._call
        return None if call is None else call.time_remaining()

    async def initial_metadata(self) -> Any:
        """The settling attempt's initial metadata (None when the fallback answered)."""
        call = await self._settled()
        return None if call is None else await call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        """The settling attempt's trailing metadata (None when the fallback answered)."""
        call = await self._settled()
        return None if call is None else await call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        """The settling attempt's status code (OK when the fallback answered)."""
        call = await self._settled()
        return grpc.StatusCode.OK if call is None else await call.code()

    async def details(self) -> str:
        """The settling attempt's status details."""
        call = await self._settled()
        return "" if call is None else await call.details()

    async def debug_error_string(self) -> str | None:
        """The settling attempt's debug error string."""
        call = await self._settled()
        return None if call is None else await call.debug_error_string()

    async def wait_for_connection(self) -> None:
        """Wait until the attempt in flight is connected."""
        call = self._call
        if call is not None:
            await call.wait_for_connection()
