"""An autoscaled endpoint on a Kubernetes region, through `servefleet up`: it starts
at its minimum — when created, after stop + start, when autoscaling is switched on —
and once its HPA has changed the count, servefleet never writes it again.

The region is a test API server with a simulated kubelet and the stand-in for the
HPA controller (`tests/kubeapi/autoscaler.py`: the replica bounds only, and nothing
for a target at 0 replicas, as the real controller), or, with
`SERVEFLEET_TEST_KUBECONFIG`, a namespace of that cluster with its real HPA
controller. What is asserted holds on both: the Deployment's count and who owns it,
the HPA's bounds; readiness only on the test server (a real cluster cannot pull the
made-up image).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from servefleet.runtime.kubernetes.render import FIELD_MANAGER, HANDOFF_MANAGER
from servefleet.spec import EndpointSpec, Region, RegionKind, RegionState
from servefleet.store import open_store
from tests.kubeapi import KubeApiServer
from tests.kubeapi.kubelet import Kubelet
from tests.kubernetes.conftest import REAL_KUBECONFIG, api_client
from tests.scenarios.harness import SETTLE, Fleet, local_fleet, manifest
from tests.scenarios.test_kubernetes_two_regions import TEST_AGENT, Cluster, World
from tests.waiting import eventually

REGION = "k"
SERVEFLEET = {FIELD_MANAGER, HANDOFF_MANAGER}
HPA_SYNC = 60.0 if REAL_KUBECONFIG else SETTLE
"""How long the HPA controller may take to act: the real one looks every 15 s."""


@asynccontextmanager
async def one_cluster(tmp_path: Path, store_url: str) -> AsyncIterator[World]:
    """Region `k`, registered as a kubernetes region in the store."""
    async with AsyncExitStack() as stack:
        server: KubeApiServer | None = None
        if REAL_KUBECONFIG:
            kubeconfig = Path(REAL_KUBECONFIG)
            namespace = f"servefleet-test-{uuid.uuid4().hex[:10]}"
            api = await api_client(kubeconfig, TEST_AGENT)
            stack.push_async_callback(api.close)
            core = client.CoreV1Api(api)
            await core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
            )
            stack.push_async_callback(core.delete_namespace, namespace)
        else:
            namespace = "llm"
            server = await stack.enter_async_context(
                KubeApiServer(kubelet=Kubelet(), hpa_controller=True, bookmark_interval=0.5)
            )
            kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
            api = await api_client(kubeconfig, TEST_AGENT)
            stack.push_async_callback(api.close)
        store = await open_store(store_url)
        stack.push_async_callback(store.close)
        await store.put_region(
            Region(
                name=REGION,
                kind=RegionKind.KUBERNETES,
                kubeconfig=str(kubeconfig),
                namespace=namespace,
            )
        )
        yield World({REGION: Cluster(namespace, api, server)})


def spec(minimum: int | None, maximum: int = 6, **changes: Any) -> EndpointSpec:
    """The endpoint, autoscaled within `minimum`..`maximum` (None: fixed at 1 replica)."""
    fields: dict[str, Any] = {
        "image": "ghcr.io/example/server:1.0",
        "command": ["serve", "--port", "{port}"],
        "replicas": 1,
        "port": 8000,
        "health_path": "/health",
        "env": {"MODE": "a"},
    }
    if minimum is not None:
        fields["autoscaling"] = {
            "enabled": True,
            "min_replicas": minimum,
            "max_replicas": maximum,
            "metrics": [{"type": "cpu", "target": 70}],
        }
    return EndpointSpec.model_validate(fields | changes)


async def converged(
    world: World, fleet: Fleet, state: RegionState = RegionState.READY, ready: int | None = None
) -> None:
    """The region has the current generation in place and (on the test server, where
    pods get ready) reports it in `state` with `ready` replicas ready."""

    async def check() -> bool:
        record = await fleet.store.get_endpoint("llm")
        status = await fleet.status("llm", REGION)
        return (
            status is not None
            and status.observed_generation == record.generation
            and (
                world.real
                or (status.state is state and (ready is None or status.replicas_ready == ready))
            )
        )

    await eventually(check, within=SETTLE)


async def replicas(world: World) -> tuple[int, set[str]]:
    """The Deployment's `spec.replicas` and the managers that own it."""
    deployment = await world.need(REGION, "deployments")
    owners = {
        entry["manager"]
        for entry in deployment["metadata"].get("managedFields", [])
        if "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {})
    }
    return deployment["spec"]["replicas"], owners


async def bounds(world: World) -> tuple[int, int]:
    hpa = await world.need(REGION, "horizontalpodautoscalers")
    return hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]


async def test_an_autoscaled_endpoint_starts_at_its_minimum_and_then_follows_its_hpa(
    tmp_path: Path,
) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with (
        one_cluster(tmp_path, store_url) as world,
        local_fleet(store_url, tmp_path, (REGION,)) as fleet,
    ):
        service = fleet.service

        # Created at the minimum: not at 1 until the HPA's next sync.
        await service.deploy("llm", spec(2), [REGION])
        await converged(world, fleet, ready=2)
        count, owners = await replicas(world)
        assert count == 2
        assert owners <= SERVEFLEET  # servefleet's count, not one the HPA had to raise
        assert await bounds(world) == (2, 6)

        # Stop: 0 replicas, no HPA. Start: the minimum again, before the HPA returns —
        # an HPA never scales a target up from 0 (ScalingDisabled), which left the
        # region `progressing 0/2` for good.
        await service.stop("llm")
        await converged(world, fleet, RegionState.STOPPED)
        assert (await replicas(world))[0] == 0
        assert await world.get(REGION, "horizontalpodautoscalers") is None
        await service.start("llm")
        await converged(world, fleet, ready=2)
        assert await replicas(world) == (2, {HANDOFF_MANAGER})
        assert await bounds(world) == (2, 6)

        # The HPA changes the count (here another manager through /scale, within the
        # bounds): a spec change leaves it as the HPA set it.
        await world.scale_as_autoscaler(REGION, 4)
        await service.apply(manifest("llm", spec(2, env={"MODE": "b"}), [REGION]))
        await converged(world, fleet, ready=4)
        count, owners = await replicas(world)
        assert count == 4
        assert not owners & SERVEFLEET  # servefleet wrote no count since the HPA's
        assert (await world.env(REGION))["MODE"] == "b"

        # The minimum raised above the count: the HPA raises it, servefleet does not.
        await service.apply(manifest("llm", spec(5, env={"MODE": "b"}), [REGION]))

        async def raised_by_the_hpa() -> bool:
            count, owners = await replicas(world)
            return count == 5 and not owners & SERVEFLEET

        await eventually(raised_by_the_hpa, within=HPA_SYNC)
        assert await bounds(world) == (5, 6)
        await converged(world, fleet, ready=5)

        # Autoscaling off: a fixed count of servefleet's, no HPA.
        await service.apply(manifest("llm", spec(None, env={"MODE": "b"}), [REGION]))
        await converged(world, fleet, ready=1)
        assert await replicas(world) == (1, {FIELD_MANAGER})
        assert await world.get(REGION, "horizontalpodautoscalers") is None

        # On again, above that count: the minimum at once, set by servefleet before
        # the HPA exists, so the HPA has nothing to raise.
        await service.apply(manifest("llm", spec(3, env={"MODE": "b"}), [REGION]))
        await converged(world, fleet, ready=3)
        assert await replicas(world) == (3, {HANDOFF_MANAGER})
        assert await bounds(world) == (3, 6)
