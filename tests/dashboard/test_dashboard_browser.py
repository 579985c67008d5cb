"""The dashboard in a real headless Chromium, against a real traced system of processes.

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright; ``make test`` installs both
(``scripts/ensure-browser.sh``). Screenshots land in ``test-artifacts/`` (ignored by git).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright import sync_api as playwright
from support import wait_until

from interlink.dashboard import DashboardSources, create_app
from interlink.messaging import Broker

ROOT = Path(__file__).resolve().parents[2]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WORKER = str(Path(__file__).with_name("system_worker.py"))
ARTIFACTS = ROOT / "test-artifacts"
# the flags this machine's Chromium needs to start quietly with no network but loopback
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` under uvicorn in a thread, lifespan on (the dashboard closes its sources then)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "the dashboard to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class System:
    """The processes of the little system, and what the test needs to poke at them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: str, *extra: str) -> str:
        proc = subprocess.Popen([sys.executable, WORKER, role, str(self.root), *extra])
        self.procs[role] = proc
        port_file = self.root / f"{role}.port"

        def ready() -> str | None:
            if proc.poll() is not None:
                raise RuntimeError(f"{role} exited with {proc.returncode}")
            return port_file.read_text() if port_file.exists() and port_file.read_text() else None

        return str(wait_until(ready, 30, f"{role} to start"))

    def stop(self, role: str) -> None:
        proc = self.procs.pop(role)
        proc.terminate()
        proc.wait(20)

    def close(self) -> None:
        for role in list(self.procs):
            self.stop(role)

    def received(self) -> list[str]:
        path = self.root / "c.received"
        return path.read_text().split() if path.exists() else []


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("system")
    (root / "saga.fail").write_text("on")
    s = System(root)
    try:
        s.start("c")
        s.start("saga")
        b = s.start("b")
        a = s.start("a", f"http://127.0.0.1:{b}")
        s.a = f"http://127.0.0.1:{a}"  # type: ignore[attr-defined]
        s.b = f"http://127.0.0.1:{b}"  # type: ignore[attr-defined]
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def dashboard(system: System) -> Iterator[tuple[str, str]]:
    root = system.root
    sources = DashboardSources(
        traces=f"sqlite:///{root}/traces.db",
        sagas=f"sqlite:///{root}/sagas.db",
        brokers=[f"sqlite:///{root}/events.db"],
        metrics={"a": f"{system.a}/metrics", "b": f"{system.b}/metrics"},  # type: ignore[attr-defined]
        interval=0.5,
    )
    app = create_app(sources, token="test-token")
    with serve(app) as url:
        yield url, "test-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run scripts/ensure-browser.sh")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, dashboard: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[Any]:
    url, token = dashboard
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: d.accept())
    pg.errors = errors
    pg.goto(f"{url}/?token={token}")
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"dashboard-{request.node.name}.png"), full_page=True)
    context.close()


def place_order(system: System, cid: str, *, fail: bool = False) -> None:
    url = f"{system.a}/hop" + ("?fail=1" if fail else "")  # type: ignore[attr-defined]
    answer = httpx.get(url, headers={"x-request-id": cid}, timeout=10)
    assert answer.status_code == 200, answer.text


def test_page_loads_without_errors_and_goes_live(page: Any, system: System) -> None:
    """No console errors; the stream connects; the summary is filled in."""
    page.wait_for_selector("#live.on", timeout=10_000)
    assert page.inner_text("#count-services").isdigit()
    assert page.errors == []


def test_a_trace_across_http_and_the_broker_has_the_right_shape(page: Any, system: System) -> None:
    """a -> b over HTTP, b -> c over the broker: one trace; in the waterfall c's consumer span
    descends from b's, and b's from a's."""
    place_order(system, "trace-me-1")
    wait_until(system.received, 20, "c to receive the event")
    page.fill("#trace-filters input[name=correlation_id]", "trace-me-1")

    def services_in_trace() -> set[str]:
        page.click("#trace-filters button[type=submit]")
        row = page.query_selector("#traces tbody tr")
        if row is None:
            return set()
        cells = row.query_selector_all("td")
        return set(cells[2].inner_text().split(", "))

    wait_until(lambda: services_in_trace() == {"a", "b", "c"}, 20, "the whole trace to be stored")
    page.click("#traces tbody tr")
    page.wait_for_selector("#waterfall:not([hidden]) .wf-row")
    rows = page.eval_on_selector_all(
        "#waterfall-rows .wf-row",
        "rows => rows.map(r => [r.dataset.span, r.dataset.parent, r.dataset.service])",
    )
    parents = {span: parent for span, parent, _ in rows}
    service = {span: svc for span, _, svc in rows}

    def ancestry(span: str) -> list[str]:
        chain = []
        while parents.get(span):
            span = parents[span]
            chain.append(service[span])
        return chain

    c_spans = [s for s in service if service[s] == "c"]
    assert c_spans, rows
    chain = ancestry(c_spans[0])
    assert chain[0] == "b" or "b" in chain
    assert chain[-1] == "a"
    assert sum(1 for _, parent, _ in rows if not parent) == 1  # one root
    assert page.errors == []


def test_a_breaker_tripping_turns_its_edge_red(page: Any, system: System) -> None:
    """b goes down; a's calls fail, a's breaker for b opens, the a -> b edge is red < 2 s."""
    place_order(system, "edge-1")
    edge = "#topology path.edge[data-source=a][data-target=b]"
    page.wait_for_selector(f"{edge}[data-state=closed]", state="attached", timeout=15_000)
    system.stop("b")
    for i in range(3):  # minimum_calls=2: two failures open it
        httpx.get(f"{system.a}/hop", headers={"x-request-id": f"down-{i}"}, timeout=10)  # type: ignore[attr-defined]
    tripped = time.monotonic()
    page.wait_for_selector(f"{edge}[data-state=open]", state="attached", timeout=2_000)
    assert time.monotonic() - tripped < 2.0
    assert page.inner_text("#breakers tr[data-breaker='a/b'] .badge") == "open"
    assert page.errors == []


def test_dlq_replay_button_republishes_to_the_consumer(
    page: Any, system: System, dashboard: tuple[str, str]
) -> None:
    """A message c failed on sits in the DLQ; Replay re-publishes it and c receives it."""
    url, _ = dashboard
    (system.root / "c.fail").write_text("on")
    before = set(system.received())

    async def publish_one() -> str:
        broker = Broker.from_url(f"sqlite:///{system.root}/events.db")
        try:
            return await broker.publish("orders.placed", {"replay": True})
        finally:
            await broker.stop()

    # Playwright's sync API runs a loop in this thread: publish from another one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        mid = pool.submit(asyncio.run, publish_one()).result(30)

    def dead() -> bool:
        letters = httpx.get(f"{url}/api/dlq/orders.placed").json()["letters"]
        return any(letter["id"] == mid for letter in letters)

    wait_until(dead, 20, "the message to be dead-lettered")
    page.reload()
    page.click("#queues tr[data-topic='orders.placed'] button.open-dlq")
    page.wait_for_selector(f"#letters tr[data-letter='{mid}']", timeout=10_000)
    (system.root / "c.fail").unlink()
    page.click("#dlq-replay")
    page.wait_for_selector("#dlq-result:has-text('replayed 1')", timeout=10_000)
    wait_until(
        lambda: mid in set(system.received()) - before, 20, "c to receive the replayed message"
    )
    assert not dead()
    assert page.errors == []


def test_queues_show_each_groups_consumer_lag(page: Any, system: System) -> None:
    """Three messages for a group that is not consuming: its row says 3 waiting and how old
    the oldest is."""

    async def publish_unread() -> None:
        broker = Broker.from_url(f"sqlite:///{system.root}/events.db")
        try:
            backend = await broker.connect()
            await backend.ensure_group("audit.recorded", "auditor")  # type: ignore[attr-defined]
            for i in range(3):
                await broker.publish("audit.recorded", {"n": i})
        finally:
            await broker.stop()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, publish_unread()).result(30)
    page.reload()
    row = "#queues tr[data-topic='audit.recorded'] [data-group='auditor']"
    page.wait_for_selector(row, timeout=10_000)
    text = page.inner_text(row)
    assert text.startswith("auditor: 3 waiting, oldest "), text
    assert page.errors == []


def test_saga_resume_button_finishes_a_parked_saga(
    page: Any, system: System, dashboard: tuple[str, str]
) -> None:
    """A saga parked in NEEDS_ATTENTION; the cause is fixed; Resume; it ends COMPENSATED."""
    url, _ = dashboard

    def status() -> str:
        sagas = httpx.get(f"{url}/api/sagas").json()["sagas"]
        return next((s["status"] for s in sagas if s["id"] == "order-o-1"), "")

    wait_until(lambda: status() == "NEEDS_ATTENTION", 30, "the saga to park")
    page.click("#saga-tabs button[data-status=NEEDS_ATTENTION]")
    button = "#sagas tr[data-saga='order-o-1'] button.resume"
    page.wait_for_selector(button, timeout=10_000)
    (system.root / "saga.fail").unlink()
    page.click(button)
    wait_until(lambda: status() == "COMPENSATED", 30, "the resumed saga to finish")
    assert page.errors == []


def test_state_changes_need_the_token(dashboard: tuple[str, str]) -> None:
    """Without the token a replay, purge or resume is refused with 401 and a JSON reason."""
    url, _ = dashboard
    for path in (
        "/api/dlq/orders.placed/replay",
        "/api/dlq/orders.placed/purge",
        "/api/sagas/x/resume",
    ):
        answer = httpx.post(f"{url}{path}", headers={"authorization": "Bearer wrong"})
        assert answer.status_code == 401
        assert json.loads(answer.text)["reason"] == "token_required"
