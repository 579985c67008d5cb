"""An orchestrator process with the default owner name, for the restart tests.

Run as ``python owner_worker.py --store URL --table T --log PATH [--start N]``: it drives
``hold`` sagas whose one step logs ``step <saga> <attempt> <time> <pid>`` and then waits
forever (the attempt stays in flight), after logging ``open <time> <pid> <owner>`` once its
orchestrator is open. With ``--start N`` it starts N sagas first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from interlink.saga import Orchestrator, SagaDefinition, SagaStore, Step, StepContext


def log(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


async def main(args: argparse.Namespace) -> None:
    async def hold(ctx: StepContext) -> None:
        log(args.log, f"step {ctx.saga_id} {ctx.attempt} {time.time()} {os.getpid()}")
        await asyncio.Event().wait()

    saga = SagaDefinition("hold", [Step("hold", hold)], max_interruptions=50)
    store = SagaStore.from_url(args.store, table=args.table)
    async with Orchestrator(store, [saga], poll_interval=0.2) as orch:
        log(args.log, f"open {time.time()} {os.getpid()} {orch.owner}")
        for i in range(args.start):
            await orch.start("hold", {"n": i})
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--start", type=int, default=0)
    asyncio.run(main(parser.parse_args()))
