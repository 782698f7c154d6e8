"""Benchmark 4: the Kubernetes runtime under a real controller, against the test API
server (`tests.kubeapi.KubeApiServer`) over real HTTP on loopback.

Convergence: N image-only endpoints created before the controller starts; wall time
until every endpoint's r1 status is READY at its current generation, and the
Kubernetes requests that took, by verb. Steady state: then a quiet period with no
changes, counting Kubernetes requests, store writes and status writes.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.control import SETTINGS, ControllerRun
from bench.counting import FEED_POLL, WRITES, CountingStore
from bench.report import Row
from bench.stores import REGION, endpoint_name
from servefleet.reconcile.controller import Controller
from servefleet.runtime.kubernetes.cluster import ClusterSettings, KubernetesRuntime
from servefleet.runtime.kubernetes.render import RegionSettings
from servefleet.service import EndpointService, utc_now
from servefleet.spec import DesiredState, EndpointSpec, Region, RegionKind, RegionState
from servefleet.store import Store, open_store
from tests.kubeapi import KubeApiServer


@dataclass(frozen=True)
class Plan:
    endpoints: int
    seconds: float


FULL = Plan(endpoints=1000, seconds=60.0)
QUICK = Plan(endpoints=200, seconds=10.0)

NAMESPACE = "servefleet"
IMAGE = "vllm/vllm-openai:v0.6.3"
AUTO_READY = 0.05
CLUSTER = ClusterSettings(rate=100_000.0, burst=100_000)
"""The client-side token bucket raised far above what is sent (defaults: 50/s, burst
100), so that the figures are the runtime's and the server's, not the limit's."""
DEFAULT_CLUSTER = ClusterSettings()

# The reference design, as measured on a real kube-apiserver 1.36.2 (../shared/ARCHITECTURE.md).
REFERENCE_ENDPOINTS = 1000
REFERENCE_REQUESTS_PER_MIN = 8331
REFERENCE_STORE_WRITES_PER_MIN = 1667


def _by_verb(kube: KubeApiServer) -> Counter[str]:
    return Counter(info.verb for info in kube.request_log)


def _by_verb_resource(kube: KubeApiServer) -> dict[str, int]:
    counted = Counter(f"{info.verb} {info.resource_key}" for info in kube.request_log)
    return dict(sorted(counted.items()))


async def _all_ready(reader: Store, generations: dict[str, int]) -> bool:
    statuses = await reader.list_region_status(region=REGION)
    ready = {
        status.endpoint
        for status in statuses
        if status.state is RegionState.READY
        and status.observed_generation == generations.get(status.endpoint)
    }
    return ready >= generations.keys()


async def _converged(
    running: ControllerRun, reader: Store, generations: dict[str, int], within: float
) -> float:
    """Wait until every endpoint's r1 status is READY at its generation; seconds taken."""
    started = time.perf_counter()
    async with asyncio.timeout(within):
        while True:
            running.check()
            if await _all_ready(reader, generations):
                return time.perf_counter() - started
            await asyncio.sleep(0.05)


async def _settled(running: ControllerRun, reader: Store, within: float = 60.0) -> None:
    """Wait until no endpoint is still `deploying` and the controller is idle."""
    async with asyncio.timeout(within):
        while await reader.list_endpoints(desired_state=DesiredState.DEPLOYING):
            running.check()
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    await running.idle(within)


def _per(counted: Counter[str], divisor: float, digits: int = 2) -> dict[str, float]:
    return {verb: round(count / divisor, digits) for verb, count in sorted(counted.items())}


def _verbs_text(figures: dict[str, float]) -> str:
    if not figures:
        return "none"
    return " · ".join(f"{verb} {value:g}" for verb, value in figures.items())


async def run(plan: Plan) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-k8s-") as directory:
        url = f"sqlite:///{Path(directory) / 'store.db'}"
        writer = await open_store(url, init=True)
        store = CountingStore(await open_store(url))
        try:
            async with KubeApiServer(auto_ready=AUTO_READY) as kube:
                kubeconfig = kube.write_kubeconfig(Path(directory) / "kubeconfig", NAMESPACE)
                return await _measure(plan, kube, kubeconfig, writer, store)
        finally:
            await store.close()
            await writer.close()


async def _measure(
    plan: Plan, kube: KubeApiServer, kubeconfig: Path, writer: Store, store: CountingStore
) -> list[Row]:
    await writer.put_region(Region(name=REGION, kind=RegionKind.KUBERNETES))
    service = EndpointService(writer)
    spec = EndpointSpec(image=IMAGE, replicas=2)
    generations: dict[str, int] = {}
    for index in range(plan.endpoints):
        created = await service.deploy(endpoint_name(index), spec, [REGION])
        generations[created.name] = created.generation

    runtime = await KubernetesRuntime.from_kubeconfig(
        REGION, RegionSettings(namespace=NAMESPACE), kubeconfig, cluster=CLUSTER
    )
    try:
        await runtime.start(give_up_after=30)
        async with asyncio.timeout(30):
            while True:  # one watch per kind: Service, Deployment, HPA, Ingress
                if kube.open_watches >= 4:
                    break
                await asyncio.sleep(0.01)
        kube.reset_counts()  # the initial lists and watches are not part of the figures
        before = store.snapshot()
        controller = Controller(store, runtime, REGION, SETTINGS, clock=utc_now)
        task = asyncio.create_task(controller.run(), name="bench-controller")
        running = ControllerRun(controller, task)
        try:
            converge_s = await _converged(running, writer, generations, within=300)
            converge_requests = _by_verb(kube)
            converge_detail = _by_verb_resource(kube)
            converge_runtime_writes = controller.runtime_writes
            converge_status_writes = controller.status_writes
            converge_calls = store.snapshot()
            converge_store_writes = sum(
                converge_calls[k] - before[k] for k in converge_calls if k in WRITES
            )
            await _settled(running, writer)

            kube.reset_counts()
            calls = store.snapshot()
            status_writes = controller.status_writes
            runtime_writes = controller.runtime_writes
            started = time.perf_counter()
            await asyncio.sleep(plan.seconds)
            elapsed = time.perf_counter() - started
            quiet_requests = _by_verb(kube)
            quiet_detail = _by_verb_resource(kube)
            open_watches = kube.open_watches
            after = store.snapshot()
            quiet_calls = {k: after[k] - calls[k] for k in after if after[k] - calls[k]}
            quiet_status = controller.status_writes - status_writes
            quiet_runtime = controller.runtime_writes - runtime_writes
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    finally:
        await runtime.close()

    count = plan.endpoints
    minutes = elapsed / 60
    store_writes = sum(v for k, v in quiet_calls.items() if k in WRITES)
    converge_total = sum(converge_requests.values())
    quiet_total = sum(quiet_requests.values())
    per_endpoint = _per(converge_requests, count)
    per_minute = _per(quiet_requests, minutes, 1)
    requests_per_min = quiet_total / minutes
    store_writes_per_min = store_writes / minutes
    status_writes_per_min = quiet_status / minutes
    heartbeat_bound = count / (SETTINGS.heartbeat_interval / 60)
    watch_bound = 4 / (CLUSTER.watch_timeout / 60)
    workload = (
        f"KubeApiServer (tests/kubeapi, auto_ready {AUTO_READY:g} s: Deployments marked ready "
        f"{AUTO_READY * 1000:.0f} ms after each spec change) over real HTTP on loopback, "
        "in the benchmark's process and event loop (it shares the CPU with the controller); "
        f"KubernetesRuntime (namespace {NAMESPACE}, client-side limit raised to "
        f"{CLUSTER.rate:,.0f}/s burst {CLUSTER.burst:,} so it is not what is measured; "
        f"default {DEFAULT_CLUSTER.rate:g}/s burst {DEFAULT_CLUSTER.burst}) under a real "
        f"Controller ({SETTINGS.workers} workers, resync {SETTINGS.resync_interval:.0f} s, "
        f"heartbeat {SETTINGS.heartbeat_interval:.0f} s) on r1; SQLite store; {count} "
        f"endpoints created before the controller starts (image {IMAGE}, 2 replicas: "
        "Service, Deployment, Ingress each)"
    )
    converge_figures: dict[str, Any] = {
        "endpoints": count,
        "converge_s": round(converge_s, 3),
        "endpoints_per_s": round(count / converge_s, 1),
        "requests": converge_total,
        "requests_per_endpoint": round(converge_total / count, 2),
        "requests_per_endpoint_by_verb": per_endpoint,
        "requests_by_verb_resource": converge_detail,
        "runtime_writes": converge_runtime_writes,
        "status_writes": converge_status_writes,
        "store_writes": converge_store_writes,
        "auto_ready_s": AUTO_READY,
        "cluster_rate": CLUSTER.rate,
        "cluster_burst": CLUSTER.burst,
        "default_rate_floor_s": round(converge_total / DEFAULT_CLUSTER.rate, 1),
    }
    steady_figures: dict[str, Any] = {
        "endpoints": count,
        "seconds": round(elapsed, 3),
        "requests": quiet_total,
        "requests_per_min": round(requests_per_min, 1),
        "requests_per_min_by_verb": per_minute,
        "requests_by_verb_resource": quiet_detail,
        "open_watches": open_watches,
        "store_writes": store_writes,
        "store_writes_per_min": round(store_writes_per_min, 1),
        "status_writes": quiet_status,
        "status_writes_per_min": round(status_writes_per_min, 1),
        "runtime_writes": quiet_runtime,
        "feed_polls": quiet_calls.get(FEED_POLL, 0),
        "store_calls": dict(sorted(quiet_calls.items())),
        "long_run_bounds_not_measured": {
            "heartbeat_status_writes_per_min_at_most": round(heartbeat_bound, 1),
            "watch_renewals_per_min": round(watch_bound, 2),
        },
        "reference": {
            "endpoints": REFERENCE_ENDPOINTS,
            "requests_per_min": REFERENCE_REQUESTS_PER_MIN,
            "store_writes_per_min": REFERENCE_STORE_WRITES_PER_MIN,
            "measured_on": "real kube-apiserver 1.36.2 (reference design, ARCHITECTURE.md)",
        },
    }
    return [
        Row(
            "kubernetes",
            f"N={count}: convergence (controller start → every r1 status READY at the "
            "current generation)",
            f"{workload}; requests counted from controller start (after the runtime's "
            "initial lists) until the last READY",
            f"{converge_s:.1f} s ({count / converge_s:.0f} endpoints/s) · "
            f"{converge_total} requests = {converge_total / count:.2f} per endpoint: "
            f"{_verbs_text(per_endpoint)} · runtime writes {converge_runtime_writes} · "
            f"status writes {converge_status_writes} · store writes {converge_store_writes} "
            f"(at the default {DEFAULT_CLUSTER.rate:g}/s "
            f"limit these requests alone would need ≥ {converge_total / DEFAULT_CLUSTER.rate:.0f}"
            " s)",
            converge_figures,
        ),
        Row(
            "kubernetes",
            f"N={count}: steady state, {elapsed:.0f} s with no changes",
            f"{workload}; after convergence (all endpoints running, controller idle) the "
            f"counts are reset and nothing is written for {elapsed:.1f} s. The window holds "
            f"no resync, heartbeat or watch renewal (every {SETTINGS.resync_interval:.0f}, "
            f"{SETTINGS.heartbeat_interval:.0f} and {CLUSTER.watch_timeout} s): a long run "
            f"adds up to {count} status writes per heartbeat interval (≤ "
            f"{heartbeat_bound:.0f}/min) and 4 watch requests per {CLUSTER.watch_timeout} s "
            f"({watch_bound:.1f}/min), not measured here",
            f"Kubernetes requests {requests_per_min:.1f}/min ({_verbs_text(per_minute)}; "
            f"{open_watches} watches stay open) · store writes {store_writes_per_min:.1f}/min · "
            f"status writes {status_writes_per_min:.1f}/min · runtime writes {quiet_runtime}; "
            f"reference design's figures (real kube-apiserver, {REFERENCE_ENDPOINTS:,} "
            f"endpoints): {REFERENCE_REQUESTS_PER_MIN:,} requests/min, "
            f"{REFERENCE_STORE_WRITES_PER_MIN:,} store writes/min",
            steady_figures,
        ),
    ]
