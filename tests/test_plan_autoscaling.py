"""`plan` and a runtime's own autoscaler: its count reported, never the workload's,
the route kept at zero, and a new runtime resuming from the last report."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from servefleet.plan import (
    Observed,
    VersionObservation,
    Workload,
    desired_workload,
    region_status,
    watchdog,
    workload_hash,
)
from servefleet.spec import Endpoint, RegionState
from tests.factories import T0, make_endpoint, make_status

SCALING = {
    "enabled": True,
    "min_replicas": 0,
    "max_replicas": 8,
    "metrics": [{"type": "concurrency", "target": 4}],
}


def autoscaled(**spec: Any) -> Endpoint:
    return make_endpoint(autoscaling=SCALING, **spec)


def planned(endpoint: Endpoint, **options: Any) -> Workload:
    workload = desired_workload(endpoint, "r1", **options)
    assert workload is not None
    return workload


def scaled(workload: Workload, primary: VersionObservation, **fields: Any) -> Observed:
    return Observed(workload_hash=workload_hash(workload), primary=primary, routed=True, **fields)


def test_the_status_reports_the_autoscalers_count_and_reason() -> None:
    endpoint = autoscaled()
    workload = planned(endpoint)
    observed = scaled(
        workload,
        VersionObservation(
            ready=1, running=3, desired=3, scale_reason="concurrency 11.8/4 per replica → 3"
        ),
    )
    report = region_status(endpoint, "r1", workload, observed, previous=None, decision=None, now=T0)
    assert (report.replicas_desired, report.replicas_ready) == (3, 1)
    assert report.scale_reason == "concurrency 11.8/4 per replica → 3"
    # Scaling up is not a degraded region: the floor, min_replicas, is met.
    assert report.state is RegionState.READY


def test_the_canarys_count_and_reason_follow_the_primarys() -> None:
    endpoint = autoscaled(canary={"weight": 10, "replicas": 2})
    workload = planned(endpoint)
    observed = scaled(
        workload,
        VersionObservation(desired=0, scale_reason="idle 300 s → 0"),
        canary=VersionObservation(ready=1, running=1, desired=1, scale_reason="rps 0.5/1 → 1"),
    )
    report = region_status(endpoint, "r1", workload, observed, previous=None, decision=None, now=T0)
    assert (report.replicas_desired, report.canary_desired) == (0, 1)
    assert report.scale_reason == "idle 300 s → 0; canary: rps 0.5/1 → 1"
    assert report.state is RegionState.READY


def test_without_an_autoscaler_the_workloads_count_is_reported() -> None:
    endpoint = make_endpoint(replicas=2)
    workload = planned(endpoint)
    observed = scaled(workload, VersionObservation(ready=2, running=2))
    report = region_status(endpoint, "r1", workload, observed, previous=None, decision=None, now=T0)
    assert (report.replicas_desired, report.scale_reason) == (2, "")


def test_the_watchdog_keeps_the_route_of_an_endpoint_at_zero_on_purpose() -> None:
    # The canary's declared count makes the workload want replicas.
    workload = planned(autoscaled(canary={"weight": 10}))
    threshold = timedelta(seconds=300)
    at_zero = scaled(workload, VersionObservation(desired=0), canary=VersionObservation(desired=0))
    starting = scaled(workload, VersionObservation(desired=1), canary=VersionObservation(desired=0))
    previous = make_status(unready_since=T0)
    late = T0 + threshold * 2

    kept = watchdog(previous, at_zero, wants_replicas=True, now=late, threshold=threshold)
    pulled = watchdog(previous, starting, wants_replicas=True, now=late, threshold=threshold)

    assert (kept.unrouted, kept.unready_since, kept.recheck_at) == (False, None, None)
    assert pulled.unrouted


def test_the_watchdog_keeps_the_route_while_the_first_replica_starts_from_zero() -> None:
    """A cold start longer than the threshold: the requests waiting for the replica
    are held on the route, which must stay; once a replica has been ready, a version
    with none again is judged as any other."""
    workload = planned(autoscaled())
    threshold = timedelta(seconds=5)
    waking = scaled(workload, VersionObservation(desired=1, waking=True))
    fell = scaled(workload, VersionObservation(desired=1))
    previous = make_status(unready_since=T0)
    late = T0 + threshold * 10

    kept = watchdog(previous, waking, wants_replicas=True, now=late, threshold=threshold)
    pulled = watchdog(previous, fell, wants_replicas=True, now=late, threshold=threshold)

    assert (kept.unrouted, kept.unready_since) == (False, None)
    assert pulled.unrouted


def test_a_new_runtime_resumes_from_the_autoscalers_last_report() -> None:
    endpoint = autoscaled(canary={"weight": 10})
    by_autoscaler = make_status(replicas_desired=5, canary_desired=2, scale_reason="panic → 5")
    by_workload = make_status(replicas_desired=1)

    resumed = planned(endpoint, reported=by_autoscaler)
    assert resumed.resume_replicas == (5, 2)
    assert planned(endpoint, reported=by_workload).resume_replicas is None
    assert planned(make_endpoint(), reported=by_autoscaler).resume_replicas is None
    # Where the count resumes is not the workload: no new apply for it.
    assert workload_hash(resumed) == workload_hash(planned(endpoint))
