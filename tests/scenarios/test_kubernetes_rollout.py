"""A progressive rollout across two Kubernetes regions (test API servers with the
simulated kubelet), driven by `servefleet up`: wave 1's weights reach region a's
Ingress while region b is untouched; in wave 2 the new version never gets ready in
b (its kubelet never readies a container), so the readiness rail rolls back both
regions, wave 1's included, and the canary's objects leave a's cluster."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from servefleet.rollout_service import RolloutService
from servefleet.spec import Region, RegionKind, RegionState, RolloutPhase
from servefleet.store import open_store
from tests.kubeapi import KubeApiServer
from tests.kubeapi.kubelet import Kubelet
from tests.kubernetes.conftest import REAL_KUBECONFIG
from tests.scenarios.harness import SETTLE, local_fleet, manifest
from tests.scenarios.test_kubernetes_two_regions import WEIGHTED, Cluster, World, _client, spec
from tests.waiting import eventually

NEW = "ghcr.io/example/server:2.0"
POLICY = {
    "waves": [["a"], ["b"]],
    "steps": [{"weight": 30, "hold": 1}],
    "guard_rails": {"readiness_deadline": 10},
}


def canary_weight(ingress: dict[str, object]) -> int | None:
    """The canary's weight in an Ingress's weighted action; None without one."""
    annotations = ingress["metadata"]["annotations"]  # type: ignore[index]
    if WEIGHTED not in annotations:
        return None
    groups = json.loads(annotations[WEIGHTED])["forwardConfig"]["targetGroups"]
    weights = {group["serviceName"]: group["weight"] for group in groups}
    return int(weights["llm-canary"])


@pytest.mark.skipif(bool(REAL_KUBECONFIG), reason="needs the test servers' kubelet")
@pytest.mark.slow(seconds=15)
async def test_unready_in_wave_2_rolls_wave_1_back_too(sqlite_url: str, tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        store = await open_store(sqlite_url)
        stack.push_async_callback(store.close)
        clusters = {}
        # Region b's kubelet readies no container within the test.
        for region, ready_delay in (("a", 0.0), ("b", 3600.0)):
            server = await stack.enter_async_context(
                KubeApiServer(kubelet=Kubelet(ready_delay=ready_delay), bookmark_interval=0.5)
            )
            kubeconfig = server.write_kubeconfig(tmp_path / f"kubeconfig-{region}")
            api = await _client(kubeconfig)
            stack.push_async_callback(api.close)
            await store.put_region(
                Region(
                    name=region,
                    kind=RegionKind.KUBERNETES,
                    kubeconfig=str(kubeconfig),
                    namespace="llm",
                )
            )
            clusters[region] = Cluster("llm", api, server)
        world = World(clusters)
        fleet = await stack.enter_async_context(local_fleet(sqlite_url, tmp_path, ("a", "b")))

        await fleet.service.apply(manifest("llm", spec(rollout=POLICY), ["a", "b"]))

        async def ready_in_a() -> bool:
            status = await fleet.status("llm", "a")
            return status is not None and status.state is RegionState.READY

        await eventually(ready_in_a, within=SETTLE)
        await RolloutService(fleet.service).start("llm", NEW)

        # Wave 1: a's Ingress sends 30 % to the new version; b has no canary at all.
        async def weighted_in_a() -> bool:
            return canary_weight(await world.need("a", "ingresses")) == 30

        await eventually(weighted_in_a, within=SETTLE)
        assert ("Deployment", "llm-canary") not in await world.present("b")

        # Wave 2 starts once a's canary is ready and has held: b's Ingress follows.
        async def weighted_in_b() -> bool:
            return canary_weight(await world.need("b", "ingresses")) == 30

        await eventually(weighted_in_b, within=SETTLE)

        # b's new version never gets ready: rolled back everywhere.
        async def rolled_back() -> bool:
            rollout = (await fleet.store.get_endpoint("llm")).rollout
            assert rollout is not None
            assert rollout.phase is not RolloutPhase.PROMOTED
            return rollout.phase is RolloutPhase.ROLLED_BACK

        await eventually(rolled_back, within=SETTLE)
        rollout = (await fleet.store.get_endpoint("llm")).rollout
        assert rollout is not None
        assert rollout.wave == 1
        assert rollout.reason == (
            "rolled back everywhere: the new version not ready within the readiness deadline in b"
        )

        async def canary_gone() -> bool:
            for region in ("a", "b"):
                held = await world.present(region)
                if {("Deployment", "llm-canary"), ("Service", "llm-canary")} & held:
                    return False
                if canary_weight(await world.need(region, "ingresses")) is not None:
                    return False
            return True

        await eventually(canary_gone, within=SETTLE)
