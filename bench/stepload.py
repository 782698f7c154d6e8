"""The replica count under a step load: how a local region's autoscaler follows it.

A local region (`LocalRuntime`, default settings, its gateway) runs one endpoint
autoscaled on `concurrency` (target 2 requests in flight per replica, 0 to 6
replicas, windows of 10 s so a run takes about two minutes). Clients send streamed
chat completions through the gateway one after another (each about 1 s long:
20 tokens, 50 ms apart), in steps: none, 4 clients, 10 clients, none. Every 0.5 s
the trace records the clients, the replicas running and ready, and the count the
autoscaler decided with its reason.

Each step is a row: the count it should reach (clients / target, within the
bounds; 0 once idle), when the decision first reached it and when that many
replicas were ready, counted from the step. Goals (issue 16): each step up reaches
its count; after the load stops no replica goes before the scale-down window has
passed, and the count reaches zero after the idle window. The trace itself is
printed as a table of the moments something changed, and drawn in
`bench/results/stepload.svg`.
"""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from rich.table import Table

from bench.progress import console, show
from bench.report import Row
from servefleet.plan import desired_workload
from servefleet.runtime.local.gateway import Gateway, Router
from servefleet.runtime.local.supervisor import LocalRuntime
from servefleet.spec import Endpoint, EndpointSpec

__all__ = ["FULL", "QUICK", "Plan", "run"]

TARGET = 2
MAX_REPLICAS = 6
WINDOW = 10
"""Seconds: the stable (scale-up) window, the scale-down window and the idle window."""
TICK = 0.5
SVG = Path(__file__).resolve().parent / "results" / "stepload.svg"


@dataclass(frozen=True)
class Plan:
    steps: tuple[tuple[int, float], ...]
    """(clients, seconds) in order."""


FULL = Plan(steps=((0, 5.0), (4, 30.0), (10, 30.0), (0, 45.0)))
QUICK = Plan(steps=((0, 3.0), (4, 20.0), (10, 20.0), (0, 35.0)))


@dataclass(frozen=True)
class Point:
    at: float
    """Seconds since the trace began."""
    clients: int
    running: int
    ready: int
    desired: int
    reason: str


def _endpoint() -> Endpoint:
    spec = EndpointSpec.model_validate(
        {
            "command": [
                *(sys.executable, "-m", "servefleet.demo", "--port", "{port}"),
                *("--token-delay", "0.05"),
            ],
            "health_path": "/health",
            "autoscaling": {
                "enabled": True,
                "min_replicas": 0,
                "max_replicas": MAX_REPLICAS,
                "metrics": [{"type": "concurrency", "target": TARGET}],
                "scale_to_zero_after": WINDOW,
                "scale_up_window": WINDOW,
                "scale_down_window": WINDOW,
                "panic_window": 2,
            },
        }
    )
    now = datetime.now(UTC)
    return Endpoint(
        name="step", spec=spec, target_regions=["bench"], created_at=now, updated_at=now
    )


def _wanted(clients: int) -> int:
    return min(MAX_REPLICAS, math.ceil(clients / TARGET))


async def _client(session: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> int:
    """Streamed completions one after another until `stop`; the failures."""
    request = {
        "model": "demo",
        "messages": [{"role": "user", "content": "hello world"}],
        "stream": True,
        "max_tokens": 20,
    }
    failures = 0
    while not stop.is_set():
        async with session.post(f"{url}/inference/step/v1/chat/completions", json=request) as r:
            await r.read()
            failures += r.status != 200
    return failures


async def _trace(plan: Plan, logs: Path) -> tuple[list[Point], list[float], int]:
    """The trace, when each step began, and the requests that failed."""
    router = Router("bench")
    runtime = LocalRuntime("bench", router, log_dir=logs)
    gateway = Gateway([router])
    url = await gateway.start()
    points: list[Point] = []
    starts: list[float] = []
    failures = 0
    clients: list[tuple[asyncio.Event, asyncio.Task[int]]] = []
    try:
        workload = desired_workload(_endpoint(), "bench")
        assert workload is not None
        await runtime.apply(workload)
        async with aiohttp.ClientSession() as session:
            began = time.perf_counter()
            for index, (count, seconds) in enumerate(plan.steps):
                show(f"step {index + 1}/{len(plan.steps)}: {count} clients for {seconds:g} s")
                # A step down begins when the leaving clients' last answers are in.
                leaving = clients[count:]
                del clients[count:]
                for stop, _ in leaving:
                    stop.set()
                failures += sum(await asyncio.gather(*(task for _, task in leaving)))
                while len(clients) < count:
                    stop = asyncio.Event()
                    clients.append((stop, asyncio.create_task(_client(session, url, stop))))
                starts.append(time.perf_counter() - began)
                ends = time.perf_counter() + seconds
                while time.perf_counter() < ends:
                    observed = await runtime.observe("step")
                    assert observed is not None
                    replicas = [r for r in runtime.replicas("step") if not r.retiring]
                    points.append(
                        Point(
                            round(time.perf_counter() - began, 2),
                            len(clients),
                            len(replicas),
                            observed.primary.ready,
                            observed.primary.desired or 0,
                            observed.primary.scale_reason,
                        )
                    )
                    await asyncio.sleep(TICK)
            for stop, task in clients:
                stop.set()
                failures += await task
    finally:
        await runtime.close()
        await gateway.close()
    return points, starts, failures


def _first(points: list[Point], since: float, until: float, check: str, count: int) -> float | None:
    for point in points:
        if since <= point.at < until and getattr(point, check) == count:
            return point.at - since
    return None


def _rows(plan: Plan, points: list[Point], starts: list[float], failures: int) -> list[Row]:
    rows: list[Row] = []
    ends = [*starts[1:], math.inf]
    workload = (
        f"concurrency target {TARGET}, 0-{MAX_REPLICAS} replicas, windows {WINDOW} s; "
        "streamed completions of about 1 s; steps "
        + " → ".join(f"{c} clients {s:g} s" for c, s in plan.steps)
    )
    previous = 0
    for index, ((clients, _), since, until) in enumerate(
        zip(plan.steps, starts, ends, strict=True)
    ):
        if index == 0:
            previous = clients
            continue
        during = [p for p in points if since <= p.at < until]
        wanted = _wanted(clients)
        decided = _first(points, since, until, "desired", wanted)
        ready = _first(points, since, until, "ready", wanted)
        figures = {
            "clients": clients,
            "wanted": wanted,
            "decided_after_s": decided,
            "ready_after_s": ready,
            "max_running": max((p.running for p in during), default=0),
        }
        shown = (
            f"→ {wanted}: decided after {_seconds(decided)}, {wanted} ready after {_seconds(ready)}"
        )
        if clients >= previous:
            rows.append(
                Row(
                    "step load",
                    f"step {index}: {previous} → {clients} clients",
                    workload,
                    shown,
                    figures,
                    goal=f"reaches {wanted} replicas",
                    met=ready is not None,
                )
            )
        else:
            first_down = next(
                (p.at - since for p in during if p.running < max(_wanted(previous), 1)), None
            )
            figures["first_removal_after_s"] = first_down
            rows.append(
                Row(
                    "step load",
                    f"step {index}: {previous} → {clients} clients",
                    workload,
                    f"{shown}; first replica removed after {_seconds(first_down)}",
                    figures,
                    goal=f"none removed before the {WINDOW} s window; 0 after idle",
                    met=first_down is not None and first_down >= WINDOW and ready is not None,
                )
            )
        previous = clients
    rows.append(
        Row(
            "step load",
            "requests answered",
            workload,
            f"{failures} failed",
            {"failed": failures},
            goal="none failed",
            met=failures == 0,
        )
    )
    return rows


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _print(points: list[Point]) -> None:
    table = Table(title="step load: the replica count, where it changed", box=None)
    for column in ("t (s)", "clients", "running", "ready", "decided", "reason"):
        table.add_column(column)
    last: tuple[int, ...] | None = None
    for point in points:
        now = (point.clients, point.running, point.ready, point.desired)
        if now != last:
            table.add_row(f"{point.at:.1f}", *map(str, now), point.reason)
            last = now
    console.print(table)


def _svg(points: list[Point], path: Path) -> None:
    """Clients (grey), replicas ready (blue) and decided (orange) over time."""
    width, height, pad = 720, 240, 30
    span = max((p.at for p in points), default=1.0) or 1.0
    top = max(max(p.clients / TARGET for p in points), MAX_REPLICAS, 1)

    def line(values: list[float], colour: str) -> str:
        coords = " ".join(
            f"{pad + p.at / span * (width - 2 * pad):.1f},"
            f"{height - pad - v / top * (height - 2 * pad):.1f}"
            for p, v in zip(points, values, strict=True)
        )
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>'

    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="{width}" height="{height}" fill="white"/>'
        + line([p.clients / TARGET for p in points], "#999")
        + line([float(p.desired) for p in points], "#e80")
        + line([float(p.ready) for p in points], "#26c")
        + f'<text x="{pad}" y="16" font-size="12">clients/target (grey), decided (orange), '
        f"ready (blue); 0-{top:g} replicas over {span:.0f} s</text></svg>\n"
    )


async def run(plan: Plan) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-step-") as directory:
        points, starts, failures = await _trace(plan, Path(directory))
    _print(points)
    _svg(points, SVG)
    return _rows(plan, points, starts, failures)
