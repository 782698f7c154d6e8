"""Benchmark 3: what a converged region costs while nothing changes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from bench.control import SETTINGS, controller_running
from bench.counting import FEED_CHANGE, FEED_POLL, WRITES, CountingStore
from bench.report import Row
from bench.runtime import RecordingRuntime
from bench.stores import fresh_store, populate
from servefleet.store import open_store


@dataclass(frozen=True)
class Plan:
    endpoints: int
    seconds: float


FULL = Plan(endpoints=1000, seconds=10.0)
QUICK = Plan(endpoints=1000, seconds=3.0)


def _delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in sorted(after) if after[key] - before[key]}


async def run(postgres_url: str, plan: Plan) -> list[Row]:
    async with fresh_store("sqlite", postgres_url) as url:
        inner = await open_store(url)
        store = CountingStore(inner)
        writer = await open_store(url)
        runtime = RecordingRuntime()
        try:
            names = await populate(writer, plan.endpoints)
            async with controller_running(store, runtime) as running:
                controller = running.controller
                converge_s = await running.converged(writer, runtime, len(names))
                await asyncio.sleep(0.5)
                await running.idle()

                calls = store.snapshot()
                applies, runtime_writes = runtime.applies, controller.runtime_writes
                status_writes = controller.status_writes
                started = time.perf_counter()
                await asyncio.sleep(plan.seconds)
                elapsed = time.perf_counter() - started
                quiet = _delta(store.snapshot(), calls)
                quiet_runtime = controller.runtime_writes - runtime_writes
                quiet_applies = runtime.applies - applies
                quiet_status = controller.status_writes - status_writes

                # The safety net, forced now rather than after 300 s: every endpoint
                # looked at once more.
                calls = store.snapshot()
                runtime_writes = controller.runtime_writes
                status_writes = controller.status_writes
                started = time.perf_counter()
                for name in names:
                    controller.queue.add(name)
                await running.idle(within=120)
                resync_s = time.perf_counter() - started
                resync = _delta(store.snapshot(), calls)
                resync_runtime = controller.runtime_writes - runtime_writes
                resync_status = controller.status_writes - status_writes
        finally:
            await writer.close()
            await store.close()

    quiet_store_writes = sum(count for key, count in quiet.items() if key in WRITES)
    quiet_reads = {key: count for key, count in quiet.items() if key not in WRITES}
    polls = quiet.get(FEED_POLL, 0)
    resync_writes = sum(count for key, count in resync.items() if key in WRITES)
    resync_reads = {k: v for k, v in resync.items() if k not in WRITES and k != FEED_POLL}
    workload = (
        f"real Controller ({SETTINGS.workers} workers, resync "
        f"{SETTINGS.resync_interval:.0f} s, heartbeat "
        f"{SETTINGS.heartbeat_interval:.0f} s) on r1 with the recording runtime and "
        f"{len(names)} converged endpoints on SQLite (converged in {converge_s:.1f} s), "
        "store wrapped in a counting proxy"
    )
    return [
        Row(
            "steady state",
            f"SQLite N={len(names)}: {elapsed:.0f} s with no changes",
            f"{workload}; counted over {elapsed:.1f} s during which nothing was written",
            f"runtime writes {quiet_runtime} · status writes {quiet_status} · store writes "
            f"{quiet_store_writes} · feed changes read {quiet.get(FEED_CHANGE, 0)} · feed polls "
            f"{polls} ({polls / elapsed:.1f}/s) · other store reads "
            f"{sum(v for k, v in quiet_reads.items() if k not in (FEED_POLL, FEED_CHANGE))}",
            {
                "endpoints": len(names),
                "seconds": round(elapsed, 3),
                "converge_s": round(converge_s, 3),
                "runtime_writes": quiet_runtime,
                "runtime_applies_seen": quiet_applies,
                "status_writes": quiet_status,
                "store_writes": quiet_store_writes,
                "feed_changes_read": quiet.get(FEED_CHANGE, 0),
                "feed_polls": polls,
                "feed_polls_per_s": round(polls / elapsed, 2),
                "store_calls": quiet,
            },
        ),
        Row(
            "steady state",
            f"SQLite N={len(names)}: one forced resync pass",
            f"{workload}; every endpoint queued once (what the {SETTINGS.resync_interval:.0f} s "
            "resync does; it also lists the endpoints once), counted until the controller is idle",
            f"took {resync_s:.2f} s · runtime writes {resync_runtime} · status writes "
            f"{resync_status} · store writes {resync_writes} · store reads "
            + ", ".join(f"{key} {count}" for key, count in resync_reads.items()),
            {
                "endpoints": len(names),
                "seconds": round(resync_s, 3),
                "runtime_writes": resync_runtime,
                "status_writes": resync_status,
                "store_writes": resync_writes,
                "store_calls": resync,
            },
        ),
    ]
