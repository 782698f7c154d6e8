"""The stand-in for the HPA controller: only the replica bounds, and nothing for a
target at 0 replicas (the real controller's ScalingDisabled)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient

from tests.kubeapi import KubeApiServer
from tests.kubeapi.autoscaler import MANAGER, SCALING_DISABLED, Decision, decide
from tests.waiting import eventually

NS = "llm"


@pytest.fixture
async def kube() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(hpa_controller=True) as server:
        yield server


@pytest.mark.parametrize(
    ("current", "minimum", "maximum", "decision"),
    [
        pytest.param(0, 2, 6, Decision(0, disabled=True), id="at zero: disabled"),
        pytest.param(1, 2, 6, Decision(2), id="below min: min"),
        pytest.param(9, 2, 6, Decision(6), id="above max: max"),
        pytest.param(4, 2, 6, Decision(4), id="within: left to the metrics"),
        pytest.param(0, 0, 6, Decision(0), id="min 0 (HPAScaleToZero): not disabled"),
    ],
)
def test_the_bounds_rule(current: int, minimum: int, maximum: int, decision: Decision) -> None:
    assert decide(current, minimum, maximum) == decision


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "example/server:1"}]},
            },
        },
    }


def autoscaler(name: str, minimum: int, maximum: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": minimum,
            "maxReplicas": maximum,
        },
    }


async def read(api: ApiClient, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment and the HPA `name`, as served."""
    found = []
    for method in (
        client.AppsV1Api(api).read_namespaced_deployment,
        client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler,
    ):
        response = await method(name, NS, _preload_content=False)
        try:
            found.append(json.loads(await response.read()))
        finally:
            response.release()
    return found[0], found[1]


async def test_a_target_at_zero_is_not_scaled(kube: KubeApiServer, api: ApiClient) -> None:
    await client.AppsV1Api(api).create_namespaced_deployment(NS, deployment("llm", 0))
    await client.AutoscalingV2Api(api).create_namespaced_horizontal_pod_autoscaler(
        NS, autoscaler("llm", 2, 6)
    )

    async def disabled() -> bool:
        _, hpa = await read(api, "llm")
        conditions = (hpa.get("status") or {}).get("conditions") or []
        return any(
            (c["type"], c["status"], c["reason"], c["message"])
            == ("ScalingActive", "False", "ScalingDisabled", SCALING_DISABLED)
            for c in conditions
        )

    await eventually(disabled, within=5)
    found, hpa = await read(api, "llm")
    assert found["spec"]["replicas"] == 0
    assert (hpa["status"]["currentReplicas"], hpa["status"]["desiredReplicas"]) == (0, 0)


@pytest.mark.parametrize(("start", "end"), [(1, 2), (9, 6), (4, 4)])
async def test_a_target_is_kept_within_the_bounds(
    kube: KubeApiServer, api: ApiClient, start: int, end: int
) -> None:
    await client.AppsV1Api(api).create_namespaced_deployment(NS, deployment("llm", start))
    await client.AutoscalingV2Api(api).create_namespaced_horizontal_pod_autoscaler(
        NS, autoscaler("llm", 2, 6)
    )

    async def acted() -> bool:
        _, hpa = await read(api, "llm")
        return (hpa.get("status") or {}).get("desiredReplicas") == end

    await eventually(acted, within=5)
    found, _ = await read(api, "llm")
    assert found["spec"]["replicas"] == end
    owners = {
        (entry["manager"], entry.get("subresource", ""))
        for entry in found["metadata"]["managedFields"]
        if "f:replicas" in entry.get("fieldsV1", {}).get("f:spec", {})
    }
    assert ((MANAGER, "scale") in owners) == (start != end)  # written through /scale

    # Raising the minimum raises the target.
    await client.AutoscalingV2Api(api).patch_namespaced_horizontal_pod_autoscaler(
        "llm", NS, {"spec": {"minReplicas": 5}}, _content_type="application/merge-patch+json"
    )

    async def raised() -> bool:
        found, _ = await read(api, "llm")
        return bool(found["spec"]["replicas"] == max(5, end))

    await eventually(raised, within=5)
