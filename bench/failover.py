"""Benchmark 5: failover on the local runtime, with `servefleet up` itself.

Two `servefleet up --regions r1 --demo` processes on one SQLite store, as an operator
runs a standby (the harness of tests/scenarios/test_failover.py): one leads and runs
the demo endpoint's two replicas, the other stands by. The leader is SIGKILLed (no
clean shutdown, its lease not released); measured until the standby's first action
(its first replica process exists) and until it serves. Then replicas of the new
leader are SIGKILLed, one at a time, each measured until the endpoint is fully ready
again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.progress import show
from bench.report import Row
from servefleet.cli.up import DEMO_ENDPOINT
from servefleet.reconcile.leader import LeaseSettings
from servefleet.runtime.local.supervisor import LocalSettings
from servefleet.spec import RegionState
from servefleet.store import Store, open_store
from tests.scenarios.harness import UpProcess, chat, gone, up_process

POLL = 0.01
REGION = "r1"


@dataclass(frozen=True)
class Plan:
    lease_ttl: float
    replica_kills: int
    within: float


FULL = Plan(lease_ttl=LeaseSettings().ttl, replica_kills=2, within=90.0)
QUICK = Plan(lease_ttl=3.0, replica_kills=1, within=60.0)


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """perf_counter() once `check()` holds, polled every 10 ms."""
    started = time.perf_counter()
    async with asyncio.timeout(within):
        while not await check():
            show(f"{what} · {time.perf_counter() - started:.1f} s")
            await asyncio.sleep(POLL)
    return time.perf_counter()


async def _serving(client: aiohttp.ClientSession, leader: UpProcess) -> bool:
    """The leader runs both replicas and its gateway answers from one of them."""
    replicas = leader.replicas()
    if len(replicas) != 2:
        return False
    try:
        answer = await chat(client, leader.gateway_url, DEMO_ENDPOINT)
    except aiohttp.ClientError:
        return False
    return answer.status == 200 and answer.pid in replicas


async def _ready_since(store: Store, moment: datetime) -> bool:
    """The demo endpoint's r1 status is READY with both replicas, after a transition
    made after `moment` (so not the report from before the kill)."""
    statuses = await store.list_region_status(endpoint=DEMO_ENDPOINT, region=REGION)
    return any(
        status.state is RegionState.READY
        and status.replicas_ready == 2
        and status.last_transition is not None
        and status.last_transition >= moment
        for status in statuses
    )


async def run(plan: Plan) -> list[Row]:
    lease = LeaseSettings(
        ttl=plan.lease_ttl,
        renew_interval=plan.lease_ttl / 3,
        retry_interval=plan.lease_ttl / 10,
    )  # what `servefleet up --lease-ttl` makes of the TTL
    args = ("--regions", REGION, "--demo", "--port", "0", "--lease-ttl", f"{plan.lease_ttl:g}")
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-failover-") as name:
        directory = Path(name)
        store_path = str(directory / "store.db")
        store = await open_store(store_path, init=True)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(store.close)
            client = await stack.enter_async_context(aiohttp.ClientSession())
            both = [
                await stack.enter_async_context(
                    up_process(store_path, *args, stderr=directory / f"up{index}.log")
                )
                for index in range(2)
            ]

            async def one_leads() -> bool:
                leaders = [up for up in both if up.replicas()]
                return len(leaders) == 1 and await _serving(client, leaders[0])

            await _until(one_leads, plan.within, "waiting for a leader to serve")
            leader, standby = both if both[0].replicas() else both[::-1]
            killed = leader.replicas()

            started = time.perf_counter()
            leader.process.send_signal(signal.SIGKILL)

            async def standby_acts() -> bool:
                return bool(standby.replicas())

            async def standby_serves() -> bool:
                return all(gone(pid) for pid in killed) and await _serving(client, standby)

            acted = await _until(standby_acts, plan.within, "leader killed; standby to act")
            served = await _until(standby_serves, plan.within, "standby to serve")
            takeover = {"first_action_s": acted - started, "serving_s": served - started}

            recoveries: list[dict[str, float]] = []
            for kill in range(plan.replica_kills):
                await asyncio.sleep(1.0)
                before = standby.replicas()
                victim = sorted(before)[kill % len(before)]
                moment = datetime.now(UTC)
                started = time.perf_counter()
                os.kill(victim, signal.SIGKILL)

                async def replaced(before: set[int] = before, victim: int = victim) -> bool:
                    now = standby.replicas()
                    return gone(victim) and len(now) == 2 and bool(now - before)

                async def ready(moment: datetime = moment) -> bool:
                    return await replaced() and await _ready_since(store, moment)

                respawned = await _until(replaced, plan.within, f"replica {kill + 1} killed")
                recovered = await _until(ready, plan.within, f"replica {kill + 1}: ready again")
                recoveries.append(
                    {"respawned_s": respawned - started, "ready_s": recovered - started}
                )
    return [_takeover_row(plan, lease, takeover), _replica_row(plan, recoveries)]


def _takeover_row(plan: Plan, lease: LeaseSettings, figures: dict[str, float]) -> Row:
    bound = lease.ttl + lease.retry_interval
    return Row(
        "failover",
        "SIGKILL of a region's leader → the standby's first action / serving",
        f"two `servefleet up --regions r1 --demo --lease-ttl {plan.lease_ttl:g}` processes on "
        f"one SQLite store (lease TTL {lease.ttl:g} s, renewed every "
        f"{lease.renew_interval:g} s, a standby retries every {lease.retry_interval:g} s); "
        "the leader runs the demo endpoint (2 replicas); SIGKILL of the leader, then polled "
        "every 10 ms: first action = the standby's first replica process exists, serving = "
        "the standby runs both replicas and its gateway answers from one of them",
        f"first action after {figures['first_action_s']:.2f} s · serving after "
        f"{figures['serving_s']:.2f} s (the lease must run out first: ≤ TTL {lease.ttl:g} s "
        f"after the leader's last renewal, + ≤ {lease.retry_interval:g} s until the standby "
        "tries again)",
        {
            **{key: round(value, 3) for key, value in figures.items()},
            "lease_ttl_s": lease.ttl,
            "renew_interval_s": lease.renew_interval,
            "retry_interval_s": lease.retry_interval,
        },
        goal=f"first action ≤ TTL + standby retry = {bound:g} s (the lease design's bound)",
        met=figures["first_action_s"] <= bound,
    )


def _replica_row(plan: Plan, recoveries: list[dict[str, float]]) -> Row:
    settings = LocalSettings()
    shown = " · ".join(
        f"respawned {r['respawned_s']:.2f} s, ready {r['ready_s']:.2f} s" for r in recoveries
    )
    figures: dict[str, Any] = {
        "kills": [{key: round(value, 3) for key, value in r.items()} for r in recoveries],
        "restart_backoff_initial_s": settings.restart_backoff_initial,
        "probe_interval_s": settings.probe_interval,
    }
    return Row(
        "failover",
        "SIGKILL of a replica → the endpoint fully ready again",
        f"the new leader above ({len(recoveries)} kills, each of a different replica, 1 s "
        "apart); respawned = the replacement process exists; ready = it exists and the "
        "region's status is READY with 2 ready replicas after a transition later than the "
        f"kill; default local runtime settings (restart backoff from "
        f"{settings.restart_backoff_initial:g} s, health probe every "
        f"{settings.probe_interval:g} s)",
        shown or "no kill measured",
        figures,
    )
