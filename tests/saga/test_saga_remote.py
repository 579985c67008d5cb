"""Steps that are synchronous remote calls: an ``interlink.http`` client (with its service
policies) against a real payment service on loopback, and a ``Pipeline`` as the step's policy."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from saga_helpers import opened, run, unique_table

from interlink import Pipeline, Retry, Timeout
from interlink.http import AsyncClient, ServicePolicies
from interlink.saga import Orchestrator, SagaDefinition, SagaStatus, Step, StepContext

ONCE = Retry(retries=1, backoff=0.001, max_backoff=0.002, jitter="none")


class Payments:
    """A payment service that deduplicates charges by ``Idempotency-Key`` and answers the
    first request for each key with a 503 (a flaky instance)."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.charges: dict[str, str] = {}
        self.deadlines: list[int] = []

    async def charge(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        self.requests[key] += 1
        self.deadlines.append(int(request.headers.get("x-request-timeout-ms", "-1")))
        if self.requests[key] == 1:
            return web.json_response({"error": "try again"}, status=503)
        payment = self.charges.setdefault(key, f"pay-{len(self.charges) + 1}")
        return web.json_response({"payment_id": payment})


@asynccontextmanager
async def serving(payments: Payments) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/payments", payments.charge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def test_http_step_retries_inside_the_attempt_and_charges_once(tmp_path: Path) -> None:
    """authorize_payment POSTs through interlink.http with the step's idempotency key: the
    client's policies retry the 503 within one saga attempt, the step's timeout travels as the
    deadline header, and a saga-level re-run (the reply was lost) charges nothing new."""
    payments = Payments()
    lost_reply = [True]

    async def main() -> None:
        async with serving(payments) as base, AsyncClient() as client:
            service = client.service(
                "payments",
                url=base,
                policies=ServicePolicies(retries=2, backoff=0.001, max_backoff=0.002),
            )

            async def authorize(ctx: StepContext) -> Any:
                response = await service.post(
                    "/payments",
                    json={"order": ctx.saga_id},
                    headers={"Idempotency-Key": ctx.idempotency_key},
                )
                body = response.raise_for_status().json()
                if lost_reply[0]:  # the answer never made it back to the saga
                    lost_reply[0] = False
                    raise ConnectionError("connection reset after the charge")
                return body

            definition = SagaDefinition(
                "order", [Step("authorize_payment", authorize, timeout=5.0, retry=ONCE)]
            )
            async with (
                opened(f"sqlite:///{tmp_path / 'sagas.db'}", unique_table()) as store,
                Orchestrator(store, [definition], poll_interval=0.05) as orch,
            ):
                state = await orch.wait(await orch.start("order", {}, saga_id="o-1"))
                assert state.status is SagaStatus.COMPLETED
                assert state.step("authorize_payment").attempts == 2
                assert state.step("authorize_payment").result == {"payment_id": "pay-1"}

    run(main())
    assert payments.charges == {"o-1:authorize_payment": "pay-1"}
    assert payments.requests["o-1:authorize_payment"] == 3  # 503, 200, then the re-run's 200
    assert all(0 < ms <= 5000 for ms in payments.deadlines)


def test_pipeline_policy_retries_inside_one_attempt_and_bounds_it(tmp_path: Path) -> None:
    """A Pipeline (timeout + retry) as the step's policy: a connection error is retried by the
    pipeline within the saga attempt; a hang is cut off by the pipeline's timeout, which fails
    the attempt, and the saga's own retry runs the step again under the same key."""
    calls: list[str] = []

    async def flaky_then_hung(ctx: StepContext) -> str:
        calls.append(ctx.idempotency_key)
        if len(calls) == 1:
            raise ConnectionError("connection reset")
        if len(calls) == 2:
            await asyncio.Event().wait()  # hangs until the pipeline's timeout cuts it off
        return "reserved"

    # The timeout bounds the whole pipeline call (first call, backoff, second call), so it must
    # leave room for the first call and the backoff on a busy machine: 0.1 s did not, and a
    # late second call then ran in the saga's second attempt. 2 s does; the hang is endless.
    policy = Pipeline(
        timeout=Timeout(2.0),
        retry=Retry(retries=2, backoff=0.001, max_backoff=0.002, jitter="none"),
    )
    definition = SagaDefinition(
        "stock", [Step("reserve_inventory", flaky_then_hung, policy=policy, retry=ONCE)]
    )

    async def main() -> None:
        async with (
            opened(f"sqlite:///{tmp_path / 'sagas.db'}", unique_table()) as store,
            Orchestrator(store, [definition], poll_interval=0.05) as orch,
        ):
            state = await orch.wait(await orch.start("stock", {}, saga_id="s-1"))
            assert state.status is SagaStatus.COMPLETED
            assert state.step("reserve_inventory").attempts == 2
            assert state.step("reserve_inventory").result == "reserved"

    run(main())
    assert calls == ["s-1:reserve_inventory"] * 3
