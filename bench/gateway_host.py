"""A region gateway in a process of its own, for the gateway benchmark:

    python -m bench.gateway_host PRIMARY_URL... [--canary URL...] [--weight N]
                                 [--max-connections N]

routes /inference/demo → the replicas (least outstanding requests, the canary
getting `--weight` percent), says `{"url": BASE_URL}` and answers commands on
stdin (see `bench.child`) until stdin closes or SIGTERM:

- `weight N`: route again with the canary's weight N, as the runtime does on a
  canary change;
- `counts`: the gateway's own per-version counters, `arrivals` (requests counted
  as done plus those in flight: every request routed so far), `done` and
  `in_flight`, with this process's CPU seconds and memory.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench.child import die_with_parent, own_usage, serve_commands
from servefleet.metrics import Metrics
from servefleet.runtime.local.gateway import (
    Backend,
    Gateway,
    GatewaySettings,
    Router,
    event_loop_factory,
)

PREFIX = "/inference/demo"
REGION = "bench"
ENDPOINT = "demo"
VERSIONS = ("primary", "canary")


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_host")
    parser.add_argument("primary", nargs="+", help="base URLs of the primary's replicas")
    parser.add_argument("--canary", nargs="*", default=[], help="base URLs of the canary's")
    parser.add_argument("--weight", type=int, default=0, help="the canary's percent")
    parser.add_argument("--max-connections", type=int, default=GatewaySettings.max_connections)
    return parser.parse_args(argv)


def _counts(metrics: Metrics) -> dict[str, Any]:
    registry = metrics.registry
    counts: dict[str, Any] = {}
    for version in VERSIONS:
        labels = {"endpoint": ENDPOINT, "region": REGION, "version": version}
        done = sum(
            registry.get_sample_value(
                "servefleet_gateway_requests_total", {**labels, "status_class": status}
            )
            or 0
            for status in ("2xx", "3xx", "4xx", "5xx")
        )
        in_flight = registry.get_sample_value("servefleet_gateway_requests_in_flight", labels) or 0
        counts[version] = {
            "arrivals": int(done + in_flight),
            "done": int(done),
            "in_flight": int(in_flight),
        }
    return counts


async def serve(options: argparse.Namespace) -> None:
    router = Router(REGION)
    primary = [
        Backend(f"demo/primary-{i}", url.rstrip("/")) for i, url in enumerate(options.primary)
    ]
    canary = [Backend(f"demo/canary-{i}", url.rstrip("/")) for i, url in enumerate(options.canary)]

    def route(weight: int) -> None:
        router.set_route(
            ENDPOINT,
            PREFIX,
            routed=True,
            reason="",
            weight=weight,
            primary=primary,
            canary=canary,
        )

    route(options.weight)
    metrics = Metrics()
    gateway = Gateway(
        [router], GatewaySettings(max_connections=options.max_connections), metrics=metrics
    )
    url = await gateway.start("127.0.0.1", 0)

    async def handle(command: str) -> dict[str, Any]:
        name, _, argument = command.partition(" ")
        if name == "weight":
            route(int(argument))
            return {"weight": int(argument)}
        if name == "counts":
            return {"versions": _counts(metrics), "usage": own_usage()}
        raise ValueError(f"unknown command {command!r}")

    try:
        await serve_commands({"url": url}, handle)
    finally:
        await gateway.close()


if __name__ == "__main__":
    die_with_parent()
    # The event loop `servefleet up` runs its gateways on.
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(_parse()))
