"""Benchmark 2: the latency a Gateway adds in front of one demo replica."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.child import Child, child, stop
from bench.gateway_host import PREFIX
from bench.progress import show
from bench.report import REPO, Row, ms
from bench.stats import Figures, summary

WARMUP = 100
WRK = shutil.which("wrk")
WRK_THREADS = 2
CHAT = {
    "model": "demo",
    "messages": [{"role": "user", "content": "how far is the moon"}],
    "max_tokens": 16,
    "stream": True,
}


@dataclass(frozen=True)
class Plan:
    requests: int
    streams: int
    load_seconds: int
    """How long each wrk run lasts (one per path, workload and concurrency)."""


FULL = Plan(requests=2000, streams=30, load_seconds=2)
QUICK = Plan(requests=300, streams=10, load_seconds=1)

CONCURRENCY = (1, 16, 64)
GOAL_ADDED_MS = 1.0
GOAL_THROUGHPUT = 0.5
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99), latency.max))
end
"""
STREAM_REQUEST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{body}'
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def demo_replica(token_delay: float = 0.0) -> AsyncIterator[str]:
    """`python -m servefleet.demo --port P --token-delay D`, once /health answers 200."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "servefleet.demo",
        "--port",
        str(port),
        "--token-delay",
        str(token_delay),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(20):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the demo replica exited with {process.returncode}")
                try:
                    async with session.get(f"{url}/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        yield url
    finally:
        await stop(process)


@asynccontextmanager
async def gateway_process(primary: list[str], *options: str, log: Path) -> AsyncIterator[Child]:
    """A Gateway with one Router (/inference/demo → the replicas) in a process of its
    own (`bench.gateway_host`); its `hello["url"]` is its base URL."""
    async with child("bench.gateway_host", *primary, *options, log=log) as host:
        yield host


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[float, bool]:
    started = time.perf_counter()
    async with session.get(url) as response:
        await response.read()
        ok = response.status == 200
    return (time.perf_counter() - started) * 1000, ok


async def _first_event(session: aiohttp.ClientSession, url: str) -> tuple[float, bool]:
    """ms from sending a streamed chat completion to its first `data:` line."""
    started = time.perf_counter()
    first: float | None = None
    async with session.post(url, json=CHAT) as response:
        async for line in response.content:
            if line.startswith(b"data:"):
                first = time.perf_counter()
                break
        async for _ in response.content.iter_any():
            pass  # read the rest, so the connection is reused
        ok = response.status == 200 and first is not None
    return ((first or time.perf_counter()) - started) * 1000, ok


async def run(plan: Plan) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-gateway-") as directory:
        log = Path(directory) / "gateway.log"
        async with demo_replica() as replica, gateway_process([replica], log=log) as gateway:
            targets = {"direct": replica, "gateway": gateway.hello["url"] + PREFIX}
            rows = await _sequential(plan, targets)
            rows += await _under_load(plan, targets)
    return rows


async def _sequential(plan: Plan, targets: dict[str, str]) -> list[Row]:
    sessions = {label: aiohttp.ClientSession() for label in targets}
    samples: dict[str, list[float]] = {label: [] for label in targets}
    first: dict[str, list[float]] = {label: [] for label in targets}
    failed = dict.fromkeys(targets, 0)
    try:
        for label, base in targets.items():
            for _ in range(WARMUP):
                await _get(sessions[label], base + "/v1/models")
            for _ in range(3):
                await _first_event(sessions[label], base + "/v1/chat/completions")
        # Interleaved, so both paths see the same machine over the same seconds.
        for _ in range(plan.requests):
            for label, base in targets.items():
                elapsed, ok = await _get(sessions[label], base + "/v1/models")
                samples[label].append(elapsed)
                failed[label] += not ok
        for _ in range(plan.streams):
            for label, base in targets.items():
                elapsed, ok = await _first_event(sessions[label], base + "/v1/chat/completions")
                first[label].append(elapsed)
                failed[label] += not ok
    finally:
        for session in sessions.values():
            await session.close()

    direct, through = summary(samples["direct"]), summary(samples["gateway"])
    added = _added(direct, through)
    sse_direct, sse_through = summary(first["direct"]), summary(first["gateway"])
    sse_added = _added(sse_direct, sse_through)
    where = (
        "demo replica (python -m servefleet.demo --token-delay 0) and Gateway (one Router, "
        "/inference/demo → replica) each in a process of their own, client in a third; "
        "one reused aiohttp.ClientSession per path"
    )
    failures = f"; {failed['direct']} direct / {failed['gateway']} gateway answers not 200"
    failures = failures if any(failed.values()) else ""
    return [
        Row(
            "gateway",
            "GET /v1/models: direct / through the gateway / added",
            f"{where}; {WARMUP} warm-up requests per path, then {plan.requests} sequential "
            "requests per path, interleaved direct/gateway",
            f"direct p50 {ms(direct['p50'])} p99 {ms(direct['p99'])} ms · gateway p50 "
            f"{ms(through['p50'])} p99 {ms(through['p99'])} ms · added p50 "
            f"{ms(added['p50'])} p99 {ms(added['p99'])} ms{failures}",
            {"direct": direct, "gateway": through, "added": added, "failed": failed},
            goal=f"< {GOAL_ADDED_MS:g} ms added at p50",
            met=added["p50"] is not None and added["p50"] < GOAL_ADDED_MS,
        ),
        Row(
            "gateway",
            "time to first SSE event: direct / through the gateway / added",
            f"{where}; {plan.streams} streamed chat completions per path (max_tokens 16), "
            "interleaved, after 3 warm-up streams; time from sending the POST to the first "
            "`data:` line",
            f"direct p50 {ms(sse_direct['p50'])} max {ms(sse_direct['max'])} ms · gateway "
            f"p50 {ms(sse_through['p50'])} max {ms(sse_through['max'])} ms · added p50 "
            f"{ms(sse_added['p50'])} ms",
            {"direct": sse_direct, "gateway": sse_through, "added": sse_added},
            goal=f"< {GOAL_ADDED_MS:g} ms added at p50",
            met=sse_added["p50"] is not None and sse_added["p50"] < GOAL_ADDED_MS,
        ),
    ]


async def _wrk(wrk: str, url: str, concurrency: int, seconds: int, script: Path) -> dict[str, Any]:
    """One wrk run; its own `done()` report (latencies in µs)."""
    done = await asyncio.create_subprocess_exec(
        wrk,
        f"-t{min(concurrency, WRK_THREADS)}",
        f"-c{concurrency}",
        f"-d{seconds}s",  # whole seconds: wrk reads no fractions
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(seconds + 30):
        out, err = await done.communicate()
    report = out.decode().strip().splitlines()
    if done.returncode != 0 or not report:
        raise RuntimeError(f"wrk exited with {done.returncode}: {err.decode()[-500:]}")
    figures: dict[str, Any] = json.loads(report[-1])
    figures["requests_per_s"] = round(figures["requests"] / (figures["duration_us"] / 1e6), 1)
    return figures


async def _under_load(plan: Plan, targets: dict[str, str]) -> list[Row]:
    wrk = WRK
    if wrk is None:
        return [
            Row(
                "gateway",
                "under load (wrk): not available",
                "wrk is not installed (Debian: apt-get install -y wrk)",
                "not measured",
            )
        ]
    workloads = {
        "GET /v1/models (small JSON)": ("/v1/models", ""),
        "streamed chat completion (16 tokens, SSE)": (
            "/v1/chat/completions",
            STREAM_REQUEST.format(body=json.dumps(CHAT)),
        ),
    }
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-wrk-") as directory:
        for workload, (path, request) in workloads.items():
            script = Path(directory) / f"{len(rows)}.lua"
            script.write_text(request + WRK_REPORT)
            for concurrency in CONCURRENCY:
                figures: dict[str, dict[str, Any]] = {}
                for label, base in targets.items():  # direct first, then the gateway
                    show(f"wrk {workload} c={concurrency} {label}")
                    figures[label] = await _wrk(
                        wrk, base + path, concurrency, plan.load_seconds, script
                    )
                rows.append(_load_row(workload, concurrency, plan, figures))
    return rows


def _load_row(
    workload: str, concurrency: int, plan: Plan, figures: dict[str, dict[str, Any]]
) -> Row:
    direct, through = figures["direct"], figures["gateway"]
    added_p50 = (through["p50_us"] - direct["p50_us"]) / 1000
    added_p99 = (through["p99_us"] - direct["p99_us"]) / 1000
    ratio = through["requests_per_s"] / direct["requests_per_s"]
    failed = {label: f["errors"] + f["non_2xx"] for label, f in figures.items()}
    # Issue 18 sets the added-latency goal for one connection; with more, requests
    # queue for the two shared cores and added p50 measures the queue.
    latency_goal = concurrency == 1
    failures = (
        f" · failed: {failed['direct']} direct, {failed['gateway']} gateway"
        if any(failed.values())
        else ""
    )
    return Row(
        "gateway",
        f"{workload}, concurrency {concurrency}: direct / through the gateway",
        f"wrk ({min(concurrency, WRK_THREADS)} threads, {concurrency} connections, "
        f"{plan.load_seconds:g} s per path: the direct run, then the gateway run) against the "
        "demo replica (--token-delay 0) and the Gateway (one Router) in processes of their "
        "own, on the same 2 cores as wrk; latency of the whole response",
        f"direct {direct['requests_per_s']:,.0f}/s p50 {direct['p50_us'] / 1000:.2f} p99 "
        f"{direct['p99_us'] / 1000:.2f} ms · gateway {through['requests_per_s']:,.0f}/s p50 "
        f"{through['p50_us'] / 1000:.2f} p99 {through['p99_us'] / 1000:.2f} ms · added p50 "
        f"{added_p50:.2f} p99 {added_p99:.2f} ms · throughput {ratio:.0%} of direct{failures}",
        {
            "concurrency": concurrency,
            "direct": direct,
            "gateway": through,
            "added_p50_ms": round(added_p50, 3),
            "added_p99_ms": round(added_p99, 3),
            "throughput_ratio": round(ratio, 3),
        },
        goal=f"≥ {GOAL_THROUGHPUT:.0%} of direct throughput"
        + (f"; < {GOAL_ADDED_MS:g} ms added at p50" if latency_goal else ""),
        met=ratio >= GOAL_THROUGHPUT
        and (added_p50 < GOAL_ADDED_MS or not latency_goal)
        and not any(failed.values()),
    )


def _added(direct: Figures, through: Figures) -> dict[str, float | None]:
    """Gateway minus direct at each percentile (a difference of percentiles, not the
    percentile of per-request differences)."""
    added: dict[str, float | None] = {}
    for key in ("p50", "p95", "p99", "max"):
        a, b = direct.get(key), through.get(key)
        added[key] = None if a is None or b is None else round(b - a, 3)
    return added
