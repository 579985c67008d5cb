"""Sagas defined in code: an ordered list of steps, each an action and (usually) its undo.

::

    place_order = SagaDefinition(
        "place_order",
        [
            Step("create_order", create_order, cancel_order),
            Step("authorize_payment",
                 Send("payments.authorize", reply_topic="payments.replies", timeout=30.0),
                 refund_payment),
            Step("assign_courier", assign_courier, release_courier, policy=courier_pipeline),
            Step("notify", notify_customer),
        ],
        data_model=Order,
        timeout=600.0,
    )

A step's action (and compensation) is one of:

- a local call: a ``def`` or ``async def`` taking a ``StepContext`` (a ``def`` runs in a worker
  thread, so a blocking call does not stall every other saga);
- a synchronous remote call: the same, with ``policy=`` any interlink policy or ``Pipeline``
  (its ``acall`` wraps the call: timeout, retry, breaker, ...);
- an asynchronous command over the broker: ``Send(topic, reply_topic=...)``, which publishes a
  command and waits for the reply event, up to ``timeout``.

What the user must make idempotent: every action and compensation may run more than once (a
retry, or a crash after the effect but before the result was saved). ``ctx.idempotency_key``
is the same on every run of the same step of the same saga; pass it to the service that does
the work (an ``Idempotency-Key`` header, a unique column) so the second run changes nothing.
Compensations must also accept "there is nothing to undo": a step that failed may or may not
have taken effect, so its compensation runs too unless ``compensate_on_failure=False``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

from interlink.errors import TransportError
from interlink.resilience._validate import positive, positive_int
from interlink.resilience.retry import Retry
from interlink.saga.state import SagaShape, StepShape

__all__ = [
    "COMPENSATION_RETRY",
    "MAX_INTERRUPTIONS",
    "SEND_TIMEOUT",
    "STEP_RETRY",
    "TRANSIENT_ERRORS",
    "AsyncPolicy",
    "SagaDefinition",
    "Send",
    "Step",
    "StepContext",
    "StepFn",
]

#: The errors a step's action is retried on by default: the call may not have arrived or its
#: answer was lost (connection refused or reset, a timeout, an interlink ``TransportError``).
#: Anything else, a refusal above all ("card declined"), fails the step at once.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ConnectionError, TimeoutError, TransportError)
#: Retries of a failing action before the saga compensates: 2 retries, 0.1 s doubling, on
#: ``TRANSIENT_ERRORS`` only.
STEP_RETRY = Retry(
    retries=2, backoff=0.1, max_backoff=2.0, retry_on=TRANSIENT_ERRORS, name="saga.step"
)
#: Retries of a failing compensation before the saga is parked in NEEDS_ATTENTION: 10
#: retries, 0.5 s doubling to 30 s (about 2.5 minutes at most; see docs/consistency.md).
#: Undoing must not give up on a passing outage, so every error is retried.
COMPENSATION_RETRY = Retry(retries=10, backoff=0.5, max_backoff=30.0, name="saga.compensation")
#: Seconds a ``Send`` waits for its reply when no ``timeout`` is given.
SEND_TIMEOUT = 30.0
#: Crashes in the middle of one attempt before the saga is parked instead of retried.
MAX_INTERRUPTIONS = 5

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True, slots=True)
class StepContext:
    """What an action or compensation gets: who it runs for, and the key to deduplicate by."""

    saga_id: str
    saga: str
    step: str
    attempt: int
    idempotency_key: str
    data: Any
    results: Mapping[str, Any]
    compensating: bool = False


StepFn = Callable[[StepContext], Any]
"""A ``def`` or ``async def`` taking the ``StepContext``; what it returns must be JSON-able."""


class AsyncPolicy(Protocol):
    """Any interlink policy: ``Pipeline``, ``Retry``, ``CircuitBreaker``, ``Timeout``, ..."""

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class Send:
    """An asynchronous command over the broker: publish, then wait for the reply event.

    The command carries the headers ``saga-id``, ``saga-step``, ``saga-attempt``,
    ``idempotency-key`` and ``reply-to``; the service that handles it publishes its reply to
    ``reply_topic`` with the same ``saga-*`` headers and a JSON body ``{"ok": true, ...}`` or
    ``{"ok": false, "error": "..."}`` (``interlink.saga.reply_body`` builds one). ``reply_model``
    (a pydantic model or any callable) validates an ``ok`` reply; one that does not validate
    parks the saga. ``message`` builds the command body from the context (default: the saga's
    data); ``key`` orders it (default: the saga id).
    """

    topic: str
    _: KW_ONLY
    reply_topic: str
    timeout: float = SEND_TIMEOUT
    message: Callable[[StepContext], Any] | None = None
    key: Callable[[StepContext], str] | None = None
    reply_model: Any = None

    def __post_init__(self) -> None:
        positive("timeout", self.timeout)
        for name in ("topic", "reply_topic"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"'{name}' must be a non-empty string: {value!r}")


@dataclass(frozen=True, slots=True)
class Step:
    """One step: ``action`` to move forward, ``compensation`` to undo it (None: nothing to undo).

    ``retry`` decides whether and when a failed action runs again before the saga gives up and
    compensates; ``compensation_retry`` does the same for the undo, and when it gives up the
    saga is parked in NEEDS_ATTENTION. Left out (None), they are the saga's (``SagaDefinition``'s
    ``retry`` and ``compensation_retry``). A refusal (``StepFailed``, or a reply with
    ``"ok": false``) is never retried, whatever the policy says. ``timeout`` bounds one
    attempt (a ``Send`` waits for the shorter of it and its own ``timeout``); no action is
    waited for past the saga's deadline.
    ``policy`` wraps every local call of this step.
    """

    name: str
    action: StepFn | Send
    compensation: StepFn | Send | None = None
    _: KW_ONLY
    retry: Retry | None = None
    compensation_retry: Retry | None = None
    timeout: float | None = None
    policy: AsyncPolicy | None = None
    compensate_on_failure: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                "'name' must be 1-100 characters of [A-Za-z0-9_.-], starting with a letter or "
                f"'_': {self.name!r}"
            )
        if not (isinstance(self.action, Send) or callable(self.action)):
            raise ValueError(f"'action' must be a callable or a Send: {self.action!r}")
        comp = self.compensation
        if comp is not None and not (isinstance(comp, Send) or callable(comp)):
            raise ValueError(f"'compensation' must be a callable, a Send or None: {comp!r}")
        if self.timeout is not None:
            positive("timeout", self.timeout)

    @property
    def shape(self) -> StepShape:
        """What the state machine needs to know about this step."""
        return StepShape(self.name, self.compensation is not None, self.compensate_on_failure)


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    """A named, ordered list of steps, the model its input must validate against, and a
    deadline for the whole forward run (compensation is never cut short by it).

    ``retry`` and ``compensation_retry`` are the policies of every step that sets none itself:
    ``compensation_retry=Retry(3, backoff=0.2, max_backoff=1.0)`` parks a saga whose undo keeps
    failing after about 2 s instead of the default's minutes.
    """

    name: str
    steps: Sequence[Step]
    _: KW_ONLY
    data_model: Any = None
    timeout: float | None = None
    retry: Retry = STEP_RETRY
    compensation_retry: Retry = COMPENSATION_RETRY
    max_interruptions: int = MAX_INTERRUPTIONS
    shape: SagaShape = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                "'name' must be 1-100 characters of [A-Za-z0-9_.-], starting with a letter or "
                f"'_': {self.name!r}"
            )
        steps = tuple(self.steps)
        if not steps or not all(isinstance(s, Step) for s in steps):
            raise ValueError(f"'steps' must be a non-empty sequence of Step: {self.steps!r}")
        names = [s.name for s in steps]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"'steps' must have unique names: {duplicates} repeat")
        if self.timeout is not None:
            positive("timeout", self.timeout)
        positive_int("max_interruptions", self.max_interruptions)
        object.__setattr__(self, "steps", steps)
        shape = SagaShape(tuple(s.shape for s in steps), self.max_interruptions)
        object.__setattr__(self, "shape", shape)

    def retry_of(self, step: Step, *, compensating: bool) -> Retry:
        """The policy that decides whether ``step``'s failed action (or compensation) runs
        again: the step's own, else the saga's."""
        if compensating:
            return step.compensation_retry or self.compensation_retry
        return step.retry or self.retry

    def validate(self, data: Any) -> Any:
        """``data`` (as stored: JSON-able) checked and converted by ``data_model``."""
        model = self.data_model
        if model is None:
            return data
        validate = getattr(model, "model_validate", None)  # a pydantic model class
        return validate(data) if validate is not None else model(data)

    def dump(self, data: Any) -> Any:
        """``data`` in its stored, JSON-able form."""
        dump = getattr(data, "model_dump", None)
        return dump(mode="json") if dump is not None else data
