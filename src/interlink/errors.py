"""Every error interlink raises on purpose, under one base class.

One ``except InterlinkError`` catches them all; the errors of the optional parts live in their
subpackage and are drawn here with its name (``saga.SagaError`` is
``interlink.saga.SagaError``). A second base in brackets is a built-in the error also is, so
code that knows nothing of interlink still catches it (``except TimeoutError``).
tests/test_errors.py checks that every exported error is drawn here, under its real parent.

::

    InterlinkError
    ├── RejectedError                  a policy refused to run the call at all
    │   ├── CircuitOpenError           the breaker is open (or forced open)
    │   ├── BulkheadFull               no free slot and no room (or time) in the queue
    │   ├── RateLimited                no token within the allowed wait
    │   └── BudgetExhausted            the retry budget refused one more attempt
    ├── DeadlineExceeded               the call's time ran out             [TimeoutError]
    ├── TransportError                 not delivered or not answered (refused, reset)
    ├── HTTPStatusError                ``response.raise_for_status()`` on a 4xx/5xx answer
    ├── NoInstancesError               discovery knows no healthy instance of a service
    ├── InvalidURLError                a store, registry or broker URL is malformed [ValueError]
    ├── grpc.StatusError               a gRPC call's non-OK status, as the pipeline's policies
    │   │                              see it (the caller is shown grpc's own error)
    │   └── grpc.DownstreamStatusError a status the callee's breaker counts
    ├── messaging.MessagingError       a broker, consumer or idempotency store failed
    │   ├── messaging.BackendUnavailable   the backend cannot be reached or used
    │   ├── messaging.PublishError     the broker did not confirm a message
    │   └── messaging.InProgress       another consumer holds the message's claim; try later
    ├── messaging.EnvelopeError        bytes that are not a message frame  [ValueError]
    ├── saga.SagaError                 the saga machinery refused or failed
    │   ├── saga.StepFailed            a participant refused the step: compensate
    │   │   └── saga.CommandRefused    a participant's answer to an expired or cancelled command
    │   ├── saga.StepUnavailable       a participant cannot do it now      [ConnectionError]
    │   ├── saga.InvalidReply          a reply that does not validate      [ValueError]
    │   ├── saga.OwnershipLost         another orchestrator took the saga over
    │   ├── saga.SagaNotFound          no saga with this id                [LookupError]
    │   └── saga.CorruptSagaState      a stored state cannot be read back  [ValueError]
    ├── proxy.ProxyError               a request the proxy answers itself (bad request, no route)
    └── gateway.ConfigError            the gateway's configuration is invalid [ValueError]

Rejections share a base class so a fallback can catch "the call never ran" in one clause.
Messages name the policy and the numbers behind the decision; the numbers are also attributes,
so code never has to parse text. Messages are built lazily in ``__str__``: a rejection is a hot
path when a downstream is down, and formatting a string nobody reads is wasted work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "BudgetExhausted",
    "BulkheadFull",
    "CircuitOpenError",
    "DeadlineExceeded",
    "HTTPStatusError",
    "InterlinkError",
    "InvalidURLError",
    "NoInstancesError",
    "RateLimited",
    "RejectedError",
    "TransportError",
]


class InterlinkError(Exception):
    """Base class of every error interlink raises on purpose."""

    __slots__ = ()


class RejectedError(InterlinkError):
    """A policy refused the call before it ran; nothing reached the downstream."""

    __slots__ = ()


class _Fields(InterlinkError):
    """An error made of named fields: a subclass is a ``dataclass(eq=False, repr=False)`` of
    them (its typed constructor), they are also its ``args`` in order (what ``repr`` and
    ``pickle`` use), and its message is ``_template`` formatted with them, built only when shown.
    Identity equality and the built-in ``repr`` stay: an error is an event, not a value."""

    _template: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.args = tuple(vars(self).values())

    def __str__(self) -> str:
        return self._template.format_map(vars(self))


class CircuitOpenError(RejectedError):
    """The breaker ``name`` rejects calls for ``remaining`` more seconds.

    Built as ``CircuitOpenError(name, remaining, state)``. No Python ``__init__``: while a
    downstream is down this is raised on every call, and a Python-level constructor would
    double the cost of a rejection. The fields are read from ``args``.
    """

    __slots__ = ()

    @property
    def name(self) -> str:
        """The breaker's name."""
        return str(self.args[0])

    @property
    def remaining(self) -> float | None:
        """Seconds until the breaker lets a trial call through; None when unknown."""
        left: float | None = self.args[1] if len(self.args) > 1 else None
        return left

    @property
    def state(self) -> str:
        """The state that rejected the call: ``open``, ``half_open`` or ``forced_open``."""
        return str(self.args[2]) if len(self.args) > 2 else "open"

    def __str__(self) -> str:
        if self.remaining is None:
            return f"circuit breaker '{self.name}' is {self.state}: calls are rejected"
        return (
            f"circuit breaker '{self.name}' is {self.state}: calls are rejected "
            f"for another {self.remaining:.3f}s"
        )


@dataclass(eq=False, repr=False)
class BulkheadFull(RejectedError, _Fields):
    """All ``max_concurrent`` slots are busy and the queue of ``max_queue`` is full or timed out."""

    name: str
    max_concurrent: int
    max_queue: int

    def __str__(self) -> str:
        return (
            f"bulkhead '{self.name}' is full: {self.max_concurrent} "
            f"call{'' if self.max_concurrent == 1 else 's'} running "
            f"and {self.max_queue} queued"
        )


@dataclass(eq=False, repr=False)
class RateLimited(RejectedError, _Fields):
    """No token was available; one is expected after ``retry_after`` seconds."""

    _template = (
        "rate limiter '{name}' is out of tokens ({rate:g}/s, burst {burst}): "
        "next token in {retry_after:.3f}s"
    )

    name: str
    rate: float
    burst: int
    retry_after: float


@dataclass(eq=False, repr=False)
class BudgetExhausted(RejectedError, _Fields):
    """The shared retry budget had no token left for another attempt.

    Raised ``from`` the error of the last attempt, which stays reachable as ``__cause__``.
    """

    _template = (
        "retry budget '{name}' is exhausted (ratio {ratio:g}, floor {min_per_second:g}/s): "
        "not retrying"
    )

    name: str
    ratio: float
    min_per_second: float


class DeadlineExceeded(InterlinkError, TimeoutError):
    """The call ran out of time: ``budget`` seconds were allowed (None when unknown)."""

    def __init__(self, what: str, budget: float | None = None) -> None:
        super().__init__(what, budget)
        self.what = what
        self.budget = budget

    def __str__(self) -> str:
        if self.budget is None:
            return f"deadline exceeded: {self.what}"
        return f"deadline exceeded: {self.what} (budget {self.budget:.3f}s)"


@dataclass(eq=False, repr=False)
class NoInstancesError(_Fields):
    """The resolver has no instance of ``service`` to offer; ``reason`` says why.

    ``reason`` is ``"unresolved"`` (the service was never fetched: call ``await
    resolver.apick(service)`` or ``await resolver.prefetch(service)`` first), ``"empty"`` (the
    registry lists no instance) or ``"ejected"`` (every instance is ejected or failing its health
    checks), ``"unreachable"`` (the first look-up failed; the backend's error is the
    ``__cause__``) or ``"unreadable"`` (the registry answered, but with something that is not a
    registry's answer; the error is the ``__cause__``). Like a rejection, nothing reached any
    downstream.
    """

    service: str
    reason: str = "empty"

    def __str__(self) -> str:
        if self.reason == "unresolved":
            return (
                f"no instances of service '{self.service}': it was never resolved "
                "(await resolver.apick() or resolver.prefetch() first)"
            )
        if self.reason == "unreachable":
            return f"no instances of service '{self.service}': the registry could not be reached"
        if self.reason == "unreadable":
            return f"no instances of service '{self.service}': the registry's answer was unreadable"
        if self.reason == "ejected":
            return f"no healthy instances of service '{self.service}': all are ejected or failing"
        return f"no instances of service '{self.service}' are registered"


class InvalidURLError(InterlinkError, ValueError):
    """A URL given to ``from_url`` is malformed; the message names the part (host, port,
    database, a query parameter) and the URL, so the mistake is found where it was written,
    not at first use."""


@dataclass(eq=False, repr=False)
class TransportError(_Fields):
    """A call to ``target`` failed below the protocol: ``kind`` is ``"connect"`` (no connection
    could be made: refused, unreachable; the request was not sent) or ``"transport"`` (the
    connection broke or the answer was malformed; the request may have been processed).

    Raised ``from`` the engine's own error (aiohttp, httpx), which stays the ``__cause__``.
    """

    target: str
    kind: str = "transport"
    detail: str = ""

    def __str__(self) -> str:
        what = "could not connect to" if self.kind == "connect" else "transport error calling"
        return f"{what} {self.target}" + (f": {self.detail}" if self.detail else "")


class HTTPStatusError(InterlinkError):
    """An HTTP answer with an error status, raised by ``response.raise_for_status()`` (and
    handed to fallbacks when a failure status was the last outcome); ``response`` is the answer.
    """

    def __init__(self, response: object, status: int, url: str = "") -> None:
        super().__init__(status, url)
        self.response = response
        self.status = status
        self.url = url

    def __str__(self) -> str:
        return f"HTTP {self.status} from {self.url}" if self.url else f"HTTP {self.status}"
