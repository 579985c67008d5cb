"""AsyncClient against real loopback servers: propagation, classification, retries, breaker,
fallbacks, timeouts and instance picking."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from http_support import FaultApp

from interlink import CircuitOpenError, DeadlineExceeded, State, deadline
from interlink.context import use_correlation_id
from interlink.errors import BudgetExhausted, HTTPStatusError, TransportError
from interlink.http import AsyncClient, Response, ServicePolicies

T = TypeVar("T")

FAST = ServicePolicies(
    timeout=2.0,
    retries=2,
    backoff=0.002,
    max_backoff=0.005,
    minimum_calls=4,
    breaker_window=5.0,
    cooldown=0.2,
)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def client(base: str, policies: ServicePolicies = FAST, **kw: Any) -> AsyncClient:
    return AsyncClient(base, policies=policies, **kw)


# ------------------------------------------------------------------------ answers and headers


def test_get_returns_the_answer(faults: tuple[FaultApp, str]) -> None:
    """A 200 comes back as a Response with status, headers, bytes and JSON."""
    _, base = faults

    async def go() -> Response:
        async with client(base) as c:
            return await c.get("/ok", params={"q": "x"})

    r = run(go)
    assert r.status == 200
    assert r.is_success
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["query"] == {"q": "x"}
    assert r.source == "network"
    assert "GET" in repr(r)


def test_correlation_id_and_deadline_are_propagated(faults: tuple[FaultApp, str]) -> None:
    """The context's correlation id and the remaining deadline ride in the headers."""
    _, base = faults

    async def go() -> dict[str, Any]:
        async with client(base) as c:
            with use_correlation_id("req-42"), deadline(0.8):
                return (await c.get("/ok")).json()  # type: ignore[no-any-return]

    seen = run(go)
    assert seen["headers"]["x-request-id"] == "req-42"
    assert seen["correlation_id"] == "req-42"
    assert 0 < int(seen["headers"]["x-request-timeout-ms"]) <= 800
    assert 0 < seen["remaining"] <= 0.8


def test_without_a_correlation_id_the_server_assigns_one(faults: tuple[FaultApp, str]) -> None:
    """Outside a request no id is invented by the client; the callee's middleware assigns one."""
    _, base = faults

    async def go() -> Response:
        async with client(base) as c:
            return await c.get("/ok")

    r = run(go)
    assert "x-request-id" not in r.json()["headers"]
    assert len(r.headers["x-request-id"]) == 32


def test_callers_own_headers_win_over_the_context_but_not_over_the_deadline(
    faults: tuple[FaultApp, str],
) -> None:
    """A caller's own ``X-Request-Id`` (any case) is sent, once, instead of the context's; a
    caller's own deadline header is replaced by the time the attempt really has."""
    app, base = faults

    async def go() -> dict[str, Any]:
        async with client(base) as c:
            with use_correlation_id("from-context"), deadline(0.5):
                await c.get("/ok", headers={"X-Request-Id": "mine", "X-Request-Timeout-Ms": "9"})
                return dict(app.last_headers)

    seen = run(go)
    assert seen["x-request-id"] == "mine"
    assert 9 < int(seen["x-request-timeout-ms"]) <= 500


def test_service_client_paths_join_like_urls(faults: tuple[FaultApp, str]) -> None:
    """A service client's path joins ``service://name`` as a URL would: with or without the
    leading slash, with a query in the path or in ``params``, a fragment left unsent."""
    _, base = faults

    async def go() -> list[dict[str, str]]:
        async with AsyncClient(policies=FAST) as c:
            menu = c.service("menu", url=base + "/")
            return [
                (await menu.get(path, params=params)).json()["query"]
                for path, params in (
                    ("ok", None),
                    ("ok?a=1", None),
                    ("/ok?a=1", {"b": "2"}),
                    ("ok?c=3#top", None),
                    ("ok?c=3#top", {"d": "4"}),
                )
            ]

    assert run(go) == [{}, {"a": "1"}, {"a": "1", "b": "2"}, {"c": "3"}, {"c": "3", "d": "4"}]


def test_every_answer_gives_its_connection_back(faults: tuple[FaultApp, str]) -> None:
    """Answers are read in full and their connection returned, failures and HEAD included:
    with one connection, a run of mixed calls does not wait for a free one."""
    _, base = faults

    async def go() -> list[int]:
        policies = ServicePolicies(retries=1, backoff=0.001, max_backoff=0.001, breaker=False)
        async with client(base, policies, max_connections=1) as c:
            statuses = []
            for _ in range(3):
                for path in ("/ok", "/status/404", "/status/503", "/ok"):
                    statuses.append((await c.get(path)).status)
                statuses.append((await c.head("/ok")).status)
            return statuses

    async def bounded() -> list[int]:
        return await asyncio.wait_for(go(), 10)

    assert run(bounded) == [200, 404, 503, 200, 200] * 3


def test_an_unparsable_url_is_a_transport_error() -> None:
    """A URL the URL parser refuses fails the call like any transport error, unsent."""

    async def go() -> None:
        async with AsyncClient(policies=ServicePolicies(retries=0)) as c:
            with pytest.raises(TransportError, match="transport"):
                await c.get("http://[::1/x")

    run(go)


def test_json_body_is_sent_with_its_content_type(faults: tuple[FaultApp, str]) -> None:
    """``json=`` serialises the body and sets ``content-type: application/json``."""
    _app, base = faults

    async def go() -> Response:
        async with client(base) as c:
            return await c.post("/ok", json={"a": 1})

    r = run(go)
    assert r.json()["method"] == "POST"
    assert r.json()["headers"]["content-type"] == "application/json"


# ------------------------------------------------------------------------ classification


def test_503_is_retried_until_success(faults: tuple[FaultApp, str]) -> None:
    """Two 503s then a 200: the caller sees the 200, the budget paid two retries."""
    _, base = faults

    async def go() -> tuple[Response, Any]:
        async with client(base) as c:
            r = await c.get("/flaky/retry-ok?fail=2")
            return r, c.downstreams[0].budget

    r, budget = run(go)
    assert r.status == 200
    assert r.json()["attempts"] == 3
    assert budget.snapshot().retries == 2


def test_exhausted_retries_return_the_last_failure_answer(faults: tuple[FaultApp, str]) -> None:
    """Like Polly's last outcome: after 1 + 2 attempts the final 503 is returned, not raised."""
    app, base = faults
    before = app.hits["/status/503"]

    async def go() -> Response:
        async with client(base) as c:
            return await c.get("/status/503")

    r = run(go)
    assert r.status == 503
    assert r.is_failure
    assert app.hits["/status/503"] - before == 3
    with pytest.raises(HTTPStatusError, match="HTTP 503"):
        r.raise_for_status()


@pytest.mark.parametrize("code", [404, 400, 422])
def test_other_4xx_are_neither_retried_nor_counted(faults: tuple[FaultApp, str], code: int) -> None:
    """The caller's mistakes never open the callee's breaker and are sent once."""
    app, base = faults
    before = app.hits[f"/status/{code}"]

    async def go() -> Any:
        async with client(base) as c:
            for _ in range(10):
                assert (await c.get(f"/status/{code}")).status == code
            return c.downstreams[0].breaker

    breaker = run(go)
    assert app.hits[f"/status/{code}"] - before == 10
    assert breaker.state is State.CLOSED
    assert breaker.metrics.failures_total == 0


@pytest.mark.parametrize("code", [408, 429, 500, 502])
def test_408_429_and_5xx_are_retried(faults: tuple[FaultApp, str], code: int) -> None:
    """Each failure status is retried once here, then the request succeeds."""
    _, base = faults

    async def go() -> Response:
        async with client(base) as c:
            return await c.get(f"/flaky/code-{code}?fail=1&code={code}")

    assert run(go).json()["attempts"] == 2


def test_post_is_not_retried(faults: tuple[FaultApp, str]) -> None:
    """A POST may have been processed: its 503 is returned after one attempt."""
    app, base = faults

    async def go() -> Response:
        async with client(base) as c:
            return await c.post("/flaky/post-once?fail=1", json={})

    assert run(go).status == 503
    assert app.flaky["post-once"] == 1


def test_post_with_an_idempotency_key_is_retried(faults: tuple[FaultApp, str]) -> None:
    """An Idempotency-Key makes a POST safe to send again."""
    _, base = faults

    async def go() -> Response:
        async with client(base) as c:
            return await c.post(
                "/flaky/post-key?fail=1", json={}, headers={"Idempotency-Key": "k1"}
            )

    assert run(go).json()["attempts"] == 2


def test_retry_after_is_honoured(faults: tuple[FaultApp, str]) -> None:
    """A 503 with ``Retry-After: 1`` is retried after one second, not the 2 ms backoff."""
    _, base = faults

    async def go() -> tuple[Response, float]:
        async with client(base) as c:
            t0 = time.monotonic()
            r = await c.get("/flaky/after?fail=1&retry_after=1")
            return r, time.monotonic() - t0

    r, took = run(go)
    assert r.status == 200
    assert 0.95 <= took < 1.9


def test_retry_after_beyond_the_deadline_is_not_waited_for(faults: tuple[FaultApp, str]) -> None:
    """With 0.5 s left, a ``Retry-After: 1`` ends the call at once with the 503."""
    app, base = faults

    async def go() -> tuple[Response, float]:
        async with client(base) as c:
            t0 = time.monotonic()
            r = await c.get("/flaky/late?fail=1&retry_after=1", timeout=0.5)
            return r, time.monotonic() - t0

    r, took = run(go)
    assert r.status == 503
    assert took < 0.5
    assert app.flaky["late"] == 1


def test_retry_after_beyond_max_retry_after_is_not_waited_for(
    faults: tuple[FaultApp, str],
) -> None:
    """A server asking for more than ``max_retry_after`` is answered with its own 503."""
    app, base = faults
    policies = ServicePolicies(max_retry_after=0.5, backoff=0.001, max_backoff=0.001)

    async def go() -> Response:
        async with client(base, policies) as c:
            return await c.get("/flaky/too-long?fail=1&retry_after=30")

    assert run(go).status == 503
    assert app.flaky["too-long"] == 1


# ------------------------------------------------------------------------ transport failures


def test_connection_refused_raises_transport_error(refused_url: str) -> None:
    """A refused connection is retried within the budget, then raised as TransportError."""

    async def go() -> Any:
        async with client(refused_url) as c:
            with pytest.raises(TransportError) as info:
                await c.get("/x")
            return info.value, c.downstreams[0].budget

    error, budget = run(go)
    assert error.kind == "connect"
    assert "could not connect" in str(error)
    assert budget.snapshot().retries == 2


def test_connection_reset_raises_transport_error(reset_url: str) -> None:
    """A connection reset mid-request is a transport failure."""

    async def go() -> TransportError:
        async with client(reset_url) as c:
            with pytest.raises(TransportError) as info:
                await c.get("/x")
            return info.value

    assert run(go).kind == "transport"


def test_a_hanging_server_is_cut_off_by_the_attempt_timeout(faults: tuple[FaultApp, str]) -> None:
    """Each attempt gets ``attempt_timeout``; the breaker counts the timeouts as failures."""
    _, base = faults
    policies = ServicePolicies(
        timeout=1.0, attempt_timeout=0.05, retries=1, backoff=0.001, max_backoff=0.001
    )

    async def go() -> tuple[float, Any]:
        async with client(base, policies) as c:
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await c.get("/hang")
            return time.monotonic() - t0, c.downstreams[0].breaker

    took, breaker = run(go)
    assert 0.09 <= took < 0.9  # two 50 ms attempts, not the 1 s deadline
    assert breaker.metrics.failures_total == 2


def test_the_service_timeout_counts_as_a_failure(faults: tuple[FaultApp, str]) -> None:
    """The service's own timeout ends a hang; the breaker counts it as the callee's failure."""
    _, base = faults
    policies = ServicePolicies(timeout=0.1, retries=0)

    async def go() -> tuple[float, Any]:
        async with client(base, policies) as c:
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await c.get("/hang")
            return time.monotonic() - t0, c.downstreams[0].breaker

    took, breaker = run(go)
    assert 0.09 <= took < 0.9
    assert breaker.metrics.failures_total == 1


def test_a_cancelled_call_is_not_a_failure(faults: tuple[FaultApp, str]) -> None:
    """The caller cancelling its own call is neither a timeout nor a failure of the callee."""
    _, base = faults

    async def go() -> Any:
        async with client(base) as c:
            task = asyncio.create_task(c.get("/hang"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return c.downstreams[0].breaker

    assert run(go).metrics.failures_total == 0


def test_the_call_timeout_bounds_the_whole_call(faults: tuple[FaultApp, str]) -> None:
    """``timeout=`` on the call shrinks the deadline: a hang ends after ~0.1 s."""
    _, base = faults

    async def go() -> float:
        async with client(base) as c:
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await c.get("/hang", timeout=0.1)
            return time.monotonic() - t0

    assert 0.09 <= run(go) < 0.9


def test_an_expired_deadline_sends_nothing(faults: tuple[FaultApp, str]) -> None:
    """With no time left the request is not sent: the callee would refuse it anyway."""
    app, base = faults
    before = app.hits["/ok"]

    async def go() -> None:
        async with client(base) as c:
            with deadline(0.0), pytest.raises(DeadlineExceeded):
                await c.get("/ok")

    run(go)
    assert app.hits["/ok"] == before


# ------------------------------------------------------------------------ breaker and fallbacks


def test_breaker_opens_and_rejects_without_calling(faults: tuple[FaultApp, str]) -> None:
    """After enough failures the breaker opens and later calls never reach the server."""
    app, base = faults
    policies = ServicePolicies(retries=0, minimum_calls=4, cooldown=30.0)

    async def go() -> Any:
        async with client(base, policies) as c:
            for _ in range(4):
                assert (await c.get("/status/500")).status == 500
            before = app.hits["/status/500"]
            with pytest.raises(CircuitOpenError):
                await c.get("/status/500")
            assert app.hits["/status/500"] == before
            return c.downstreams[0].breaker

    assert run(go).state is State.OPEN


def test_stale_if_error_serves_the_last_good_answer(faults: tuple[FaultApp, str]) -> None:
    """A failed GET is answered from the last good answer to the same URL, marked stale."""
    app, base = faults
    policies = ServicePolicies(retries=0, stale_if_error=60, minimum_calls=2, cooldown=30.0)

    async def go() -> list[Response]:
        async with client(base, policies) as c:
            app.down = False
            good = await c.get("/toggle")
            app.down = True
            try:
                answers = [await c.get("/toggle") for _ in range(4)]  # 503s, then breaker open
            finally:
                app.down = False
            with pytest.raises(CircuitOpenError):
                await c.get("/status/200")  # another URL: nothing cached for it
            return [good, *answers]

    good, *answers = run(go)
    assert good.source == "network"
    assert all(a.source == "stale" and a.status == 200 for a in answers)


def test_call_fallback_answers_failures(faults: tuple[FaultApp, str], refused_url: str) -> None:
    """``fallback=`` gets the public error (a status error or a transport error)."""
    _, base = faults
    seen: list[Exception] = []

    def fallback(error: Exception) -> Response:
        seen.append(error)
        return Response(200, {}, b"default")

    async def afallback(error: Exception) -> Response:
        return Response(203, {}, b"async default")

    async def go() -> list[Response]:
        async with client(base) as c, client(refused_url) as dead:
            return [
                await c.get("/status/503", fallback=fallback),
                await dead.get("/x", fallback=fallback),
                await dead.get("/x", fallback=afallback),
                await dead.get("/x", fallback=Response(200, {}, b"fixed")),
            ]

    answers = run(go)
    assert [a.content for a in answers] == [b"default", b"default", b"async default", b"fixed"]
    assert answers[3].source == "fallback"
    assert isinstance(seen[0], HTTPStatusError)
    assert seen[0].status == 503
    assert isinstance(seen[1], TransportError)


def test_recovery_through_half_open(faults: tuple[FaultApp, str]) -> None:
    """OPEN -> (cooldown) -> HALF_OPEN -> one good trial -> CLOSED."""
    app, base = faults
    policies = ServicePolicies(retries=0, minimum_calls=2, cooldown=0.1)

    async def go() -> list[State]:
        async with client(base, policies) as c:
            breaker = c.service(base.split("://")[1]).downstream.breaker
            assert breaker is not None
            app.down = True
            try:
                for _ in range(2):
                    await c.get("/toggle")
                states = [breaker.state]
            finally:
                app.down = False
            await asyncio.sleep(0.12)
            states.append(breaker.state)
            assert (await c.get("/toggle")).status == 200
            states.append(breaker.state)
            return states

    assert run(go) == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_budget_exhaustion_returns_the_last_answer(faults: tuple[FaultApp, str]) -> None:
    """With an empty budget a failure is not retried; the 503 is still the caller's answer."""
    app, base = faults
    policies = ServicePolicies(
        budget_ratio=0.0, budget_min_per_second=0.0, breaker=False, backoff=0.001
    )

    async def go() -> Response:
        async with client(base, policies) as c:
            return await c.get("/flaky/no-budget?fail=1")

    assert run(go).status == 503
    assert app.flaky["no-budget"] == 1


def test_budget_exhaustion_on_transport_errors_raises_budget_exhausted(refused_url: str) -> None:
    """With an empty budget the refusal surfaces as BudgetExhausted from the TransportError."""
    policies = ServicePolicies(budget_ratio=0.0, budget_min_per_second=0.0, breaker=False)

    async def go() -> BudgetExhausted:
        async with client(refused_url, policies) as c:
            with pytest.raises(BudgetExhausted) as info:
                await c.get("/x")
            return info.value

    assert isinstance(run(go).__cause__, TransportError)


# ------------------------------------------------------------------------ services and config


def test_a_service_is_configured_once(faults: tuple[FaultApp, str]) -> None:
    """Different policies for an existing service are refused; the same ones are fine."""
    _, base = faults
    c = AsyncClient()
    menu = c.service("menu", policies=FAST, url=base)
    assert c.service("menu").downstream is menu.downstream
    assert c.service("menu", policies=FAST).downstream is menu.downstream
    with pytest.raises(ValueError, match="service 'menu' is already configured"):
        c.service("menu", policies=ServicePolicies(retries=5))


def test_service_client_calls_its_url(faults: tuple[FaultApp, str]) -> None:
    """``client.service(name, url=...)``: ``service://name/...`` goes to that URL."""
    _, base = faults

    async def go() -> list[int]:
        async with AsyncClient(policies=FAST) as c:
            menu = c.service("menu", url=base)
            return [
                (await menu.get("/ok")).status,
                (await c.get("service://menu/ok")).status,
                (await menu.head("ok")).status,
                (await menu.options("/ok")).status,
                (await menu.put("/ok", content="x")).status,
                (await menu.delete("/ok")).status,
                (await menu.patch("/ok", content=b"x")).status,
                (await menu.request("GET", f"{base}/ok")).status,
            ]

    assert run(go) == [200] * 8


def test_config_file_sets_per_service_policies(
    tmp_path: Path, faults: tuple[FaultApp, str]
) -> None:
    """A TOML file gives defaults and per-service policies and URLs."""
    _, base = faults
    path = tmp_path / "services.toml"
    path.write_text(
        f'[default]\ntimeout = 3.0\n\n[services.menu]\nurl = "{base}"\nretries = 0\n',
        encoding="utf-8",
    )

    async def go() -> tuple[Response, Any]:
        async with AsyncClient(config=path) as c:
            return await c.get("service://menu/flaky/config?fail=1"), c.downstreams

    r, services = run(go)
    assert r.status == 503  # retries = 0 for menu
    assert services[0].policies.timeout == 3.0


def test_service_url_without_resolver_or_url_is_an_error() -> None:
    """``service://name`` with neither a resolver nor a configured URL says what is missing."""

    async def go() -> None:
        async with AsyncClient() as c:
            with pytest.raises(ValueError, match="needs a resolver, or a url"):
                await c.get("service://nowhere/x")

    run(go)


def test_relative_url_without_base_url_is_an_error() -> None:
    """A relative URL needs a base_url."""

    async def go() -> None:
        async with AsyncClient() as c:
            with pytest.raises(ValueError, match="must be absolute"):
                await c.get("/x")

    run(go)


def test_content_and_json_are_exclusive() -> None:
    """Passing two bodies is refused."""

    async def go() -> None:
        async with AsyncClient("http://127.0.0.1:1") as c:
            with pytest.raises(ValueError, match="exclusive"):
                await c.post("/x", content=b"a", json={})

    run(go)


# ------------------------------------------------------------------------ resolvers


@dataclass(frozen=True)
class _Instance:
    host: str
    port: int
    protocol: str = "http"


@dataclass
class _Picked:
    instance: _Instance
    log: list[tuple[int, bool]]
    done_calls: int = 0

    def done(self, ok: bool = True) -> None:
        self.done_calls += 1
        self.log.append((self.instance.port, ok))


@dataclass
class RoundRobinResolver:
    """Test-local fake of the resolver interface: round robin, logging every ``done``."""

    urls: list[str]
    log: list[tuple[int, bool]] = field(default_factory=list)
    picked: list[_Picked] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._next = itertools.cycle(self.urls)

    def pick(self, service: str, avoid: Any = ()) -> _Picked:
        host, port = next(self._next).split("://")[1].split(":")
        p = _Picked(_Instance(host, int(port)), self.log)
        self.picked.append(p)
        return p


def test_each_attempt_picks_an_instance(faults: tuple[FaultApp, str], refused_url: str) -> None:
    """A retry picks again and lands on the other instance; ``done`` is called once per pick."""
    _, base = faults
    resolver = RoundRobinResolver([refused_url, base])

    async def go() -> Response:
        async with AsyncClient(policies=FAST, resolver=resolver) as c:
            return await c.get("service://menu/ok")

    assert run(go).status == 200
    refused_port, good_port = (int(u.rsplit(":", 1)[1]) for u in (refused_url, base))
    assert resolver.log == [(refused_port, False), (good_port, True)]
    assert all(p.done_calls == 1 for p in resolver.picked)


def test_a_hedge_answers_when_the_first_attempt_is_slow(faults: tuple[FaultApp, str]) -> None:
    """With ``hedge_delay`` a slow first attempt is raced by a second pick; the fast one wins
    and the slow one is cancelled, its pick still reported done exactly once."""
    _, base = faults
    policies = ServicePolicies(hedge_delay=0.02, retries=0)
    resolver = RoundRobinResolver([base, base])

    async def go() -> tuple[Response, float]:
        async with AsyncClient(policies=policies, resolver=resolver) as c:
            t0 = time.monotonic()
            r = await c.get("service://menu/slow-first/hedged")
            return r, time.monotonic() - t0

    r, took = run(go)
    assert r.json() == {"attempt": 2}
    assert took < 1.0  # not the 2 s of the first attempt
    assert len(resolver.picked) == 2
    assert all(p.done_calls == 1 for p in resolver.picked)


def test_discovery_resolver_is_accepted(faults: tuple[FaultApp, str]) -> None:
    """interlink.discovery's Resolver over a memory registry resolves ``service://`` names."""
    from interlink import discovery

    _, base = faults
    host, port = base.split("://")[1].split(":")

    async def go() -> Response:
        registry = discovery.Registry.from_url("memory://")
        instance = discovery.ServiceInstance("menu", "menu-1", host, int(port))
        lease = await registry.register(instance, ttl=5.0)
        resolver = discovery.Resolver(registry)
        try:
            async with AsyncClient(policies=FAST, resolver=resolver) as c:
                return await c.get("service://menu/ok")
        finally:
            await _close(resolver)
            await _close(lease)
            await _close(registry)

    assert run(go).status == 200


async def _close(obj: Any) -> None:
    for name in ("aclose", "close", "cancel", "stop"):
        method = getattr(obj, name, None)
        if method is not None:
            result = method()
            if asyncio.iscoroutine(result):
                await result
            return
