"""The blocking Client: same policies, propagation and classification as AsyncClient."""

from __future__ import annotations

import contextlib
import threading

import pytest
from http_support import FaultApp

from interlink import CircuitOpenError, DeadlineExceeded, State, deadline
from interlink.context import use_correlation_id
from interlink.errors import TransportError
from interlink.http import Client, ServicePolicies

FAST = ServicePolicies(
    timeout=2.0, retries=2, backoff=0.002, max_backoff=0.005, minimum_calls=4, cooldown=30
)


def test_get_propagates_correlation_id_and_deadline(faults: tuple[FaultApp, str]) -> None:
    """The sync client sends the same headers as the async one."""
    _, base = faults
    with Client(base, policies=FAST) as c, use_correlation_id("sync-1"), deadline(0.5):
        seen = c.get("/ok").json()
    assert seen["correlation_id"] == "sync-1"
    assert 0 < int(seen["headers"]["x-request-timeout-ms"]) <= 500


def test_503_is_retried(faults: tuple[FaultApp, str]) -> None:
    """Two 503s then 200."""
    _, base = faults
    with Client(base, policies=FAST) as c:
        assert c.get("/flaky/sync-retry?fail=2").json()["attempts"] == 3


def test_post_is_not_retried_and_returns_the_failure(faults: tuple[FaultApp, str]) -> None:
    """A POST without an Idempotency-Key is sent once."""
    app, base = faults
    with Client(base, policies=FAST) as c:
        assert c.post("/flaky/sync-post?fail=1", content=b"x").status == 503
    assert app.flaky["sync-post"] == 1


def test_refused_connection_raises_transport_error(refused_url: str) -> None:
    """Refused, retried, then TransportError."""
    with Client(refused_url, policies=FAST) as c, pytest.raises(TransportError) as info:
        c.get("/x")
    assert info.value.kind == "connect"


def test_hang_is_cut_by_the_deadline(faults: tuple[FaultApp, str]) -> None:
    """The attempt's socket timeout comes from the remaining deadline."""
    _, base = faults
    with Client(base, policies=FAST) as c, pytest.raises(DeadlineExceeded):
        c.get("/hang", timeout=0.1)


def test_breaker_is_shared_by_threads(faults: tuple[FaultApp, str]) -> None:
    """Failures from several threads open the one breaker of the service."""
    _, base = faults
    policies = ServicePolicies(retries=0, minimum_calls=8, cooldown=30)
    with Client(base, policies=policies) as c:

        def hammer() -> None:
            for _ in range(4):
                with contextlib.suppress(CircuitOpenError):
                    c.get("/status/500")

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        breaker = c.downstreams[0].breaker
        assert breaker is not None
        assert breaker.state is State.OPEN
        with pytest.raises(CircuitOpenError):
            c.get("/status/500")


def test_stale_answer_and_fallback(faults: tuple[FaultApp, str], refused_url: str) -> None:
    """Stale-if-error and call fallbacks work the same in the sync client."""
    app, base = faults
    policies = ServicePolicies(retries=0, stale_if_error=60, breaker=False)
    with Client(base, policies=policies) as c:
        app.down = False
        assert c.get("/toggle").source == "network"
        app.down = True
        try:
            assert c.get("/toggle").source == "stale"
        finally:
            app.down = False
    with Client(refused_url, policies=FAST) as c:
        answer = c.get("/x", fallback=lambda error: type(error).__name__)
    assert answer == "TransportError"


def test_hedging_needs_the_async_client() -> None:
    """A sync client refuses hedge_delay: hedging runs attempts side by side."""
    with pytest.raises(ValueError, match="'hedge_delay' needs AsyncClient"):
        Client(policies=ServicePolicies(hedge_delay=0.1))
    c = Client()
    with pytest.raises(ValueError, match="'hedge_delay' needs AsyncClient"):
        c.service("menu", policies=ServicePolicies(hedge_delay=0.1))
    c.close()


def test_service_client_methods(faults: tuple[FaultApp, str]) -> None:
    """A service client sends every verb to its URL."""
    _, base = faults
    with Client(policies=FAST) as c:
        menu = c.service("menu", url=base)
        statuses = [
            menu.get("/ok").status,
            menu.head("/ok").status,
            menu.options("/ok").status,
            menu.put("/ok", json={}).status,
            menu.delete("/ok").status,
            menu.patch("/ok").status,
            menu.post("ok").status,
        ]
    assert statuses == [200] * 7
    assert menu.name == "menu"
