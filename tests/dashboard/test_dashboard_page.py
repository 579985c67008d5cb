"""The page itself: the newest traces come with it, drawn as rows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from interlink.dashboard import DashboardSources, create_app
from interlink.tracing import SpanRecord, TraceStore


def _get(sources: DashboardSources, *paths: str) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(sources, token="t"))
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
            return [await client.get(p) for p in paths]

    return asyncio.run(run())


def _trace(n: int, start_ns: int, *, service: str = "order", errors: bool = False) -> SpanRecord:
    return SpanRecord(
        trace_id=f"{n:032x}",
        span_id=f"{n:016x}",
        parent_id=None,
        name="GET /orders/<id>",
        service=service,
        kind="server",
        start_ns=start_ns,
        end_ns=start_ns + 1_500_000,
        status="error" if errors else "ok",
        correlation_id=f"c-{n}",
    )


def test_the_newest_traces_come_with_the_page(tmp_path: Path) -> None:
    """The first page of the list is in the HTML (newest first, text escaped), so it paints
    without waiting for the script and a request of its own."""
    url = f"sqlite:///{tmp_path}/traces.db"
    store = TraceStore.from_url(url)
    now = time.time_ns()
    store.add([_trace(n, now + n * 1_000_000, errors=n == 60) for n in range(1, 61)])
    page_answer, api_answer = _get(DashboardSources(traces=url), "/", "/api/traces")
    page, api = page_answer.text, api_answer.json()["traces"]
    rows = page.count('<tr class="clickable" data-trace=')
    assert rows == 50 == len(api)
    assert f'data-first="{rows}"' in page
    first = page.index(f'data-trace="{60:032x}"')
    assert first < page.index(f'data-trace="{59:032x}"')  # newest first, as the API lists
    assert f'data-trace="{10:032x}"' not in page  # older than the first page
    assert "order: GET /orders/&lt;id&gt;" in page
    assert '<td class="err">1</td>' in page
    assert "<td>1.50 ms</td>" in page
    assert "<code>c-60</code>" in page
    assert "<style>" in page  # no request for the style sheet stands before the first paint
    assert 'href="/static/style.css"' not in page


def test_without_a_trace_store_the_script_asks(tmp_path: Path) -> None:
    """No store: the list is left empty for the script (which hides the panel on its 404)."""
    page_answer, api_answer = _get(DashboardSources(), "/", "/api/traces")
    page = page_answer.text
    assert api_answer.status_code == 404
    assert '<tbody id="trace-rows"></tbody>' in page
