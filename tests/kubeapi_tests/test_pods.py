"""Pods and the `pods/log` subresource over real HTTP (no kubelet: statuses written by
the test, as a kubelet would)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kubeapi import KubeApiServer, matching

NS = "llm"


def status_of(error: pytest.ExceptionInfo[ApiException]) -> tuple[int, str, str]:
    body = json.loads(error.value.body or "{}")
    return int(error.value.status), str(body.get("reason", "")), str(body["message"])


def pod(name: str, node: str | None = None, **labels: str) -> Any:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "llm", **labels}},
        "spec": {
            "initContainers": [{"name": "stage-model", "image": "stage:1", "command": ["true"]}],
            "containers": [
                {
                    "name": "inference",
                    "image": "vllm/vllm-openai:v0.20.1",
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                }
            ],
        },
    }
    if node is not None:
        body["spec"]["nodeName"] = node
    return body


async def test_pod_crud_and_label_selected_watch(api: ApiClient) -> None:
    """Verify pods: create (server fields, defaults, Pending status, generation), get,
    label-selected list and watch (in and out of the selection), status writes and
    deletes."""
    core = client.CoreV1Api(api)
    created, code, _ = await core.create_namespaced_pod_with_http_info(NS, pod("a", tier="x"))
    assert code == 201
    assert created.metadata.generation == 1
    assert created.status.phase == "Pending"
    assert created.status.qos_class == "Burstable"  # the init container has no limits
    assert created.spec.containers[0].resources.requests == {"cpu": "1", "memory": "1Gi"}
    assert created.spec.enable_service_links is True
    assert created.spec.restart_policy == "Always"
    assert created.spec.init_containers[0].termination_message_path == "/dev/termination-log"
    await core.create_namespaced_pod(NS, pod("b"))
    await core.create_namespaced_pod("other", pod("c", tier="x"))

    listed = await core.list_namespaced_pod(NS, label_selector="tier=x")
    assert [item.metadata.name for item in listed.items] == ["a"]
    everywhere = await core.list_pod_for_all_namespaces(label_selector="tier=x")
    assert sorted(item.metadata.name for item in everywhere.items) == ["a", "c"]

    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        NS,
        label_selector="tier=x",
        resource_version=listed.metadata.resource_version,
        timeout_seconds=1,
    )
    await core.patch_namespaced_pod("b", NS, {"metadata": {"labels": {"tier": "x"}}})
    await core.patch_namespaced_pod_status("a", NS, {"status": {"phase": "Running"}})
    await core.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"tier": "y"}}})
    await core.delete_namespaced_pod("b", NS)
    async with stream:
        events = [(e["type"], e["object"].metadata.name) async for e in stream]
    assert events == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "a"), ("DELETED", "b")]

    updated = await core.patch_namespaced_pod("a", NS, {"spec": {"activeDeadlineSeconds": 600}})
    assert updated.metadata.generation == 2  # spec changes bump it (KEP-5067)
    assert updated.status.phase == "Running"
    labelled = await core.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"v": "2"}}})
    assert labelled.metadata.generation == 2

    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_pod("b", NS)
    assert status_of(missing) == (404, "NotFound", 'pods "b" not found')
    empty: Any = {"metadata": {"name": "d"}, "spec": {"containers": []}}
    with pytest.raises(ApiException) as invalid:
        await core.create_namespaced_pod(NS, empty)
    assert status_of(invalid) == (
        422,
        "Invalid",
        'Pod "d" is invalid: spec.containers: Required value',
    )


async def test_discovery_lists_pods_and_their_subresources(api: ApiClient) -> None:
    """Verify /api/v1 lists pods (short name po) with pods/log (get only) and pods/status."""
    resources = {r.name: r for r in (await client.CoreV1Api(api).get_api_resources()).resources}
    assert resources["pods"].kind == "Pod"
    assert resources["pods"].short_names == ["po"]
    assert resources["pods/log"].verbs == ["get"]
    assert resources["pods/status"].verbs == ["get", "patch", "update"]


async def test_log_errors_follow_the_real_server(kube: KubeApiServer, api: ApiClient) -> None:
    """Verify the log endpoint's answers before any container ran: 404 for a missing
    pod, 400 for an unnamed or unknown container, 204 without a node, the kubelet's
    400s from the pod status (waiting, not available, no previous run), 422 options."""
    core = client.CoreV1Api(api)

    async def log_error(name: str, **options: Any) -> tuple[int, str, str]:
        with pytest.raises(ApiException) as error:
            await core.read_namespaced_pod_log(name, NS, **options)
        return status_of(error)

    assert await log_error("nope") == (404, "NotFound", 'pods "nope" not found')
    await core.create_namespaced_pod(NS, pod("unbound"))
    assert await core.read_namespaced_pod_log("unbound", NS) is None  # 204: no node yet
    assert kube.pod_log(NS, "unbound", "stage-model") == ""

    body = pod("p", node="node-a")
    body["spec"]["containers"].append({"name": "sidecar", "image": "envoy:1"})
    await core.create_namespaced_pod(NS, body)
    assert await log_error("p") == (
        400,
        "BadRequest",
        "a container name must be specified for pod p, choose one of:"
        " [stage-model inference sidecar]",
    )
    assert await log_error("p", container="web") == (
        400,
        "BadRequest",
        "container web is not valid for pod p",
    )
    assert await log_error("p", container="stage-model") == (
        400,
        "BadRequest",
        'container "stage-model" in pod "p" is not available',
    )
    waiting = {"state": {"waiting": {"reason": "PodInitializing"}}, "ready": False, "imageID": ""}
    await core.patch_namespaced_pod_status(
        "p",
        NS,
        {
            "status": {
                "initContainerStatuses": [
                    {"name": "stage-model", "image": "stage:1", "restartCount": 0, **waiting}
                ],
                "containerStatuses": [
                    {
                        "name": "inference",
                        "image": "vllm",
                        "imageID": "",
                        "restartCount": 0,
                        "containerID": "containerd://0a",
                        "state": {"running": {"startedAt": "2026-11-26T12:00:00Z"}},
                        "ready": True,
                    },
                    {"name": "sidecar", "image": "envoy:1", "restartCount": 0, **waiting},
                ],
            }
        },
    )
    assert await log_error("p", container="stage-model") == (
        400,
        "BadRequest",
        'container "stage-model" in pod "p" is waiting to start: PodInitializing',
    )
    assert await log_error("p", container="inference", previous=True) == (
        400,
        "BadRequest",
        'previous terminated container "inference" in pod "p" not found',
    )
    assert await core.read_namespaced_pod_log("p", NS, container="inference") == ""
    assert await log_error("p", container="inference", tail_lines=-1) == (
        422,
        "Invalid",
        'PodLogOptions "p" is invalid: tailLines: Invalid value: -1:'
        " must be greater than or equal to 0",
    )
    # no kubelet ran it: following ends at once
    assert await core.read_namespaced_pod_log("p", NS, container="inference", follow=True) == ""
    with pytest.raises(ApiException) as refused:
        await core.read_namespaced_pod_log("p", NS, container="stage-model")
    assert refused.value.status == 400


async def test_log_requests_are_counted_and_faulted(kube: KubeApiServer) -> None:
    """Verify log requests count as verb get on pods/log, take injected faults, and
    answer text/plain; writes to pods/log are refused (405)."""
    async with aiohttp.ClientSession(base_url=kube.url) as http:
        path = f"/api/v1/namespaces/{NS}/pods/p/log"
        async with http.post(f"/api/v1/namespaces/{NS}/pods", json=pod("p", node="n")) as made:
            assert made.status == 201
        await http.patch(
            f"/api/v1/namespaces/{NS}/pods/p/status",
            json={
                "status": {
                    "containerStatuses": [
                        {
                            "name": "inference",
                            "image": "vllm",
                            "restartCount": 0,
                            "ready": True,
                            "containerID": "containerd://1",
                            "state": {"running": {}},
                        }
                    ]
                }
            },
            headers={"Content-Type": "application/merge-patch+json"},
        )
        kube.reset_counts()
        kube.fail(503, times=1, match=matching(resource="pods", subresource="log"))
        async with http.get(path) as failed:
            assert failed.status == 503
        async with http.get(path, params={"tailLines": "5"}) as answered:
            assert answered.status == 200
            assert answered.content_type == "text/plain"
        async with http.post(path, data=b"") as refused:
            assert refused.status == 405
        async with http.get(path, params={"tailLines": "x"}) as malformed:
            assert malformed.status == 400
        assert kube.count("get", "pods", "log") == 3
        assert kube.requests[("get", "pods/log")] == 3
        assert kube.request_log[1].query == {"tailLines": "5"}
