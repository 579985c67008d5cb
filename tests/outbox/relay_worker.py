"""An outbox relay process for the crash tests: ``python relay_worker.py --db URL --table T
--broker URL --owner NAME`` relays until killed."""

from __future__ import annotations

import argparse
import asyncio

from interlink.messaging import Broker
from interlink.outbox import OutboxRelay


async def main(args: argparse.Namespace) -> None:
    broker = Broker.from_url(args.broker)
    relay = OutboxRelay(
        args.db,
        broker,
        table=args.table,
        owner=args.owner,
        lease=args.lease,
        batch_size=args.batch,
        poll_interval=0.02,
    )
    try:
        await relay.run()
    finally:
        await broker.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--lease", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=100)
    asyncio.run(main(parser.parse_args()))
