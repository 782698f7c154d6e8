"""Benchmark 2b: the gateway under thousands of concurrent token streams (issue 18).

Four demo replicas (`--token-delay 0.02`) each in a process of their own; streamed
chat completions of 64 tokens (one SSE event per token, 20 ms apart, then
`[DONE]`) driven by `bench.stream_client` processes, first straight at the
replicas (round robin), then through a Gateway in a process of its own
(`bench.gateway_host`, all four replicas as the primary's). Then a canary weight
change under the same load: two replicas as the primary's, two as the canary's,
the weight changed from 10 to 50 while the streams run, the split read from the
gateway's own per-version counters every 100 ms.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from math import sqrt
from pathlib import Path
from typing import Any

import aiohttp

from bench.child import Child, child
from bench.gateway import demo_replica, gateway_process
from bench.gateway_host import PREFIX
from bench.progress import show
from bench.report import Row, ms
from bench.stats import summary
from bench.stream_client import normalized_digest

TOKENS = 64
TOKEN_DELAY = 0.02
REPLICAS = 4
PATH = "/v1/chat/completions"
BODY = {
    "model": "demo",
    "messages": [{"role": "user", "content": "how far is the moon"}],
    "max_tokens": TOKENS,
    "stream": True,
}
GOAL_ADDED_TTFT_MS = 10.0
GOAL_RSS_MB = 200.0
GOAL_SPLIT_S = 1.0
WEIGHT_BEFORE, WEIGHT_AFTER = 10, 50
POLL_S = 0.1


@dataclass(frozen=True)
class Plan:
    streams: int
    drivers: int
    """Client processes the streams are shared among."""
    spread_s: float
    """The streams start evenly over this long."""
    canary_s: float
    """How long the closed loop of `streams` users runs in the canary phase."""
    change_at_s: float
    """When, into it, the weight changes."""


FULL = Plan(streams=2000, drivers=4, spread_s=1.0, canary_s=10.0, change_at_s=4.0)
QUICK = Plan(streams=200, drivers=2, spread_s=0.5, canary_s=5.0, change_at_s=2.0)


async def run(plan: Plan) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-streams-") as directory:
        logs = Path(directory)
        async with AsyncExitStack() as stack:
            replicas = list(
                await asyncio.gather(
                    *(stack.enter_async_context(demo_replica(TOKEN_DELAY)) for _ in range(REPLICAS))
                )
            )
            drivers = list(
                await asyncio.gather(
                    *(
                        stack.enter_async_context(
                            child("bench.stream_client", log=logs / f"driver-{i}.log")
                        )
                        for i in range(plan.drivers)
                    )
                )
            )
            reference = await _reference(replicas[0])
            show(f"{plan.streams} streams straight at {REPLICAS} replicas")
            direct = await _drive(drivers, [r + PATH for r in replicas], plan, reference)
            # Room for every stream and for connections closing while new ones open.
            connections = str(2 * plan.streams + 100)
            async with gateway_process(
                replicas, "--max-connections", connections, log=logs / "gateway.log"
            ) as gateway:
                show(f"{plan.streams} streams through the gateway")
                through, gateway_figures = await _through(gateway, drivers, plan, reference)
            half = REPLICAS // 2
            async with gateway_process(
                replicas[:half],
                "--canary",
                *replicas[half:],
                "--weight",
                str(WEIGHT_BEFORE),
                "--max-connections",
                connections,
                log=logs / "canary.log",
            ) as gateway:
                show(f"canary weight {WEIGHT_BEFORE} → {WEIGHT_AFTER} under {plan.streams} users")
                split = await _canary_change(gateway, drivers, plan, reference)
    return [
        _streams_row(plan, direct, through),
        _resources_row(plan, through, gateway_figures),
        _split_row(plan, split),
    ]


async def _reference(replica: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(replica + PATH, json=BODY) as answer,
    ):
        return normalized_digest(await answer.read())


async def _drive(
    drivers: list[Child],
    targets: list[str],
    plan: Plan,
    reference: str,
    loop_s: float | None = None,
) -> dict[str, Any]:
    """The streams shared among the drivers; their answers merged."""
    share = plan.streams // len(drivers)
    command: dict[str, Any] = {
        "targets": targets,
        "streams": share,
        "spread_s": plan.spread_s,
        "body": BODY,
        "reference": reference,
    }
    if loop_s is not None:
        command["loop_s"] = loop_s
    answers = await asyncio.gather(
        *(driver.ask(json.dumps(command), within=600) for driver in drivers)
    )
    merged: dict[str, Any] = {"ttft_ms": [], "errors": {}, "driver_cpu_s": [], "wall_s": 0.0}
    for answer in answers:
        if "error" in answer:
            raise RuntimeError(f"a stream driver failed: {answer['error']}")
        merged["ttft_ms"] += answer["ttft_ms"]
        for key in ("completed", "mismatched", "failed", "peak_open"):
            merged[key] = merged.get(key, 0) + answer[key]
        for name, count in answer["errors"].items():
            merged["errors"][name] = merged["errors"].get(name, 0) + count
        merged["driver_cpu_s"].append(answer["cpu_s"])
        merged["wall_s"] = max(merged["wall_s"], answer["wall_s"])
    merged["started"] = share * len(drivers)
    return merged


async def _through(
    gateway: Child, drivers: list[Child], plan: Plan, reference: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Streams through the gateway, with its CPU, peak RSS and most requests in
    flight (polled) over them."""
    before = await gateway.ask("counts")
    peak_in_flight = 0
    driving = asyncio.ensure_future(
        _drive(drivers, [gateway.hello["url"] + PREFIX + PATH], plan, reference)
    )
    while not driving.done():
        counts = await gateway.ask("counts")
        peak_in_flight = max(peak_in_flight, counts["versions"]["primary"]["in_flight"])
        await asyncio.wait({driving}, timeout=POLL_S)
    through = driving.result()
    after = await gateway.ask("counts")
    return through, {
        "cpu_s": round(after["usage"]["cpu_s"] - before["usage"]["cpu_s"], 3),
        "peak_rss_mb": round(after["usage"]["peak_rss_kb"] / 1024, 1),
        "peak_in_flight": peak_in_flight,
    }


async def _canary_change(
    gateway: Child, drivers: list[Child], plan: Plan, reference: str
) -> dict[str, Any]:
    """The canary's share of the requests the gateway routed, before and after the
    weight change, from its per-version counters polled every 100 ms."""
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    driving = asyncio.ensure_future(
        _drive(drivers, [gateway.hello["url"] + PREFIX + PATH], plan, reference, plan.canary_s)
    )
    changed_at: float | None = None
    while not driving.done():
        if changed_at is None and time.monotonic() - started >= plan.change_at_s:
            await gateway.ask(f"weight {WEIGHT_AFTER}")
            changed_at = time.monotonic()
        versions = (await gateway.ask("counts"))["versions"]
        samples.append(
            (time.monotonic(), versions["primary"]["arrivals"], versions["canary"]["arrivals"])
        )
        await asyncio.wait({driving}, timeout=POLL_S)
    load = driving.result()
    if changed_at is None:
        raise RuntimeError("the load ended before the weight change")
    return {"load": load, **_split(samples, changed_at, started + plan.canary_s)}


def _share(samples: list[tuple[float, int, int]], start: float, end: float) -> tuple[float, int]:
    """The canary's share of the arrivals counted between two instants (sampled)."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return float("nan"), 0
    primary = inside[-1][1] - inside[0][1]
    canary = inside[-1][2] - inside[0][2]
    total = primary + canary
    return (canary / total if total else float("nan")), total


def _split(
    samples: list[tuple[float, int, int]], changed_at: float, load_ends: float
) -> dict[str, Any]:
    """The share before the change, in the first second after it, and how soon
    after it every later one-second window (up to `load_ends`, when the users stop
    starting streams) holds the new split: within three standard deviations of a
    fair draw, at least 5 points."""
    before, before_n = _share(samples, samples[0][0], changed_at)
    first, first_n = _share(samples, changed_at, changed_at + 1.0)
    after, after_n = _share(samples, changed_at + 1.0, load_ends)
    target = WEIGHT_AFTER / 100
    holds_from: float | None = None
    windows: list[tuple[float, float, int]] = []
    for sample in samples:
        offset = sample[0] - changed_at
        if offset < 0 or sample[0] + 1.0 > load_ends:
            continue
        share, count = _share(samples, sample[0], sample[0] + 1.0)
        if not count:
            continue  # no request began in it (the users' streams run in waves)
        windows.append((round(offset, 3), round(share, 4), count))
        tolerance = max(0.05, 3 * sqrt(target * (1 - target) / count))
        if abs(share - target) <= tolerance:
            holds_from = offset if holds_from is None else holds_from
        else:
            holds_from = None
    return {
        "share_before": round(before, 4),
        "arrivals_before": before_n,
        "share_first_second": round(first, 4),
        "arrivals_first_second": first_n,
        "share_after": round(after, 4),
        "arrivals_after": after_n,
        "holds_from_s": None if holds_from is None else round(holds_from, 3),
        # (seconds after the change, the canary's share, requests) per 1-s window
        "windows_after": windows,
    }


def _added(direct: dict[str, Any], through: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    a, b = summary(direct["ttft_ms"]), summary(through["ttft_ms"])
    added = {
        key: None if a.get(key) is None or b.get(key) is None else round(b[key] - a[key], 3)
        for key in ("p50", "p99", "max")
    }
    return a, b, added


def _whole(figures: dict[str, Any]) -> bool:
    return (
        figures["completed"] == figures["started"]
        and not figures["mismatched"]
        and not figures["failed"]
    )


def _streams_row(plan: Plan, direct: dict[str, Any], through: dict[str, Any]) -> Row:
    a, b, added = _added(direct, through)
    added_p99 = added["p99"]
    met = (
        _whole(direct)
        and _whole(through)
        and added_p99 is not None
        and added_p99 < GOAL_ADDED_TTFT_MS
    )
    return Row(
        "gateway",
        f"{plan.streams:,} concurrent streamed chat completions: complete, identical, "
        "time to first token direct / through the gateway",
        f"{REPLICAS} demo replicas (--token-delay {TOKEN_DELAY:g}), {TOKENS} tokens per "
        f"stream, each stream on a connection of its own, started evenly over "
        f"{plan.spread_s:g} s by {plan.drivers} client processes (bench.stream_client); "
        "direct: round robin over the replicas; then through a Gateway (one Router, the "
        "4 replicas, least outstanding requests) in a process of its own; identical: "
        "the body with its per-request id and created masked has the SHA-256 of a direct "
        "stream; time to first token: POST sent → first data: bytes",
        f"complete and identical: direct {direct['completed'] - direct['mismatched']:,}/"
        f"{direct['started']:,}, gateway {through['completed'] - through['mismatched']:,}/"
        f"{through['started']:,} · TTFT direct p50 {ms(a['p50'])} p99 {ms(a['p99'])} ms · "
        f"gateway p50 {ms(b['p50'])} p99 {ms(b['p99'])} ms · added p99 {ms(added_p99)} ms · "
        f"wall {direct['wall_s']:.1f} s direct, {through['wall_s']:.1f} s gateway",
        {
            "streams": plan.streams,
            "direct": {**direct, "ttft_ms": a},
            "gateway": {**through, "ttft_ms": b},
            "added_ttft_ms": added,
        },
        goal=f"every stream complete and identical; < {GOAL_ADDED_TTFT_MS:g} ms added "
        "time to first token at p99",
        met=met,
    )


def _resources_row(plan: Plan, through: dict[str, Any], gateway: dict[str, Any]) -> Row:
    tokens = through["completed"] * TOKENS
    per_token_us = gateway["cpu_s"] / tokens * 1e6 if tokens else None
    client_cpu = sum(through["driver_cpu_s"])
    per_token = f"{per_token_us:.1f}" if per_token_us is not None else "n/a"
    return Row(
        "gateway",
        f"{plan.streams:,} concurrent streams: the gateway's CPU per streamed token and "
        "peak memory",
        "the gateway run of the row above; CPU and peak RSS (VmHWM) of the gateway "
        "process, read by itself before and after; most requests in flight at once from "
        f"its own gauge, polled every {POLL_S * 1000:.0f} ms; the client processes' own "
        "CPU over the same run",
        f"gateway CPU {gateway['cpu_s']:.2f} s for {tokens:,} tokens = {per_token} µs per "
        f"token · peak RSS {gateway['peak_rss_mb']:.0f} MB · most in flight "
        f"{gateway['peak_in_flight']:,} · clients' CPU {client_cpu:.2f} s "
        f"({plan.drivers} processes)",
        {
            **gateway,
            "tokens": tokens,
            "cpu_per_token_us": None if per_token_us is None else round(per_token_us, 2),
            "client_cpu_s": through["driver_cpu_s"],
        },
        goal=f"gateway RSS < {GOAL_RSS_MB:g} MB; CPU per token reported",
        met=gateway["peak_rss_mb"] < GOAL_RSS_MB,
    )


def _split_row(plan: Plan, split: dict[str, Any]) -> Row:
    load = split["load"]
    holds = split["holds_from_s"]
    return Row(
        "gateway",
        f"canary weight {WEIGHT_BEFORE} → {WEIGHT_AFTER} % under {plan.streams:,} "
        "streaming users: when the new split holds",
        f"2 replicas primary, 2 canary, same demo replicas; {plan.streams:,} users each "
        f"streaming one completion after another for {plan.canary_s:g} s; the weight "
        f"changed {plan.change_at_s:g} s in (the route set again, as the runtime does); "
        "the canary's share of the requests routed (the gateway's per-version counters: "
        f"done + in flight) polled every {POLL_S * 1000:.0f} ms; holds: every later "
        "1-s window within 3 standard deviations of a fair draw (at least 5 points)",
        f"canary share before {split['share_before']:.1%} (n={split['arrivals_before']:,}) "
        f"· first second after {split['share_first_second']:.1%} "
        f"(n={split['arrivals_first_second']:,}) · after {split['share_after']:.1%} "
        f"(n={split['arrivals_after']:,}) · holds from "
        f"{'never' if holds is None else f'{holds:.2f} s'} after the change · streams "
        f"completed {load['completed']:,}, failed {load['failed']}, not identical "
        f"{load['mismatched']}",
        {k: v for k, v in split.items() if k != "load"}
        | {"completed": load["completed"], "failed": load["failed"], "errors": load["errors"]},
        goal=f"the new split holds within {GOAL_SPLIT_S:g} s",
        met=holds is not None and holds <= GOAL_SPLIT_S and not load["failed"],
    )
