"""kubernetes-asyncio against the test server over real HTTP: the calls servefleet makes."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kubeapi import KubeApiServer, matching
from tests.waiting import eventually

NS = "llm"
APPLY = "application/apply-patch+yaml"
#: kubernetes-asyncio's stubs do not declare `_content_type` (the methods accept it).
AS_APPLY: dict[str, Any] = {"_content_type": APPLY}
AS_MERGE: dict[str, Any] = {"_content_type": "application/merge-patch+json"}


async def drain(stream: watch.Watch) -> list[dict[str, Any]]:
    async with stream:
        return [event async for event in stream]


def message(error: pytest.ExceptionInfo[ApiException]) -> str:
    """The Status message of an API error."""
    return str(json.loads(error.value.body or "{}")["message"])


def deployment(name: str, replicas: int | None = 2, env: str = "v1", **labels: str) -> Any:
    """A Deployment manifest (typed Any: the client's stubs want models, it takes dicts)."""
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "servefleet", **labels},
            "annotations": {"servefleet.io/workload-hash": f"h-{env}"},
        },
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "inference",
                            "image": "vllm/vllm-openai:v0.20.1",
                            "env": [{"name": "MODE", "value": env}],
                            "ports": [{"containerPort": 8000}],
                        }
                    ]
                },
            },
        },
    }
    if replicas is not None:
        body["spec"]["replicas"] = replicas
    return body


async def apply_deployment(
    apps: client.AppsV1Api, body: dict[str, Any], force: bool = True
) -> tuple[Any, int]:
    result = await apps.patch_namespaced_deployment_with_http_info(
        body["metadata"]["name"],
        NS,
        body,
        field_manager="servefleet",
        force=force,
        **AS_APPLY,
    )
    return result[0], result[1]


async def test_create_get_and_list_with_selectors(api: ApiClient) -> None:
    """Verify create (201, server fields), get, and list with label/field selectors."""
    apps = client.AppsV1Api(api)
    tiers = {"web": "a", "api": "b", "batch": "c"}
    for tier, name in tiers.items():
        body = deployment(name, tier=tier)
        if tier == "batch":
            body["metadata"]["labels"]["canary"] = "yes"
        _, status, _ = await apps.create_namespaced_deployment_with_http_info(NS, body)
        assert status == 201
    got = await apps.read_namespaced_deployment("a", NS)
    assert got.metadata.generation == 1
    assert got.metadata.uid
    assert got.metadata.creation_timestamp
    assert got.spec.replicas == 2
    assert got.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"

    async def names(**kwargs: Any) -> list[str]:
        listed = await apps.list_namespaced_deployment(NS, **kwargs)
        assert int(listed.metadata.resource_version) >= int(got.metadata.resource_version)
        return sorted(item.metadata.name for item in listed.items)

    assert await names() == ["a", "b", "c"]
    assert await names(label_selector="tier=web") == ["a"]
    assert await names(label_selector="tier==api") == ["b"]
    assert await names(label_selector="tier!=web") == ["b", "c"]
    assert await names(label_selector="tier in (web, batch)") == ["a", "c"]
    assert await names(label_selector="tier notin (web),canary") == ["c"]
    assert await names(label_selector="!canary") == ["a", "b"]
    assert await names(label_selector="app.kubernetes.io/managed-by=servefleet,tier") == [
        "a",
        "b",
        "c",
    ]
    assert await names(field_selector="metadata.name=b") == ["b"]
    everywhere = await apps.list_deployment_for_all_namespaces()
    assert len(everywhere.items) == 3
    with pytest.raises(ApiException) as error:
        await apps.create_namespaced_deployment(NS, deployment("a"))
    assert error.value.status == 409
    assert message(error) == 'deployments.apps "a" already exists'
    with pytest.raises(ApiException) as error:
        await apps.list_namespaced_deployment(NS, label_selector="tier in (")
    assert error.value.status == 400


async def test_server_side_apply(api: ApiClient) -> None:
    """Verify SSA create/no-op/change, conflicts with a /scale writer, force, and pruning."""
    apps = client.AppsV1Api(api)
    created, status = await apply_deployment(apps, deployment("llm"))
    assert status == 201
    assert created.metadata.generation == 1
    [entry] = created.metadata.managed_fields
    assert (entry.manager, entry.operation) == ("servefleet", "Apply")

    same, status = await apply_deployment(apps, deployment("llm"))
    assert status == 200
    assert same.metadata.resource_version == created.metadata.resource_version

    changed, _ = await apply_deployment(apps, deployment("llm", env="v2"))
    assert changed.metadata.generation == 2
    assert changed.metadata.resource_version != created.metadata.resource_version

    scale = await apps.patch_namespaced_deployment_scale(
        "llm",
        NS,
        {"spec": {"replicas": 5}},
        field_manager="hpa",
        **AS_MERGE,
    )
    assert scale.spec.replicas == 5
    with pytest.raises(ApiException) as error:
        await apply_deployment(apps, deployment("llm", env="v2"), force=False)
    assert error.value.status == 409
    assert message(error) == (
        'Apply failed with 1 conflict: conflict with "hpa" with subresource "scale" using'
        " apps/v1: .spec.replicas"
    )

    kept, _ = await apply_deployment(apps, deployment("llm", replicas=None, env="v2"), force=False)
    assert kept.spec.replicas == 5
    taken, _ = await apply_deployment(apps, deployment("llm", replicas=3, env="v2"))
    assert taken.spec.replicas == 3
    assert [e.manager for e in taken.metadata.managed_fields] == ["servefleet"]
    dropped, _ = await apply_deployment(apps, deployment("llm", replicas=None, env="v2"))
    assert dropped.spec.replicas == 1  # the sole owner dropped it: back to the default

    body = deployment("llm", replicas=1, env="v2")
    body["metadata"]["annotations"] = {}
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"] = {"httpGet": {"path": "/health", "port": 8000}}
    probed, _ = await apply_deployment(apps, body)
    assert probed.metadata.annotations is None
    probe = probed.spec.template.spec.containers[0].readiness_probe
    assert (probe.http_get.path, probe.period_seconds) == ("/health", 10)
    del container["readinessProbe"]
    unprobed, _ = await apply_deployment(apps, body)
    assert unprobed.spec.template.spec.containers[0].readiness_probe is None


async def test_apply_validation(api: ApiClient) -> None:
    """Verify 422 for invalid objects and 500 for fields the schema lacks."""
    apps = client.AppsV1Api(api)
    bad = deployment("llm")
    bad["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "2"},
        "limits": {"cpu": "500m"},
    }
    with pytest.raises(ApiException) as error:
        await apply_deployment(apps, bad)
    assert error.value.status == 422
    assert message(error) == (
        'Deployment.apps "llm" is invalid: spec.template.spec.containers[0].resources.requests:'
        ' Invalid value: "2": must be less than or equal to cpu limit of 500m'
    )
    unknown = deployment("llm")
    unknown["spec"]["replica"] = 3
    with pytest.raises(ApiException) as error:
        await apply_deployment(apps, unknown)
    assert error.value.status == 500
    assert message(error).endswith(".spec.replica: field not declared in schema")


async def test_update_with_stale_resource_version_conflicts(api: ApiClient) -> None:
    """Verify optimistic concurrency on PUT."""
    apps = client.AppsV1Api(api)
    created = await apps.create_namespaced_deployment(NS, deployment("llm"))
    fresh = copy.deepcopy(created)
    fresh.metadata.labels["touched"] = "1"
    updated = await apps.replace_namespaced_deployment("llm", NS, fresh)
    assert updated.metadata.generation == 1  # labels are not spec
    created.spec.replicas = 7
    with pytest.raises(ApiException) as error:
        await apps.replace_namespaced_deployment("llm", NS, created)
    assert error.value.status == 409
    assert "the object has been modified" in message(error)
    updated.spec.replicas = 7
    scaled = await apps.replace_namespaced_deployment("llm", NS, updated)
    assert scaled.metadata.generation == 2


async def test_watch_events_bookmarks_and_expiry(kube: KubeApiServer, api: ApiClient) -> None:
    """Verify a watch from a list's resourceVersion sees ADDED/MODIFIED/DELETED and
    bookmarks, a label-selected watch sees objects leave its selection, and a
    compacted resourceVersion fails with 410."""
    kube.bookmark_interval = 0.3
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment(NS, deployment("before"))
    listed = await apps.list_namespaced_deployment(NS)

    async def writes() -> None:
        await asyncio.sleep(0.1)
        await apply_deployment(apps, deployment("llm"))
        await apply_deployment(apps, deployment("llm", env="v2"))
        await apps.patch_namespaced_deployment(
            "before", NS, {"metadata": {"labels": {"app.kubernetes.io/managed-by": "hand"}}}
        )
        await apps.delete_namespaced_deployment("llm", NS)

    async def consume(**selection: str) -> list[tuple[str, str]]:
        stream = watch.Watch().stream(
            apps.list_namespaced_deployment,
            NS,
            resource_version=listed.metadata.resource_version,
            allow_watch_bookmarks=True,
            # Long enough for the writes on a loaded machine: the server ends the
            # stream after this, whatever it has still to send.
            timeout_seconds=4,
            **selection,
        )
        async with stream:
            return [
                (event["type"], event["raw_object"]["metadata"].get("name", ""))
                async for event in stream
            ]

    watchers = asyncio.gather(
        consume(), consume(label_selector="app.kubernetes.io/managed-by=servefleet")
    )
    await writes()
    seen, selected = await watchers
    changes = [item for item in seen if item[0] != "BOOKMARK"]
    assert changes == [
        ("ADDED", "llm"),
        ("MODIFIED", "llm"),
        ("MODIFIED", "before"),
        ("DELETED", "llm"),
    ]
    assert ("BOOKMARK", "") in seen
    # "before" leaving the selection is a DELETED for the selecting watch
    assert [item for item in selected if item[0] != "BOOKMARK"] == [
        ("ADDED", "llm"),
        ("MODIFIED", "llm"),
        ("DELETED", "before"),
        ("DELETED", "llm"),
    ]

    kube.compact()
    old = watch.Watch().stream(
        apps.list_namespaced_deployment,
        NS,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=1,
    )
    with pytest.raises(ApiException) as error:
        await drain(old)
    assert error.value.status == 410


async def test_leases(api: ApiClient) -> None:
    """Verify Lease create / AlreadyExists / renew / stale takeover."""
    coordination = client.CoordinationV1Api(api)
    now = datetime.now(UTC)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="servefleet-r1"),
        spec=client.V1LeaseSpec(
            holder_identity="a",
            lease_duration_seconds=15,
            acquire_time=now,
            renew_time=now,
            lease_transitions=0,
        ),
    )
    created = await coordination.create_namespaced_lease(NS, lease)
    assert created.spec.holder_identity == "a"
    assert created.spec.renew_time == now
    with pytest.raises(ApiException) as error:
        await coordination.create_namespaced_lease(NS, lease)
    assert error.value.status == 409
    assert json.loads(error.value.body or "{}")["reason"] == "AlreadyExists"
    stale = copy.deepcopy(created)
    created.spec.renew_time = datetime.now(UTC)
    renewed = await coordination.replace_namespaced_lease("servefleet-r1", NS, created)
    assert renewed.metadata.resource_version != stale.metadata.resource_version
    stale.spec.holder_identity = "b"
    with pytest.raises(ApiException) as error:
        await coordination.replace_namespaced_lease("servefleet-r1", NS, stale)
    assert error.value.status == 409
    read = await coordination.read_namespaced_lease("servefleet-r1", NS)
    assert read.spec.holder_identity == "a"


async def test_services_ingresses_and_hpas(api: ApiClient) -> None:
    """Verify Service defaults/clusterIP, delete answers, Ingress and HPA apply."""
    core = client.CoreV1Api(api)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "llm"},
        "spec": {"selector": {"app": "llm"}, "ports": [{"port": 80, "targetPort": 8000}]},
    }
    applied = await core.patch_namespaced_service(
        "llm", NS, service, field_manager="servefleet", **AS_APPLY
    )
    assert applied.spec.cluster_ip.startswith("10.96.")
    assert applied.spec.type == "ClusterIP"
    again = await core.patch_namespaced_service(
        "llm", NS, service, field_manager="servefleet", **AS_APPLY
    )
    assert again.spec.cluster_ip == applied.spec.cluster_ip
    assert again.metadata.resource_version == applied.metadata.resource_version
    deleted = await core.delete_namespaced_service("llm", NS)
    assert deleted.metadata.name == "llm"
    with pytest.raises(ApiException) as error:
        await core.delete_namespaced_service("llm", NS)
    assert error.value.status == 404

    networking = client.NetworkingV1Api(api)
    ingress: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "inference-llm", "annotations": {"a": "1"}},
        "spec": {
            "ingressClassName": "alb",
            "rules": [
                {
                    "http": {
                        "paths": [
                            {
                                "path": "/inference/llm",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "llm", "port": {"number": 80}}},
                            }
                        ]
                    }
                }
            ],
        },
    }
    first = await networking.patch_namespaced_ingress(
        "inference-llm", NS, ingress, field_manager="servefleet", **AS_APPLY
    )
    ingress["metadata"]["annotations"] = {}
    second = await networking.patch_namespaced_ingress(
        "inference-llm", NS, ingress, field_manager="servefleet", **AS_APPLY
    )
    assert first.metadata.annotations == {"a": "1"}
    assert second.metadata.annotations is None
    status = await networking.delete_namespaced_ingress("inference-llm", NS)
    assert status.status == "Success"

    autoscaling = client.AutoscalingV2Api(api)
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "llm"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm"},
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }
    made = await autoscaling.patch_namespaced_horizontal_pod_autoscaler(
        "llm", NS, hpa, field_manager="servefleet", **AS_APPLY
    )
    assert made.spec.min_replicas == 1
    hpa["spec"]["minReplicas"] = 5
    with pytest.raises(ApiException) as error:
        await autoscaling.patch_namespaced_horizontal_pod_autoscaler(
            "llm", NS, hpa, field_manager="servefleet", **AS_APPLY
        )
    assert error.value.status == 422


async def test_request_counter_and_injected_failures(kube: KubeApiServer, api: ApiClient) -> None:
    """Verify counting by verb/resource, injected 500/429/hangs and latency."""
    apps = client.AppsV1Api(api)
    await apply_deployment(apps, deployment("llm"))
    await apps.read_namespaced_deployment("llm", NS)
    await apps.list_namespaced_deployment(NS)
    assert kube.count("patch", "deployments") == 1
    assert kube.count("get", "deployments") == 1
    assert kube.count("list") == 1
    assert kube.requests[("patch", "deployments")] == 1

    kube.fail(500, times=1, match=matching(verb="get", resource="deployments"))
    with pytest.raises(ApiException) as error:
        await apps.read_namespaced_deployment("llm", NS)
    assert error.value.status == 500
    await apps.read_namespaced_deployment("llm", NS)  # only the next one failed

    kube.fail(429, times=2, retry_after=3)
    for _ in range(2):
        with pytest.raises(ApiException) as error:
            await apps.list_namespaced_deployment(NS)
        assert error.value.status == 429
        assert error.value.headers is not None
        assert error.value.headers["Retry-After"] == "3"
    await apps.list_namespaced_deployment(NS)

    kube.hang(times=1, match=matching(verb="list"))
    with pytest.raises(asyncio.TimeoutError):
        await apps.list_namespaced_deployment(NS, _request_timeout=0.3)

    kube.add_latency(0.2, matching(verb="get"))
    started = asyncio.get_running_loop().time()
    await apps.read_namespaced_deployment("llm", NS)
    assert asyncio.get_running_loop().time() - started >= 0.2
    kube.clear_latency()
    assert kube.count("get", "deployments") == 4
    kube.reset_counts()
    assert kube.count() == 0


async def test_mark_ready_and_auto_ready(kube: KubeApiServer, api: ApiClient) -> None:
    """Verify readiness faked through the server: explicit and automatic."""
    apps = client.AppsV1Api(api)
    created, _ = await apply_deployment(apps, deployment("llm", replicas=3))
    assert created.status.ready_replicas is None
    listed = await apps.list_namespaced_deployment(NS)
    stream = watch.Watch().stream(
        apps.list_namespaced_deployment,
        NS,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=1,
    )
    kube.mark_ready(NS, "llm", ready=2)
    async with stream:
        events = [event async for event in stream]
    assert [e["type"] for e in events] == ["MODIFIED"]
    status = events[0]["object"].status
    assert (status.replicas, status.ready_replicas, status.observed_generation) == (3, 2, 1)
    assert events[0]["object"].metadata.managed_fields[-1].subresource == "status"

    kube.auto_ready = 0.05
    await apply_deployment(apps, deployment("llm", replicas=4, env="v2"))

    async def ready() -> bool:
        current = await apps.read_namespaced_deployment_status("llm", NS)
        return bool(
            current.status.observed_generation == current.metadata.generation
            and current.status.ready_replicas == 4
        )

    await eventually(ready, within=5)


async def test_dropped_watches_end_streams(kube: KubeApiServer, api: ApiClient) -> None:
    """Verify drop_watches() ends open watch streams."""
    apps = client.AppsV1Api(api)
    stream = watch.Watch().stream(apps.list_namespaced_deployment, NS, timeout_seconds=30)

    async def consume() -> list[str]:
        async with stream:
            return [event["type"] async for event in stream]

    async def opened() -> bool:
        return kube.open_watches > 0

    task = asyncio.create_task(consume())
    await eventually(opened, within=5)
    await apply_deployment(apps, deployment("llm"))
    assert kube.drop_watches() == 1
    assert await asyncio.wait_for(task, 5) == ["ADDED"]
    assert kube.count("watch", "deployments") == 1


async def test_discovery_namespaces_scale_and_pages(kube: KubeApiServer, api: ApiClient) -> None:
    """Verify discovery, implicit namespaces, the scale subresource (GET/PUT), paging
    and dry runs."""
    version = await client.VersionApi(api).get_code()
    assert (version.major, version.minor) == ("1", "36")
    groups = await client.ApisApi(api).get_api_versions()
    assert {"apps", "coordination.k8s.io", "autoscaling"} <= {g.name for g in groups.groups}
    resources = await client.AppsV1Api(api).get_api_resources()
    assert "deployments/scale" in {r.name for r in resources.resources}

    apps = client.AppsV1Api(api)
    for name in ("a", "b", "c"):
        await apps.create_namespaced_deployment(NS, deployment(name))
    core = client.CoreV1Api(api)
    namespace = await core.read_namespace(NS)
    assert namespace.status.phase == "Active"
    assert NS in {n.metadata.name for n in (await core.list_namespace()).items}

    scale = await apps.read_namespaced_deployment_scale("a", NS)
    assert (scale.spec.replicas, scale.status.selector) == (2, "app.kubernetes.io/name=a")
    scale.spec.replicas = 6
    await apps.replace_namespaced_deployment_scale("a", NS, scale)
    scaled = await apps.read_namespaced_deployment("a", NS)
    assert scaled.spec.replicas == 6
    assert scaled.metadata.generation == 2
    with pytest.raises(ApiException) as error:  # the same (now stale) resourceVersion
        await apps.replace_namespaced_deployment_scale("a", NS, scale)
    assert error.value.status == 409

    first = await apps.list_namespaced_deployment(NS, limit=2)
    assert [d.metadata.name for d in first.items] == ["a", "b"]
    rest = await apps.list_namespaced_deployment(NS, limit=2, _continue=first.metadata._continue)
    assert [d.metadata.name for d in rest.items] == ["c"]
    assert rest.metadata._continue is None

    dry = await apps.create_namespaced_deployment(NS, deployment("d"), dry_run="All")
    assert dry.metadata.name == "d"
    assert kube.get_object("deployments", NS, "d") is None
