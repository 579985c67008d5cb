"""One instance of the benchmark's HTTP service: an aiohttp server that registers itself.

    python benchmarks/_discovery_server.py REGISTRY_URL INSTANCE_ID PORT

Prints ``ready <wall time of registration>`` once registered and serving; answers ``GET /``
with its instance id. Stops on SIGTERM (deregister, drain, exit) or dies on SIGKILL.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from aiohttp import web

from interlink.discovery import ServiceInstance
from interlink.discovery.serve import Registration

SERVICE = "bench-http"


async def main(url: str, instance_id: str, port: int) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=instance_id)

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    instance = ServiceInstance(SERVICE, instance_id, "127.0.0.1", port)
    registration = Registration(url, instance, ttl=3.0, propagation_delay=0.2)
    await registration.start()
    print(f"ready {time.time():.6f}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await registration.stop()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
