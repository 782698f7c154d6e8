"""`servefleet up --regions a,b` driving two Kubernetes regions from one store:
an endpoint's whole life, checked object by object in both regions, and the
in-cluster Role (`servefleet install-manifests`) checked against every request
the runtime sent on the way.

The regions are two test API servers, or, with `SERVEFLEET_TEST_KUBECONFIG`,
two namespaces of that cluster (created and deleted here). The test looks at
the clusters only through the API; on the test servers a simulated kubelet
keeps the Deployments' pods (running their init containers for real, which is
how a model is staged) and the requests are counted, and on a real cluster the
pods of the made-up images never get ready, so it waits for each change to be
in place rather than ready, and skips the model and the Role check.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient

from servefleet.runtime.kubernetes.drift import ANNOTATION_FIELDS
from servefleet.runtime.kubernetes.install import role_rules
from servefleet.runtime.kubernetes.render_names import MANAGED_SELECTOR
from servefleet.spec import (
    DesiredState,
    EndpointSpec,
    ModelStaging,
    Region,
    RegionKind,
    RegionState,
)
from servefleet.store import open_store
from tests.kubeapi import KubeApiServer
from tests.kubeapi.kubelet import Kubelet
from tests.kubeapi.resources import ALL
from tests.kubernetes.conftest import AS_MERGE, REAL_KUBECONFIG
from tests.models.conftest import AWS_ENV, serving_slow_s3, slow_model
from tests.scenarios.harness import SETTLE, Fleet, local_fleet, manifest
from tests.waiting import eventually

REGIONS = ["a", "b"]
IMAGE = "ghcr.io/example/server:1.0"
EU_IMAGE = "registry.eu.example/server:1.0"
CANARY_IMAGE = "ghcr.io/example/server:2.0"
TEST_AGENT = "servefleet-scenario-test"
"""The User-Agent of this test's own requests, so the Role check leaves them out."""
WEIGHTED = "alb.ingress.kubernetes.io/actions.llm-weighted"
_GROUP = {resource.plural: resource.group for resource in ALL}
_APPLY = "application/apply-patch+yaml"
_API: dict[str, tuple[type[Any], str, str]] = {
    "services": (client.CoreV1Api, "service", "Service"),
    "deployments": (client.AppsV1Api, "deployment", "Deployment"),
    "horizontalpodautoscalers": (
        client.AutoscalingV2Api,
        "horizontal_pod_autoscaler",
        "HorizontalPodAutoscaler",
    ),
    "ingresses": (client.NetworkingV1Api, "ingress", "Ingress"),
}

Request = tuple[str, str, str, str | None]
"""(apiGroup, resource, verb, name), as RBAC sees a request."""


@dataclass
class Cluster:
    """One region: where it is, a client of the test's own, and the test server."""

    namespace: str
    api: ApiClient
    server: KubeApiServer | None


class World:
    """The two clusters as the test sees them, through the API (with `TEST_AGENT`)."""

    def __init__(self, clusters: dict[str, Cluster]) -> None:
        self.clusters = clusters

    @property
    def real(self) -> bool:
        return any(cluster.server is None for cluster in self.clusters.values())

    async def get(self, region: str, plural: str, name: str = "llm") -> dict[str, Any] | None:
        cluster = self.clusters[region]
        api_type, suffix, _kind = _API[plural]
        read = getattr(api_type(cluster.api), f"read_namespaced_{suffix}")
        response = await read(name, cluster.namespace, _preload_content=False)
        try:
            if response.status == 404:
                return None
            assert response.status == 200, await response.text()
            found: dict[str, Any] = json.loads(await response.read())
            return found
        finally:
            response.release()

    async def need(self, region: str, plural: str, name: str = "llm") -> dict[str, Any]:
        found = await self.get(region, plural, name)
        assert found is not None, (region, plural, name)
        return found

    async def present(self, region: str) -> set[tuple[str, str]]:
        held = set()
        cluster = self.clusters[region]
        for api_type, suffix, kind in _API.values():
            listing = getattr(api_type(cluster.api), f"list_namespaced_{suffix}")
            response = await listing(
                cluster.namespace, label_selector=MANAGED_SELECTOR, _preload_content=False
            )
            try:
                items = json.loads(await response.read())["items"]
            finally:
                response.release()
            held |= {(kind, item["metadata"]["name"]) for item in items}
        return held

    async def container(self, region: str) -> dict[str, Any]:
        deployment = await self.need(region, "deployments")
        (main,) = deployment["spec"]["template"]["spec"]["containers"]
        return dict(main)

    async def env(self, region: str) -> dict[str, str]:
        main = await self.container(region)
        return {var["name"]: var.get("value", "") for var in main["env"]}

    async def scale_as_autoscaler(self, region: str, replicas: int) -> None:
        cluster = self.clusters[region]
        await client.AppsV1Api(cluster.api).patch_namespaced_deployment_scale(
            "llm",
            cluster.namespace,
            {"spec": {"replicas": replicas}},
            field_manager="horizontal-pod-autoscaler",
            **AS_MERGE,
        )

    async def delete_service(self, region: str) -> None:
        cluster = self.clusters[region]
        await client.CoreV1Api(cluster.api).delete_namespaced_service("llm", cluster.namespace)

    def runtime_requests(self, region: str) -> set[Request]:
        """Every request to `region`'s test server but this test's, in RBAC terms: an
        apply may create its object, which the API authorizes as `create`."""
        cluster = self.clusters[region]
        assert cluster.server is not None
        needed: set[Request] = set()
        for info in cluster.server.request_log:
            if info.user_agent == TEST_AGENT or info.verb == "discovery":
                continue  # discovery is every authenticated user's (system:discovery)
            assert info.namespace == cluster.namespace, info
            group = _GROUP[info.resource]
            needed.add((group, info.resource_key, info.verb, info.name))
            if info.verb == "patch" and info.content_type.startswith(_APPLY):
                needed.add((group, info.resource_key, "create", info.name))
        return needed


def check_role(rules: list[dict[str, Any]], used: set[Request]) -> None:
    """Every request is allowed by a rule, and every (rule, verb) allows one of them."""

    def allows(rule: dict[str, Any], verb: str, request: Request) -> bool:
        group, resource, requested, name = request
        names = rule.get("resourceNames")
        return (
            group in rule["apiGroups"]
            and resource in rule["resources"]
            and requested == verb
            and (names is None or name in names)
        )

    for request in used:
        assert any(allows(r, v, request) for r in rules for v in r["verbs"]), request
    for rule in rules:
        for verb in rule["verbs"]:
            assert any(allows(rule, verb, request) for request in used), (rule, verb)


async def _client(kubeconfig: Path | str) -> ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    api = ApiClient(configuration)
    api.user_agent = TEST_AGENT
    return api


@asynccontextmanager
async def two_clusters(tmp_path: Path, store_url: str) -> AsyncIterator[World]:
    """Regions a and b, registered as kubernetes regions in the store."""
    async with AsyncExitStack() as stack:
        clusters: dict[str, Cluster] = {}
        store = await open_store(store_url)
        stack.push_async_callback(store.close)
        for region in REGIONS:
            server: KubeApiServer | None = None
            if REAL_KUBECONFIG:
                kubeconfig: Path | str = REAL_KUBECONFIG
                namespace = f"servefleet-test-{uuid.uuid4().hex[:10]}-{region}"
                api = await _client(kubeconfig)
                stack.push_async_callback(api.close)
                core = client.CoreV1Api(api)
                await core.create_namespace(
                    client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
                )
                stack.push_async_callback(core.delete_namespace, namespace)
            else:
                namespace = {"a": "llm", "b": "serving"}[region]
                server = await stack.enter_async_context(
                    KubeApiServer(kubelet=Kubelet(), bookmark_interval=0.5)
                )
                kubeconfig = server.write_kubeconfig(tmp_path / f"kubeconfig-{region}")
                api = await _client(kubeconfig)
                stack.push_async_callback(api.close)
            await store.put_region(
                Region(
                    name=region,
                    kind=RegionKind.KUBERNETES,
                    kubeconfig=str(kubeconfig),
                    namespace=namespace,
                )
            )
            clusters[region] = Cluster(namespace, api, server)
        yield World(clusters)


async def converged(world: World, fleet: Fleet, state: RegionState = RegionState.READY) -> None:
    """Every region has the endpoint's current generation in place, and (on the test
    servers, where readiness is faked) reports it in `state`."""

    async def check() -> bool:
        record = await fleet.store.get_endpoint("llm")
        statuses = {s.region: s for s in await fleet.store.list_region_status(endpoint="llm")}
        return all(
            region in statuses
            and statuses[region].observed_generation == record.generation
            and (world.real or statuses[region].state is state)
            for region in REGIONS
        )

    await eventually(check, within=SETTLE)


def spec(**changes: Any) -> EndpointSpec:
    fields: dict[str, Any] = {
        "image": IMAGE,
        "command": ["serve", "--port", "{port}"],
        "replicas": 2,
        "port": 8000,
        "health_path": "/health",
        "env": {"MODE": "a"},
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
    }
    return EndpointSpec.model_validate(fields | changes)


def revised(base: EndpointSpec, **changes: Any) -> EndpointSpec:
    return EndpointSpec.model_validate(base.model_dump() | changes)


@pytest.mark.slow(seconds=11)
async def test_an_endpoint_s_whole_life_in_two_kubernetes_regions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in AWS_ENV.items():  # the S3 look-alike's credentials, for the kubelet
        monkeypatch.setenv(name, value)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with (
        two_clusters(tmp_path, store_url) as world,
        local_fleet(store_url, tmp_path, tuple(REGIONS)) as fleet,
    ):
        service = fleet.service
        assert fleet.gateway_url == ""  # no local region, no gateway

        # Deploy: every object, with the spec's fields, in both regions.
        await service.deploy("llm", spec(), REGIONS)
        await converged(world, fleet)
        for region in REGIONS:
            assert await world.present(region) == {
                ("Service", "llm"),
                ("Deployment", "llm"),
                ("Ingress", "llm"),
            }
            deployment = await world.need(region, "deployments")
            assert deployment["spec"]["replicas"] == 2
            main = await world.container(region)
            assert main["image"] == IMAGE
            assert main["command"] == ["serve", "--port", "8000"]
            assert main["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
            assert main["startupProbe"]["httpGet"]["path"] == "/health"
            assert (await world.env(region))["MODE"] == "a"
            ports = (await world.need(region, "services"))["spec"]["ports"]
            assert [(port["port"], port["targetPort"]) for port in ports] == [(80, 8000)]
            ingress = await world.need(region, "ingresses")
            path = ingress["spec"]["rules"][0]["http"]["paths"][0]
            assert path["path"] == "/inference/llm"
            assert path["backend"]["service"]["name"] == "llm"
            assert ingress["spec"]["ingressClassName"] == "alb"

        # Env, resources, probe path, command and region image: rolled out in each.
        changed = spec(
            env={"MODE": "b"},
            resources={"requests": {"cpu": "2", "memory": "4Gi"}},
            health_path="/ready",
            command=["serve2", "--listen", "{port}"],
            region_images={"b": EU_IMAGE},
        )
        await service.apply(manifest("llm", changed, REGIONS))
        await converged(world, fleet)
        for region, image in (("a", IMAGE), ("b", EU_IMAGE)):
            main = await world.container(region)
            assert main["image"] == image
            assert main["command"] == ["serve2", "--listen", "8000"]
            assert main["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert main[probe]["httpGet"]["path"] == "/ready"
            assert (await world.env(region))["MODE"] == "b"

        # Scale.
        await service.scale("llm", 4)
        await converged(world, fleet)
        for region in REGIONS:
            assert (await world.need(region, "deployments"))["spec"]["replicas"] == 4

        # Autoscaling on: an HPA, no replicas of ours, and the HPA's count stands.
        autoscaled = revised(
            changed,
            autoscaling={
                "enabled": True,
                "min_replicas": 2,
                "max_replicas": 8,
                "metrics": [{"type": "cpu", "target": 70}],
            },
        )
        await service.apply(manifest("llm", autoscaled, REGIONS))
        await converged(world, fleet)
        for region in REGIONS:
            hpa = await world.need(region, "horizontalpodautoscalers")
            assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
            deployment = await world.need(region, "deployments")
            assert deployment["spec"]["replicas"] == 4  # kept over the hand-off, no drop to 1
            owners = {
                entry["manager"]
                for entry in deployment["metadata"]["managedFields"]
                if "f:replicas" in entry.get("fieldsV1", {}).get("f:spec", {})
            }
            assert "servefleet" not in owners
        await world.scale_as_autoscaler("a", 6)
        await service.apply(manifest("llm", revised(autoscaled, env={"MODE": "c"}), REGIONS))
        await converged(world, fleet)
        assert (await world.need("a", "deployments"))["spec"]["replicas"] == 6
        assert (await world.need("b", "deployments"))["spec"]["replicas"] == 4
        for region in REGIONS:
            assert (await world.env(region))["MODE"] == "c"

        # Canary: its Deployment and Service, and the weighted Ingress.
        await service.canary("llm", image=CANARY_IMAGE, weight=20)
        await converged(world, fleet)
        for region in REGIONS:
            canary = {("Deployment", "llm-canary"), ("Service", "llm-canary")}
            assert canary <= await world.present(region)
            ingress = await world.need(region, "ingresses")
            action = json.loads(ingress["metadata"]["annotations"][WEIGHTED])
            groups = action["forwardConfig"]["targetGroups"]
            weights = {group["serviceName"]: group["weight"] for group in groups}
            assert weights == {"llm": 80, "llm-canary": 20}
            backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
            assert backend["name"] == "llm-weighted"

        # Canary removed: its objects gone and the Ingress plain again.
        await service.rollback("llm")
        await converged(world, fleet)
        for region in REGIONS:
            assert await world.present(region) == {
                ("Service", "llm"),
                ("Deployment", "llm"),
                ("HorizontalPodAutoscaler", "llm"),
                ("Ingress", "llm"),
            }
            ingress = await world.need(region, "ingresses")
            assert WEIGHTED not in ingress["metadata"]["annotations"]
            backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
            assert backend == {"name": "llm", "port": {"number": 80}}

        # A model, staged in each region by the init container (the test servers'
        # kubelet runs it): progress in the region status while the download
        # stalls halfway, the old pods serving; ready once staged; a source that is
        # not there fails each region with the reason. (Test servers only: the
        # sources are on this machine, out of a real cluster's reach.)
        current = revised(autoscaled, env={"MODE": "c"})
        if not world.real:
            async with serving_slow_s3() as s3:
                data, _manifest = slow_model(s3, "llama/1")
                source = "s3://models/llama/1"
                staged = revised(
                    current, model_source=source, env={"MODE": "c", "AWS_ENDPOINT_URL": s3.url}
                )
                await service.apply(manifest("llm", staged, REGIONS))
                halfway = ModelStaging(bytes_done=len(data) // 2, bytes_total=len(data))

                async def stalled_halfway() -> bool:
                    statuses = await fleet.store.list_region_status(endpoint="llm")
                    return len(statuses) == 2 and all(
                        status.staging == halfway
                        and status.message == f"staging the model from {source}: 0.2 MB of 0.4 MB"
                        for status in statuses
                    )

                await eventually(stalled_halfway, within=SETTLE)
                for status in await fleet.store.list_region_status(endpoint="llm"):
                    # No new replica yet; the old ones serve on, routed.
                    assert (status.state, status.replicas_ready) == (RegionState.DEGRADED, 0)
                    assert status.routed
                s3.release.set()
                await converged(world, fleet)
            staged_in_full = ModelStaging(
                bytes_done=len(data), bytes_total=len(data), complete=True
            )

            async def reported_staged() -> bool:
                # The pod's last status may reach the report a pass after readiness.
                statuses = await fleet.store.list_region_status(endpoint="llm")
                return all(status.staging == staged_in_full for status in statuses)

            await eventually(reported_staged, within=SETTLE)

            await service.apply(
                manifest("llm", revised(current, model_source="file:///no/such/model"), REGIONS)
            )
            await converged(world, fleet, RegionState.FAILED)
            for status in await fleet.store.list_region_status(endpoint="llm"):
                assert status.message.startswith("model staging failed: file:///no/such/model")
                assert "init container stage-model exited with code 1" in status.message
            await service.apply(manifest("llm", current, REGIONS))
            await converged(world, fleet)

        # A Service deleted by hand is restored by the watch.
        deleted = await world.need("b", "services")
        await world.delete_service("b")

        async def restored() -> bool:
            found = await world.get("b", "services")
            return (
                found is not None
                and found["metadata"]["uid"] != deleted["metadata"]["uid"]
                and found["metadata"]["annotations"][ANNOTATION_FIELDS]
                == deleted["metadata"]["annotations"][ANNOTATION_FIELDS]
            )

        await eventually(restored, within=SETTLE)

        # Stop: no replica, no route, no autoscaler.
        await service.stop("llm")
        await converged(world, fleet, RegionState.STOPPED)
        for region in REGIONS:
            assert await world.present(region) == {("Service", "llm"), ("Deployment", "llm")}
            assert (await world.need(region, "deployments"))["spec"]["replicas"] == 0

        # Delete: everything gone in both, and the record purged.
        await service.delete("llm")
        await eventually(lambda: fleet.purged("llm"), within=SETTLE)
        for region in REGIONS:
            assert await world.present(region) == set()
        assert await fleet.store.list_endpoints(desired_state=DesiredState.DELETED) == []
        assert await fleet.store.list_region_status(endpoint="llm") == []

    # The in-cluster Role grants exactly what each region's reconciler used.
    if not world.real:
        for region in REGIONS:
            registered = Region(name=region, kind=RegionKind.KUBERNETES)  # as put above
            check_role(role_rules(registered), world.runtime_requests(region))
