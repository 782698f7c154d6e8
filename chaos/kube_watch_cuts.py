"""Scenario: watch streams cut every few seconds, and the history compacted.

One `servefleet reconcile --region k1` serves an endpoint on the test API server
(`chaos.kube`) that is scaled to a random 1-3 replicas every `change_interval` s
for `duration` s. Every `cut_interval` s every open watch stream is ended, either
cleanly or by closing its connection (as a load balancer or an apiserver restart
does), at random; halfway through, the server's history is compacted as well, so
every watch opened again from an older resourceVersion is answered with an ERROR
event of code 410 (Expired), as a real apiserver answers it.

The Ingress is deleted by hand (as a user's kubectl would) right after the first
cut and right after the compaction, while the watches are down.

Invariants: no change is missed (the Deployments are rolled out by the server a
moment after each change, and the region reports ready only once its watch has
seen that: the last change reaches its final form, ready at its generation; the
Ingress deleted while the watches were down is put back, which needs its DELETED
event replayed on the resumed watch, or the relist after the 410); no
relist storm: a cut watch resumes from its resourceVersion without listing, so
the lists are those of the start and one per watched kind after the compaction
(plus one per kind for a watch that was itself cut during its relist); no status
goes back to an older generation. Reported: the lists and watches opened.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.progress import show
from chaos.fleet import changing
from chaos.kube import NAMESPACE, kube_fleet
from chaos.report import Row
from chaos.writes import reverted_statuses


@dataclass(frozen=True)
class Plan:
    duration: float
    cut_interval: float
    change_interval: float
    within: float


FULL = Plan(duration=60.0, cut_interval=3.0, change_interval=1.0, within=90.0)
QUICK = Plan(duration=6.0, cut_interval=2.0, change_interval=1.0, within=60.0)


async def run(plan: Plan, postgres_url: str, rng: random.Random, workdir: Path) -> Row:
    row = Row(
        "watch cuts and compaction",
        f"every watch stream ended every {plan.cut_interval:g} s for {plan.duration:g} s "
        "(cleanly or by a closed connection, at random), the history compacted halfway "
        "(410 Expired to every resumed watch); one `reconcile`, an endpoint scaled every "
        f"{plan.change_interval:g} s",
    )
    cuts = 0
    async with AsyncExitStack() as stack:
        fleet = await kube_fleet(stack, postgres_url, workdir)
        await fleet.reconciler("chaos-reconcile")
        await fleet.converged(2, plan.within)
        server = fleet.cluster.server
        lists_at_start = server.count("list")
        watched = {info.resource for info in server.request_log if info.verb == "watch"}
        watches_at_start = server.count("watch")
        compact_at = plan.duration / 2
        ingress = fleet.cluster.ingress_name()
        deleted: list[int] = []
        """The answers to the hand deletions of the Ingress while the watches were down."""
        async with changing(fleet.service, plan.change_interval, rng) as changes:
            began = time.monotonic()
            while (elapsed := time.monotonic() - began) < plan.duration:
                show(f"cut {cuts + 1}: {elapsed:.0f}/{plan.duration:g} s")
                pause = plan.cut_interval
                if 0 <= compact_at - elapsed < pause:
                    await asyncio.sleep(compact_at - elapsed)
                    server.compact()
                    server.drop_watches(abort=rng.random() < 0.5)
                    deleted.append(await fleet.cluster.delete_ingress_by_hand(ingress))
                    pause -= compact_at - elapsed
                await asyncio.sleep(pause)
                server.drop_watches(abort=rng.random() < 0.5)
                if cuts == 0:
                    deleted.append(await fleet.cluster.delete_ingress_by_hand(ingress))
                cuts += 1
        ended = time.monotonic()
        final = changes.asked[-1] if changes.asked else 2
        show("waiting for the last change to arrive")
        try:
            await fleet.converged(final, plan.within)
        except TimeoutError:
            row.broken.append(
                f"the last change (scale to {final}) did not arrive within {plan.within:g} s"
            )
        else:
            row.recovery_s = round(time.monotonic() - ended, 2)
        try:
            async with asyncio.timeout(plan.within):
                while server.get_object("ingresses", NAMESPACE, ingress) is None:  # noqa: ASYNC110 - the server's own state
                    await asyncio.sleep(0.05)
        except TimeoutError:
            row.broken.append(
                f"a missed change: the Ingress deleted by hand while the watches were down "
                f"(answers {deleted}) was not put back within {plan.within:g} s"
            )
        # Every watch open again (after its relist, if it had to), before counting.
        async with asyncio.timeout(plan.within):
            while server.open_watches < len(watched):  # noqa: ASYNC110 - the server's own state
                await asyncio.sleep(0.05)
        lists = server.count("list") - lists_at_start
        watches = server.count("watch") - watches_at_start
        status_log = await fleet.schema.status_writes()
    allowed = 2 * len(watched)
    if lists > allowed:
        row.broken.append(
            f"a relist storm: {lists} lists after {cuts} cuts and one compaction "
            f"({len(watched)} kinds watched; at most {allowed} expected)"
        )
    reverted = reverted_statuses(status_log)
    row.broken += reverted[:10]
    row.duplicate_writes = 0  # one reconciler: no second writer to catch
    row.lost_writes = len(reverted) + (0 if row.recovery_s is not None else 1)
    row.details = {
        "cuts": cuts,
        "spec_changes": len(changes.asked),
        "final_replicas": final,
        "kinds_watched": sorted(watched),
        "lists_after_start": lists,
        "watches_opened_after_start": watches,
        "status_writes": len(status_log),
        "ingress_deleted_by_hand": deleted,
    }
    return row
