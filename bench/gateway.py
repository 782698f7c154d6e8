"""Benchmark 2: the latency a Gateway adds in front of one demo replica."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from bench.gateway_host import PREFIX
from bench.report import REPO, Row, ms
from bench.stats import Figures, summary

WARMUP = 100
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


FULL = Plan(requests=2000, streams=30)
QUICK = Plan(requests=500, streams=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@asynccontextmanager
async def demo_replica() -> AsyncIterator[str]:
    """`python -m servefleet.demo --port P --token-delay 0`, once /health answers 200."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "servefleet.demo",
        "--port",
        str(port),
        "--token-delay",
        "0",
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
        await _stop(process)


@asynccontextmanager
async def gateway_process(upstream: str) -> AsyncIterator[str]:
    """A Gateway with one Router (/inference/demo → upstream) in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.gateway_host",
        upstream,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        if not line:
            raise RuntimeError(f"the gateway exited with {await process.wait()}")
        yield line.decode().strip()
    finally:
        await _stop(process)


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
    async with demo_replica() as replica, gateway_process(replica) as gateway:
        targets = {"direct": replica, "gateway": gateway + PREFIX}
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
        ),
    ]


def _added(direct: Figures, through: Figures) -> dict[str, float | None]:
    """Gateway minus direct at each percentile (a difference of percentiles, not the
    percentile of per-request differences)."""
    added: dict[str, float | None] = {}
    for key in ("p50", "p95", "p99", "max"):
        a, b = direct.get(key), through.get(key)
        added[key] = None if a is None or b is None else round(b - a, 3)
    return added
