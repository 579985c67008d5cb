"""The dashboard's server: one Starlette app reading what the system already records.

It keeps no state of its own. Each panel reads a source the services write anyway:

- topology and traces: the embedded trace store (who called whom is the parent/child links
  between spans of different services: a server span under a client span is a synchronous call,
  a consumer span under a publisher an asynchronous one);
- breakers: each service's Prometheus ``/metrics`` (``interlink_breaker_*``), scraped on demand;
  the URLs come from the command line or from the registry (an instance's ``metrics`` metadata);
- instances: the service registry;
- sagas: the saga store (resume is ``interlink saga resume``'s own code);
- queues: the brokers' consumer lag per group and dead-letter queues (replay and purge are
  ``interlink dlq``'s own calls).

The page polls nothing: ``/api/stream`` pushes an overview (topology, breakers, counts) as
server-sent events every ``interval`` seconds, and the lists are fetched page by page, so the
page stays quick with 100,000 traces stored. Every request that changes state (resume, replay,
purge) needs the token printed with the URL at start, sent as ``Authorization: Bearer``; the
server binds to loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from interlink.messaging.backend import redact
from interlink.tracing.store import TraceStore, TraceSummary

__all__ = ["DashboardSources", "create_app"]

_log = logging.getLogger("interlink.dashboard")
STATIC = Path(__file__).with_name("static")
#: Traces listed with the page itself (the script's page size).
_FIRST_PAGE = 50
_TRACE_ROWS = '<tbody id="trace-rows"></tbody>'
_STYLE_LINK = '<link rel="stylesheet" href="/static/style.css">'

#: Sagas per status counted for the overview; past it the page shows "1000+".
SAGA_COUNT_CAP = 1000

#: How a breaker state is drawn; the page colours edges by it.
BREAKER_STATES = ("closed", "half_open", "open", "forced_open", "disabled")


@dataclass(frozen=True, slots=True, kw_only=True)
class DashboardSources:
    """Where the dashboard reads from; every source is optional (its panel then says so)."""

    traces: str | None = None
    sagas: str | None = None
    saga_table: str = "interlink_sagas"
    brokers: Sequence[str] = ()
    registry: str | None = None
    #: ``{service: metrics URL}`` scraped for breaker states, besides what the registry lists
    metrics: Mapping[str, str] = field(default_factory=dict)
    #: services to look up in the registry, besides those seen in traces
    services: Sequence[str] = ()
    #: seconds between two overview pushes on ``/api/stream``
    interval: float = 1.0
    #: how far back topology edges are drawn from, in seconds
    window: float = 300.0


def _error(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason, "status": status}, status_code=status)


class _Sources:
    """The opened sources, shared by every request."""

    def __init__(self, config: DashboardSources) -> None:
        self.config = config
        self.traces = None if config.traces is None else TraceStore.from_url(config.traces)
        self._saga_store: Any = None
        self._brokers: dict[str, Any] = {}
        self._registry: Any = None
        self._http = httpx.AsyncClient(timeout=0.5, follow_redirects=True)

    async def saga_store(self) -> Any:
        if self.config.sagas is None:
            return None
        if self._saga_store is None:
            from interlink.saga import SagaStore

            store = SagaStore.from_url(self.config.sagas, table=self.config.saga_table)
            await store.open()
            self._saga_store = store
        return self._saga_store

    def broker(self, url: str) -> Any:
        if url not in self._brokers:
            from interlink.messaging import Broker

            self._brokers[url] = Broker.from_url(url)
        return self._brokers[url]

    async def registry(self) -> Any:
        if self.config.registry is None:
            return None
        if self._registry is None:
            from interlink.discovery import Registry

            self._registry = Registry.from_url(self.config.registry)
        return self._registry

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._saga_store is not None:
            await self._saga_store.close()
        for broker in self._brokers.values():
            await broker.stop()
        if self._registry is not None:
            await self._registry.aclose()
        if self.traces is not None:
            self.traces.close()

    # -- reading -------------------------------------------------------------------------------

    async def instances(self, services: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        registry = await self.registry()
        found: dict[str, list[dict[str, Any]]] = {}
        if registry is None:
            return found
        for service in services:
            try:
                instances = await registry.lookup(service)
            except Exception as exc:  # a registry outage must not blank the page
                _log.warning("registry lookup of %s failed: %s", service, exc)
                continue
            found[service] = [
                {
                    "id": i.instance_id,
                    "address": f"{i.host}:{i.port}",
                    "protocol": i.protocol,
                    "metrics": _metrics_url(i.protocol, i.host, i.port, i.metadata),
                }
                for i in instances
            ]
        return found

    async def breakers(self, targets: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        """Every breaker every scraped service reports, with the service that holds it."""

        async def scrape(service: str, url: str) -> list[dict[str, Any]]:
            try:
                answer = await self._http.get(url)
                answer.raise_for_status()
            except httpx.HTTPError as exc:
                _log.debug("scraping %s failed: %s", url, exc)
                return []
            return _breakers_in(service, answer.text)

        jobs = [scrape(s, url) for s, urls in targets.items() for url in urls]
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for found in await asyncio.gather(*jobs):
            for b in found:
                key = (b["service"], b["name"])
                # several instances of one service: the worst state wins
                if key not in merged or _severity(b["state"]) > _severity(merged[key]["state"]):
                    merged[key] = b
        return sorted(merged.values(), key=lambda b: (b["service"], b["name"]))

    async def overview(self) -> dict[str, Any]:
        """Topology, breakers and counts: what the stream pushes."""
        cfg = self.config
        edges = (
            []
            if self.traces is None
            # SQLite calls run in a thread: a slow query must not hold up other requests
            else [
                asdict(e)
                for e in await asyncio.to_thread(self.traces.edges, since=time.time() - cfg.window)
            ]
        )
        names = set(cfg.services) | set(cfg.metrics)
        if self.traces is not None:
            names.update(await asyncio.to_thread(self.traces.services))
        instances = await self.instances(sorted(names))
        targets: dict[str, list[str]] = {s: [u] for s, u in cfg.metrics.items()}
        for service, listed in instances.items():
            for i in listed:
                if i["metrics"] and i["metrics"] not in targets.get(service, []):
                    targets.setdefault(service, []).append(i["metrics"])
        breakers = await self.breakers(targets)
        by_edge = {(b["service"], b["name"]): b["state"] for b in breakers}
        for edge in edges:
            edge["breaker"] = by_edge.get((edge["source"], edge["target"]))
        services = [
            {
                "name": name,
                "instances": instances.get(name, []),
                "breakers_open": sum(
                    1 for b in breakers if b["service"] == name and b["state"] != "closed"
                ),
            }
            for name in sorted(names | {e["source"] for e in edges} | {e["target"] for e in edges})
        ]
        return {
            "at": time.time(),
            "services": services,
            "edges": edges,
            "breakers": breakers,
            "sagas": await self.saga_counts(),
            "traces": None if self.traces is None else await asyncio.to_thread(self.traces.count),
        }

    async def saga_counts(self) -> dict[str, int] | None:
        store = await self.saga_store()
        if store is None:
            return None
        from interlink.saga.admin import count_by_status

        # capped: a count past the cap reads as "1000+", which is all a glance needs
        return await count_by_status(store, cap=SAGA_COUNT_CAP)


def _metrics_url(protocol: str, host: str, port: int, metadata: Mapping[str, str]) -> str | None:
    value = metadata.get("metrics")
    if not value:
        return None
    if value.startswith(("http://", "https://")):
        return value
    if value.isdigit():  # a port of its own (gRPC services and consumers)
        return f"http://{host}:{value}/metrics"
    scheme = "https" if protocol == "https" else "http"
    return f"{scheme}://{host}:{port}/{value.lstrip('/')}"


def _severity(state: str) -> int:
    return {"closed": 0, "disabled": 0, "half_open": 1, "open": 2, "forced_open": 2}.get(state, 0)


def _breakers_in(service: str, text: str) -> list[dict[str, Any]]:
    """The breakers in one Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, dict[str, Any]] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return []
    for family in families:
        for sample in family.samples:
            name = sample.labels.get("breaker")
            if name is None:
                continue
            b = found.setdefault(
                name,
                {
                    "service": service,
                    "name": name,
                    "state": "closed",
                    "failure_rate": None,
                    "half_open_in": None,
                },
            )
            if sample.name == "interlink_breaker_state" and sample.value == 1:
                b["state"] = sample.labels.get("state", "closed")
            elif sample.name == "interlink_breaker_failure_rate":
                b["failure_rate"] = sample.value
            elif sample.name == "interlink_breaker_half_open_in_seconds":
                b["half_open_in"] = sample.value
    return list(found.values())


class _Api:
    """The HTTP handlers, each reading one source."""

    def __init__(self, sources: DashboardSources, token: str) -> None:
        self.config = sources
        self.opened = _Sources(sources)
        self.token = token
        self._expected = f"Bearer {token}".encode()

    def protected(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the token check (state-changing calls)."""

        async def check(request: Request) -> Response:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                return _error(401, "token_required", "this action needs the dashboard's token")
            return await handler(request)

        return check

    async def index(self, request: Request) -> Response:
        # the newest traces come with the page, as rows, and so does the style sheet: the list
        # paints as the page arrives, without waiting for another request, the script and its
        # query (the script takes over from there)
        page = (STATIC / "index.html").read_text()
        style = (STATIC / "style.css").read_text()
        page = page.replace(_STYLE_LINK, f"<style>\n{style}</style>", 1)
        store = self.opened.traces
        if store is not None:
            try:
                first = await asyncio.to_thread(store.traces, limit=_FIRST_PAGE)
            except Exception:  # the script's own request reports the store's trouble
                _log.exception("first page of traces failed")
            else:
                page = page.replace(_TRACE_ROWS, _trace_rows(first), 1)
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    async def overview(self, request: Request) -> Response:
        return JSONResponse(await self.opened.overview())

    async def stream(self, request: Request) -> Response:
        async def events() -> AsyncIterator[str]:
            while True:
                try:
                    data = await self.opened.overview()
                except Exception:  # a source failing once must not end the stream
                    _log.exception("overview failed")
                    data = None
                if data is not None:
                    yield f"event: overview\ndata: {json.dumps(data)}\n\n"
                await asyncio.sleep(self.config.interval)
                if await request.is_disconnected():
                    return

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    def _store(self) -> TraceStore | JSONResponse:
        if self.opened.traces is None:
            return _error(404, "no_trace_store", "the dashboard was started without --traces")
        return self.opened.traces

    async def traces(self, request: Request) -> Response:
        store = self._store()
        if isinstance(store, JSONResponse):
            return store
        q = request.query_params
        try:
            rows = await asyncio.to_thread(
                store.traces,
                service=q.get("service") or None,
                correlation_id=q.get("correlation_id") or None,
                errors=q.get("errors") in ("1", "true", "on"),
                order="slowest" if q.get("order") == "slowest" else "recent",
                limit=min(int(q.get("limit", "50")), 500),
                offset=int(q.get("offset", "0")),
            )
        except ValueError as exc:
            return _error(400, "bad_query", str(exc))
        total = await asyncio.to_thread(store.count)
        return JSONResponse({"traces": [asdict(r) for r in rows], "total": total})

    async def trace(self, request: Request) -> Response:
        store = self._store()
        if isinstance(store, JSONResponse):
            return store
        trace_id = request.path_params["trace_id"]
        summary = await asyncio.to_thread(store.summary, trace_id)
        if summary is None:
            return _error(404, "no_such_trace", f"no trace {trace_id!r} is stored")
        spans = await asyncio.to_thread(store.trace, trace_id)
        return JSONResponse({"summary": asdict(summary), "spans": [asdict(s) for s in spans]})

    async def sagas(self, request: Request) -> Response:
        store = await self.opened.saga_store()
        if store is None:
            return _error(404, "no_saga_store", "the dashboard was started without --sagas")
        status = request.query_params.get("status")
        try:
            limit = min(int(request.query_params.get("limit", "100")), 1000)
        except ValueError:
            return _error(400, "bad_query", "'limit' must be a whole number")
        rows = await store.list(statuses=None if not status else [status], limit=limit)
        return JSONResponse({"sagas": [_saga_view(r) for r in rows]})

    async def resume(self, request: Request) -> Response:
        store = await self.opened.saga_store()
        if store is None:
            return _error(404, "no_saga_store", "the dashboard was started without --sagas")
        from interlink.saga import SagaError, SagaNotFound
        from interlink.saga.admin import resume_saga

        saga_id = request.path_params["saga_id"]
        try:
            state = await resume_saga(store, saga_id)
        except SagaNotFound:
            return _error(404, "no_such_saga", f"no saga {saga_id!r}")
        except SagaError as exc:
            return _error(409, "cannot_resume", str(exc))
        return JSONResponse({"saga_id": saga_id, "status": state.status.value})

    async def queues(self, request: Request) -> Response:
        found: list[dict[str, Any]] = []
        for index, url in enumerate(self.config.brokers):
            broker = self.opened.broker(url)
            entry: dict[str, Any] = {"broker": redact(url), "index": index, "topics": []}
            try:
                names = await broker.topics()
                lags: dict[str, list[dict[str, Any]]] = {}
                for lag in await broker.lags():
                    lags.setdefault(lag.topic, []).append(
                        {"group": lag.group, "pending": lag.pending, "oldest_age": lag.oldest_age}
                    )
                for name in sorted(n for n in names if not n.endswith(".dlq")):
                    entry["topics"].append(
                        {
                            "topic": name,
                            "dlq": await broker.dlq_count(name),
                            "groups": lags.get(name, []),
                        }
                    )
            except Exception as exc:  # one broker down must not blank the others
                entry["error"] = str(exc)
            found.append(entry)
        return JSONResponse({"brokers": found})

    def _broker(self, request: Request) -> Any:
        raw = request.query_params.get("broker", "0")
        if not raw.isdigit() or int(raw) >= len(self.config.brokers):
            return None
        return self.opened.broker(self.config.brokers[int(raw)])

    async def dlq(self, request: Request) -> Response:
        broker = self._broker(request)
        if broker is None:
            return _error(404, "no_such_broker", "no broker with that index")
        letters = await broker.dlq_list(request.path_params["topic"], 200)
        rows = [
            {
                "id": letter.id,
                "group": letter.group,
                "attempts": letter.attempts,
                "error_type": letter.error_type,
                "reason": letter.reason,
                "dead_at": letter.dead_at,
                "size": len(letter.data),
            }
            for letter in letters
        ]
        return JSONResponse({"letters": rows})

    async def replay(self, request: Request) -> Response:
        broker = self._broker(request)
        if broker is None:
            return _error(404, "no_such_broker", "no broker with that index")
        body = await request.body()
        try:
            ids = json.loads(body).get("ids") if body else None
        except (ValueError, AttributeError):
            return _error(400, "bad_body", 'the body must be JSON: {"ids": [...]} or empty')
        count = await broker.dlq_replay(request.path_params["topic"], ids or None)
        return JSONResponse({"replayed": count})

    async def purge(self, request: Request) -> Response:
        broker = self._broker(request)
        if broker is None:
            return _error(404, "no_such_broker", "no broker with that index")
        count = await broker.dlq_purge(request.path_params["topic"])
        return JSONResponse({"purged": count})


def create_app(sources: DashboardSources, *, token: str | None = None) -> Starlette:
    """The dashboard as an ASGI app; ``app.state.token`` is what state-changing calls need."""
    api = _Api(sources, token or secrets.token_urlsafe(24))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await api.opened.aclose()

    app = Starlette(
        routes=[
            Route("/", api.index),
            Route("/api/overview", api.overview),
            Route("/api/stream", api.stream),
            Route("/api/traces", api.traces),
            Route("/api/traces/{trace_id}", api.trace),
            Route("/api/sagas", api.sagas),
            Route("/api/sagas/{saga_id}/resume", api.protected(api.resume), methods=["POST"]),
            Route("/api/queues", api.queues),
            Route("/api/dlq/{topic}", api.dlq),
            Route("/api/dlq/{topic}/replay", api.protected(api.replay), methods=["POST"]),
            Route("/api/dlq/{topic}/purge", api.protected(api.purge), methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.token = api.token
    return app


def _saga_view(row: Any) -> dict[str, Any]:
    from interlink.saga import CorruptSagaState
    from interlink.saga.admin import saga_json
    from interlink.saga.codec import state_from_json

    try:
        return saga_json(state_from_json(row.saga_id, row.state, row.version), row)
    except CorruptSagaState as exc:
        return {
            "id": row.saga_id,
            "saga": row.name,
            "status": row.status,
            "step": "?",
            "error": f"{row.error or ''} (stored state unreadable: {exc})".strip(),
            "updated_at": row.updated_at,
            "steps": [],
        }


def _trace_rows(rows: Sequence[TraceSummary]) -> str:
    """The first page of the trace list as the script draws it (``traceRow`` in app.js); the
    start is drawn in UTC, and in the browser's time zone once the script runs."""
    cells = []
    for t in rows:
        start = time.strftime("%H:%M:%S", time.gmtime(t.start_ns / 1e9))
        duration = t.duration_ns / 1e6
        cells.append(
            f'<tr class="clickable" data-trace="{t.trace_id}">'
            f'<td data-ns="{t.start_ns}">{start}</td>'
            f"<td>{escape(t.root_service)}: {escape(t.root_name)}</td>"
            f"<td>{escape(', '.join(t.services))}</td>"
            f"<td>{duration:.{2 if t.duration_ns < 10_000_000 else 1}f} ms</td>"
            f"<td>{t.spans}</td>"
            f'<td class="{"err" if t.errors else ""}">{t.errors or ""}</td>'
            f"<td><code>{escape(t.correlation_id or '')}</code></td></tr>"
        )
    return f'<tbody id="trace-rows" data-first="{len(rows)}">{"".join(cells)}</tbody>'
