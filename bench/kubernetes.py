"""Benchmark 4: the Kubernetes runtime against test API servers (`tests/kubeapi`).

Every server and the reconciler run in processes of their own (`bench.kubeapi_host`,
`bench.reconciler_host`), so the reconciler's CPU time and peak memory are its own.

- *Convergence at scale*: N endpoints x R regions, every region an empty test API
  server with injected latency; from starting the reconciler process to every
  region's status READY at the current generation: wall time, the reconciler's
  peak RSS and CPU, requests per endpoint, and the least time the requests alone
  need under the client's rate limit and concurrency.
- *Steady state*: N converged endpoints in one region, then a window with no
  changes: Kubernetes requests, store reads and writes, and reconciler CPU per minute.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.counting import FEED_POLL, WRITES
from bench.kubernetes_fleet import (
    AUTO_READY,
    LATENCY,
    create_endpoints,
    fleet,
    reconciler,
    settled,
    wait_ready,
)
from bench.progress import show
from bench.report import Row
from servefleet.reconcile.leader import LeaseSettings
from servefleet.reconcile.settings import ControllerSettings
from servefleet.runtime.kubernetes.cluster import ClusterSettings


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    """Endpoints per case of the convergence benchmark."""
    regions: int
    steady_endpoints: int
    steady_seconds: float
    within: float
    """Seconds a convergence may take before the case gives up."""
    overload_endpoints: int
    """Endpoints of the case whose API servers refuse what exceeds their concurrency."""


FULL = Plan(
    sizes=(1000, 3000, 10000),
    regions=3,
    steady_endpoints=1000,
    steady_seconds=120.0,
    within=330.0,
    overload_endpoints=1000,
)
QUICK = Plan(
    sizes=(100, 300),
    regions=3,
    steady_endpoints=300,
    steady_seconds=10.0,
    within=120.0,
    overload_endpoints=100,
)

DEFAULTS = ClusterSettings()
"""What the reconciler runs with: its client-side rate adapts to the servers, from
its default ceiling."""
CONTROLLER = ControllerSettings()
LEASE = LeaseSettings()
WATCHED_KINDS = 5
"""One watch per kind: Service, Deployment, HorizontalPodAutoscaler, Ingress, and the
pods that stage a model."""
GOAL_SECONDS = 60.0
GOAL_ENDPOINTS = 10_000
CONSTANT_WITHIN = 0.05
"""Requests per endpoint count as constant when every size is within 5 % of the smallest."""
OVERLOAD_IN_FLIGHT = 2
"""Requests a test API server serves at once in the overload case (fewer than the
controller's workers, so refusals must come)."""
OVERLOAD_SHARE_GOAL = 0.1

# The reference design, as measured on a real kube-apiserver 1.36.2 (../shared/ARCHITECTURE.md).
REFERENCE_ENDPOINTS = 1000
REFERENCE_REQUESTS_PER_MIN = 8331
REFERENCE_STORE_WRITES_PER_MIN = 1667


def _requests(counts: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {region: sum(answer["by_verb"].values()) for region, answer in counts.items()}


def _by_verb(counts: dict[str, dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for answer in counts.values():
        total.update(answer["by_verb"])
    return total


def _floors(per_region: dict[str, int]) -> dict[str, float]:
    """The least time the requests alone need, regions working in parallel: through a
    token bucket at the rate's ceiling (what exceeds the burst), and through the
    controller's workers, each waiting out one request's injected latency at a time."""
    busiest = max(per_region.values())
    rate = DEFAULTS.rate
    return {
        "ceiling_rate_s": round(max(0, busiest - rate.burst) / rate.ceiling, 1),
        "workers_latency_s": round(busiest * LATENCY / CONTROLLER.workers, 1),
    }


async def _converge(size: int, plan: Plan, *, max_in_flight: int | None = None) -> dict[str, Any]:
    label = f"N={size:,} x {plan.regions}"
    async with fleet(plan.regions, max_in_flight) as place:
        regions = list(place.servers)
        create_s = await create_endpoints(place.writer, size, regions)
        await place.reset()
        baseline = await place.counts()
        target = size * len(regions)
        show(f"{label}: starting the reconciler")
        started = time.perf_counter()
        async with reconciler(place) as host:
            done, ready = await wait_ready(place, host, target, plan.within, label)
            usage = await host.ask("snapshot")
            counts = await place.counts()
            started_in = float(host.hello["started_s"])
    wall = done - started
    per_region = _requests(counts)
    total = sum(per_region.values())
    by_verb = _by_verb(counts)
    writes = sum(n for call, n in usage["store_calls"].items() if call in WRITES)
    servers_cpu = {
        region: round(answer["cpu_s"] - baseline[region]["cpu_s"], 1)
        for region, answer in counts.items()
    }
    return {
        "endpoints": size,
        "regions": len(regions),
        "endpoint_regions": target,
        "converged": ready >= target,
        "ready": ready,
        "wall_s": round(wall, 2),
        "reconciler_start_s": started_in,
        "endpoints_per_s": round(ready / wall, 1),
        "reconciler_peak_rss_mb": round(usage["peak_rss_kb"] / 1024, 1),
        "reconciler_cpu_s": round(usage["cpu_s"], 1),
        "reconciler_cpu_ms_per_endpoint_region": round(usage["cpu_s"] * 1000 / max(ready, 1), 2),
        "api_servers_cpu_s": servers_cpu,
        "reconciler_gc_pause_s": usage["gc_pause_s"],
        "reconciler_gc_longest_pause_s": usage["gc_longest_pause_s"],
        "api_servers_gc_longest_pause_s": max(
            answer["gc_longest_pause_s"] for answer in counts.values()
        ),
        "requests": total,
        "requests_per_region": per_region,
        "requests_per_endpoint_region": round(total / target, 4),
        "requests_by_verb": dict(sorted(by_verb.items())),
        "runtime_writes": usage["runtime_writes"],
        "status_writes": usage["status_writes"],
        "passes_per_endpoint_region": round(usage["passes"] / target, 3),
        "store_writes": writes,
        "store_calls": usage["store_calls"],
        "create_s": round(create_s, 1),
        "floors_s": _floors(per_region),
        "refused_429": sum(answer["refused_in_flight"] for answer in counts.values()),
    }


def _outcome(case: dict[str, Any]) -> str:
    if case["converged"]:
        return f"{case['wall_s']:.1f} s"
    return (
        f"NOT converged: {case['ready']:,} of {case['endpoint_regions']:,} READY after "
        f"{case['wall_s']:.0f} s (the case's bound)"
    )


def _constant(cases: list[dict[str, Any]]) -> bool | None:
    values: list[float] = [
        case["requests_per_endpoint_region"] for case in cases if case["converged"]
    ]
    if len(values) < 2:
        return None
    return max(values) <= min(values) * (1 + CONSTANT_WITHIN)


def _verbs(figures: dict[str, float]) -> str:
    return " · ".join(f"{verb} {value:g}" for verb, value in figures.items()) or "none"


async def _scale_rows(plan: Plan) -> list[Row]:
    cases: list[dict[str, Any]] = []
    rows: list[Row] = []
    failures: list[str] = []
    for size in plan.sizes:
        try:
            cases.append(await _converge(size, plan))
        except Exception as error:  # a case that fails is a row saying so; the next runs
            failures.append(f"N={size}: {type(error).__name__}: {error}")
    constant = _constant(cases)
    workload = (
        f"{plan.regions} test API servers (tests/kubeapi, each in a process of its own, "
        f"{LATENCY * 1000:.0f} ms injected before every request, Deployments marked ready "
        f"{AUTO_READY * 1000:.0f} ms after each spec change; their garbage collector paced "
        "as servefleet's servers', servefleet/collector.py), each empty; SQLite store with N "
        f"image-only endpoints (2 replicas: Service, Deployment, Ingress) targeting every "
        "region, created before; the reconciler process (bench/reconciler_host.py: what "
        f"`servefleet up` runs — lease, KubernetesRuntime and Controller per region, "
        f"{CONTROLLER.workers} workers each) started, timed until every region's status is "
        "READY at the current generation; the default settings, the client-side rate "
        f"adapting from its ceiling of {DEFAULTS.rate.ceiling:g}/s (burst {DEFAULTS.rate.burst})"
    )
    for case in cases:
        size, floors = case["endpoints"], case["floors_s"]
        goal_here = case["endpoints"] >= GOAL_ENDPOINTS
        servers = case["api_servers_cpu_s"]
        busiest_server = max(servers.values())
        per_verb = {
            verb: round(n / case["endpoint_regions"], 3)
            for verb, n in case["requests_by_verb"].items()
        }
        rows.append(
            Row(
                "k8s convergence",
                f"N={size:,} x {case['regions']} regions: empty clusters → every region READY",
                workload,
                f"{_outcome(case)} ({case['endpoints_per_s']:,.0f} endpoint-regions/s; "
                f"reconciler up in {case['reconciler_start_s']:.1f} s) · reconciler peak RSS "
                f"{case['reconciler_peak_rss_mb']:.0f} MB, CPU {case['reconciler_cpu_s']:.1f} s "
                f"({case['reconciler_cpu_ms_per_endpoint_region']:.1f} ms per endpoint and "
                f"region; garbage collection {case['reconciler_gc_pause_s']:.1f} s, "
                f"{case['reconciler_gc_longest_pause_s'] * 1000:.0f} ms at most) · "
                f"{case['requests_per_endpoint_region']:.4g} requests per endpoint and region "
                f"({_verbs(per_verb)}) · API servers' CPU {busiest_server:.1f} s at most "
                f"({busiest_server / case['wall_s']:.0%} of the wall time) · limit: the requests "
                f"alone need ≥ {floors['workers_latency_s']:.1f} s through {CONTROLLER.workers} "
                f"workers x {LATENCY * 1000:.0f} ms, ≥ {floors['ceiling_rate_s']:.0f} s at the "
                f"rate's ceiling {DEFAULTS.rate.ceiling:g}/s",
                case,
                goal=(
                    f"{GOAL_ENDPOINTS:,} x 3 in < {GOAL_SECONDS:.0f} s; requests per endpoint "
                    f"constant (±{CONSTANT_WITHIN:.0%})"
                ),
                met=(
                    case["converged"]
                    and (case["wall_s"] < GOAL_SECONDS if goal_here else True)
                    and constant is not False
                ),
            )
        )
    for failure in failures:
        rows.append(
            Row("k8s convergence", failure.split(":")[0], workload, f"failed: {failure}", {})
        )
    return rows


async def _steady_row(plan: Plan) -> Row:
    size = plan.steady_endpoints
    async with fleet(1) as place:
        region = next(iter(place.servers))
        await create_endpoints(place.writer, size, [region])
        async with reconciler(place) as host:
            _, ready = await wait_ready(
                place, host, size, plan.within, f"steady N={size:,}: converging"
            )
            if ready < size:
                raise RuntimeError(f"only {ready} of {size} endpoints READY in {plan.within:.0f} s")
            await settled(place, host)
            await asyncio.sleep(0.5)
            await place.reset()
            before = await host.ask("snapshot")
            started = time.perf_counter()
            while (elapsed := time.perf_counter() - started) < plan.steady_seconds:
                show(f"steady state N={size:,}: {elapsed:.0f}/{plan.steady_seconds:.0f} s quiet")
                await asyncio.sleep(min(1.0, plan.steady_seconds - elapsed))
            after = await host.ask("snapshot")
            elapsed = time.perf_counter() - started
            counts = await place.counts()
    minutes = elapsed / 60
    calls = {
        call: after["store_calls"].get(call, 0) - before["store_calls"].get(call, 0)
        for call in after["store_calls"]
    }
    calls = {call: n for call, n in sorted(calls.items()) if n}
    writes = {call: n for call, n in calls.items() if call in WRITES}
    reads = {call: n for call, n in calls.items() if call not in WRITES}
    by_verb = _by_verb(counts)
    requests = sum(by_verb.values())
    status_writes = after["status_writes"] - before["status_writes"]
    runtime_writes = after["runtime_writes"] - before["runtime_writes"]
    cpu = after["cpu_s"] - before["cpu_s"]
    lease_writes = writes.get("acquire_lease", 0) + writes.get("release_lease", 0)
    lease_requests = sum(
        n for key, n in counts[region]["by_verb_resource"].items() if key.endswith(" leases")
    )
    watches = counts[region]["open_watches"]
    heartbeat_bound = size / (CONTROLLER.heartbeat_interval / 60)
    per_min = {verb: round(n / minutes, 1) for verb, n in sorted(by_verb.items())}
    figures: dict[str, Any] = {
        "endpoints": size,
        "seconds": round(elapsed, 1),
        "requests": requests,
        "requests_per_min": round(requests / minutes, 1),
        "requests_per_min_by_verb": per_min,
        "lease_requests_per_min": round(lease_requests / minutes, 1),
        "requests_by_verb_resource": counts[region]["by_verb_resource"],
        "open_watches": watches,
        "store_writes_per_min": round(sum(writes.values()) / minutes, 1),
        "store_writes_per_min_by_call": {k: round(v / minutes, 1) for k, v in writes.items()},
        "store_reads_per_min": round(sum(reads.values()) / minutes, 1),
        "store_reads_per_min_by_call": {k: round(v / minutes, 1) for k, v in reads.items()},
        "status_writes": status_writes,
        "runtime_writes": runtime_writes,
        "reconciler_cpu_s_per_min": round(cpu / minutes, 3),
        "reconciler_rss_mb": round(after["rss_kb"] / 1024, 1),
        "long_run_bounds_not_measured": {
            "heartbeat_status_writes_per_min_at_most": round(heartbeat_bound, 1),
            "watch_renewals_per_min": round(WATCHED_KINDS / (DEFAULTS.watch_timeout / 60), 2),
        },
        "reference": {
            "endpoints": REFERENCE_ENDPOINTS,
            "requests_per_min": REFERENCE_REQUESTS_PER_MIN,
            "store_writes_per_min": REFERENCE_STORE_WRITES_PER_MIN,
            "measured_on": "real kube-apiserver 1.36.2 (reference design, ARCHITECTURE.md)",
        },
    }
    reads_text = ", ".join(
        f"{'feed polls' if k == FEED_POLL else k} {v / minutes:.0f}" for k, v in reads.items()
    )
    return Row(
        "k8s steady state",
        f"N={size:,}, 1 region: {elapsed:.0f} s with no changes, per minute",
        f"test API server (tests/kubeapi, own process, {LATENCY * 1000:.0f} ms latency); the "
        "reconciler process as in the convergence rows (lease, KubernetesRuntime, Controller: "
        f"resync {CONTROLLER.resync_interval:.0f} s, heartbeat {CONTROLLER.heartbeat_interval:.0f}"
        f" s, lease renewal every {LEASE.renew_interval:g} s) on SQLite, {size:,} converged "
        "endpoints; counted from convergence (nothing deploying, queue idle) + 0.5 s over the "
        f"window. Not in the window (every {CONTROLLER.heartbeat_interval:.0f} s): the status "
        f"heartbeat (≤ {heartbeat_bound:.0f} writes/min) and watch renewals "
        f"({WATCHED_KINDS} per {DEFAULTS.watch_timeout} s)",
        f"Kubernetes requests {requests / minutes:.1f}/min ({_verbs(per_min)}; Lease "
        f"renewals {lease_requests / minutes:.1f}/min of them; {watches} watches open) · "
        f"store writes {sum(writes.values()) / minutes:.1f}/min "
        f"({_verbs({k: round(v / minutes, 1) for k, v in writes.items()})}) · store reads "
        f"{sum(reads.values()) / minutes:.0f}/min ({reads_text or 'none'}) · status writes "
        f"{status_writes} · reconciler CPU {cpu / minutes:.2f} s/min · the reference design's "
        f"figures (real kube-apiserver, {REFERENCE_ENDPOINTS:,} endpoints): "
        f"{REFERENCE_REQUESTS_PER_MIN:,} Kubernetes requests/min, "
        f"{REFERENCE_STORE_WRITES_PER_MIN:,} store writes/min",
        figures,
        goal="no API requests beyond Lease renewals and open watches; no store writes "
        "beyond lease renewals (status writes only on change + heartbeat)",
        met=requests == lease_requests
        and status_writes == 0
        and sum(writes.values()) == lease_writes,
    )


async def _overload_row(plan: Plan) -> Row:
    """Convergence against API servers that refuse what exceeds their concurrency."""
    size = plan.overload_endpoints
    case = await _converge(size, plan, max_in_flight=OVERLOAD_IN_FLIGHT)
    refused = case["refused_429"]
    share = refused / max(case["requests"], 1)
    return Row(
        "k8s overload",
        f"N={size:,} x {case['regions']} regions, servers refusing > {OVERLOAD_IN_FLIGHT} "
        "requests in flight",
        f"as the convergence rows, but each test API server answers 429 with Retry-After: 1 "
        f"to requests beyond {OVERLOAD_IN_FLIGHT} in flight (kube-apiserver's "
        "--max-requests-inflight; API Priority and Fairness once its queues are full), "
        f"against {CONTROLLER.workers} workers per region; the client rate adapts from its "
        f"ceiling of {DEFAULTS.rate.ceiling:g}/s",
        f"{_outcome(case)} · {refused:,} refusals ({share:.1%} of "
        f"{case['requests']:,} requests) · {case['requests'] / case['wall_s']:.0f} requests/s "
        f"over all servers · {case['requests_per_endpoint_region']:.4g} requests per endpoint "
        "and region",
        case,
        goal=f"converges; refusals < {OVERLOAD_SHARE_GOAL:.0%} of requests (no retry storm)",
        met=case["converged"] and share < OVERLOAD_SHARE_GOAL,
    )


async def run(plan: Plan) -> list[Row]:
    rows = await _scale_rows(plan)
    rows.append(await _overload_row(plan))
    rows.append(await _steady_row(plan))
    return rows
