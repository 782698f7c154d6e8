"""Benchmark 2, the global entry: the latency `servefleet up`'s gateway in front of
every region adds, beside the latency a region's own gateway adds, in the same
process as `up` runs them.

A real `servefleet up --regions r1,r2,r3` (`bench/fleet.py`) runs one demo replica
per region; the client sends the same sequential requests straight to the replicas,
through the regions' own gateways and through the global entry, interleaved.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import aiohttp

from bench.fleet import replica_url, up_fleet
from bench.gateway import CHAT, GOAL_ADDED_MS, WARMUP, Plan, _added, _first_event, _get
from bench.progress import show
from bench.report import Row, ms
from bench.stats import Figures, summary
from tests.scenarios.harness import demo_command, demo_spec, manifest

REGIONS = ("r1", "r2", "r3")
ENDPOINT = "demo"
PREFIX = f"/inference/{ENDPOINT}"
SETTLE = 90.0
TIMEOUT = aiohttp.ClientTimeout(total=30)
"""Any one request: past it the part fails rather than waits."""
PATHS = ("direct", "region", "global")


async def run(plan: Plan) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-global-") as name:
        async with up_fleet(Path(name), REGIONS) as fleet:
            spec = demo_spec(replicas=1, command=demo_command())
            await fleet.service.apply(manifest(ENDPOINT, spec, list(REGIONS)))
            await fleet.settled(ENDPOINT, REGIONS, replicas=1, within=SETTLE)
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                replicas = [
                    await replica_url(session, fleet.region_urls[region] + PREFIX + "/v1/models")
                    for region in REGIONS
                ]
            targets = {
                "direct": replicas,
                "region": [fleet.region_urls[region] + PREFIX for region in REGIONS],
                "global": [fleet.entry_url + PREFIX],
            }
            return await _sequential(plan, targets)


async def _sequential(plan: Plan, targets: dict[str, list[str]]) -> list[Row]:
    sessions = {label: aiohttp.ClientSession(timeout=TIMEOUT) for label in PATHS}
    samples: dict[str, list[float]] = {label: [] for label in PATHS}
    first: dict[str, list[float]] = {label: [] for label in PATHS}
    failed = dict.fromkeys(PATHS, 0)
    failed_streams = dict.fromkeys(PATHS, 0)
    try:
        for label in PATHS:
            for base in targets[label]:
                for _ in range(WARMUP):
                    await _get(sessions[label], base + "/v1/models")
                for _ in range(3):
                    await _first_event(sessions[label], base + "/v1/chat/completions")
        # Interleaved, so every path sees the same machine over the same seconds; the
        # direct and regional paths take the three regions in turn.
        began = time.perf_counter()
        for index in range(plan.requests):
            if index % 100 == 0:
                show(f"GET {index}/{plan.requests} · {time.perf_counter() - began:.0f} s")
            for label in PATHS:
                bases = targets[label]
                elapsed, ok = await _get(sessions[label], bases[index % len(bases)] + "/v1/models")
                samples[label].append(elapsed)
                failed[label] += not ok
        for index in range(plan.streams):
            show(f"SSE {index}/{plan.streams}")
            for label in PATHS:
                bases = targets[label]
                url = bases[index % len(bases)] + "/v1/chat/completions"
                elapsed, ok = await _first_event(sessions[label], url)
                first[label].append(elapsed)
                failed_streams[label] += not ok
    finally:
        for session in sessions.values():
            await session.close()

    where = (
        f"`servefleet up --regions {','.join(REGIONS)}` in a process of its own (default "
        "settings; its regions' gateways and the global entry in that process, as `up` runs "
        "them), one demo replica per region (python -m servefleet.demo --token-delay 0), "
        "client in the benchmark's process; direct = the replicas in turn, region = each "
        "region's own gateway in turn, global = the global entry (`up`'s gateway in front of "
        "every region, from its record for the CLI); one reused aiohttp.ClientSession per path"
    )

    def failures(failed: dict[str, int]) -> str:
        shown = ", ".join(f"{failed[label]} {label}" for label in PATHS)
        return f" · answers not 200: {shown}" if any(failed.values()) else ""

    get_rows = _row(
        "GET /v1/models through the global entry: added, beside a region's gateway",
        f"{where}; {WARMUP} warm-up requests per replica / gateway, then {plan.requests} "
        "sequential requests per path, interleaved direct / region / global",
        {label: summary(samples[label]) for label in PATHS},
        failures(failed),
        failed,
        keys=("p50", "p99"),
    )
    sse_rows = _row(
        "time to first SSE event through the global entry: added, beside a region's gateway",
        f"{where}; {plan.streams} streamed chat completions per path (max_tokens "
        f"{CHAT['max_tokens']}), interleaved, after 3 warm-up streams per replica / gateway; "
        "time from sending the POST to the first `data:` line",
        {label: summary(first[label]) for label in PATHS},
        failures(failed_streams),
        failed_streams,
        keys=("p50", "p99"),
    )
    return [get_rows, sse_rows]


def _row(
    case: str,
    workload: str,
    figures: dict[str, Figures],
    failures: str,
    failed: dict[str, int],
    *,
    keys: tuple[str, str],
) -> Row:
    direct, region, entry = figures["direct"], figures["region"], figures["global"]
    region_added, global_added = _added(direct, region), _added(direct, entry)
    beyond = _added(region, entry)
    low, high = keys
    result = (
        f"direct {low} {ms(direct[low])} {high} {ms(direct[high])} ms · region gateway "
        f"{low} {ms(region[low])} {high} {ms(region[high])} ms, added {low} "
        f"{ms(region_added[low])} {high} {ms(region_added[high])} ms · global entry {low} "
        f"{ms(entry[low])} {high} {ms(entry[high])} ms, added {low} {ms(global_added[low])} "
        f"{high} {ms(global_added[high])} ms (global minus region {low} {ms(beyond[low])} ms)"
        f"{failures}"
    )
    return Row(
        "global entry",
        case,
        workload,
        result,
        {
            "direct": direct,
            "region": region,
            "global": entry,
            "region_added": region_added,
            "global_added": global_added,
            "global_minus_region": beyond,
            "failed": failed,
        },
        goal=f"none in issue 17 (issue 18's, for a gateway: < {GOAL_ADDED_MS:g} ms added at p50)",
        met=None,
    )
