"""Scenario: a new version that crash-loops, then one whose model loads for 10 minutes.

One `servefleet up --regions r1` with the local runtime's default probes (a
replica may take `startup_timeout`, 600 s, to pass its first probe) runs 2
replicas of v1 under a steady request load through its gateway. The endpoint is
changed to v2, whose command exits at once with a message (a crash loop); held
there for a while; then to v3, the demo server with `--startup-delay 600` (a
model load of 10 minutes, as long as the default startup probe allows); held;
then back to v1.

Invariants: every request is answered, by v1 only (a rollout never pulls the
route from healthy old replicas: the new version's never become ready); v1's two
replicas are the same processes throughout; the crash-looping v2 is reported
failed with the reason (its exit); v3's slow replicas are never restarted while
they load, and the status says they are starting; back at v1 the region
converges to exactly its two replicas, every v3 replica stopped. *Recovery*:
back to v1 → converged.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.progress import show
from chaos.fleet import ENDPOINT, REGION, converged, region_status
from chaos.load import SteadyLoad
from chaos.postgres import chaos_schema
from chaos.report import Row
from chaos.writes import foreign_writes, reverted_statuses
from servefleet.service import EndpointService
from servefleet.spec import EndpointSpec, RegionState, RegionStatus
from servefleet.store import open_store
from tests.scenarios.harness import demo_command, demo_spec, gone, manifest, up_process
from tests.waiting import eventually

WRITER = "chaos-up-1"
CRASH = "model weights not found"
"""What v2 says on its way out, at once, every time it starts."""
LOAD_TIME = 600
"""v3's model load, in seconds: the local runtime's default startup timeout."""


@dataclass(frozen=True)
class Plan:
    hold: float
    """Seconds each faulty version is left in place under load."""
    rate: float
    within: float


FULL = Plan(hold=30.0, rate=10.0, within=90.0)
QUICK = Plan(hold=10.0, rate=10.0, within=40.0)
"""For `--quick --only crash-loops`: `--quick` alone leaves this scenario out (see
`chaos.__main__.FULL_ONLY`)."""


def crashing() -> EndpointSpec:
    command = [sys.executable, "-c", f"import sys; sys.exit({CRASH!r})"]
    return demo_spec("v2", command=command, args=[])


def slow() -> EndpointSpec:
    return demo_spec("v3", command=demo_command("--startup-delay", str(LOAD_TIME)))


async def run(plan: Plan, postgres_url: str, rng: random.Random, workdir: Path) -> Row:
    del rng  # nothing random: the faults are the versions themselves
    fault = (
        f"v1 (2 replicas) → v2 exiting at start, {plan.hold:g} s → v3 loading for "
        f"{LOAD_TIME} s (the default startup timeout), {plan.hold:g} s → v1"
    )
    row = Row("crash loops", fault)
    async with AsyncExitStack() as stack:
        schema = await stack.enter_async_context(chaos_schema(postgres_url))
        store = await open_store(schema.url)
        stack.push_async_callback(store.close)
        service = EndpointService(store)
        show("starting servefleet up")
        up = await stack.enter_async_context(
            up_process(
                schema.url_for(WRITER),
                *("--regions", REGION, "--port", "0"),
                stderr=workdir / "up.log",
                log_dir=workdir / "logs",
            )
        )

        def processes() -> int:
            return len(up.replicas())

        await service.apply(manifest(ENDPOINT, demo_spec("v1", replicas=2), [REGION]))
        show("waiting for 2 v1 replicas")
        await converged(store, replicas=2, processes=processes, within=plan.within)
        v1 = up.replicas()

        limit = int(plan.rate * (2 * plan.hold + 3 * plan.within))
        load = SteadyLoad(ENDPOINT, lambda: [up.gateway_url], plan.rate, limit)
        load.start()
        stack.push_async_callback(load.stop)

        show(f"v2 crash-loops for {plan.hold:g} s")
        await service.apply(manifest(ENDPOINT, crashing(), [REGION]))
        await asyncio.sleep(plan.hold)
        crash = await region_status(store)
        if crash is None or "exited with status" not in crash.message:
            row.broken.append(f"v2's crash loop is not reported: {_described(crash)}")
        elif crash.state is not RegionState.FAILED:
            row.broken.append(f"the crash-looping v2 is reported {crash.state.value}, not failed")

        show(f"v3 loads its model for {LOAD_TIME} s; held {plan.hold:g} s")
        await service.apply(manifest(ENDPOINT, slow(), [REGION]))

        async def started() -> bool:
            return len(up.replicas() - v1) == 2

        await eventually(started, within=plan.within)
        v3 = up.replicas() - v1
        await asyncio.sleep(plan.hold)
        loading = await region_status(store)
        if loading is None or "starting" not in loading.message:
            row.broken.append(f"v3's model load is not reported: {_described(loading)}")
        if v3 - up.replicas():
            row.broken.append(f"{len(v3 - up.replicas())} v3 replicas were stopped while loading")

        show("back to v1")
        await service.apply(manifest(ENDPOINT, demo_spec("v1", replicas=2), [REGION]))
        back = time.monotonic()
        try:
            await converged(store, replicas=2, processes=processes, within=plan.within)
        except TimeoutError:
            row.broken.append(f"v1 alone was not back within {plan.within:g} s")
        else:
            row.recovery_s = round(time.monotonic() - back, 2)
        await load.stop()
        if up.replicas() != v1:
            row.broken.append("v1's replicas were not the same processes throughout")
        if not all(gone(pid) for pid in v3):
            row.broken.append("v3 replicas outlived the change back to v1")
        writes = await schema.status_writes()
        foreign = foreign_writes(writes, {WRITER: up.pid})
        reverted = reverted_statuses(writes)

    row.sent, row.answered, row.failed = load.sent, load.answered, load.failed
    row.longest_gap_s = round(load.longest_gap(), 2)
    row.duplicate_writes = len(foreign)
    row.lost_writes = len(reverted) + (1 if row.recovery_s is None else 0)
    if load.failed:
        row.broken.append(f"{load.failed} requests through the gateway failed: {load.errors()}")
    others = {outcome.version for outcome in load.outcomes if outcome.answered} - {"v1"}
    if others:
        row.broken.append(f"answers came from {sorted(others)} besides v1")
    row.broken += foreign + reverted
    row.details = {
        "hold_s": plan.hold,
        "load_time_s": LOAD_TIME,
        "rate_per_s": plan.rate,
        "crash_reported": _described(crash),
        "loading_reported": _described(loading),
        "status_writes": len(writes),
        "request_errors": load.errors(),
    }
    return row


def _described(status: RegionStatus | None) -> str:
    return "nothing" if status is None else f"{status.state.value}: {status.message}"
