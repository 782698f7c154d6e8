"""Scenario: the leader of a Kubernetes region is SIGKILLed again and again under
spec changes.

Two `servefleet reconcile --region k1 --lease-ttl T` processes contend for the
region's Lease on the test API server (`chaos.kube`), as a reconciler Deployment
with two pods would; each has its own connection name in the store's status write
log and its own User-Agent in the server's request log. The endpoint (an image
on Kubernetes, rolled out by the test server after 50 ms) is scaled to a random
1-3 replicas every `change_interval` seconds. Once a leader holds the Lease it is
SIGKILLed (its process group), either at a random moment up to `kill_window` s
later or, every other kill, within 50 ms after the next spec change (while it
applies it); a new `reconcile` is started in its place.

Invariants, from the server's request log (by client: the `host:pid` in the
User-Agent) and the Lease's history as the server committed it: every request
that changed the cluster, other than the Lease's own, came from the process named
by the Lease at that moment; from the store's status write log: every status
write came from the Lease holder of its moment and none went back to an older
generation; after the last kill the last spec change reaches its final form (the
Deployment at that many replicas, the region ready at the last generation).
Several changes made while no one leads may be applied as one: what is applied is
the latest declaration, never an older one after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import statistics
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.progress import show
from chaos.fleet import POLL, changing, skew_in_words
from chaos.kube import (
    NAMESPACE,
    REGION,
    KubeFleet,
    LeaseChange,
    client_pid,
    kube_fleet,
    writes,
)
from chaos.postgres import StatusWrite
from chaos.report import Row
from chaos.writes import heartbeat_lead, holder_pid, reverted_statuses
from servefleet.cli.up import CLOCK_OFFSET_VARIABLE
from tests.kubeapi import RequestInfo
from tests.scenarios.harness import UpProcess

MID_APPLY = 0.05
"""A kill aimed at an apply lands this many seconds after a spec change at most."""


@dataclass(frozen=True)
class Plan:
    kills: int
    lease_ttl: float
    kill_window: float
    change_interval: float
    within: float
    skew: float = 0.0
    """Seconds one of the two processes' clock runs ahead (the clock-skew scenario):
    the first started and every replacement of a killed one that was ahead."""


FULL = Plan(kills=100, lease_ttl=2.0, kill_window=2.0, change_interval=0.5, within=90)
QUICK = Plan(kills=1, lease_ttl=1.0, kill_window=1.0, change_interval=0.5, within=40)
SKEW_FULL = Plan(
    kills=20, lease_ttl=2.0, kill_window=2.0, change_interval=0.5, within=90, skew=30.0
)
SKEW_QUICK = Plan(
    kills=2, lease_ttl=1.0, kill_window=1.0, change_interval=0.5, within=40, skew=30.0
)


@dataclass
class Reconcilers:
    """The `reconcile` processes started so far, by writer name."""

    fleet: KubeFleet
    plan: Plan
    living: dict[str, UpProcess] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    """Every writer name ever started, with its process id (the dead ones too)."""
    ahead: set[str] = field(default_factory=set)
    """The writers whose clock runs ahead."""
    started: int = 0

    async def start(self, ahead: bool = False) -> None:
        """Start one more; `ahead`: with its clock `plan.skew` s ahead."""
        self.started += 1  # before the first await: starts may run at once
        writer = f"chaos-reconcile-{self.started}"
        reconciler = await self.fleet.reconciler(
            writer,
            *("--lease-ttl", f"{self.plan.lease_ttl:g}"),
            env={CLOCK_OFFSET_VARIABLE: f"{self.plan.skew:g}"} if ahead else None,
        )
        self.living[writer] = reconciler
        if ahead:
            self.ahead.add(writer)
        self.pids[writer] = reconciler.pid

    def leader(self) -> tuple[str, UpProcess] | None:
        pid = self.fleet.cluster.holder_pid(REGION)
        for writer, reconciler in self.living.items():
            if reconciler.pid == pid:
                return writer, reconciler
        return None


def holder_at(changes: Sequence[LeaseChange], region: str, moment: float) -> str:
    """The region's Lease holder as last committed before `moment` ("" for none)."""
    holder = ""
    for change in changes:
        if change.at > moment:
            break
        if change.region == region:
            holder = change.holder
    return holder


def foreign_requests(log: Sequence[RequestInfo], changes: Sequence[LeaseChange]) -> list[str]:
    """Requests that changed the cluster (the Lease's own aside) from a process that
    did not hold the region's Lease when they arrived."""
    problems = []
    for info in writes(log):
        if info.resource == "leases":
            continue
        holder = holder_at(changes, REGION, info.received_at)
        if client_pid(info) != (holder_pid(holder) if holder else None):
            problems.append(
                f"{info.verb} {info.resource_key}/{info.name} by {info.user_agent!r} while "
                f"{holder or 'nobody'} held the Lease"
            )
    return problems


def foreign_status_writes(
    log: Sequence[StatusWrite], changes: Sequence[LeaseChange], pids: dict[str, int]
) -> list[str]:
    """Status writes by a process that did not hold the region's Lease at that moment."""
    problems = []
    for write in log:
        holder = holder_at(changes, write.status.region, write.at)
        if pids.get(write.writer) != (holder_pid(holder) if holder else None):
            problems.append(
                f"status write #{write.seq} by {write.writer} (pid {pids.get(write.writer)}) "
                f"while {holder or 'nobody'} held the Lease"
            )
    return problems


async def run(plan: Plan, postgres_url: str, rng: random.Random, workdir: Path) -> Row:
    row = Row(
        "clock skew (Kubernetes Lease)" if plan.skew else "kube leader kills",
        skew_in_words(plan.skew, "`reconcile`")
        + f"{plan.kills} SIGKILLs of the Lease holder (one of two `reconcile --lease-ttl "
        f"{plan.lease_ttl:g}` for a region on the test API server), every other one within "
        f"{MID_APPLY * 1000:g} ms of a spec change, the others 0-{plan.kill_window:g} s after "
        f"it took the Lease, under a scale to 1-3 replicas every {plan.change_interval:g} s; "
        "a new `reconcile` replaces each",
    )
    kills: list[float] = []
    victims: list[tuple[float, int]] = []
    """time.time() of each kill, with the pid killed."""
    mid_apply = 0
    kills_ahead = 0
    async with AsyncExitStack() as stack:
        fleet = await kube_fleet(stack, postgres_url, workdir)
        kube = fleet.cluster
        reconcilers = Reconcilers(fleet, plan)
        show("starting two servefleet reconcile")
        await asyncio.gather(reconcilers.start(ahead=plan.skew != 0), reconcilers.start())
        await fleet.converged(2, plan.within)
        replacements: list[asyncio.Task[None]] = []
        async with changing(fleet.service, plan.change_interval, rng) as changes:
            for kill in range(plan.kills):
                show(f"kill {kill + 1}/{plan.kills}: waiting for a leader")
                async with asyncio.timeout(plan.within):
                    while (found := reconcilers.leader()) is None:  # noqa: ASYNC110 - the Lease lives on the server
                        await asyncio.sleep(POLL)
                writer, leader = found
                if kill % 2:
                    changes.made.clear()
                    await changes.made.wait()
                    await asyncio.sleep(rng.uniform(0.0, MID_APPLY))
                    mid_apply += 1
                else:
                    await asyncio.sleep(rng.uniform(0.0, plan.kill_window))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(leader.pid, signal.SIGKILL)
                kills.append(time.monotonic())
                victims.append((time.time(), leader.pid))
                kills_ahead += writer in reconcilers.ahead
                del reconcilers.living[writer]
                await leader.process.wait()
                replacements.append(
                    asyncio.create_task(reconcilers.start(ahead=writer in reconcilers.ahead))
                )
            await asyncio.gather(*replacements)
        asked = changes.asked
        show("waiting for the last change to arrive")
        final = asked[-1] if asked else 2
        try:
            await fleet.converged(final, plan.within)
        except TimeoutError:
            row.broken.append(
                f"the last change (scale to {final}) did not arrive within {plan.within:g} s"
            )
        else:
            row.recovery_s = round(time.monotonic() - kills[-1], 2) if kills else 0.0
        deployments = kube.server.objects("deployments", NAMESPACE)
        applied = sorted(int(d["spec"].get("replicas", 1)) for d in deployments)
        if applied != [final]:
            row.broken.append(f"Deployments at {applied} replicas, not [{final}]")
        status_log = await fleet.schema.status_writes()
        request_log = list(kube.server.request_log)
        lease_changes = list(kube.lease_changes)
    foreign = foreign_requests(request_log, lease_changes)
    foreign_status = foreign_status_writes(status_log, lease_changes, reconcilers.pids)
    reverted = reverted_statuses(status_log)
    row.duplicate_writes = len(foreign) + len(foreign_status)
    row.lost_writes = len(reverted) + (0 if row.recovery_s is not None else 1)
    row.broken += (foreign + foreign_status)[:20] + reverted[:20]
    holders = [c for c in lease_changes if c.holder]
    takeovers = _takeovers(victims, holders)
    row.details = {
        "kills": len(kills),
        "kills_of_one_ahead": kills_ahead,
        "status_dated_ahead_by_s": heartbeat_lead(status_log, reconcilers.ahead),
        "kills_within_50ms_of_a_change": mid_apply,
        "lease_ttl_s": plan.lease_ttl,
        "spec_changes": len(asked),
        "final_replicas": final,
        "lease_takeovers": sum(
            1 for before, after in itertools.pairwise(holders) if before.holder != after.holder
        ),
        "kill_to_new_holder_s": {
            "median": round(statistics.median(takeovers), 2) if takeovers else None,
            "max": round(max(takeovers), 2) if takeovers else None,
        },
        "api_requests": len(request_log),
        "api_writes_by_reconcilers": len(
            [i for i in writes(request_log) if i.resource != "leases"]
        ),
        "status_writes": len(status_log),
    }
    return row


def _takeovers(victims: Sequence[tuple[float, int]], holders: Sequence[LeaseChange]) -> list[float]:
    """Seconds from each kill until another process held the Lease."""
    found = []
    for killed_at, pid in victims:
        after = [c.at for c in holders if c.at > killed_at and holder_pid(c.holder) != pid]
        if after:
            found.append(min(after) - killed_at)
    return found
