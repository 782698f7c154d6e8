"""Scenario: the API server goes dark, then answers half its requests with errors.

One `servefleet reconcile --region k1` (default settings: a 15 s Lease) serves two
endpoints on the test API server (`chaos.kube`), reached through the TCP proxy.
Then, while one endpoint is scaled to a random 1-3 replicas every
`change_interval` s: the proxy is cut for `blackout` s (new connections refused,
open ones reset, as when the server or the network is gone), then restored with
a storm for `storm` s in which a quarter of the requests are answered 500 and a
quarter 429 with Retry-After: 1 (an overloaded apiserver's Priority and Fairness
refusing them). Then the faults end and the changes stop.

Invariants: nothing is deleted (no delete request, every object there before
still there); every request retried after a 429 waited its Retry-After (a request
of the same client, verb and object sent sooner is a violation); after the storm
the last change reaches its final form and the other endpoint is still ready; no
status goes back to an older generation. Reported: the request rate during the
storm (its mean and its busiest second) against the rate before the faults.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.progress import show
from chaos.fleet import ENDPOINT, changing
from chaos.kube import NAMESPACE, Cluster, client_pid, kube_fleet
from chaos.report import Row
from chaos.writes import reverted_statuses
from tests.kubeapi import RequestInfo

OTHER = "chaos-steady"
RETRY_AFTER = 1
KINDS = ("deployments", "services", "horizontalpodautoscalers", "ingresses")


@dataclass(frozen=True)
class Plan:
    blackout: float
    storm: float
    change_interval: float
    within: float


FULL = Plan(blackout=30.0, storm=30.0, change_interval=2.0, within=120.0)
QUICK = Plan(blackout=3.0, storm=3.0, change_interval=1.0, within=60.0)


def objects(kube: Cluster) -> set[str]:
    return {
        f"{kind}/{obj['metadata']['name']}"
        for kind in KINDS
        for obj in kube.server.objects(kind, NAMESPACE)
    }


def early_retries(log: Sequence[RequestInfo], refused: Sequence[RequestInfo]) -> list[str]:
    """Requests answered 429 whose client sent the same verb to the same object again
    before the Retry-After had passed."""
    problems = []
    for first in refused:
        key = (client_pid(first), first.verb, first.resource_key, first.name)
        later = [
            info
            for info in log
            if info.received_at > first.received_at
            and (client_pid(info), info.verb, info.resource_key, info.name) == key
        ]
        if later and later[0].received_at - first.received_at < RETRY_AFTER - 0.05:
            gap = later[0].received_at - first.received_at
            problems.append(
                f"{first.verb} {first.resource_key}/{first.name or ''} sent again "
                f"{gap:.2f} s after a 429 with Retry-After: {RETRY_AFTER}"
            )
    return problems


def rates(log: Sequence[RequestInfo], start: float, end: float) -> dict[str, float]:
    """Requests a second between two moments: the mean and the busiest second."""
    inside = [info.received_at for info in log if start <= info.received_at < end]
    seconds = Counter(int(moment - start) for moment in inside)
    return {
        "requests": len(inside),
        "per_s": round(len(inside) / max(end - start, 1e-9), 1),
        "busiest_s": max(seconds.values(), default=0),
    }


async def run(plan: Plan, postgres_url: str, rng: random.Random, workdir: Path) -> Row:
    row = Row(
        "API server blackout and 5xx storm",
        f"the test API server unreachable for {plan.blackout:g} s (connections refused and "
        f"reset), then {plan.storm:g} s of 25 % 500 and 25 % 429 (Retry-After: "
        f"{RETRY_AFTER}); one `reconcile`, an endpoint scaled every {plan.change_interval:g} s "
        "throughout, another left alone",
    )
    storm_rng = random.Random(rng.random())
    refused: list[RequestInfo] = []

    def share(status: int, probability: float) -> Callable[[RequestInfo], bool]:
        def decide(info: RequestInfo) -> bool:
            if storm_rng.random() < probability:
                if status == 429:
                    refused.append(info)
                return True
            return False

        return decide

    async with AsyncExitStack() as stack:
        fleet = await kube_fleet(stack, postgres_url, workdir, (ENDPOINT, OTHER))
        kube = fleet.cluster
        await fleet.reconciler("chaos-reconcile")
        show("waiting for both endpoints")
        for name in (ENDPOINT, OTHER):
            await fleet.converged(2, plan.within, name)
        before = objects(kube)
        calm_start = time.time()
        await asyncio.sleep(min(plan.storm, 10.0))
        calm_end = time.time()
        async with changing(fleet.service, plan.change_interval, rng) as changes:
            show(f"blackout: {plan.blackout:g} s")
            await kube.proxy.cut()
            await asyncio.sleep(plan.blackout)
            await kube.proxy.restore()
            show(f"storm: {plan.storm:g} s")
            storm_start = time.time()
            kube.server.fail(500, times=None, match=share(500, 0.25))
            kube.server.fail(
                429,
                times=None,
                match=share(429, 1 / 3),
                retry_after=RETRY_AFTER,
            )
            await asyncio.sleep(plan.storm)
            kube.server.clear_faults()
            storm_end = time.time()
        ended = time.monotonic()
        final = changes.asked[-1] if changes.asked else 2
        show("waiting for the last change to arrive")
        try:
            await fleet.converged(final, plan.within)
            await fleet.converged(2, plan.within, OTHER)
        except TimeoutError:
            row.broken.append(
                f"not converged {plan.within:g} s after the storm (last change: scale to {final})"
            )
        else:
            row.recovery_s = round(time.monotonic() - ended, 2)
        after = objects(kube)
        log = list(kube.server.request_log)
        status_log = await fleet.schema.status_writes()
    deletes = [info for info in log if info.verb in ("delete", "deletecollection")]
    gone = sorted(before - after)
    early = early_retries(log, refused)
    reverted = reverted_statuses(status_log)
    if deletes:
        row.broken.append(
            f"{len(deletes)} delete requests, e.g. {deletes[0].resource_key}/{deletes[0].name}"
        )
    if gone:
        row.broken.append(f"objects gone: {gone}")
    row.broken += early[:10] + reverted[:10]
    row.duplicate_writes = 0  # one reconciler: no second writer to catch
    row.lost_writes = len(reverted) + len(gone) + (0 if row.recovery_s is not None else 1)
    row.details = {
        "spec_changes": len(changes.asked),
        "final_replicas": final,
        "rate_before": rates(log, calm_start, calm_end),
        "rate_during_storm": rates(log, storm_start, storm_end),
        "answered_429": len(refused),
        "early_retries_after_429": len(early),
        "api_requests": len(log),
        "deletes": len(deletes),
        "status_writes": len(status_log),
    }
    return row
