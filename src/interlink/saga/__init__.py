"""Durable, orchestrated sagas: steps with compensations, persisted before every next action.

::

    from interlink.saga import Orchestrator, SagaDefinition, Send, Step

    place_order = SagaDefinition("place_order", [
        Step("create_order", create_order, cancel_order),
        Step("authorize_payment", Send("payments.authorize", reply_topic="payments.replies"),
             refund_payment),
        Step("notify", notify_customer),
    ])
    async with Orchestrator("sqlite:///sagas.db", [place_order], publisher=broker) as orch:
        saga_id = await orch.start("place_order", order, saga_id=order.id)

A failed step (after its ``retry``) compensates every started step in reverse; compensations
retry with backoff and, when their ``compensation_retry`` gives up, park the saga in
``NEEDS_ATTENTION`` until someone resumes it (``interlink saga resume ID``). See
``docs/consistency.md``.
"""

from interlink.saga._runner import reply_body, reply_headers
from interlink.saga.definition import (
    COMPENSATION_RETRY,
    STEP_RETRY,
    SagaDefinition,
    Send,
    Step,
    StepContext,
)
from interlink.saga.errors import (
    CorruptSagaState,
    InvalidReply,
    OwnershipLost,
    SagaError,
    SagaNotFound,
    StepFailed,
    StepUnavailable,
)
from interlink.saga.orchestrator import Orchestrator, SagaStats
from interlink.saga.participant import CommandGuard, CommandRefused
from interlink.saga.state import SagaState, SagaStatus, StepState, StepStatus
from interlink.saga.stores import SagaStore

__all__ = [
    "COMPENSATION_RETRY",
    "STEP_RETRY",
    "CommandGuard",
    "CommandRefused",
    "CorruptSagaState",
    "InvalidReply",
    "Orchestrator",
    "OwnershipLost",
    "SagaDefinition",
    "SagaError",
    "SagaNotFound",
    "SagaState",
    "SagaStats",
    "SagaStatus",
    "SagaStore",
    "Send",
    "Step",
    "StepContext",
    "StepFailed",
    "StepState",
    "StepStatus",
    "StepUnavailable",
    "reply_body",
    "reply_headers",
]
