"""The test server's HTTP surface, with plain aiohttp requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.kubeapi import KubeApiServer, matching
from tests.waiting import eventually

DEPLOYMENTS = "/apis/apps/v1/namespaces/ns/deployments"
SERVICES = "/api/v1/namespaces/ns/services"


@pytest.fixture
async def http(kube: KubeApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=kube.url) as session:
        yield session


def deployment(name: str = "llm", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"tier": "web"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "img:1"}]},
                **spec,
            },
        },
    }


async def call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, Any, aiohttp.ClientResponse]:
    data = json.dumps(body) if body is not None else None
    async with http.request(
        method, path, data=data, headers={"Content-Type": content_type}
    ) as response:
        return response.status, await response.json(content_type=None), response


async def lines(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    return [json.loads(line) async for line in response.content if line.strip()]


async def test_watch_path_form_by_name_and_from_zero(
    kube: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Verify /watch/ paths, watching one name, and a watch from "0" listing first."""
    await call(http, "POST", DEPLOYMENTS, deployment("a"))
    await call(http, "POST", DEPLOYMENTS, deployment("b"))
    async with http.get(
        "/apis/apps/v1/watch/namespaces/ns/deployments/b?timeoutSeconds=1"
    ) as named:
        await call(http, "DELETE", f"{DEPLOYMENTS}/a")
        await call(http, "DELETE", f"{DEPLOYMENTS}/b")
        events = await lines(named)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"),
        ("DELETED", "b"),
    ]
    assert kube.count("watch", "deployments") == 1


async def test_bookmarks_and_expired_resource_versions(
    kube: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Verify bookmarks carry only the resourceVersion, and compaction expires watches
    with a 200 answer holding one ERROR event."""
    kube.bookmark_interval = 0.2
    _, created, _ = await call(http, "POST", DEPLOYMENTS, deployment())
    start = created["metadata"]["resourceVersion"]
    query = f"?watch=True&allowWatchBookmarks=True&resourceVersion={start}&timeoutSeconds=1"
    async with http.get(DEPLOYMENTS + query) as response:
        events = await lines(response)
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"]["metadata"] == {"resourceVersion": start}
    await call(http, "POST", DEPLOYMENTS, deployment("later"))
    kube.compact()  # history up to "later" is gone: watching from `start` would miss it
    async with http.get(f"{DEPLOYMENTS}?watch=1&resourceVersion={start}") as response:
        assert response.status == 200
        [error] = await lines(response)
    assert error["type"] == "ERROR"
    assert error["object"]["code"] == 410
    assert error["object"]["reason"] == "Expired"
    _, listed, _ = await call(http, "GET", DEPLOYMENTS)
    fresh = listed["metadata"]["resourceVersion"]
    async with http.get(f"{DEPLOYMENTS}?watch=1&resourceVersion={fresh}&timeoutSeconds=0.3") as ok:
        assert await lines(ok) == []


async def test_writes_validate_and_decode(http: aiohttp.ClientSession) -> None:
    """Verify strict and warned unknown fields, name checks, 404 on PUT of a missing
    object, and the other patch types."""
    body = deployment()
    body["spec"]["bogus"] = 1
    status, answer, _ = await call(http, "POST", f"{DEPLOYMENTS}?fieldValidation=Strict", body)
    assert (status, answer["message"]) == (400, 'strict decoding error: unknown field "spec.bogus"')
    status, answer, response = await call(http, "POST", DEPLOYMENTS, body)
    assert status == 201
    assert response.headers["Warning"] == '299 - "unknown field \\"spec.bogus\\""'
    assert "bogus" not in answer["spec"]

    status, answer, _ = await call(http, "PUT", f"{DEPLOYMENTS}/other", deployment("other"))
    assert (status, answer["reason"]) == (404, "NotFound")
    status, answer, _ = await call(http, "PUT", f"{DEPLOYMENTS}/llm", deployment("other"))
    assert status == 400
    assert "does not match the name on the URL" in answer["message"]
    status, answer, _ = await call(http, "POST", SERVICES, {"metadata": {"name": "Bad"}})
    assert (status, answer["reason"]) == (422, "Invalid")
    assert [c["field"] for c in answer["details"]["causes"]] == ["metadata.name", "spec.ports"]

    status, answer, _ = await call(
        http,
        "PATCH",
        f"{DEPLOYMENTS}/llm",
        {"spec": {"template": {"spec": {"containers": [{"name": "d", "image": "img:2"}]}}}},
        "application/strategic-merge-patch+json",
    )
    assert status == 200
    # as in apimachinery: without $setElementOrder an item the patch adds goes first
    assert [c["name"] for c in answer["spec"]["template"]["spec"]["containers"]] == ["d", "c"]
    assert answer["metadata"]["generation"] == 2
    assert answer["metadata"]["managedFields"][-1]["manager"] == "Python"
    status, answer, _ = await call(
        http,
        "PATCH",
        f"{DEPLOYMENTS}/llm?fieldManager=ops",
        [{"op": "replace", "path": "/spec/replicas", "value": 3}],
        "application/json-patch+json",
    )
    assert (status, answer["spec"]["replicas"]) == (200, 3)
    status, answer, _ = await call(
        http, "PATCH", f"{DEPLOYMENTS}/llm", {"metadata": {"labels": None}}, "text/plain"
    )
    assert status == 415
    status, answer, _ = await call(
        http,
        "PATCH",
        f"{DEPLOYMENTS}/llm?force=true",
        {"metadata": {"labels": None}},
        "application/merge-patch+json",
    )
    assert status == 422


async def test_another_managers_merge_patch_takes_the_field_until_a_forced_apply(
    http: aiohttp.ClientSession,
) -> None:
    env = [{"name": "MODE", "value": "a"}, {"name": "LEVEL", "value": "x"}]
    applied = deployment()
    applied["spec"]["template"]["spec"]["containers"][0]["env"] = env
    apply_path = f"{DEPLOYMENTS}/llm?fieldManager=servefleet"
    status, _, _ = await call(http, "PATCH", apply_path, applied, "application/apply-patch+yaml")
    assert status == 201

    edited = [{"name": "c", "image": "img:1", "env": [{**env[0], "value": "hacked"}, env[1]]}]
    status, answer, _ = await call(
        http,
        "PATCH",
        f"{DEPLOYMENTS}/llm?fieldManager=ops",
        {"spec": {"template": {"spec": {"containers": edited}}}},
        "application/merge-patch+json",
    )
    assert status == 200
    entries = {e["manager"]: e for e in answer["metadata"]["managedFields"]}
    assert [e["manager"] for e in answer["metadata"]["managedFields"]] == ["servefleet", "ops"]
    item = entries["ops"]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert item == {'k:{"name":"c"}': {"f:env": {'k:{"name":"MODE"}': {"f:value": {}}}}}

    status, answer, _ = await call(
        http, "PATCH", apply_path, applied, "application/apply-patch+yaml"
    )
    field = '.spec.template.spec.containers[name="c"].env[name="MODE"].value'
    assert (status, answer["message"]) == (
        409,
        f'Apply failed with 1 conflict: conflict with "ops" using apps/v1: {field}',
    )
    assert answer["details"]["causes"] == [
        {
            "reason": "FieldManagerConflict",
            "message": 'conflict with "ops" using apps/v1',
            "field": field,
        }
    ]

    status, answer, _ = await call(
        http, "PATCH", f"{apply_path}&force=true", applied, "application/apply-patch+yaml"
    )
    assert status == 200
    assert answer["spec"]["template"]["spec"]["containers"][0]["env"] == env
    assert [e["manager"] for e in answer["metadata"]["managedFields"]] == ["servefleet"]


def service(*ports: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "llm"},
        "spec": {"selector": {"app": "llm"}, "ports": list(ports)},
    }


async def test_service_ports_need_unique_names_and_port_protocol_pairs(
    http: aiohttp.ClientSession,
) -> None:
    """As ValidateService: a port name used twice and a (port, protocol) pair used
    twice are each a Duplicate, the pair printed as the internal struct it is
    looked up by; the same number under two protocols is fine."""
    status, answer, _ = await call(
        http,
        "POST",
        SERVICES,
        service({"name": "http", "port": 80}, {"name": "http", "port": 8080}),
    )
    assert (status, answer["reason"], answer["message"]) == (
        422,
        "Invalid",
        'Service "llm" is invalid: spec.ports[1].name: Duplicate value: "http"',
    )
    assert answer["details"] == {
        "name": "llm",
        "kind": "Service",
        "causes": [
            {
                "reason": "FieldValueDuplicate",
                "message": 'Duplicate value: "http"',
                "field": "spec.ports[1].name",
            }
        ],
    }

    status, answer, _ = await call(
        http,
        "POST",
        SERVICES,
        service({"name": "http", "port": 80}, {"name": "web", "port": 80, "protocol": "TCP"}),
    )
    pair = (
        'core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80,'
        ' TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}'
    )
    assert (status, answer["message"]) == (
        422,
        f'Service "llm" is invalid: spec.ports[1]: Duplicate value: {pair}',
    )
    assert answer["details"]["causes"] == [
        {
            "reason": "FieldValueDuplicate",
            "message": f"Duplicate value: {pair}",
            "field": "spec.ports[1]",
        }
    ]

    # Each port's own errors come first, the pairs after them (and the type).
    status, answer, _ = await call(
        http,
        "POST",
        SERVICES,
        service({"name": "dns", "port": 53}, {"name": "dns", "port": 53}),
    )
    assert status == 422
    assert [cause["field"] for cause in answer["details"]["causes"]] == [
        "spec.ports[1].name",
        "spec.ports[1]",
    ]

    status, answer, _ = await call(
        http,
        "POST",
        SERVICES,
        service({"name": "dns", "port": 53}, {"name": "dns-udp", "port": 53, "protocol": "UDP"}),
    )
    assert status == 201
    # Reached by any write, not only a create: the lists decode, validation refuses.
    status, answer, _ = await call(
        http,
        "PATCH",
        f"{SERVICES}/llm",
        [{"op": "add", "path": "/spec/ports/-", "value": {"name": "web", "port": 53}}],
        "application/json-patch+json",
    )
    assert (status, answer["message"]) == (
        422,
        f'Service "llm" is invalid: spec.ports[2]: Duplicate value: {pair.replace("80", "53")}',
    )


async def test_a_forced_apply_beside_another_managers_port_is_refused(
    http: aiohttp.ClientSession,
) -> None:
    """Another manager's merge patch changes the port's number and so owns the item
    (the list is keyed by port and protocol); a forced apply of the old number
    cannot remove that item, puts its own beside it, and the result, two ports named
    "http", is refused: the object stays as the edit left it."""
    applied = service({"name": "http", "port": 80, "targetPort": 8000, "protocol": "TCP"})
    apply_path = f"{SERVICES}/llm?fieldManager=servefleet&force=true"
    status, _, _ = await call(http, "PATCH", apply_path, applied, "application/apply-patch+yaml")
    assert status == 201
    moved = {"spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 8000}]}}
    status, answer, _ = await call(
        http,
        "PATCH",
        f"{SERVICES}/llm?fieldManager=kubectl-patch",
        moved,
        "application/merge-patch+json",
    )
    assert status == 200
    assert [port["port"] for port in answer["spec"]["ports"]] == [8080]

    status, answer, _ = await call(
        http, "PATCH", apply_path, applied, "application/apply-patch+yaml"
    )
    assert (status, answer["message"]) == (
        422,
        'Service "llm" is invalid: spec.ports[1].name: Duplicate value: "http"',
    )
    status, answer, _ = await call(http, "GET", f"{SERVICES}/llm")
    assert [port["port"] for port in answer["spec"]["ports"]] == [8080]


async def test_strategic_merge_patch_errors_are_classified_as_the_api_server_does(
    http: aiohttp.ClientSession,
) -> None:
    status, _, _ = await call(http, "POST", DEPLOYMENTS, deployment())
    assert status == 201
    path = f"{DEPLOYMENTS}/llm"
    smp = "application/strategic-merge-patch+json"
    bad_order = {"spec": {"template": {"spec": {"$setElementOrder/containers": "c"}}}}
    status, answer, _ = await call(http, "PATCH", path, bad_order, smp)
    assert (status, answer["reason"], answer["message"]) == (
        400,
        "BadRequest",
        "invalid patch format of setElementOrder list",
    )
    keyless = {"spec": {"template": {"spec": {"containers": [{"image": "img:2"}]}}}}
    status, answer, _ = await call(http, "PATCH", path, keyless, smp)
    assert (status, answer.get("reason", "")) == (500, "")
    assert "does not contain declared merge key: name" in answer["message"]


async def test_delete_preconditions_and_collections(http: aiohttp.ClientSession) -> None:
    """Verify DELETE preconditions, the success Status, and deletecollection."""
    _, created, _ = await call(http, "POST", DEPLOYMENTS, deployment("a"))
    await call(http, "POST", DEPLOYMENTS, deployment("b"))
    status, answer, _ = await call(
        http, "DELETE", f"{DEPLOYMENTS}/a", {"preconditions": {"uid": "nope"}}
    )
    assert (status, answer["reason"]) == (409, "Conflict")
    status, answer, _ = await call(http, "DELETE", f"{DEPLOYMENTS}/a")
    assert (status, answer["status"]) == (200, "Success")
    assert answer["details"]["uid"] == created["metadata"]["uid"]
    status, answer, _ = await call(http, "DELETE", f"{DEPLOYMENTS}?labelSelector=tier%3Dweb")
    assert [item["metadata"]["name"] for item in answer["items"]] == ["b"]
    _, listed, _ = await call(http, "GET", DEPLOYMENTS)
    assert listed["items"] == []


async def test_faults_hang_abort_and_counts(
    kube: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Verify a bounded hang answers 504, aborted watches reset the connection, and
    every request is counted by verb and resource."""
    kube.hang(times=1, match=matching(resource="services"), seconds=0.1)
    status, answer, _ = await call(http, "GET", f"{SERVICES}/x")
    assert (status, answer["reason"]) == (504, "Timeout")
    status, answer, _ = await call(http, "GET", f"{SERVICES}/x")
    assert status == 404

    async def watch() -> None:
        async with http.get(f"{SERVICES}?watch=1") as response:
            await lines(response)

    async def opened() -> bool:
        return kube.open_watches == 1

    task = asyncio.create_task(watch())
    await eventually(opened, within=5)
    assert kube.drop_watches(abort=True) == 1
    with pytest.raises(aiohttp.ClientPayloadError):
        await task
    assert kube.count("get", "services") == 2
    assert kube.requests[("watch", "services")] == 1
