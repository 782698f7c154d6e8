"""The Kubernetes runtime of a region that scales with KEDA, over real HTTP: the test
API server with the ScaledObject CRD installed, or a real cluster when
SERVEFLEET_TEST_KUBECONFIG is set (skipped unless its discovery serves
keda.sh/v1alpha1). No KEDA controller runs on the test server: these tests check
what servefleet applies and deletes, not KEDA's scaling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient

from servefleet.plan import workload_hash
from servefleet.runtime.kubernetes.cluster import KubernetesRuntime
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from servefleet.spec import DesiredState
from tests.kubeapi import SCALED_OBJECTS
from tests.kubernetes.conftest import FAST, Cluster, api_client, api_target
from tests.kubernetes.test_cluster import observed_hash, planned, replicas_of

KEDA_GROUP_VERSION = "keda.sh/v1alpha1"
TO_ZERO = {
    "enabled": True,
    "min_replicas": 0,
    "max_replicas": 4,
    "metrics": [{"type": "concurrency", "target": 4}],
}


def keda_settings(namespace: str) -> RegionSettings:
    return RegionSettings(
        namespace=namespace, autoscaler="keda", prometheus_url="http://prometheus:9090"
    )


async def _serves_keda(api: ApiClient) -> bool:
    groups = await client.ApisApi(api).get_api_versions()
    return any(
        version.group_version == KEDA_GROUP_VERSION
        for group in groups.groups
        for version in group.versions
    )


@dataclass
class KedaCluster(Cluster):
    kubeconfig: Path = Path()


@pytest.fixture
async def keda(tmp_path: Path) -> AsyncIterator[KedaCluster]:
    async with api_target(tmp_path, bookmark_interval=0.5, crds=[SCALED_OBJECTS]) as target:
        api = await api_client(target.kubeconfig)
        try:
            if not await _serves_keda(api):
                pytest.skip("the cluster has no ScaledObject CRD (KEDA is not installed)")
            runtime = await KubernetesRuntime.from_kubeconfig(
                "r1", keda_settings(target.namespace), target.kubeconfig, cluster=FAST
            )
            async with runtime:
                yield KedaCluster(runtime, api, target.namespace, target.server, target.kubeconfig)
        finally:
            await api.close()


async def test_scale_to_zero_applies_a_scaled_object_and_no_hpa(keda: KedaCluster) -> None:
    workload = planned(autoscaling=TO_ZERO)
    await keda.runtime.apply(workload)

    applied = await keda.get("ScaledObject", "llm")
    assert applied is not None
    assert (applied["spec"]["minReplicaCount"], applied["spec"]["maxReplicaCount"]) == (0, 4)
    assert applied["spec"]["scaleTargetRef"]["name"] == "llm"
    assert await keda.get("HorizontalPodAutoscaler", "llm") is None
    replicas, _owners = await replicas_of(keda)
    assert replicas == 0  # created at KEDA's minimum; KEDA starts it on load
    assert await observed_hash(keda) == workload_hash(workload)


async def test_autoscaling_off_and_stop_remove_the_scaled_object(keda: KedaCluster) -> None:
    runtime = keda.runtime
    await runtime.apply(planned(autoscaling=TO_ZERO))

    await runtime.apply(planned(autoscaling=TO_ZERO, state=DesiredState.STOPPED))
    assert await keda.get("ScaledObject", "llm") is None
    assert (await replicas_of(keda))[0] == 0

    started = planned(autoscaling={**TO_ZERO, "min_replicas": 1})
    await runtime.apply(started)
    assert await keda.get("ScaledObject", "llm") is not None
    assert (await replicas_of(keda))[0] == 1  # KEDA's minimum, set as the HPA's is
    assert await observed_hash(keda) == workload_hash(started)

    fixed = planned(replicas=2)
    await runtime.apply(fixed)
    assert await keda.get("ScaledObject", "llm") is None
    assert await keda.get("HorizontalPodAutoscaler", "llm") is None
    assert (await replicas_of(keda))[0] == 2
    assert await observed_hash(keda) == workload_hash(fixed)

    await runtime.apply(planned(autoscaling=TO_ZERO))
    await runtime.remove("llm")
    assert await keda.get("ScaledObject", "llm") is None
    assert await runtime.held() == set()


async def test_a_steady_keda_region_costs_no_request(keda: KedaCluster) -> None:
    server = keda.need_server()
    workload = planned(autoscaling=TO_ZERO)
    await keda.runtime.apply(workload)
    server.reset_counts()
    await keda.runtime.apply(workload)
    await asyncio.sleep(1)
    for verb in ("get", "list", "create", "update", "patch", "delete"):
        assert server.count(verb) == 0, verb


async def test_switching_the_region_s_autoscaler_replaces_one_with_the_other(
    keda: KedaCluster,
) -> None:
    """A region registered again with another autoscaler gets a new runtime (its
    settings are read at start): the HPA runtime never lists ScaledObjects (the CRD
    may be missing), yet deletes the one the objects list names, once."""
    workload = planned(autoscaling={**TO_ZERO, "min_replicas": 1})
    await keda.runtime.apply(workload)
    assert await keda.get("ScaledObject", "llm") is not None

    if keda.server is not None:
        keda.server.reset_counts()
    hpa_runtime = await KubernetesRuntime.from_kubeconfig(
        "r1", RegionSettings(namespace=keda.namespace), keda.kubeconfig, cluster=FAST
    )
    async with hpa_runtime:
        # The objects list names a ScaledObject this runtime does not see: not in place.
        assert await observed_of(hpa_runtime) == ""
        await hpa_runtime.apply(workload)
        assert await keda.get("ScaledObject", "llm") is None
        assert await keda.get("HorizontalPodAutoscaler", "llm") is not None
        assert await observed_of(hpa_runtime) == workload_hash(workload)
        if keda.server is not None:
            assert keda.server.count("list", "scaledobjects") == 0
            keda.server.reset_counts()
            await hpa_runtime.apply(workload)
            assert keda.server.count("delete") == 0

    # And back: the keda runtime deletes the HPA.
    await keda.runtime.apply(planned(autoscaling=TO_ZERO))
    assert await keda.get("HorizontalPodAutoscaler", "llm") is None
    assert await keda.get("ScaledObject", "llm") is not None


async def observed_of(runtime: KubernetesRuntime) -> str:
    observed = await runtime.observe("llm")
    assert observed is not None
    return observed.workload_hash


async def test_an_hpa_region_removes_an_endpoint_s_scaled_object_too(keda: KedaCluster) -> None:
    """An endpoint deleted after its region stopped scaling with KEDA, before it was
    applied again: its ScaledObject goes with the rest."""
    await keda.runtime.apply(planned(autoscaling=TO_ZERO))
    hpa_runtime = await KubernetesRuntime.from_kubeconfig(
        "r1", RegionSettings(namespace=keda.namespace), keda.kubeconfig, cluster=FAST
    )
    async with hpa_runtime:
        await hpa_runtime.remove("llm")
        assert await keda.get("ScaledObject", "llm") is None
        assert await keda.get("Deployment", "llm") is None
        assert await hpa_runtime.held() == set()
