"""Prometheus metrics from policy events, breakers' own counters, and request latencies.

The resilience core knows nothing of Prometheus: its policies emit typed events to listeners
(``interlink.resilience.events``), and ``PolicyMetrics`` is such a listener, attached from the
outside. What it exports, with names that follow Prometheus conventions (``_total`` counters,
base units, ``interlink_`` prefix) and, for request latency, OpenTelemetry's semantic
conventions turned into Prometheus names (``http.server.request.duration`` becomes
``http_server_request_duration_seconds``):

======================================================  ======================================
``interlink_breaker_state{breaker,state}``              1 for the state a breaker is in
``interlink_breaker_transitions_total{breaker,from,to}`` state changes
``interlink_breaker_calls_total{breaker,outcome}``      successes / failures (watched breakers)
``interlink_breaker_failure_rate{breaker}``             failure rate in the breaker's window
``interlink_breaker_half_open_in_seconds{breaker}``     time left of an open breaker's cooldown
``interlink_rejections_total{policy,name,reason}``      calls refused: breaker, bulkhead, rate
                                                         limit, retry budget
``interlink_retries_total{name}``                       retries scheduled
``interlink_retry_give_ups_total{name,reason}``         attempts / budget / deadline / not
                                                         retryable
``interlink_fallbacks_total{name,source}``              fallback answers
``interlink_hedges_total{name}``                        hedged attempts launched
``interlink_timeouts_total{name}``                      calls cut off by a timeout
``http_server_request_duration_seconds``                per method, route and status
``rpc_server_duration_seconds``                         per gRPC method and status code
``interlink_dlq_messages{topic}``                       dead letters (``SystemMetrics``)
``interlink_outbox_pending{outbox}``, ``..._lag_seconds`` the relay's backlog and its age
``interlink_sagas{status}``                             sagas per status
======================================================  ======================================

One call wires a service: ``metrics = instrument(app)`` wraps an ASGI app so it answers
``GET /metrics`` and records request latency, and ``metrics.listeners`` is what to pass as
``listeners=`` to clients and policies (with ``SpanEvents`` when tracing is set up, so the same
events also land on spans). ``serve(port)`` starts a standalone exporter for processes with no
HTTP server (a broker consumer).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from interlink.resilience.events import (
    BulkheadRejected,
    CallRejected,
    FallbackUsed,
    HedgeLaunched,
    PolicyEvent,
    RateLimitRejected,
    RetryGaveUp,
    RetryScheduled,
    StateChanged,
    TimeoutExpired,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from interlink.resilience import CircuitBreaker

__all__ = [
    "LATENCY_BUCKETS",
    "Instrumentation",
    "MetricsMiddleware",
    "MetricsServer",
    "PolicyMetrics",
    "SystemMetrics",
    "grpc_interceptor",
    "instrument",
    "metrics_app",
    "serve",
    "span_metrics",
]

#: Histogram buckets (seconds) for request latency: fine below 100 ms, where the sync path
#: lives, coarse above it.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_STATES = ("closed", "open", "half_open", "forced_open", "disabled")
#: Sagas per status counted by ``SystemMetrics``; a status past it reads as the cap.
SAGA_COUNT_CAP = 10_000
_INSTALL_HINT = "metrics need prometheus-client: pip install 'interlink[prometheus]'"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
        raise ImportError(_INSTALL_HINT) from exc
    return prometheus_client


class PolicyMetrics:
    """A policy listener that counts what policies do, into a Prometheus registry.

    Pass it (or ``Instrumentation.listeners``) as ``listeners=`` to any policy, pipeline or
    client. ``watch(breaker)`` also exports a breaker's own counters (calls, failures, failure
    rate), read at scrape time: they are not events, because a success is not worth one.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        prom = _prometheus()
        self.registry = registry if registry is not None else prom.REGISTRY
        r = self.registry
        counter = functools.partial(prom.Counter, registry=r)
        self._state = prom.Gauge(
            "interlink_breaker_state",
            "1 for the state a circuit breaker is in, 0 for the others",
            ["breaker", "state"],
            registry=r,
        )
        self._transitions = counter(
            "interlink_breaker_transitions",
            "Circuit breaker state changes",
            ["breaker", "from", "to"],
        )
        self._rejections = counter(
            "interlink_rejections",
            "Calls a policy refused before they ran",
            ["policy", "name", "reason"],
        )
        self._retries = counter("interlink_retries", "Retries scheduled", ["name"])
        self._give_ups = counter(
            "interlink_retry_give_ups",
            "Calls a retry stopped retrying, by reason",
            ["name", "reason"],
        )
        self._fallbacks = counter(
            "interlink_fallbacks", "Answers given by a fallback", ["name", "source"]
        )
        self._hedges = counter("interlink_hedges", "Hedged attempts launched", ["name"])
        self._timeouts = counter("interlink_timeouts", "Calls ended by a timeout", ["name"])
        self._watched: dict[str, CircuitBreaker] = {}
        #: wall-clock time each breaker was last seen opening (for "half-open in")
        self._opened_at: dict[str, float] = {}
        r.register(_BreakerCollector(self._watched, self._opened_at))

    def __call__(self, event: PolicyEvent, /) -> None:
        """Count one event (the listener protocol)."""
        if isinstance(event, StateChanged):
            self._transitions.labels(event.name, event.old, event.new).inc()
            self.set_state(event.name, event.new)
            if event.new == "open":
                self._opened_at[event.name] = time.time()
        elif isinstance(event, CallRejected):
            self._rejections.labels("breaker", event.name, "circuit_open").inc()
        elif isinstance(event, BulkheadRejected):
            self._rejections.labels("bulkhead", event.name, "bulkhead_full").inc()
        elif isinstance(event, RateLimitRejected):
            self._rejections.labels("rate_limiter", event.name, "rate_limited").inc()
        elif isinstance(event, RetryScheduled):
            self._retries.labels(event.name).inc()
        elif isinstance(event, RetryGaveUp):
            self._give_ups.labels(event.name, event.reason).inc()
            if event.reason == "budget":
                self._rejections.labels("retry_budget", event.name, "budget_exhausted").inc()
        elif isinstance(event, FallbackUsed):
            self._fallbacks.labels(event.name, event.source).inc()
        elif isinstance(event, HedgeLaunched):
            self._hedges.labels(event.name).inc()
        elif isinstance(event, TimeoutExpired):
            self._timeouts.labels(event.name).inc()

    def set_state(self, breaker: str, state: str) -> None:
        """Mark ``breaker`` as being in ``state`` (one of the ``State`` values)."""
        for s in _STATES:
            self._state.labels(breaker, s).set(1.0 if s == state else 0.0)

    def watch(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Export ``breaker``'s counters and state, and count its events; returns it."""
        self._watched[breaker.name] = breaker
        self.set_state(breaker.name, breaker.state.value)
        breaker.add_listener(self)
        return breaker


class _BreakerCollector:
    """Reads watched breakers' own counters when Prometheus scrapes."""

    def __init__(self, watched: dict[str, CircuitBreaker], opened_at: dict[str, float]) -> None:
        self._watched = watched
        self._opened_at = opened_at

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        calls = CounterMetricFamily(
            "interlink_breaker_calls",
            "Calls a circuit breaker let through, by outcome",
            labels=["breaker", "outcome"],
        )
        rejected = CounterMetricFamily(
            "interlink_breaker_rejected",
            "Calls a circuit breaker refused",
            labels=["breaker"],
        )
        rate = GaugeMetricFamily(
            "interlink_breaker_failure_rate",
            "Failure rate in the breaker's window (0 to 1)",
            labels=["breaker"],
        )
        half_open_in = GaugeMetricFamily(
            "interlink_breaker_half_open_in_seconds",
            "Seconds until an open breaker lets a trial call through (0 when not open)",
            labels=["breaker"],
        )
        now = time.time()
        for name, breaker in list(self._watched.items()):
            m = breaker.metrics
            calls.add_metric([name, "success"], m.successes_total)
            calls.add_metric([name, "failure"], m.failures_total)
            rejected.add_metric([name], m.rejected_total)
            rate.add_metric([name], m.failure_rate)
            left = 0.0
            opened = self._opened_at.get(name)
            if m.state.value == "open" and opened is not None:
                cooldown = breaker.describe().get("cooldown")
                if isinstance(cooldown, int | float):
                    left = max(0.0, opened + cooldown - now)
            half_open_in.add_metric([name], left)
        yield calls
        yield rejected
        yield rate
        yield half_open_in

    def describe(self) -> list[Any]:
        return []  # collected only at scrape time: no names to reserve in advance


class MetricsMiddleware:
    """ASGI middleware: records every request's latency, and answers ``GET /metrics``.

    The route label is the matched route's template (``/orders/{id}``) when the framework sets
    one in the scope (Starlette does), otherwise ``"unmatched"``: raw paths would give one time
    series per order id.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        path: str = "/metrics",
    ) -> None:
        prom = _prometheus()
        self.app = app
        self.path = path
        self.registry = registry if registry is not None else prom.REGISTRY
        self._latency = prom.Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests",
            ["http_request_method", "http_route", "http_response_status_code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._exposition = metrics_app(self.registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") == self.path and scope.get("method") == "GET":
            await self._exposition(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def record_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            self._latency.labels(
                scope.get("method", "GET"),
                template if isinstance(template, str) else "unmatched",
                str(status),
            ).observe(time.perf_counter() - started)


def grpc_interceptor(registry: CollectorRegistry | None = None) -> Any:
    """A ``grpc.aio.ServerInterceptor`` recording ``rpc_server_duration_seconds`` per method and
    status code for unary handlers (streams pass through unmeasured)."""
    prom = _prometheus()
    import grpc

    latency = prom.Histogram(
        "rpc_server_duration_seconds",
        "Duration of gRPC server calls",
        ["rpc_method", "rpc_grpc_status_code"],
        buckets=LATENCY_BUCKETS,
        registry=registry if registry is not None else prom.REGISTRY,
    )

    def measured(method: str, behaviour: Any) -> Any:
        async def handler(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await behaviour(request, context)
            except Exception:
                raised = context.code() if hasattr(context, "code") else None
                code = raised.name if isinstance(raised, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                if code == "OK" and hasattr(context, "code"):
                    set_code = context.code()
                    if isinstance(set_code, grpc.StatusCode):
                        code = set_code.name
                latency.labels(method, code).observe(time.perf_counter() - started)

        return handler

    class MetricsInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = await continuation(details)
            if handler is None or handler.unary_unary is None:
                return handler
            return grpc.unary_unary_rpc_method_handler(
                measured(details.method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

    return MetricsInterceptor()


class _Exposition:
    """Prometheus' text format for a registry, as an ASGI app (an object, not a function, so
    Starlette's ``Route("/metrics", metrics_app())`` serves it as is, with no redirect)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._app = _prometheus().make_asgi_app(registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def metrics_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """An ASGI app answering with the registry's metrics in Prometheus' text format; mount it
    with ``Route("/metrics", metrics_app())``."""
    prom = _prometheus()
    return _Exposition(registry if registry is not None else prom.REGISTRY)


class MetricsServer:
    """A running standalone exporter: ``port`` it listens on, ``close()`` to stop it."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(
    port: int, *, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """A standalone ``/metrics`` endpoint on ``addr:port`` (0: a free port), served from a
    thread, for processes that serve no HTTP (a broker consumer)."""
    prom = _prometheus()
    server, thread = prom.start_http_server(
        port, addr=addr, registry=registry if registry is not None else prom.REGISTRY
    )
    return MetricsServer(server, thread)


class SystemMetrics:
    """Gauges read from the system's own stores and brokers: dead letters per topic, consumer
    lag per subscription, the outbox relay's backlog and lag, sagas per status.

    Prometheus scrapes synchronously and these sources answer asynchronously (and a scrape must
    never wait on a database), so ``run()`` (a task) refreshes a snapshot every ``interval``
    seconds and the scrape reads the snapshot. ``refresh()`` is one round, for tests and for
    a caller's own schedule. A source that fails keeps its last figures and is logged.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        brokers: Iterable[Any] = (),
        relays: Mapping[str, Any] | Iterable[Any] = (),
        saga_stores: Iterable[Any] = (),
        interval: float = 5.0,
        saga_count_cap: int = SAGA_COUNT_CAP,
    ) -> None:
        prom = _prometheus()
        self.registry = registry if registry is not None else prom.REGISTRY
        self._brokers = list(brokers)
        # named relays label their figures; unnamed ones are "outbox", "outbox-2", ...
        self._relays = (
            list(relays.items())
            if isinstance(relays, Mapping)
            else [(f"outbox-{i}" if i > 1 else "outbox", r) for i, r in enumerate(relays, 1)]
        )
        self._sagas = list(saga_stores)
        self._interval = interval
        self._cap = saga_count_cap
        self._dlq: dict[str, int] = {}
        self._lags: dict[tuple[str, str], tuple[int, float | None]] = {}
        self._outbox: list[tuple[str, int, float]] = []
        self._saga_counts: dict[str, int] = {}
        self.registry.register(self)

    async def refresh(self) -> None:
        """Read every source once."""
        import logging

        log = logging.getLogger("interlink.metrics")
        dlq: dict[str, int] = {}
        for broker in self._brokers:
            try:
                for topic in await broker.topics():
                    if not topic.endswith(".dlq"):
                        dlq[topic] = await broker.dlq_count(topic)
            except Exception as exc:
                log.warning("reading dead letters failed: %s", exc)
                dlq.update({k: v for k, v in self._dlq.items() if k not in dlq})
        self._dlq = dlq
        lags: dict[tuple[str, str], tuple[int, float | None]] = {}
        for broker in self._brokers:
            try:
                for lag in await broker.lags():
                    lags[lag.topic, lag.group] = (lag.pending, lag.oldest_age)
            except Exception as exc:
                log.warning("reading consumer lag failed: %s", exc)
                lags.update({k: v for k, v in self._lags.items() if k not in lags})
        self._lags = lags
        outbox = []
        for name, relay in self._relays:
            try:
                outbox.append((name, await relay.pending(), await relay.lag()))
            except Exception as exc:
                log.warning("reading the outbox failed: %s", exc)
        self._outbox = outbox or self._outbox
        counts: dict[str, int] = {}
        for store in self._sagas:
            try:
                from interlink.saga.admin import count_by_status

                for status, count in (await count_by_status(store, cap=self._cap)).items():
                    counts[status] = counts.get(status, 0) + count
            except Exception as exc:
                log.warning("reading sagas failed: %s", exc)
                counts = self._saga_counts
        self._saga_counts = counts

    async def run(self) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        import asyncio

        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)

    def collect(self) -> Iterator[Any]:
        """The snapshot, for Prometheus (the collector protocol)."""
        from prometheus_client.core import GaugeMetricFamily

        dlq = GaugeMetricFamily(
            "interlink_dlq_messages", "Messages in a topic's dead-letter queue", labels=["topic"]
        )
        for topic, count in sorted(self._dlq.items()):
            dlq.add_metric([topic], count)
        waiting = GaugeMetricFamily(
            "interlink_consumer_lag_messages",
            "Messages of a topic its consumer group has not acknowledged yet",
            labels=["topic", "group"],
        )
        behind = GaugeMetricFamily(
            "interlink_consumer_lag_seconds",
            "Age of the oldest message a consumer group has not acknowledged (0 when none)",
            labels=["topic", "group"],
        )
        for (topic, group), (count, age) in sorted(self._lags.items()):
            waiting.add_metric([topic, group], count)
            if age is not None or not count:
                behind.add_metric([topic, group], age or 0.0)
        pending = GaugeMetricFamily(
            "interlink_outbox_pending", "Outbox rows not published yet", labels=["outbox"]
        )
        lag = GaugeMetricFamily(
            "interlink_outbox_lag_seconds",
            "How long the oldest unpublished outbox row has waited",
            labels=["outbox"],
        )
        for name, rows, seconds in self._outbox:
            pending.add_metric([name], rows)
            lag.add_metric([name], seconds)
        sagas = GaugeMetricFamily(
            "interlink_sagas", "Sagas per status (capped per status)", labels=["status"]
        )
        for status, count in sorted(self._saga_counts.items()):
            sagas.add_metric([status], count)
        yield from (dlq, waiting, behind, pending, lag, sagas)

    def describe(self) -> list[Any]:
        """Nothing reserved in advance: collected from the snapshot only."""
        return []


def span_metrics(registry: CollectorRegistry | None = None) -> Any:
    """An OpenTelemetry span processor that turns ended client and messaging spans into
    Prometheus histograms (rate, errors and duration from the spans interlink already opens,
    with no second timer on the hot paths). Add it to the tracer provider ``setup`` returned:
    ``provider.add_span_processor(span_metrics())``.

    ===========================================================  ============================
    ``http_client_request_duration_seconds``                     per method, server address,
                                                                 status code
    ``rpc_client_duration_seconds``                              per method and status
    ``messaging_client_operation_duration_seconds``              per topic (publish, until
                                                                 the broker confirmed)
    ``messaging_process_duration_seconds``                       per topic, group, outcome
    ===========================================================  ============================
    """
    prom = _prometheus()
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import SpanKind, StatusCode

    r = registry if registry is not None else prom.REGISTRY

    def histogram(name: str, doc: str, *labels: str) -> Any:
        return prom.Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=r)

    http = histogram(
        "http_client_request_duration_seconds",
        "Duration of HTTP client requests (one attempt each)",
        "http_request_method", "server_address", "http_response_status_code",
    )  # fmt: skip
    rpc = histogram(
        "rpc_client_duration_seconds", "Duration of gRPC client calls",
        "rpc_method", "rpc_grpc_status_code",
    )  # fmt: skip
    publish = histogram(
        "messaging_client_operation_duration_seconds",
        "Duration of publishing a message until the broker confirmed it",
        "messaging_destination_name", "messaging_operation_type",
    )  # fmt: skip
    process = histogram(
        "messaging_process_duration_seconds", "Duration of handling a delivered message",
        "messaging_destination_name", "messaging_consumer_group_name", "outcome",
    )  # fmt: skip

    class SpanMetrics(SpanProcessor):
        def on_end(self, span: Any) -> None:
            kind = span.kind
            if kind is SpanKind.SERVER or kind is SpanKind.INTERNAL:
                return
            attributes = span.attributes or {}
            seconds = ((span.end_time or 0) - (span.start_time or 0)) / 1e9
            failed = span.status.status_code is StatusCode.ERROR
            if kind is SpanKind.CLIENT:
                method = attributes.get("http.request.method")
                if method is not None:
                    url = str(attributes.get("url.full", ""))
                    address = url.split("://", 1)[-1].split("/", 1)[0]
                    status = attributes.get("http.response.status_code", "error" if failed else "")
                    http.labels(method, address, str(status)).observe(seconds)
                else:
                    code = attributes.get("rpc.grpc.status_code")
                    status = str(code) if code is not None else ("ERROR" if failed else "OK")
                    rpc.labels(span.name, status).observe(seconds)
            elif kind is SpanKind.PRODUCER:
                topic = str(attributes.get("messaging.destination.name", ""))
                publish.labels(topic, "send").observe(seconds)
            elif kind is SpanKind.CONSUMER:
                topic = str(attributes.get("messaging.destination.name", ""))
                group = str(attributes.get("messaging.consumer.group.name", ""))
                process.labels(topic, group, "error" if failed else "ok").observe(seconds)

    return SpanMetrics()


class Instrumentation:
    """What ``instrument`` set up: the wrapped app, the registry, and the listeners to pass."""

    def __init__(self, app: ASGIApp | None, policies: PolicyMetrics, listeners: tuple[Any, ...]):
        self.app = app
        self.policies = policies
        self.registry = policies.registry
        #: pass as ``listeners=`` to clients, pipelines and policies
        self.listeners = listeners

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve as the wrapped ASGI app."""
        if self.app is None:
            raise RuntimeError("instrument() was called without an app to wrap")
        await self.app(scope, receive, send)


def instrument(
    app: ASGIApp | None = None,
    *,
    registry: CollectorRegistry | None = None,
    breakers: Iterable[CircuitBreaker] = (),
    span_events: bool = True,
) -> Instrumentation:
    """Wire a service for metrics (and span events) in one call.

    ``app`` (optional) is wrapped in ``MetricsMiddleware``: request latency, and ``/metrics``.
    ``breakers`` are watched for their counters. The returned ``listeners`` count policy events
    and, with ``span_events`` and OpenTelemetry installed, also record them on the current span.
    """
    policies = PolicyMetrics(registry)
    for breaker in breakers:
        policies.watch(breaker)
    listeners: list[Any] = [policies]
    if span_events:
        try:
            import opentelemetry.trace  # noqa: F401
        except ImportError:
            pass
        else:
            from interlink.tracing import SpanEvents

            listeners.append(SpanEvents())
    wrapped = None if app is None else MetricsMiddleware(app, registry=policies.registry)
    return Instrumentation(wrapped, policies, tuple(listeners))
