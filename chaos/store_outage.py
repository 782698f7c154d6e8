"""Scenario: the store goes away while a canary is being promoted.

One `servefleet up --regions r1` (default lease settings) reaches the store,
PostgreSQL or DynamoDB (moto in server mode, `chaos.dynamo`), through a TCP proxy
in this process. The endpoint runs 2 replicas of v1 and a canary of v2
(1 replica, 30 % of the traffic) under a steady request load through the gateway.
The canary is promoted, and within half a second the proxy is cut (new connections
refused, open ones reset) for the outage; then restored.

Invariants: every request through the gateway is answered, during the outage too
(the region keeps serving what it had); after the outage the promote completes
(2 replicas of v2, no canary, reported ready at the promote's generation) and from
then on only v2 answers; no status write goes back to an older generation; every
status write was made by the lease holder of the moment (PostgreSQL's status write
log names the writer; DynamoDB's statuses are sampled, `chaos.dynamo`, and the
store fences each write by the lease itself).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.progress import show
from chaos.dynamo import SAMPLE, moto_table, sampled_statuses
from chaos.fleet import ENDPOINT, REGION, converged
from chaos.load import SteadyLoad
from chaos.postgres import StatusWrite, chaos_schema
from chaos.report import Row
from chaos.writes import foreign_writes, reverted_statuses
from servefleet.service import EndpointService
from servefleet.store import open_store
from tests.scenarios.harness import demo_spec, manifest, up_process
from tests.scenarios.proxy import TcpProxy, proxy_to

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
    row = Row("store outage", _fault("PostgreSQL", plan))
    async with AsyncExitStack() as stack:
        schema = await stack.enter_async_context(chaos_schema(postgres_url))
        proxy = await stack.enter_async_context(proxy_to(postgres_url))
        outage = Outage(schema.url, proxy.url(schema.url_for(WRITER)), proxy, schema.status_writes)
        await _promote_through_outage(plan, row, rng, workdir, stack, outage)
    return row


async def run_dynamodb(plan: Plan, rng: random.Random, workdir: Path) -> Row:
    row = Row("DynamoDB store outage", _fault("DynamoDB (moto)", plan))
    async with AsyncExitStack() as stack:
        table = await stack.enter_async_context(moto_table(workdir))
        proxy = await stack.enter_async_context(proxy_to(table.endpoint_url))
        watcher = await open_store(table.url())
        stack.push_async_callback(watcher.close)
        sampler = await stack.enter_async_context(sampled_statuses(watcher))

        async def seen() -> list[StatusWrite]:
            return list(sampler.seen)

        outage = Outage(table.url(), table.url(proxy.url(table.endpoint_url)), proxy, seen)
        await _promote_through_outage(plan, row, rng, workdir, stack, outage, attributed=False)
    return row


def _fault(store: str, plan: Plan) -> str:
    return (
        f"{store} unreachable for {plan.outage:g} s (TCP proxy refuses and resets) "
        "within 0.5 s of a canary promote (2 v1 + 1 v2 canary → 2 v2)"
    )


@dataclass(frozen=True)
class Outage:
    store_url: str
    """The scenario's own way to the store, straight to the server."""
    up_store_url: str
    """What `up` gets: through the proxy."""
    proxy: TcpProxy
    status_writes: Callable[[], Awaitable[list[StatusWrite]]]


async def _promote_through_outage(
    plan: Plan,
    row: Row,
    rng: random.Random,
    workdir: Path,
    stack: AsyncExitStack,
    outage: Outage,
    *,
    attributed: bool = True,
) -> None:
    """The scenario on one store; `attributed`: its status writes name their writer."""
    proxy = outage.proxy
    store = await open_store(outage.store_url)
    stack.push_async_callback(store.close)
    service = EndpointService(store)
    show("starting servefleet up")
    up = await stack.enter_async_context(
        up_process(
            outage.up_store_url,
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

    writes = await outage.status_writes()
    foreign = foreign_writes(writes, {WRITER: up.pid}) if attributed else []
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
        "status_writes_seen": "every one" if attributed else f"sampled every {SAMPLE:g} s",
        "rate_per_s": plan.rate,
        "status_writes": len(writes),
        "request_errors": load.errors(),
    }
    if attributed:
        row.details["lease_tokens"] = sorted({write.lease_token or 0 for write in writes})
