"""Chaos scenarios for the food-delivery system: each starts the whole system (real processes
on loopback, embedded defaults), places a stream of orders, breaks something, and prints what
held in a before / during / after table.

``interlink demo --scenario NAME`` runs one; ``run(name)`` returns the measurements
(``Outcome``) for tests. Every number is measured: latencies at the entry by the load
generator, the rest from the services' ``/stats`` and the broker's dead-letter queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.food_delivery import gateway, runtime

SYSTEM_FILE = Path(__file__).with_name("system.yaml")
CART = ("margherita", "diavola", "tiramisu", "lemonade")


@dataclass
class Phase:
    """One phase of a scenario: what is done at its start, how long load runs."""

    name: str
    seconds: float
    action: Callable[[Run], Awaitable[None]] | None = None
    narration: str = ""
    #: After ``seconds``, keep the load on until this holds (at most ``seconds`` more).
    until: Callable[[Run], Awaitable[bool]] | None = None


@dataclass
class PhaseStats:
    """What one phase measured."""

    name: str
    requests: int = 0
    ok: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    statuses: dict[str, int] = field(default_factory=dict)
    transitions: list[str] = field(default_factory=list)
    retries: int = 0
    pricing_calls: int = 0
    menu_fallbacks: int = 0
    completed: int = 0
    compensated: int = 0
    active: int = 0
    parked: int = 0
    dlq: int = 0

    @property
    def success(self) -> float:
        """Share of requests answered 2xx."""
        return self.ok / self.requests if self.requests else 1.0

    def percentile(self, q: float) -> float:
        """The ``q`` quantile of the entry latency, in ms (0 without requests)."""
        if not self.latencies_ms:
            return 0.0
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))]


@dataclass
class Outcome:
    """A scenario's result: the phases, the final counts, and the checks with their verdict."""

    scenario: str
    phases: list[PhaseStats]
    final: dict[str, Any]
    checks: list[tuple[str, bool]]
    accepted: list[str] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """Whether every check held."""
        return all(ok for _, ok in self.checks)


class Run:
    """A running system under load: the supervisor, the load generator and the readings."""

    def __init__(self, supervisor: Any, rate: float) -> None:
        self.supervisor = supervisor
        self.rate = rate
        self.phase: PhaseStats | None = None
        self.accepted: list[str] = []
        self.inflight: set[asyncio.Task[None]] = set()
        self._rng = random.Random(7)
        self._session: Any = None
        self._tokens: dict[str, str] = {}
        #: The scenario's own nats-server, when it brings one.
        self.nats: PrivateNats | None = None

    @property
    def state_dir(self) -> Path:
        """Where the system keeps its files."""
        path: Path = self.supervisor.system.state_dir
        return path

    async def control(self, *words: str) -> None:
        """A supervisor command (``down menu``, ``start menu``, ``kill order``...)."""
        await self.supervisor.command(list(words))

    async def switch(self, service: str, **values: float) -> None:
        """Set chaos switches of ``service``, and wait until the services have read them."""
        from interlink.supervisor import set_switches

        set_switches(self.supervisor.system, service, values)
        await asyncio.sleep(runtime.Chaos.REFRESH * 2)

    async def stats(self, service: str) -> dict[str, Any]:
        """A service's ``/stats`` ({} while it is down)."""
        try:
            async with self._session.get(
                f"{self.supervisor.url(service)}/stats", timeout=_timeout(5)
            ) as response:
                data: dict[str, Any] = await response.json()
                return data
        except Exception:
            return {}

    def token(self, customer: str) -> str:
        """The customer's bearer token for the gateway (minted once, with the system's key)."""
        token = self._tokens.get(customer)
        if token is None:
            env = self.supervisor.service_env("gateway")
            token = self._tokens[customer] = gateway.demo_token(env, customer)
        return token

    async def order(self) -> None:
        """Place one order through the gateway, as its customer, and book its outcome in the
        current phase."""
        phase = self.phase
        assert phase is not None
        lines = self._rng.sample(CART, self._rng.randint(1, 3))
        cart = {
            "customer_id": f"c{self._rng.randint(1, 500)}",
            "restaurant_id": "luigis",
            "items": [{"item_id": i, "quantity": self._rng.randint(1, 3)} for i in lines],
        }
        started = time.perf_counter()
        try:
            async with self._session.post(
                self.supervisor.entry_url,
                json=cart,
                headers={"authorization": f"Bearer {self.token(cart['customer_id'])}"},
                timeout=_timeout(5),
            ) as response:
                body = await response.json(content_type=None)
                status = str(response.status)
        except Exception as exc:
            body, status = {}, type(exc).__name__
        phase.requests += 1
        phase.latencies_ms.append((time.perf_counter() - started) * 1000)
        phase.statuses[status] = phase.statuses.get(status, 0) + 1
        if status == "202":
            phase.ok += 1
            self.accepted.append(body["order_id"])

    async def load(
        self,
        seconds: float,
        *,
        total: int | None = None,
        until: Callable[[Run], Awaitable[bool]] | None = None,
    ) -> None:
        """Place orders at ``rate`` per second for ``seconds`` (or ``total`` of them); with
        ``until``, go on until it holds, for at most ``seconds`` more."""
        interval = 1.0 / self.rate
        start = time.monotonic()
        n = 0
        checked = 0.0

        async def more() -> bool:
            nonlocal checked
            if total is not None:
                return n < total
            elapsed = time.monotonic() - start
            if elapsed < seconds:
                return True
            if until is None or elapsed >= 2 * seconds:
                return False
            if time.monotonic() - checked < 0.5:
                return True
            checked = time.monotonic()
            return not await until(self)

        while await more():
            n += 1
            task = asyncio.create_task(self.order())
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            delay = start + n * interval - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
        if self.inflight:
            await asyncio.gather(*list(self.inflight), return_exceptions=True)

    async def snapshot(self) -> dict[str, Any]:
        """The counters the table shows, read from every service and the broker."""
        order = await self.stats("order")
        pricing = await self.stats("pricing")
        counts = order.get("orders", {})
        return {
            "transitions": order.get("breaker_transitions", []),
            "retries": sum(order.get("retries", {}).values()),
            "pricing_calls": pricing.get("calls", 0),
            "menu_fallbacks": order.get("menu_fallbacks", 0),
            "completed": counts.get("DISPATCHED", 0),
            "compensated": counts.get("CANCELLED", 0),
            "active": sum(v for k, v in counts.items() if k not in ("DISPATCHED", "CANCELLED")),
            "parked": order.get("sagas_parked", 0),
            "parked_why": order.get("sagas_parked_why", []),
            "dlq": await self.dlq_size(),
            "payment": await self.stats("payment"),
            "notification": await self.stats("notification"),
            "orders": counts,
        }

    async def dlq_size(self) -> int:
        """Messages in every dead-letter queue of the system's broker."""
        from interlink.messaging import Broker

        url = self.supervisor.service_env("order")
        broker = Broker.from_url(url["INTERLINK_BROKER"])
        total = 0
        try:
            namespace = url.get("FOOD_NAMESPACE", "food")
            for topic in (
                runtime.ORDER_PLACED,
                runtime.ORDER_REPLIES,
                runtime.PAYMENT_AUTHORIZE,
                runtime.PAYMENT_REFUND,
                runtime.DISPATCH_ASSIGN,
                runtime.NOTIFY,
            ):
                total += len(await broker.dlq_list(f"{namespace}.{topic}", limit=10_000))
        except Exception:
            return -1
        finally:
            with contextlib.suppress(Exception):
                await broker.stop()
        return total

    async def confirmed_orders(self) -> dict[str, int]:
        """Every order answered 202, looked up one by one on the order service's internal
        port: how many are final, in flight, or missing (a confirmed order the system does not
        know: lost)."""
        counts = {"confirmed": len(self.accepted), "confirmed_final": 0, "confirmed_missing": 0}
        base = self.supervisor.url("order")
        sem = asyncio.Semaphore(16)

        async def one(order_id: str) -> None:
            async with sem, self._session.get(f"{base}/orders/{order_id}") as response:
                if response.status == 404:
                    counts["confirmed_missing"] += 1
                    return
                body = await response.json()
                if body["status"] in ("DISPATCHED", "CANCELLED"):
                    counts["confirmed_final"] += 1

        await asyncio.gather(*(one(oid) for oid in self.accepted))
        return counts

    async def settle(self, max_wait: float) -> dict[str, Any]:
        """Wait until no order is in flight (or ``max_wait``); the last snapshot."""
        deadline_at = time.monotonic() + max_wait

        def settled(snap: dict[str, Any]) -> bool:
            # Final orders, and each one's notification delivered (it travels through the
            # outbox and the broker after the status changed).
            told = sum(k.get("orders", 0) for k in snap["notification"].values())
            return not snap["active"] and told >= snap["completed"] + snap["compensated"]

        snap = await self.snapshot()
        while not settled(snap) and time.monotonic() < deadline_at:
            await asyncio.sleep(0.5)
            snap = await self.snapshot()
        return snap


def _timeout(seconds: float) -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)


@dataclass(frozen=True)
class Scenario:
    """A named scenario: its phases, the switches it needs at start, and its checks."""

    name: str
    title: str
    phases: Callable[[bool], list[Phase]]
    checks: Callable[[list[PhaseStats], dict[str, Any], Run], list[tuple[str, bool]]]
    env: Callable[[dict[str, Any]], dict[str, str]] = lambda _: {}
    rate: float = 30.0
    burst: int | None = None
    settle: float = 20.0
    #: The system's broker is a nats-server of the scenario's own (``Run.nats``).
    private_nats: bool = False


# -- the scenarios -------------------------------------------------------------------------------


async def _down_menu(run: Run) -> None:
    await run.control("down", "menu")


async def _start_menu(run: Run) -> None:
    await run.control("start", "menu")


async def _menu_breaker_closed(run: Run) -> bool:
    transitions = (await run.stats("order")).get("breaker_transitions", [])
    menu = [t for t in transitions if t["name"] == "menu"]
    return bool(menu) and menu[-1]["new"].lower() == "closed"


def _menu_phases(fast: bool) -> list[Phase]:
    s = 0.6 if fast else 1.0
    return [
        Phase("before", 5 * s, None, "every service up; orders flowing through the gateway"),
        Phase("during", 8 * s, _down_menu, "menu killed (SIGKILL): the cached menu answers"),
        Phase(
            "after",
            8.0,
            _start_menu,
            "menu back: the breaker half-opens, then closes",
            until=_menu_breaker_closed,
        ),
    ]


def _menu_checks(
    phases: list[PhaseStats], final: dict[str, Any], run: Run
) -> list[tuple[str, bool]]:
    _before, during, after = phases
    kinds = [t.lower() for p in phases for t in p.transitions]
    opened = any(t.split("->")[-1] == "open" for t in kinds)
    closed_after = bool(after.transitions) and after.transitions[-1].lower().endswith("closed")
    return [
        (
            f"orders keep succeeding while menu is down ({during.success:.1%})",
            during.success > 0.99,
        ),
        (
            f"entry p99 while down {during.percentile(0.99):.0f} ms <= 100 ms",
            during.percentile(0.99) <= 100,
        ),
        (f"served from the cached menu {during.menu_fallbacks} times", during.menu_fallbacks > 0),
        ("the breaker opened during the outage", opened),
        ("the breaker closed after recovery", closed_after),
        (
            f"every saga final ({final['active']} in flight, {final['parked']} parked)",
            final["active"] == 0 and final["parked"] == 0,
        ),
    ]


def _declines_phases(fast: bool) -> list[Phase]:
    async def declines(run: Run) -> None:
        await run.switch("payment", decline=0.3)

    return [Phase("declines", 5 if fast else 10, declines, "30 % of payments declined")]


def _declines_checks(
    phases: list[PhaseStats], final: dict[str, Any], run: Run
) -> list[tuple[str, bool]]:
    payment = final["payment"]
    notified = final["notification"].get("cancelled", {}).get("orders", 0)
    declined = payment.get("declined", 0)
    expected = sum(runtime.share(oid, 0.3) for oid in run.accepted)
    return [
        (
            f"declined {declined} = the 30 % share of {len(run.accepted)} orders ({expected})",
            declined == expected,
        ),
        (
            f"cancelled by compensation: {final['compensated']} = declined {declined}",
            final["compensated"] == declined,
        ),
        (
            f"customers told: {notified} = cancelled {final['compensated']}",
            notified == final["compensated"],
        ),
        (
            f"orders in limbo: {final['active']} (+{final['parked']} parked)",
            final["active"] == 0 and final["parked"] == 0,
        ),
        (
            f"no money kept on a cancelled order ({payment.get('authorized', 0)} authorized = "
            f"{final['completed']} dispatched)",
            payment.get("authorized", 0) == final["completed"],
        ),
    ]


def _courier_phases(fast: bool) -> list[Phase]:
    async def no_courier(run: Run) -> None:
        await run.switch("dispatch", no_courier=0.2)

    return [Phase("no courier", 5 if fast else 10, no_courier, "20 % of orders find no courier")]


def _courier_checks(
    phases: list[PhaseStats], final: dict[str, Any], run: Run
) -> list[tuple[str, bool]]:
    payment = final["payment"]
    stranded = sum(runtime.share(f"courier:{oid}", 0.2) for oid in run.accepted)
    notified = final["notification"].get("cancelled", {}).get("orders", 0)
    return [
        (
            f"cancelled by compensation: {final['compensated']} = the 20 % share ({stranded})",
            final["compensated"] == stranded,
        ),
        (
            f"refunded: {payment.get('refunded', 0)} = cancelled {final['compensated']}",
            payment.get("refunded", 0) == final["compensated"],
        ),
        (f"customers told: {notified} = cancelled", notified == final["compensated"]),
        (
            f"0 double refunds ({payment.get('double_refunds', '?')})",
            payment.get("double_refunds") == 0,
        ),
        (
            f"orders in limbo: {final['active']} (+{final['parked']} parked)",
            final["active"] == 0 and final["parked"] == 0,
        ),
    ]


def _storm_phases(fast: bool) -> list[Phase]:
    async def fail(run: Run) -> None:
        await run.switch("pricing", fail=1.0)

    async def heal(run: Run) -> None:
        await run.switch("pricing", fail=0.0)

    s = 0.6 if fast else 1.0
    return [
        Phase("before", 4 * s, None, "pricing healthy"),
        Phase("during", 8 * s, fail, "pricing fails every call (UNAVAILABLE)"),
        Phase("after", 6 * s, heal, "pricing healthy again (the breaker closes)"),
    ]


#: The pricing budget's floor: 10 retries per second over its 10 s window, 100 retries.
BUDGET_FLOOR = 100


#: Orders placed before the measured phases (connections, caches, the first sagas).
WARM_UP = 20


def budget_bound(before: PhaseStats, during: PhaseStats) -> float:
    """The most attempts the retry budget lets reach pricing during the storm: every order's
    first attempt, plus 20 % of the first attempts in the budget's 10 s window (which reaches
    back into the phase before and the warm-up), plus the floor."""
    window = WARM_UP + before.requests + during.requests
    return during.requests + 0.2 * window + BUDGET_FLOOR


def _storm_checks(
    phases: list[PhaseStats], final: dict[str, Any], run: Run
) -> list[tuple[str, bool]]:
    during = phases[1]
    bound = budget_bound(phases[0], during)
    amplification = during.pricing_calls / during.requests if during.requests else 0.0
    return [
        (
            f"attempts reaching pricing {during.pricing_calls} for {during.requests} orders "
            f"(x{amplification:.2f}) <= orders + 20 % of the window's + floor of "
            f"{BUDGET_FLOOR} ({bound:.0f})",
            during.pricing_calls <= bound,
        ),
        (
            f"unpriced orders fail fast: p99 {during.percentile(0.99):.0f} ms <= 100 ms",
            during.percentile(0.99) <= 100,
        ),
        (f"orders succeed again after ({phases[2].success:.1%})", phases[2].success > 0.9),
    ]


def _crash_phases(fast: bool) -> list[Phase]:
    async def crash(run: Run) -> None:
        async def later() -> None:
            await asyncio.sleep(1.5 if fast else 3.0)
            await run.control("kill", "order")

        task = asyncio.create_task(later())
        run.inflight.add(task)  # type: ignore[arg-type]
        task.add_done_callback(run.inflight.discard)  # type: ignore[arg-type]

    return [Phase("burst", 0, crash, "500 orders; order killed (SIGKILL) mid-burst, restarted")]


def _crash_checks(
    phases: list[PhaseStats], final: dict[str, Any], run: Run
) -> list[tuple[str, bool]]:
    payment = final["payment"]
    confirmed, done = final["confirmed"], final["confirmed_final"]
    return [
        (
            f"every confirmed order's saga final: {done} of {confirmed} (and "
            f"{final['completed'] + final['compensated'] - done} whose answer the crash cut off)",
            done == confirmed,
        ),
        (f"0 confirmed orders lost: {final['confirmed_missing']}", final["confirmed_missing"] == 0),
        (
            f"0 stuck ({final['active']} in flight, {final['parked']} parked)",
            final["active"] == 0 and final["parked"] == 0,
        ),
        (
            f"0 double charges ({payment.get('double_charges', '?')})",
            payment.get("double_charges") == 0,
        ),
        (
            f"0 double refunds ({payment.get('double_refunds', '?')})",
            payment.get("double_refunds") == 0,
        ),
    ]


def _broker_phases(fast: bool) -> list[Phase]:
    async def lock(run: Run) -> None:
        import sqlite3

        path = run.state_dir / "broker.db"
        hold = 5.0 if fast else 10.0

        def block() -> None:
            conn = sqlite3.connect(path, timeout=30)
            conn.execute("BEGIN EXCLUSIVE")
            time.sleep(hold)
            conn.rollback()
            conn.close()

        task = asyncio.create_task(asyncio.to_thread(block))
        run.inflight.add(task)  # type: ignore[arg-type]
        task.add_done_callback(run.inflight.discard)  # type: ignore[arg-type]

    s = 0.5 if fast else 1.0
    return [
        Phase("before", 4 * s, None, "broker up"),
        Phase("during", 10 * s, lock, "broker unavailable (its SQLite file locked)"),
        Phase("after", 4 * s, None, "broker back: the outboxes drain"),
    ]


def _broker_checks(
    phases: list[PhaseStats], final: dict[str, Any], run: Run
) -> list[tuple[str, bool]]:
    during = phases[1]
    done = final["confirmed_final"]
    return [
        (
            f"orders confirmed while the broker is down ({during.success:.1%})",
            during.success > 0.99,
        ),
        (
            f"every event delivered after: {done} of {final['confirmed']} sagas final",
            done == final["confirmed"],
        ),
        (f"dead letters: {final['dlq']}", final["dlq"] == 0),
    ]


class PrivateNats:
    """A nats-server with JetStream of the scenario's own: a free loopback port, its store in
    the system's state directory. ``kill`` is kill -9; ``start`` brings it back on the same
    port and store (what JetStream had written to disk is there again)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = runtime.free_port()
        self.process: asyncio.subprocess.Process | None = None
        #: Times ``kill`` ended a running server, and ``start`` started one.
        self.kills = 0
        self.starts = 0

    @property
    def url(self) -> str:
        """The server's URL."""
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        import shutil

        binary = shutil.which("nats-server")
        if binary is None:
            raise RuntimeError(
                "broker-restart-nats needs nats-server: apt-get install nats-server "
                "(or scripts/ensure-services.sh)"
            )
        self.store.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *(binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline_at = time.monotonic() + 15
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if self.process.returncode is not None or time.monotonic() > deadline_at:
                    raise RuntimeError(f"nats-server did not start on {self.url}") from None
                await asyncio.sleep(0.05)
            else:
                writer.close()
                self.starts += 1
                return

    async def kill(self) -> None:
        """SIGKILL the server (as a crash would) and reap it."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
            self.kills += 1


async def _private_nats(stack: contextlib.AsyncExitStack, state_dir: Path) -> PrivateNats:
    """A private nats-server storing under ``state_dir``, killed when ``stack`` closes."""
    nats = PrivateNats(state_dir / "nats")
    await nats.start()
    stack.push_async_callback(nats.kill)
    return nats


def _nats_restart_phases(fast: bool) -> list[Phase]:
    hold = 5.0 if fast else 10.0

    async def crash(run: Run) -> None:
        nats = run.nats
        assert nats is not None

        async def outage() -> None:
            await nats.kill()
            await asyncio.sleep(hold)
            await nats.start()

        task = asyncio.create_task(outage())
        run.inflight.add(task)  # type: ignore[arg-type]
        task.add_done_callback(run.inflight.discard)  # type: ignore[arg-type]

    s = 0.5 if fast else 1.0
    return [
        Phase("before", 4 * s, None, "a private nats-server with JetStream up"),
        Phase("during", hold, crash, f"nats-server killed (kill -9), restarted after {hold:.0f} s"),
        Phase("after", 4 * s, None, "nats-server back: the outboxes drain, consumers resume"),
    ]


def _nats_restart_checks(
    phases: list[PhaseStats], final: dict[str, Any], run: Run
) -> list[tuple[str, bool]]:
    nats = run.nats
    assert nats is not None
    return [
        (
            f"nats-server killed (SIGKILL) {nats.kills} time(s), started again "
            f"{nats.starts - 1} time(s) on the same port and store",
            nats.kills == 1 and nats.starts == 2,
        ),
        *_broker_checks(phases, final, run),
        (
            f"0 confirmed orders lost: {final['confirmed_missing']} missing, "
            f"{final['confirmed'] - final['confirmed_final']} not final",
            final["confirmed_missing"] == 0 and final["confirmed_final"] == final["confirmed"],
        ),
        (
            f"0 orders cancelled by the outage ({final['compensated']} compensated)",
            final["compensated"] == 0,
        ),
        (
            f"0 double charges ({final['payment'].get('double_charges', '?')})",
            final["payment"].get("double_charges") == 0,
        ),
    ]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "menu-outage",
            "menu dies; orders continue from the cached menu",
            _menu_phases,
            _menu_checks,
        ),
        Scenario(
            "no-courier",
            "20 % of orders find no courier: refunded, cancelled, notified",
            _courier_phases,
            _courier_checks,
        ),
        Scenario(
            "payment-declines",
            "30 % of payments decline: compensated, notified",
            _declines_phases,
            _declines_checks,
        ),
        Scenario(
            "retry-storm",
            "pricing fails every call: the retry budget holds retries",
            _storm_phases,
            _storm_checks,
            # pricing's breaker would stop the calls first: measure the budget alone
            env=lambda _: {"FOOD_ORDER_PRICING_BREAKER": "off"},
        ),
        Scenario(
            "crash-recovery",
            "kill -9 order mid-burst of 500 orders",
            _crash_phases,
            _crash_checks,
            rate=60.0,
            burst=500,
            settle=60.0,
        ),
        Scenario(
            "broker-restart",
            "the broker is unavailable for 10 s under load",
            _broker_phases,
            _broker_checks,
            settle=40.0,
        ),
        Scenario(
            "broker-restart-nats",
            "a private nats-server is killed (kill -9) under load and restarted after 10 s",
            _nats_restart_phases,
            _nats_restart_checks,
            settle=60.0,
            private_nats=True,
        ),
    )
}


async def run(
    name: str,
    *,
    fast: bool = False,
    no_budget: bool = False,
    rate: float | None = None,
    burst: int | None = None,
    console: Any = None,
    logs: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    state_dir: Path | None = None,
    monolith: bool = False,
) -> Outcome:
    """Start the system, play scenario ``name``, stop the system; what was measured.

    ``fast`` shortens every phase (tests); ``no_budget`` turns order's retry budget for
    pricing off (``retry-storm`` for contrast); ``console`` (rich) shows the narration and
    the table; ``logs`` receives the services' output (default: dropped); ``monolith`` runs
    every service in this process (memory broker and registry, gRPC without sockets).
    """
    import aiohttp

    from interlink.supervisor import Monolith, Supervisor, load_system

    scenario = SCENARIOS[name]
    overrides = {**scenario.env({}), **(env or {})}
    if no_budget:
        overrides["FOOD_ORDER_PRICING_BUDGET"] = "off"
    async with contextlib.AsyncExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="food-")))
        system = load_system(SYSTEM_FILE, state_dir=state_dir)
        nats = await _private_nats(stack, state_dir) if scenario.private_nats else None
        if nats is not None:
            overrides["INTERLINK_BROKER"] = nats.url
        supervisor: Any = (
            Monolith(system, env=overrides, output=logs or (lambda _: None))
            if monolith
            else Supervisor(system, env=overrides, output=logs or (lambda _: None))
        )
        say = console.print if console is not None else (lambda *_: None)
        say(f"[bold]{scenario.name}[/]: {scenario.title}")
        where = "in this process" if monolith else "on loopback"
        say(f"starting {len(system.services)} services {where} (state in {state_dir})")
        async with supervisor, aiohttp.ClientSession() as session:
            await supervisor.wait_healthy(90)
            runner = Run(supervisor, rate or scenario.rate)
            runner._session = session
            runner.nats = nats
            say(f"entry: {supervisor.entry_url}")
            # Warm up (connections, caches, the first saga) outside the measured phases.
            runner.phase = PhaseStats("warm-up")
            await runner.load(0, total=WARM_UP)
            runner.accepted.clear()
            await runner.settle(10)
            phases: list[PhaseStats] = []
            previous = await runner.snapshot()
            for phase in scenario.phases(fast):
                stats = PhaseStats(phase.name)
                runner.phase = stats
                say(f"[dim]{time.strftime('%H:%M:%S')}[/] {phase.name}: {phase.narration}")
                if phase.action is not None:
                    await phase.action(runner)
                total = burst or scenario.burst
                await runner.load(
                    phase.seconds,
                    total=total if not phase.seconds else None,
                    until=phase.until,
                )
                now = await runner.snapshot()
                _book(stats, previous, now)
                phases.append(stats)
                previous = now
            say(f"[dim]{time.strftime('%H:%M:%S')}[/] settling: waiting for every saga to end")
            final = await runner.settle(scenario.settle if not fast else scenario.settle * 2)
            final.update(await runner.confirmed_orders())
            checks = scenario.checks(phases, final, runner)
        outcome = Outcome(name, phases, final, checks, runner.accepted)
    if console is not None:
        console.print(table(outcome))
        for text, ok in outcome.checks:
            console.print(f"{'[green]✓[/]' if ok else '[red]✗[/]'} {text}")
    return outcome


def _book(stats: PhaseStats, previous: dict[str, Any], now: dict[str, Any]) -> None:
    """What changed in a phase, from the snapshots before and after it."""
    stats.transitions = [
        f"{t['old']}->{t['new']}" for t in now["transitions"][len(previous["transitions"]) :]
    ]
    for key in ("retries", "pricing_calls", "menu_fallbacks"):
        # A restarted service counts from zero again.
        delta = now[key] - previous[key]
        setattr(stats, key, now[key] if delta < 0 else delta)
    for key in ("completed", "compensated", "active", "parked", "dlq"):
        setattr(stats, key, now[key])


def table(outcome: Outcome) -> Any:
    """The before / during / after table (rich)."""
    from rich.table import Table

    t = Table(title=f"{outcome.scenario}: measured at the entry and from every service")
    for col in (
        "phase",
        "requests",
        "success",
        "p50 ms",
        "p99 ms",
        "breaker",
        "retries",
        "pricing calls",
        "cached menu",
        "sagas done / comp / active",
        "parked",
        "DLQ",
    ):
        t.add_column(
            col,
            justify="left" if col in ("phase", "breaker") else "right",
            overflow="fold",
            min_width=17 if col == "breaker" else None,
        )
    for p in outcome.phases:
        t.add_row(
            p.name,
            str(p.requests),
            f"{p.success:.1%}",
            f"{p.percentile(0.5):.1f}",
            f"{p.percentile(0.99):.1f}",
            ", ".join(p.transitions) or "-",
            str(p.retries),
            str(p.pricing_calls),
            str(p.menu_fallbacks),
            f"{p.completed} / {p.compensated} / {p.active}",
            str(p.parked),
            str(p.dlq),
        )
    f = outcome.final
    t.add_row(
        "final",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        f"{f['completed']} / {f['compensated']} / {f['active']}",
        str(f["parked"]),
        str(f["dlq"]),
    )
    return t
