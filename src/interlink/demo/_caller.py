"""The demo's caller: one interlink pipeline around a one-line TCP request.

The request is the "transport": like every interlink transport it sizes its own timeout from
``remaining()``, so an attempt that runs out of time fails inside the breaker as
``DeadlineExceeded`` (a failure the breaker counts) instead of being cancelled from outside by
the pipeline's timeout (which the breaker cannot tell from a caller going away, so it records
nothing). It gives up ``TRANSPORT_MARGIN`` before the deadline so that it normally wins that
race, and reports a cancellation that arrives after the deadline as the timeout it is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from random import Random

from interlink.errors import DeadlineExceeded
from interlink.resilience.breaker import CircuitBreaker
from interlink.resilience.budget import RetryBudget
from interlink.resilience.deadline import expired, remaining
from interlink.resilience.events import Listener
from interlink.resilience.fallback import Fallback
from interlink.resilience.pipeline import Pipeline
from interlink.resilience.retry import Retry
from interlink.resilience.timeout import Timeout

__all__ = ["Answer", "BadAnswer", "build_pipeline", "request"]

HOST = "127.0.0.1"
TRANSPORT_MARGIN = 0.005
RETRIES = 2
RETRY_BASE = 0.02
BREAKER_WINDOW = 20
BREAKER_MINIMUM_CALLS = 10
BUDGET_RATIO = 0.2
BUDGET_MIN_PER_SECOND = 5.0


@dataclass(frozen=True, slots=True)
class Answer:
    """The downstream's answer to call ``call_id``; a cached one carries an older id."""

    call_id: int


class BadAnswer(ConnectionError):
    """The downstream hung up or said something other than ``OK <id>``."""


def build_pipeline(
    *,
    timeout: float,
    cooldown: float,
    rng: Random,
    on_breaker: Listener,
    on_retry: Listener,
) -> Pipeline:
    """Fallback (last good answer) -> timeout -> retry with a shared budget -> breaker."""
    breaker = CircuitBreaker(
        "downstream",
        window=BREAKER_WINDOW,
        window_type="count",
        minimum_calls=BREAKER_MINIMUM_CALLS,
        cooldown=cooldown,
        listeners=[on_breaker],
    )
    budget = RetryBudget(BUDGET_RATIO, BUDGET_MIN_PER_SECOND, name="downstream")
    retry = Retry(
        RETRIES, backoff=RETRY_BASE, budget=budget, rng=rng, name="downstream", listeners=[on_retry]
    )
    return Pipeline(
        fallback=Fallback(cache_last_success=True, name="downstream"),
        timeout=Timeout(timeout, name="downstream"),
        retry=retry,
        breaker=breaker,
        name="downstream",
    )


async def request(port: int, call_id: int) -> Answer:
    """Ask the downstream on ``port`` for ``call_id`` over a fresh connection."""
    left = remaining()
    limit = None if left is None else max(0.0, left - TRANSPORT_MARGIN)
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(b"GET %d\n" % call_id)
                line = await reader.readline()
            finally:
                writer.close()
    except TimeoutError as exc:
        raise DeadlineExceeded("no answer from the downstream", limit) from exc
    except asyncio.CancelledError:
        if not expired():
            raise
        # The pipeline's timeout fired in the same loop turn as ours (the loop was busy for
        # longer than the margin). Report what happened, a timeout, so the breaker counts the
        # attempt as failed rather than abandoned; the pipeline still ends the call.
        raise DeadlineExceeded("no answer from the downstream", limit) from None
    words = line.split()
    if len(words) != 2 or words[0] != b"OK" or words[1] != b"%d" % call_id:
        raise BadAnswer(f"unexpected answer from the downstream: {line!r}")
    return Answer(call_id)
