"""Scenario: the leader of a region is SIGKILLed again and again under spec changes.

Two `servefleet up --regions r1 --lease-ttl T` processes contend for the region's
store lease, as an operator runs a standby on the local runtime; each has its own
gateway (a standby's answers 503) and its own connection name in the status write
log. The endpoint is scaled to a random 1-3 replicas every `change_interval`
seconds (each a new generation), while a steady load goes to both gateways, the
lease holder's first. At a random moment after a leader takes the lease (so some
kills land mid-apply), its whole process group is SIGKILLed and a new `up` is
started in its place, until `kills` leaders are dead.

Invariants: every status write was made by the process holding the region's lease
at that moment, under a fencing token no older than one already written (never
two writers to one region); no status goes back to an older generation; at no
moment do two `up` processes run replicas (a killed leader's replicas die with it,
the next leader starts its own only after the lease ran out); after the last kill
the last spec change reaches its final form (reported ready at the last generation,
with exactly that many replica processes on the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.progress import show
from chaos.fleet import ENDPOINT, POLL, REGION, changing, converged, skew_in_words
from chaos.load import SteadyLoad
from chaos.postgres import Schema, chaos_schema
from chaos.report import Row
from chaos.writes import foreign_writes, heartbeat_lead, holder_pid, reverted_statuses
from servefleet.cli.up import CLOCK_OFFSET_VARIABLE
from servefleet.service import EndpointService
from servefleet.store import open_store
from tests.scenarios.harness import UpProcess, demo_spec, gone, manifest, up_process


@dataclass(frozen=True)
class Plan:
    kills: int
    lease_ttl: float
    kill_window: float
    """A leader is killed between 0 and this many seconds after it took the lease."""
    change_interval: float
    rate: float
    within: float
    skew: float = 0.0
    """Seconds one of the two processes' clock runs ahead (the clock-skew scenario):
    the first started and every replacement of a killed one that was ahead."""


FULL = Plan(kills=100, lease_ttl=3.0, kill_window=3.0, change_interval=0.5, rate=10.0, within=90)
QUICK = Plan(kills=5, lease_ttl=2.0, kill_window=2.5, change_interval=0.5, rate=10.0, within=40)
SKEW_FULL = Plan(
    kills=20, lease_ttl=3.0, kill_window=3.0, change_interval=0.5, rate=10.0, within=90, skew=30.0
)
SKEW_QUICK = Plan(
    kills=2, lease_ttl=2.0, kill_window=2.5, change_interval=0.5, rate=10.0, within=40, skew=30.0
)


@dataclass
class Candidates:
    """The `up` processes started so far, by writer name, and the one starting."""

    schema: Schema
    plan: Plan
    workdir: Path
    stack: AsyncExitStack
    living: dict[str, UpProcess] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    """Every writer name ever started, with its process id (the dead ones too)."""
    ahead: set[str] = field(default_factory=set)
    """The writers whose clock runs ahead."""

    started: int = 0

    async def start(self, ahead: bool = False) -> None:
        """Start one more; `ahead`: with its clock `plan.skew` s ahead."""
        self.started += 1  # before the first await: starts may run at once
        writer = f"chaos-up-{self.started}"
        up = await self.stack.enter_async_context(
            up_process(
                self.schema.url_for(writer),
                *("--regions", REGION, "--port", "0", "--lease-ttl", f"{self.plan.lease_ttl:g}"),
                stderr=self.workdir / f"{writer}.log",
                env={CLOCK_OFFSET_VARIABLE: f"{self.plan.skew:g}"} if ahead else None,
                log_dir=self.workdir / "logs",
            )
        )
        self.living[writer] = up
        if ahead:
            self.ahead.add(writer)
        self.pids[writer] = up.pid

    async def leader(self) -> tuple[str, UpProcess] | None:
        holder = await self.schema.lease_holder(REGION)
        pid = holder_pid(holder) if holder else None
        for writer, up in self.living.items():
            if up.pid == pid:
                return writer, up
        return None

    def gateways(self, first: UpProcess | None) -> list[str]:
        ordered = sorted(self.living.values(), key=lambda up: up is not first)
        return [up.gateway_url for up in ordered]

    def running_replicas(self) -> dict[int, set[int]]:
        """The living `up` processes that run replicas now, with their replicas."""
        found = {up.pid: up.replicas() for up in self.living.values() if not gone(up.pid)}
        return {pid: replicas for pid, replicas in found.items() if replicas}


async def run(plan: Plan, postgres_url: str, rng: random.Random, workdir: Path) -> Row:
    row = Row(
        "clock skew (store lease)" if plan.skew else "leader kills",
        skew_in_words(plan.skew, "`up`")
        + f"{plan.kills} SIGKILLs of the region's leader (one of two `up --lease-ttl "
        f"{plan.lease_ttl:g}`), each 0-{plan.kill_window:g} s after it took the lease, under "
        f"a scale to 1-3 replicas every {plan.change_interval:g} s; a new `up` replaces each",
    )
    kills: list[float] = []
    kills_ahead = 0
    overlaps: list[dict[int, set[int]]] = []
    async with AsyncExitStack() as stack:
        schema = await stack.enter_async_context(chaos_schema(postgres_url))
        store = await open_store(schema.url)
        stack.push_async_callback(store.close)
        service = EndpointService(store)
        candidates = Candidates(schema, plan, workdir, stack)
        show("starting two servefleet up")
        await asyncio.gather(candidates.start(ahead=plan.skew != 0), candidates.start())

        def processes() -> int:
            return sum(len(replicas) for replicas in candidates.running_replicas().values())

        await service.apply(manifest(ENDPOINT, demo_spec("v1", replicas=2), [REGION]))
        await converged(store, replicas=2, processes=processes, within=plan.within)

        async def watch_overlaps() -> None:
            while True:
                running = candidates.running_replicas()
                if len(running) > 1:
                    overlaps.append(running)
                await asyncio.sleep(POLL)

        watcher = asyncio.create_task(watch_overlaps(), name="chaos-overlaps")
        stack.push_async_callback(_cancelled, watcher)
        leading: list[UpProcess | None] = [None]
        limit = int(plan.rate * plan.kills * (plan.lease_ttl + plan.kill_window + 10))
        load = SteadyLoad(ENDPOINT, lambda: candidates.gateways(leading[0]), plan.rate, limit)
        load.start()
        stack.push_async_callback(load.stop)
        replacements: list[asyncio.Task[None]] = []
        async with changing(service, plan.change_interval, rng) as changes:
            asked = changes.asked
            for kill in range(plan.kills):
                show(f"kill {kill + 1}/{plan.kills}: waiting for a leader")
                async with asyncio.timeout(plan.within):
                    while (found := await candidates.leader()) is None:  # noqa: ASYNC110 - the lease lives in the store
                        await asyncio.sleep(POLL)
                writer, leader = found
                leading[0] = leader
                await asyncio.sleep(rng.uniform(0.0, plan.kill_window))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(leader.pid, signal.SIGKILL)
                kills.append(time.monotonic())
                kills_ahead += writer in candidates.ahead
                del candidates.living[writer]
                await leader.process.wait()
                replacements.append(
                    asyncio.create_task(candidates.start(ahead=writer in candidates.ahead))
                )
            await asyncio.gather(*replacements)
        show("waiting for the last change to arrive")
        final = asked[-1] if asked else 2
        try:
            await converged(store, replicas=final, processes=processes, within=plan.within)
        except TimeoutError:
            row.broken.append(
                f"the last change (scale to {final}) did not arrive within {plan.within:g} s"
            )
        else:
            row.recovery_s = round(time.monotonic() - kills[-1], 2)
        await load.stop()
        writes = await schema.status_writes()
    foreign = foreign_writes(writes, candidates.pids)
    reverted = reverted_statuses(writes)
    row.sent, row.answered, row.failed = load.sent, load.answered, load.failed
    row.longest_gap_s = round(load.longest_gap(), 2)
    row.duplicate_writes = len(foreign) + len(overlaps)
    row.lost_writes = len(reverted) + (0 if row.recovery_s is not None else 1)
    row.broken += foreign + reverted
    if overlaps:
        row.broken.append(
            f"{len(overlaps)} samples with two `up` processes running replicas, e.g. {overlaps[0]}"
        )
    takeovers = [_answered_again(load, moment) for moment in kills]
    row.details = {
        "kills": len(kills),
        "kills_of_one_ahead": kills_ahead,
        "status_dated_ahead_by_s": heartbeat_lead(writes, candidates.ahead),
        "lease_ttl_s": plan.lease_ttl,
        "spec_changes": len(asked),
        "final_replicas": final,
        "status_writes": len(writes),
        "lease_tokens": len({write.lease_token for write in writes}),
        "answered_again_after_kill_s": {
            "max": max((t for t in takeovers if t is not None), default=None),
            "never": sum(t is None for t in takeovers),
        },
        "request_errors": load.errors(),
    }
    return row


def _answered_again(load: SteadyLoad, moment: float) -> float | None:
    """Seconds from `moment` until the first answer to a request sent after it."""
    answers = [o.done_at for o in load.outcomes if o.answered and o.sent_at >= moment]
    return round(min(answers) - moment, 2) if answers else None


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
