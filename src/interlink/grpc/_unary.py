"""The ``grpc.aio`` unary-unary interceptor, and the call object its fast path returns.

grpc.aio runs every intercepted call in a task of its own and lets the caller await the call the
interceptors return once that task is done. An interceptor that awaits the call inside its task,
to see the outcome, makes the task wake up once more when the answer arrives before the caller
can: one more turn of the event loop on every call. So when a call needs nothing in between
(no span to record, the breaker CLOSED, and only retry, breaker and fallback in the pipeline),
the interceptor makes the first attempt itself and returns at once: a ``_Call`` wrapping grpc's
call, which the caller then awaits directly. The outcome is read where the caller awaits it:

- an answer is booked as the pipeline books it: the call's deposit in the retry budget, a
  success for the breaker, the fallback's memory;
- a failure hands the call to the pipeline, in the caller's task, under the call's deadline:
  its first attempt replays that failure (the breaker, the retry schedule and budget, the
  fallback and their events see what they would have seen), the retries are real attempts.

Every other call (a span to record, the breaker not CLOSED, a bulkhead, rate limiter, hedge,
timeout or a slow-call breaker in the pipeline) runs through the pipeline inside the
interceptor's task, awaiting each attempt there.

A ``_Call`` nobody awaits (nor asks for its status or metadata, nor gives a done callback) books
nothing and, after a failure, retries nothing; grpc cancels such a call when it is dropped.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Generator
from typing import Any

import grpc
import grpc.aio

from interlink.context import CORRELATION, CORRELATION_HEADER
from interlink.resilience.breaker import CircuitBreaker
from interlink.resilience.fallback import Fallback
from interlink.resilience.retry import Retry

from . import _metadata
from ._base import Base, call_scope
from ._metadata import attempt_timeout, outgoing
from .policy import Service
from .status import StatusError, classify

__all__ = ["AioUnaryInterceptor"]

_AioRpcError = grpc.aio.AioRpcError
_Details = grpc.aio.ClientCallDetails
#: ``tuple.__new__``, typed loosely: builds grpc's namedtuple ClientCallDetails without the
#: Python-level ``__new__`` of namedtuple
_new_tuple: Callable[..., Any] = tuple.__new__

_Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Any]


class AioUnaryInterceptor(Base, grpc.aio.UnaryUnaryClientInterceptor):
    """Runs each unary-unary call of a ``grpc.aio`` channel through ``service.pipeline``."""

    __slots__ = (
        "_breaker",
        "_clock",
        "_deposit",
        "_fast_ok",
        "_id_pairs",
        "_per_attempt",
        "_remember",
        "_timeout",
    )

    def __init__(self, service: Service, *, tracer_provider: object | None = None) -> None:
        super().__init__(service, tracer_provider=tracer_provider)
        breaker = retry = fallback = None
        fast = True
        for policy in service.pipeline.policies:
            if isinstance(policy, CircuitBreaker):
                breaker = policy
                if policy.options.guarded:  # a slow-call breaker times every call
                    fast = False
            elif isinstance(policy, Retry):
                retry = policy
            elif isinstance(policy, Fallback):
                fallback = policy
            else:  # a bulkhead, rate limiter, hedge or timeout acts while the call runs
                fast = False
        budget = None if retry is None else retry.budget
        #: whether calls may take the fast path (see the module docstring)
        self._fast_ok = fast
        self._breaker = breaker
        #: books a call's first attempt in the retry budget, given the call's start reading
        #: of the service's clock (a budget on another clock reads its own)
        self._deposit: Callable[[float], None] | None = None
        if budget is not None:
            deposit = budget.deposit
            self._deposit = deposit if budget.clock is service.clock else lambda _: deposit()
        self._remember = None if fallback is None else fallback.remember
        # the service's (frozen) figures, read once here rather than on every call
        self._timeout = service.timeout
        self._per_attempt = service.attempt_timeout
        self._clock = service.clock
        #: the metadata of a call in a request (its x-request-id only), kept for the next call
        #: in the same request
        self._id_pairs: tuple[tuple[str, str]] = ((CORRELATION_HEADER, ""),)

    async def intercept_unary_unary(
        self,
        continuation: _Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Propagate, then call through the pipeline; see the module docstring."""
        d: Any = client_call_details  # a namedtuple at run time, whatever its stubs say
        method, timeout, metadata, credentials, wait_for_ready = d
        c = self._fast_job(
            continuation, method, timeout, metadata, credentials, wait_for_ready, request
        )
        if c is None:
            return await self._through_pipeline(continuation, d, request)
        details = (method, c._timeout, c._metadata, credentials, wait_for_ready)
        try:
            c._call = await continuation(_new_tuple(_Details, details), request)
        except Exception as exc:  # not even started: the pipeline decides
            return await c.recover(exc)
        return c

    def _fast_job(  # noqa: PLR0917 - once per call, in the caller's own arguments
        self,
        continuation: _Continuation,
        method: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        request: Any,
    ) -> _Call | None:
        """The ``_Call`` of a call on the fast path, its first attempt not started yet
        (``_timeout``, ``_metadata``: the attempt's gRPC timeout and metadata), or None when the
        call must run through the pipeline. What settling the call needs and what going on
        after a failed first attempt needs are kept on it rather than in an object of their
        own: one object less per call."""
        if not self._fast_ok:
            return None
        # Spans.tracer(), its common answer (no SDK) read without a call
        trace = self._trace
        if (trace is None or trace._TRACER_PROVIDER is not None) and self._spans.tracer():
            return None
        breaker = self._breaker
        permit = 0
        if breaker is not None:
            # only a CLOSED breaker (not timing calls: checked in __init__): a failure replays
            # through the pipeline, which takes a permit of its own, so this one has nothing
            # to hand back then
            permit = breaker.closed_permit()
            if not permit:
                return None
        # the call's deadline: the sooner of the caller's timeout= and the service's
        # (Service.call_timeout(), inlined); the attempt's, the soonest of that, the deadline
        # in force and the per-attempt timeout
        limit = self._timeout
        if timeout is not None and (limit is None or timeout < limit):
            limit = timeout
        timeout, bound = attempt_timeout(self._per_attempt, limit)
        # outgoing(), its common answers read without a call: nothing to add (no trace context,
        # no correlation id), or in a request, only the id for a call without metadata
        cid = CORRELATION.get()
        if _metadata.current_context():
            metadata = outgoing(metadata)
        elif cid is not None:
            if metadata:
                metadata = outgoing(metadata)
            else:  # the last call's pairs, made again only in another request
                metadata = self._id_pairs
                if metadata[0][1] is not cid:
                    metadata = self._id_pairs = ((CORRELATION_HEADER, cid),)
        c = _Call()  # no __init__ of its own: made by the interpreter without a frame
        c._owner = self
        c._permit = permit
        c._continuation = continuation
        c._method = method
        c._timeout = timeout
        c._metadata = metadata
        c._credentials = credentials
        c._wait_for_ready = wait_for_ready
        c._request = request
        c._bound = bound
        c._start = self._clock()
        c._limit = limit
        c._awaited = c._settled_here = False
        c._call = c._outcome = c._callback = c._callbacks = None
        return c

    async def _through_pipeline(
        self,
        continuation: _Continuation,
        d: grpc.aio.ClientCallDetails,
        request: Any,
        holder: _Call | None = None,
    ) -> Any:
        """The call through the pipeline, each attempt awaited here (``holder._call``: the
        attempt in flight); returns the successful call or the fallback's answer."""
        idempotent, name = self._method(d.method)
        span = self._spans.start_client(name)
        metadata = outgoing(d.metadata, span)
        svc = self._service
        limit = svc.call_timeout(d.timeout)
        per_attempt = svc.attempt_timeout
        method, credentials, wait_for_ready = d.method, d.credentials, d.wait_for_ready

        async def attempt() -> Any:
            timeout, bound = attempt_timeout(per_attempt)
            details = _Details(method, timeout, metadata, credentials, wait_for_ready)
            try:
                call = await continuation(details, request)
                if holder is not None:
                    holder._call = call
                await call
            except _AioRpcError as err:
                raise _status_error(err, idempotent, bound) from None
            return call

        return await _run(svc, attempt, limit, span)

    async def _replay(self, c: _Call, first: BaseException) -> Any:
        """The rest of a call whose first attempt failed with ``first``: the pipeline, its first
        attempt replaying ``first``, under what is left of the call's deadline."""
        continuation = c._continuation
        assert continuation is not None  # cleared only once the call is settled
        c._continuation = None  # see _Call.__await__
        method, metadata = c._method, c._metadata
        credentials, wait_for_ready, request = c._credentials, c._wait_for_ready, c._request
        bound, start, limit = c._bound, c._start, c._limit
        idempotent = self._method(method)[0]
        if isinstance(first, _AioRpcError):
            first = _status_error(first, idempotent, bound)
        replay = [first]
        per_attempt = self._per_attempt

        async def attempt() -> Any:
            if replay:
                raise replay.pop()
            timeout, hit = attempt_timeout(per_attempt)
            retry = _new_tuple(_Details, (method, timeout, metadata, credentials, wait_for_ready))
            call = c._call = await continuation(retry, request)
            try:
                await call
            except _AioRpcError as err:
                raise _status_error(err, idempotent, hit) from None
            return call

        left = None if limit is None else limit - (self._clock() - start)
        result = await _run(self._service, attempt, left, None)
        if result is not None and result is c._call:
            return await result  # the answer of the attempt that succeeded
        c._call = None  # the fallback answered: there is no call to show
        if inspect.isawaitable(result):
            # a last good answer remembered by a call through the pipeline, which returns (and
            # so leaves in the fallback's memory) the finished call: its answer
            return await result
        return result


def _status_error(err: grpc.aio.AioRpcError, idempotent: bool, bound: bool) -> StatusError:
    """``classify`` for grpc.aio's error (``bound``: the attempt's deadline was the
    per-attempt timeout)."""
    return classify(
        err, err.code(), err.trailing_metadata(), idempotent=idempotent, attempt_timeout_hit=bound
    )


async def _run(svc: Service, attempt: Callable[[], Any], seconds: float | None, span: Any) -> Any:
    """``attempt`` through the service's pipeline, in ``call_scope``."""
    with call_scope(svc, seconds, span):
        return await svc.pipeline.acall(attempt)


def pending() -> _Call:
    """A ``_Call`` with nothing to settle here: its outcome (``_outcome``) is run by a task."""
    c = _Call()
    c._call = c._owner = None
    c._awaited = c._settled_here = False
    c._outcome = c._callback = c._callbacks = None
    return c


class _Call(grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    """A unary call on the fast path: grpc's call for the attempt in flight (see the module
    docstring). Awaiting it, or asking for its status, settles the outcome once. Made by
    ``AioUnaryInterceptor._fast_job`` (or ``pending``)."""

    __slots__ = (
        "_awaited",
        "_bound",
        "_call",
        "_callback",
        "_callbacks",
        "_continuation",
        "_credentials",
        "_limit",
        "_metadata",
        "_method",
        "_outcome",
        "_owner",
        "_permit",
        "_request",
        "_settled_here",
        "_start",
        "_timeout",
        "_wait_for_ready",
    )

    _call: Any
    #: the interceptor that settles the call (None: nothing to settle here, or settled)
    _owner: AioUnaryInterceptor | None
    #: the breaker's permit
    _permit: int
    # to go on after a failed first attempt: the continuation, the first attempt's method, gRPC
    # timeout, metadata, credentials and wait_for_ready, the request, whether the per-attempt
    # timeout bound the first attempt, the clock reading at its start, the call's timeout
    _continuation: _Continuation | None
    _method: Any
    _timeout: float | None
    _metadata: Any
    _credentials: Any
    _wait_for_ready: bool | None
    _request: Any
    _bound: bool
    _start: float
    _limit: float | None
    #: someone awaits the first attempt, and will settle the call
    _awaited: bool
    #: settled by the first attempt (answered or cancelled), the pipeline not involved
    _settled_here: bool
    #: after a failure, the outcome of the pipeline's run (shared by every awaiter)
    _outcome: asyncio.Future[Any] | None
    #: the done callbacks: the first (grpc's channel always gives one), then any others
    _callback: Callable[[Any], object] | None
    _callbacks: list[Callable[[Any], object]] | None

    def __await__(self) -> Generator[Any, None, Any]:
        if self._outcome is None:
            self._awaited = True
            try:
                response = yield from self._call.__await__()
            except Exception as exc:  # grpc's error for a status, or what else the call raised
                if self._owner is not None:  # the first to see the failure hands it over
                    return (yield from self.recover(exc).__await__())
                if self._outcome is None:  # settled here already (cancelled): as it ended
                    raise
            except BaseException:  # cancelled: settled, with nothing to book
                if not self._settled_here:
                    self._settled_here = True
                    owner = self._owner
                    if owner is not None and owner._breaker is not None:
                        owner._breaker.release(self._permit)  # cancelled: nothing to record
                    self._owner = self._continuation = None
                    self._fire()
                raise
            else:
                owner = self._owner
                if owner is not None:  # the first to see the answer books it
                    # the continuation (grpc's, with the interceptors) may hold grpc's call,
                    # which holds this one: a cycle that would wait for the collector
                    self._owner = self._continuation = None
                    self._settled_here = True
                    if owner._deposit is not None:
                        owner._deposit(self._start)  # dated at the first attempt's start
                    breaker = owner._breaker
                    if breaker is not None:
                        breaker.on_success(self._permit)
                    if owner._remember is not None:
                        owner._remember(response)
                    if self._callback is not None:  # grpc's channel always gives one
                        self._fire()
                return response
        return (yield from self._outcome)

    async def recover(self, first: BaseException) -> Any:
        """Run the pipeline after the first attempt failed with ``first`` (once)."""
        owner = self._owner
        assert owner is not None  # only a failed, unsettled call gets here
        self._owner = None
        breaker = owner._breaker
        if breaker is not None:  # the replay's first attempt takes a permit of its own
            breaker.release(self._permit)
        outcome = self._outcome = asyncio.get_running_loop().create_future()
        try:
            response = await owner._replay(self, first)
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
        callback, callbacks = self._callback, self._callbacks
        self._callback = self._callbacks = None
        if callback is not None:
            callback(self)
        if callbacks is not None:
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
        """Cancel the attempt in flight (none once the first attempt settled the call: grpc.aio
        cancels every intercepted call when it is dropped, so this runs once per call)."""
        if self._settled_here:
            return False
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
        elif self._callback is None:
            self._callback = callback
            self._call.add_done_callback(self._attempt_done)
        elif self._callbacks is None:
            self._callbacks = [callback]
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
