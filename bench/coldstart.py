"""Cold start from zero: the first request to an endpoint at zero replicas, answered.

Two figures per start-up delay of the demo server (`--startup-delay`):

- *replica alone*: the demo server started directly, its `/health` polled every
  5 ms until it answers 200: the replica's own start-up, the floor.
- *through the gateway*: a local region (`LocalRuntime`, default settings) runs an
  endpoint with `min_replicas: 0` and its gateway; each trial waits until the
  endpoint is at zero (idle 1 s), then times one chat completion from sending to
  the whole answer. The gateway holds it, a replica starts, and it is forwarded.

The goal (issue 16) is the difference of the medians: at most 150 ms above the
replica's own start-up.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.report import Row, latency_text
from bench.stats import summary
from servefleet.plan import desired_workload
from servefleet.runtime.local.gateway import Gateway, Router
from servefleet.runtime.local.processes import free_port
from servefleet.runtime.local.supervisor import LocalRuntime
from servefleet.spec import Endpoint, EndpointSpec

__all__ = ["FULL", "QUICK", "Plan", "run"]

GOAL_MS = 150.0


@dataclass(frozen=True)
class Plan:
    trials: int
    delays: tuple[float, ...]


FULL = Plan(trials=20, delays=(0.0, 2.0))
QUICK = Plan(trials=5, delays=(0.0, 2.0))


def _demo(delay: float, port: str) -> list[str]:
    # No pause between tokens: the answer itself should cost next to nothing.
    return [
        *(sys.executable, "-m", "servefleet.demo", "--port", port),
        *("--startup-delay", str(delay), "--token-delay", "0"),
    ]


async def _alone(client: aiohttp.ClientSession, delay: float, port: int) -> float:
    """Seconds from starting a demo server to its first healthy answer."""
    began = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *_demo(delay, str(port)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                async with client.get(f"http://127.0.0.1:{port}/health") as response:
                    if response.status == 200:
                        return time.perf_counter() - began
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.005)
    finally:
        process.terminate()
        await process.wait()


def _endpoint(delay: float) -> Endpoint:
    spec = EndpointSpec.model_validate(
        {
            "command": _demo(delay, "{port}"),
            "health_path": "/health",
            "autoscaling": {
                "enabled": True,
                "min_replicas": 0,
                "max_replicas": 1,
                "metrics": [{"type": "concurrency", "target": 10}],
                "scale_to_zero_after": 1,
                "scale_up_window": 1,
                "scale_down_window": 1,
                "panic_window": 1,
            },
        }
    )
    now = datetime.now(UTC)
    return Endpoint(
        name="cold", spec=spec, target_regions=["bench"], created_at=now, updated_at=now
    )


async def _through_gateway(
    client: aiohttp.ClientSession, delay: float, trials: int, logs: Path
) -> list[float]:
    router = Router("bench")
    runtime = LocalRuntime("bench", router, log_dir=logs)
    gateway = Gateway([router])
    url = await gateway.start()
    samples: list[float] = []
    try:
        workload = desired_workload(_endpoint(delay), "bench")
        assert workload is not None
        await runtime.apply(workload)
        request = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(trials):
            # Back at zero, every process gone: polled, as the runtime has no event for it.
            while runtime.replicas("cold"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            began = time.perf_counter()
            async with client.post(
                f"{url}/inference/cold/v1/chat/completions", json=request
            ) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"cold start answered {response.status}")
            samples.append(time.perf_counter() - began)
    finally:
        await runtime.close()
        await gateway.close()
    return samples


async def run(plan: Plan) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-cold-") as directory:
        async with aiohttp.ClientSession() as client:
            for delay in plan.delays:
                port = free_port(())
                alone = [await _alone(client, delay, port) for _ in range(plan.trials)]
                cold = await _through_gateway(client, delay, plan.trials, Path(directory))
                floor = summary([s * 1000 for s in alone])
                figures = summary([s * 1000 for s in cold])
                above = (figures["p50"] or 0) - (floor["p50"] or 0)
                workload = (
                    f"demo --startup-delay {delay:g}: {plan.trials} starts, "
                    "one chat completion each from zero"
                )
                keys = ("p50", "p99", "max")
                rows.append(
                    Row(
                        "cold start",
                        f"delay {delay:g} s: replica alone (start → healthy)",
                        workload,
                        latency_text(floor, keys=keys),
                        floor,
                    )
                )
                rows.append(
                    Row(
                        "cold start",
                        f"delay {delay:g} s: first answer through the gateway",
                        workload,
                        latency_text(figures, keys=keys) + f"; p50 {above:.0f} ms above alone",
                        {**figures, "p50_above_replica_ms": round(above, 1)},
                        goal=f"p50 ≤ {GOAL_MS:g} ms above the replica alone",
                        met=above <= GOAL_MS,
                    )
                )
    return rows
