"""`servefleet rollout status`: what each reached region's guard rails are judged on
over the current step: its traffic window in a local region and in a Kubernetes one
that reads its Prometheus, readiness alone in a Kubernetes one that does not (and
why)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from servefleet.rollout_service import RolloutService
from servefleet.service import EndpointService
from servefleet.spec import (
    EndpointSpec,
    Region,
    RegionKind,
    RegionStatus,
    RegionTraffic,
    VersionTraffic,
)
from servefleet.store import open_store
from tests.cli.test_cli import Cli

OLD = "ghcr.io/example/server:1.0"
NEW = "ghcr.io/example/server:2.0"
SINCE = datetime(2026, 1, 1, tzinfo=UTC)


def reported(region: str, canary_requests: int, canary_errors: int) -> RegionStatus:
    traffic = None
    if canary_requests:
        counted = VersionTraffic(
            image=NEW, since=SINCE, requests=canary_requests, errors=canary_errors
        )
        traffic = RegionTraffic(canary=counted)
    return RegionStatus(
        endpoint="llm", region=region, canary_ready=1, canary_desired=1, traffic=traffic
    )


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_rollout_status_shows_each_regions_window_or_why_readiness_only(
    store_url: str,
) -> None:
    prometheus = "http://prometheus.monitoring:9090"
    regions = [
        Region(name="r1", kind=RegionKind.LOCAL),
        Region(name="k1", kind=RegionKind.KUBERNETES, context="k1"),
        Region(
            name="k2",
            kind=RegionKind.KUBERNETES,
            context="k2",
            canary_routing="nginx",
            prometheus_url=prometheus,
        ),
        Region(name="k3", kind=RegionKind.KUBERNETES, context="k3", prometheus_url=prometheus),
    ]
    names = [region.name for region in regions]
    store = await open_store(store_url)
    try:
        service = EndpointService(store)
        for region in regions:
            await service.add_region(region)
        spec = {"image": OLD, "rollout": {"steps": [{"weight": 10, "hold": 600}]}}
        await service.deploy("llm", EndpointSpec.model_validate(spec), names)
        rollouts = RolloutService(service)
        await rollouts.start("llm", NEW)
        first = [reported("r1", 40, 0), reported("k1", 0, 0), reported("k2", 10, 0)]
        await rollouts.advance("llm", first)  # the step's window starts here
        now = [reported("r1", 240, 10), reported("k1", 0, 0), reported("k2", 110, 20)]
        for status in now:
            await store.put_region_status(status)
    finally:
        await store.close()

    shown = await Cli(store_url).ok("rollout", "status", "llm")

    rows = {line.split()[1]: line for line in shown.splitlines() if line.startswith("1 ")}
    assert "200 canary requests, 5xx 5.0 %" in rows["r1"]
    assert "100 canary requests, 5xx 20.0 %" in rows["k2"]
    assert "readiness only: no Prometheus to read request counts from" in rows["k1"]
    assert "readiness only: alb routing" in rows["k3"]
