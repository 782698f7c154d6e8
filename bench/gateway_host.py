"""A region gateway in a process of its own, for the gateway benchmark:
`python -m bench.gateway_host UPSTREAM_URL` routes /inference/demo → UPSTREAM_URL,
prints the gateway's base URL on one line, and serves until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

from servefleet.runtime.local.gateway import Backend, Gateway, Router, event_loop_factory

PREFIX = "/inference/demo"


async def serve(upstream: str) -> None:
    router = Router("bench")
    router.set_route(
        "demo",
        PREFIX,
        routed=True,
        reason="",
        weight=0,
        primary=[Backend("demo/primary-0", upstream.rstrip("/"))],
        canary=[],
    )
    gateway = Gateway([router])
    url = await gateway.start("127.0.0.1", 0)
    print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await gateway.close()


if __name__ == "__main__":
    # The event loop `servefleet up` runs its gateways on.
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(sys.argv[1]))
