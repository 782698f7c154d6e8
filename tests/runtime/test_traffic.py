"""A local region's traffic per version (`runtime.local.traffic`): read from the
gateway's metric series, counted per version from when the role began running
it, announced at most once a second while a canary runs; and `{image}` in a
replica's command."""

from __future__ import annotations

import asyncio
import sys

from servefleet.metrics import Metrics
from servefleet.plan import Observed, desired_workload, region_status, workload_hash
from servefleet.rollout import abort, start
from servefleet.runtime.local.processes import replica_command
from servefleet.runtime.local.records import EndpointRecord
from servefleet.runtime.local.traffic import TrafficCounts, read_series
from servefleet.spec import LATENCY_BOUNDS, Endpoint, RegionTraffic, RolloutPolicy
from tests.factories import T0, make_endpoint
from tests.waiting import eventually

OLD = "ghcr.io/example/server:1.0"
NEW = "ghcr.io/example/server:2.0"


def local_endpoint(rollout_to: str | None = None) -> Endpoint:
    endpoint = make_endpoint(image=OLD, command=[sys.executable, "-m", "servefleet.demo"])
    if rollout_to is None:
        return endpoint
    state = start(RolloutPolicy(), ["r1"], rollout_to, T0)
    return endpoint.model_copy(update={"rollout": state})


def record_of(endpoint: Endpoint) -> EndpointRecord:
    workload = desired_workload(endpoint, "r1")
    assert workload is not None
    return EndpointRecord(endpoint.name, workload, workload_hash(workload))


def answer(metrics: Metrics, role: str, status: str, seconds: float, count: int = 1) -> None:
    series = metrics.gateway_series("llm", "r1", role)
    for _ in range(count):
        series.answered(int(status[0]) * 100, seconds)


def test_the_metric_series_hold_the_buckets_a_report_carries() -> None:
    metrics = Metrics()
    answer(metrics, "canary", "5xx", 0.2)
    answer(metrics, "canary", "2xx", 1_000.0, count=2)

    reading = read_series(metrics.gateway_series("llm", "r1", "canary"))

    assert (reading.requests, reading.errors) == (3, 1)
    assert reading.latency[LATENCY_BOUNDS.index(0.25)] == 1
    assert reading.latency[-1] == 2
    assert sum(reading.latency) == 3


async def test_each_version_is_counted_from_when_its_role_began_running_it() -> None:
    metrics = Metrics()
    counts = TrafficCounts("r1", metrics, notify=lambda name: None)
    answer(metrics, "primary", "2xx", 0.01, count=5)  # before anything was applied
    record = record_of(local_endpoint())
    counts.adopt(record)
    answer(metrics, "primary", "2xx", 0.01, count=3)

    traffic = counts.observed("llm")
    assert traffic is not None
    assert traffic.canary is None
    assert traffic.primary is not None
    assert (traffic.primary.image, traffic.primary.requests) == (OLD, 3)

    # The rollout's canary begins at zero however much its role counted before.
    answer(metrics, "canary", "5xx", 0.01, count=7)
    record.workload = desired_workload(local_endpoint(rollout_to=NEW), "r1")
    counts.adopt(record)
    answer(metrics, "canary", "5xx", 0.01)
    answer(metrics, "canary", "2xx", 0.01, count=9)
    traffic = counts.observed("llm")
    assert traffic is not None
    assert traffic.canary is not None
    assert traffic.primary is not None
    assert (traffic.canary.image, traffic.canary.requests, traffic.canary.errors) == (NEW, 10, 1)
    assert traffic.primary.requests == 3  # the primary's version did not change

    # Its series dropped and made anew (the endpoint left the region): from zero again.
    metrics.remove_endpoint("llm", "r1")
    answer(metrics, "canary", "2xx", 0.01, count=2)
    again = counts.observed("llm")
    assert again is not None
    assert again.canary is not None
    assert again.canary.requests == 2
    assert again.canary.since > traffic.canary.since

    record.workload = None
    counts.adopt(record)
    assert counts.observed("llm") is None
    await counts.close()


async def test_an_endpoint_with_a_canary_is_announced_once_its_counts_move() -> None:
    metrics = Metrics()
    announced: list[str] = []
    counts = TrafficCounts("r1", metrics, notify=announced.append)
    counts.adopt(record_of(local_endpoint(rollout_to=NEW)))
    try:
        answer(metrics, "canary", "2xx", 0.01)

        async def heard() -> bool:
            return announced == ["llm"]

        await eventually(heard, within=10)
        await asyncio.sleep(1.5)  # nothing moved since: no second announcement
        assert announced == ["llm"]
    finally:
        await counts.close()


def test_without_metrics_nothing_is_counted() -> None:
    counts = TrafficCounts("r1", None, notify=lambda name: None)
    counts.adopt(record_of(local_endpoint(rollout_to=NEW)))
    assert counts.observed("llm") is None


def test_a_replica_command_names_its_versions_image_as_image() -> None:
    workload = desired_workload(local_endpoint(rollout_to=NEW), "r1")
    assert workload is not None
    assert workload.canary is not None
    canary = workload.canary.model_copy(update={"args": ["--build", "{image}", "--port={port}"]})

    argv, _ = replica_command(canary, 8123, None)

    assert argv[-2:] == [NEW, "--port=8123"]


async def test_a_report_carries_the_traffic_only_while_a_rollout_has_reached_the_region() -> None:
    metrics = Metrics()
    counts = TrafficCounts("r1", metrics, notify=lambda name: None)
    rolling = local_endpoint(rollout_to=NEW)
    counts.adopt(record_of(rolling))
    answer(metrics, "canary", "2xx", 0.01)
    traffic = counts.observed("llm")
    await counts.close()
    assert traffic is not None

    def reported(endpoint: Endpoint) -> RegionTraffic | None:
        workload = desired_workload(endpoint, "r1")
        assert workload is not None
        observed = Observed(workload_hash=workload_hash(workload), traffic=traffic)
        status = region_status(
            endpoint, "r1", workload, observed, previous=None, decision=None, now=T0
        )
        return status.traffic

    assert reported(rolling) == traffic
    assert rolling.rollout is not None
    back = rolling.model_copy(update={"rollout": abort(rolling.rollout, T0)})
    assert reported(back) is None
    assert reported(local_endpoint()) is None
