"""A rollout in a Kubernetes region judged on its requests, read from a real Prometheus.

The region (a test API server with the simulated kubelet, or with
`SERVEFLEET_TEST_KUBECONFIG` a fresh namespace of that cluster) routes canaries with
ingress-nginx and names a Prometheus: a real one on loopback, scraping a stand-in
ingress controller (`tests.prometheus.IngressExporter`) whose counters this test
drives as ingress-nginx would count the requests it routes — split by the canary
Ingress servefleet rendered (its weight, and its backend Service as the `canary`
label). `servefleet up` drives the rollout; the rollout is paused once it has
begun, so only a guard rail can end it before the test resumes it (a pause stops
progress, not protection):

- a canary answering 500 to a third of its requests is rolled back, the reason
  naming the region;
- a healthy canary's window is judged — `rollout status` shows its requests and
  5xx share — and it is promoted once resumed;
- an endpoint without a canary beside it is never asked about (a steady fleet
  costs Prometheus nothing);
- a Prometheus that does not answer is reported in the region's message, and the
  region goes on being reconciled.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from servefleet.rollout_service import RolloutService
from servefleet.rollout_signals import signals_from_reports
from servefleet.spec import EndpointSpec, Region, RegionKind, RegionState, RolloutPhase
from servefleet.store import open_store
from tests.cli.test_cli import Cli
from tests.kubeapi import KubeApiServer
from tests.kubeapi.kubelet import Kubelet
from tests.kubernetes.conftest import REAL_KUBECONFIG
from tests.prometheus import PROMETHEUS, PrometheusServer, free_port, prometheus_running
from tests.scenarios.harness import SETTLE, Fleet, local_fleet, manifest
from tests.scenarios.test_kubernetes_two_regions import Cluster, World, _client
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")

REGION = "a"
# Real images that serve their health path, so a real cluster readies them too.
OLD = "python:3.12-alpine"
NEW = "python:3.13-alpine"
POLICY = {
    "steps": [{"weight": 30, "hold": 1}],
    "guard_rails": {"max_error_percent": 5, "min_requests": 20, "readiness_deadline": 300},
}
CANARY_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"
PER_TICK = 10
"""Requests the stand-in ingress controller answers every tick, split by weight."""


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    with prometheus_running() as server:
        yield server


def spec() -> EndpointSpec:
    return EndpointSpec.model_validate(
        {
            "image": OLD,
            "command": ["python", "-m", "http.server", "{port}"],
            "replicas": 1,
            "port": 8000,
            "health_path": "/",
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
            "rollout": POLICY,
        }
    )


@asynccontextmanager
async def nginx_region(tmp_path: Path, store_url: str, prometheus_url: str) -> AsyncIterator[World]:
    """Region `a`, routing canaries with ingress-nginx, reading `prometheus_url`."""
    async with AsyncExitStack() as stack:
        server: KubeApiServer | None = None
        if REAL_KUBECONFIG:
            kubeconfig: Path | str = REAL_KUBECONFIG
            namespace = f"servefleet-test-{uuid.uuid4().hex[:10]}"
            api = await _client(kubeconfig)
            stack.push_async_callback(api.close)
            core = client.CoreV1Api(api)
            await core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
            )
            stack.push_async_callback(core.delete_namespace, namespace)
        else:
            # Each test its own namespace: the module's Prometheus keeps every series.
            namespace = f"llm-{uuid.uuid4().hex[:6]}"
            server = await stack.enter_async_context(
                KubeApiServer(kubelet=Kubelet(), bookmark_interval=0.5)
            )
            kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
            api = await _client(kubeconfig)
            stack.push_async_callback(api.close)
        store = await open_store(store_url)
        stack.push_async_callback(store.close)
        await store.put_region(
            Region(
                name=REGION,
                kind=RegionKind.KUBERNETES,
                kubeconfig=str(kubeconfig),
                namespace=namespace,
                ingress_class="nginx",
                canary_routing="nginx",
                prometheus_url=prometheus_url,
            )
        )
        yield World({REGION: Cluster(namespace, api, server)})


@asynccontextmanager
async def ingress_traffic(
    world: World, prometheus: PrometheusServer, *, canary_error_percent: int
) -> AsyncIterator[None]:
    """The stand-in ingress controller answering requests to `llm` until the end:
    `PER_TICK` every 0.2 s, the canary Ingress's weight of them to its backend, of
    which `canary_error_percent` answer 500."""
    namespace = world.clusters[REGION].namespace
    exporter = prometheus.exporter

    async def answer() -> None:
        while True:
            canary = await world.get(REGION, "ingresses", "llm-canary")
            to_canary = 0
            if canary is not None:
                weight = int(canary["metadata"]["annotations"][CANARY_WEIGHT])
                to_canary = PER_TICK * weight // 100
                backend = canary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
                upstream = f"{namespace}-{backend['name']}-{backend['port']['number']}"
                errors = to_canary * canary_error_percent // 100
                if errors:
                    exporter.answered(
                        namespace, "llm", "llm", canary=upstream, status=500, count=errors
                    )
                if to_canary - errors:
                    exporter.answered(
                        namespace, "llm", "llm", canary=upstream, count=to_canary - errors
                    )
            exporter.answered(namespace, "llm", "llm", count=PER_TICK - to_canary)
            await asyncio.sleep(0.2)

    task = asyncio.create_task(answer(), name="ingress-traffic")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def started_and_paused(fleet: Fleet, world: World) -> RolloutService:
    """The endpoint ready on the old image, then the new one's rollout begun (the
    canary Ingress at the step's weight) and paused."""

    async def ready() -> bool:
        status = await fleet.status("llm", REGION)
        return status is not None and status.state is RegionState.READY

    await eventually(ready, within=SETTLE * 4 if REAL_KUBECONFIG else SETTLE)
    rollouts = RolloutService(fleet.service)
    await rollouts.start("llm", NEW)
    await rollouts.pause("llm")

    async def weighted() -> bool:
        canary = await world.get(REGION, "ingresses", "llm-canary")
        return canary is not None and canary["metadata"]["annotations"][CANARY_WEIGHT] == "30"

    await eventually(weighted, within=SETTLE)
    return rollouts


@pytest.mark.slow(seconds=10)
async def test_a_canary_whose_5xx_breach_the_rail_in_prometheus_is_rolled_back(
    sqlite_url: str, tmp_path: Path, prometheus: PrometheusServer
) -> None:
    async with (
        nginx_region(tmp_path, sqlite_url, prometheus.url) as world,
        local_fleet(sqlite_url, tmp_path, (REGION,)) as fleet,
    ):
        await fleet.service.apply(manifest("llm", spec(), [REGION]))
        async with ingress_traffic(world, prometheus, canary_error_percent=34):
            await started_and_paused(fleet, world)

            async def rolled_back() -> bool:
                rollout = (await fleet.store.get_endpoint("llm")).rollout
                assert rollout is not None
                assert rollout.phase is not RolloutPhase.PROMOTED
                return rollout.phase is RolloutPhase.ROLLED_BACK

            await eventually(rolled_back, within=SETTLE * 2)

        rollout = (await fleet.store.get_endpoint("llm")).rollout
        assert rollout is not None
        assert rollout.reason.startswith("rolled back everywhere: canary 5xx ")
        assert rollout.reason.endswith(f" requests in {REGION}")

        async def canary_gone() -> bool:
            return ("Deployment", "llm-canary") not in await world.present(REGION)

        await eventually(canary_gone, within=SETTLE)


@pytest.mark.slow(seconds=5)
async def test_a_healthy_canarys_window_is_judged_and_it_is_promoted(
    sqlite_url: str, tmp_path: Path, prometheus: PrometheusServer
) -> None:
    async with (
        nginx_region(tmp_path, sqlite_url, prometheus.url) as world,
        local_fleet(sqlite_url, tmp_path, (REGION,)) as fleet,
    ):
        await fleet.service.apply(manifest("llm", spec(), [REGION]))
        async with ingress_traffic(world, prometheus, canary_error_percent=0):
            rollouts = await started_and_paused(fleet, world)

            # The step's window fills with the canary's requests, as Prometheus counts them.
            async def judged() -> bool:
                endpoint = await fleet.store.get_endpoint("llm")
                statuses = await fleet.store.list_region_status(endpoint="llm")
                signals = signals_from_reports(endpoint, statuses)[REGION]
                return signals.canary_requests >= 20 and signals.primary_requests > 0

            await eventually(judged, within=SETTLE * 2)
            shown = await Cli(sqlite_url).ok("rollout", "status", "llm")
            rows = {line.split()[1]: line for line in shown.splitlines() if line.startswith("1 ")}
            row = rows[REGION]
            assert " canary requests, 5xx 0.0 %" in row
            assert "readiness only" not in row

            await rollouts.resume("llm")

            async def promoted() -> bool:
                rollout = (await fleet.store.get_endpoint("llm")).rollout
                assert rollout is not None
                assert rollout.phase is not RolloutPhase.ROLLED_BACK
                return rollout.phase is RolloutPhase.PROMOTED

            await eventually(promoted, within=SETTLE * 2)

        assert (await fleet.store.get_endpoint("llm")).spec.image == NEW


@pytest.mark.slow(seconds=5)
async def test_only_endpoints_running_a_canary_are_asked_about(
    sqlite_url: str, tmp_path: Path, prometheus: PrometheusServer
) -> None:
    async with (
        nginx_region(tmp_path, sqlite_url, prometheus.url) as world,
        local_fleet(sqlite_url, tmp_path, (REGION,)) as fleet,
    ):
        await fleet.service.apply(manifest("steady", spec(), [REGION]))
        await fleet.service.apply(manifest("llm", spec(), [REGION]))
        await started_and_paused(fleet, world)
        namespace = world.clusters[REGION].namespace

        def asked_about(endpoint: str) -> list[str]:
            selector = f'namespace="{namespace}",ingress="{endpoint}"'
            return [query for query in prometheus.queries_asked() if selector in query]

        # Three reads of the canaried endpoint's two versions, two queries each: the
        # steady endpoint, held all along, had as many chances to be asked about.
        async def read_three_times() -> bool:
            return len(asked_about("llm")) >= 3 * 2 * 2

        await eventually(read_three_times, within=SETTLE)
        assert asked_about("steady") == []


@pytest.mark.slow(seconds=5)
async def test_a_prometheus_that_does_not_answer_is_reported_and_the_region_goes_on(
    sqlite_url: str, tmp_path: Path
) -> None:
    silent = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with (
        nginx_region(tmp_path, sqlite_url, silent) as world,
        local_fleet(sqlite_url, tmp_path, (REGION,)) as fleet,
    ):
        await fleet.service.apply(manifest("llm", spec(), [REGION]))
        rollouts = await started_and_paused(fleet, world)

        async def reported() -> bool:
            status = await fleet.status("llm", REGION)
            assert status is not None
            return f"request counts: Prometheus {silent}: " in status.message

        await eventually(reported, within=SETTLE)
        status = await fleet.status("llm", REGION)
        assert status is not None
        assert status.state is RegionState.READY
        assert status.traffic is None

        await rollouts.abort("llm")

        async def canary_gone() -> bool:
            return ("Deployment", "llm-canary") not in await world.present(REGION)

        await eventually(canary_gone, within=SETTLE)
