"""Custom resources on the test server: KEDA's ScaledObject is served only by a server
told its CRD is installed, with server-side apply typed by the CRD's schema (metadata
as ObjectMeta) and watches, like a built-in kind; no KEDA controller acts on it."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.kubeapi import SCALED_OBJECTS, KubeApiServer

SCALED = "/apis/keda.sh/v1alpha1/namespaces/ns/scaledobjects"
APPLY = "application/apply-patch+yaml"


def scaled_object(threshold: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "llm", "labels": labels},
        "spec": {
            "scaleTargetRef": {"name": "llm"},
            "minReplicaCount": 0,
            "triggers": [
                {"type": "prometheus", "metadata": {"query": "sum(x)", "threshold": threshold}}
            ],
        },
    }


async def request(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    data = json.dumps(body) if body is not None else None
    async with http.request(method, path, data=data, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def apply(http: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, Any]:
    path = f"{SCALED}/llm?fieldManager=servefleet"
    return await request(http, "PATCH", path, body, **{"Content-Type": APPLY})


async def test_without_the_crd_the_group_is_not_served() -> None:
    async with KubeApiServer() as kube, aiohttp.ClientSession(base_url=kube.url) as http:
        status, groups = await request(http, "GET", "/apis")
        assert status == 200
        assert "keda.sh" not in [group["name"] for group in groups["groups"]]
        assert (await request(http, "GET", SCALED))[0] == 404
        assert (await request(http, "GET", "/apis/keda.sh/v1alpha1"))[0] == 404


async def test_scaled_objects_are_discovered_applied_and_watched() -> None:
    async with (
        KubeApiServer(crds=[SCALED_OBJECTS]) as kube,
        aiohttp.ClientSession(base_url=kube.url) as http,
    ):
        status, listing = await request(http, "GET", "/apis/keda.sh/v1alpha1")
        assert status == 200
        assert [r["name"] for r in listing["resources"]] == [
            "scaledobjects",
            "scaledobjects/status",
        ]

        status, created = await apply(http, scaled_object("4", {"a": "1"}))
        assert status == 201, created
        assert created["metadata"]["generation"] == 1
        (entry,) = created["metadata"]["managedFields"]
        assert entry["manager"] == "servefleet"
        assert "f:a" in entry["fieldsV1"]["f:metadata"]["f:labels"]  # metadata is typed

        version = created["metadata"]["resourceVersion"]
        async with http.get(f"{SCALED}?watch=true&resourceVersion={version}") as watch:
            status, changed = await apply(http, scaled_object("8", {"b": "2"}))
            assert status == 200, changed
            event = json.loads(await watch.content.readline())
        assert event["type"] == "MODIFIED"
        assert event["object"]["metadata"]["labels"] == {"b": "2"}  # the applier's own field went
        assert event["object"]["metadata"]["generation"] == 2
        assert event["object"]["spec"]["triggers"][0]["metadata"]["threshold"] == "8"
        assert kube.objects("scaledobjects", "ns")[0]["spec"]["minReplicaCount"] == 0
