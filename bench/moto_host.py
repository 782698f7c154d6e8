"""A moto server (DynamoDB and the rest of AWS, in memory) in a process of its own,
so that its CPU time is not the measured process's:

    python -m bench.moto_host

says `{"endpoint_url": "http://127.0.0.1:PORT"}` and serves until stdin closes or
SIGTERM (see `bench.child`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from moto.server import ThreadedMotoServer

from bench.child import die_with_parent, own_usage, serve_commands


async def main() -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()

        async def handle(command: str) -> dict[str, Any]:
            if command != "usage":
                raise ValueError(f"unknown command {command!r}")
            return own_usage()

        await serve_commands({"endpoint_url": f"http://{host}:{port}"}, handle)
    finally:
        server.stop()


if __name__ == "__main__":
    die_with_parent()
    asyncio.run(main())
