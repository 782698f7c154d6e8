"""Scenario: the store goes away while a canary is being promoted.

One `servefleet up --regions r1` (default lease settings) reaches PostgreSQL through
a TCP proxy in this process. The endpoint runs 2 replicas of v1 and a canary of v2
(1 replica, 30 % of the traffic) under a steady request load through the gateway.
The canary is promoted, and within half a second the proxy is cut (new connections
refused, open ones reset) for the outage; then restored.

Invariants: every request through the gateway is answered, during the outage too
(the region keeps serving what it had); after the outage the promote completes
(2 replicas of v2, no canary, reported ready at the promote's generation) and from
then on only v2 answers; no status write goes back to an older generation; every
status write was made by the lease holder of the moment.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.progress import show
from chaos.fleet import ENDPOINT, REGION, converged
from chaos.load import SteadyLoad
from chaos.postgres import chaos_schema
from chaos.report import Row
from chaos.writes import foreign_writes, reverted_statuses
from servefleet.service import EndpointService
from servefleet.store import open_store
from tests.scenarios.harness import demo_spec, manifest, up_process
from tests.scenarios.proxy import proxy_to

WRITER = "chaos-up-1"


@dataclass(frozen=True)
class Plan:
    outage: float
    rate: float
    """Requests per second through the gateway."""
    within: float
    """Bound on each wait for the fleet (start-up, convergence, recovery)."""


FULL = Plan(outage=30.0, rate=20.0, within=90.0)
QUICK = Plan(outage=5.0, rate=10.0, within=40.0)


async def run(plan: Plan, postgres_url: str, rng: random.Random, workdir: Path) -> Row:
    fault = (
        f"PostgreSQL unreachable for {plan.outage:g} s (TCP proxy refuses and resets) "
        "within 0.5 s of a canary promote (2 v1 + 1 v2 canary → 2 v2)"
    )
    row = Row("store outage", fault)
    async with AsyncExitStack() as stack:
        schema = await stack.enter_async_context(chaos_schema(postgres_url))
        proxy = await stack.enter_async_context(proxy_to(postgres_url))
        store = await open_store(schema.url)
        stack.push_async_callback(store.close)
        service = EndpointService(store)
        show("starting servefleet up")
        up = await stack.enter_async_context(
            up_process(
                proxy.url(schema.url_for(WRITER)),
                *("--regions", REGION, "--port", "0"),
                stderr=workdir / "up.log",
                log_dir=workdir / "logs",
            )
        )

        def processes() -> int:
            return len(up.replicas())

        await service.apply(manifest(ENDPOINT, demo_spec("v1", replicas=2), [REGION]))
        await service.canary(ENDPOINT, args=["--version", "v2"], weight=30, replicas=1)
        show("waiting for 2 v1 replicas and a v2 canary")
        await converged(store, replicas=2, canary=1, processes=processes, within=plan.within)

        limit = int(plan.rate * (plan.outage + plan.within + 10))
        load = SteadyLoad(ENDPOINT, lambda: [up.gateway_url], plan.rate, limit)
        load.start()
        stack.push_async_callback(load.stop)
        await asyncio.sleep(1.0)
        await service.promote(ENDPOINT)
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        show(f"store cut for {plan.outage:g} s")
        await proxy.cut()
        await asyncio.sleep(plan.outage)
        await proxy.restore()
        restored = time.monotonic()
        show("store back; waiting for the promote to complete")
        try:
            await converged(store, replicas=2, processes=processes, within=plan.within)
        except TimeoutError:
            row.broken.append(f"the promote did not complete within {plan.within:g} s after")
        else:
            row.recovery_s = round(time.monotonic() - restored, 2)
        recovered = time.monotonic()
        await asyncio.sleep(1.0)
        await load.stop()

        writes = await schema.status_writes()
        foreign = foreign_writes(writes, {WRITER: up.pid})
        reverted = reverted_statuses(writes)
        stale = [
            outcome
            for outcome in load.outcomes
            if outcome.answered and outcome.sent_at > recovered and outcome.version != "v2"
        ]

    row.sent, row.answered, row.failed = load.sent, load.answered, load.failed
    row.longest_gap_s = round(load.longest_gap(), 2)
    row.duplicate_writes = len(foreign)
    row.lost_writes = len(reverted) + (1 if row.recovery_s is None else 0)
    if load.failed:
        row.broken.append(f"{load.failed} requests through the gateway failed: {load.errors()}")
    row.broken += foreign + reverted
    if stale:
        row.broken.append(f"{len(stale)} answers after the promote completed were not v2")
    row.details = {
        "outage_s": plan.outage,
        "rate_per_s": plan.rate,
        "status_writes": len(writes),
        "lease_tokens": sorted({write.lease_token or 0 for write in writes}),
        "request_errors": load.errors(),
    }
    return row
