"""A `KubernetesRuntime` on the test API server over real HTTP, or on a real cluster.

With `SERVEFLEET_TEST_KUBECONFIG` set, the same tests run against the cluster of
that kubeconfig (its current context), each in a namespace of its own that is
deleted afterwards; the test server's controls (readiness, faults, request
counts) are then unavailable and the tests that need them are skipped.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient

from servefleet.runtime.kubernetes.cluster import ClusterSettings, KubernetesRuntime
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from tests.kubeapi import KubeApiServer
from tests.models.conftest import aws, slow_s3  # noqa: F401 - fixtures of the staging tests

REAL_KUBECONFIG = os.environ.get("SERVEFLEET_TEST_KUBECONFIG")
#: kubernetes-asyncio's stubs do not declare `_content_type` (the methods accept it).
AS_MERGE: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
FAST = ClusterSettings(
    request_timeout=1.0, backoff_initial=0.01, backoff_max=0.05, retries=3, sync_timeout=5
)

_PLURAL_API: dict[str, tuple[type[Any], str]] = {
    "Service": (client.CoreV1Api, "service"),
    "Deployment": (client.AppsV1Api, "deployment"),
    "HorizontalPodAutoscaler": (client.AutoscalingV2Api, "horizontal_pod_autoscaler"),
    "Ingress": (client.NetworkingV1Api, "ingress"),
    "Lease": (client.CoordinationV1Api, "lease"),
}


async def read_object(
    api: ApiClient, kind: str, namespace: str, name: str
) -> dict[str, Any] | None:
    """The object as the API serves it (a GET), or None; KEDA's ScaledObject too."""
    if kind == "ScaledObject":
        response = await client.CustomObjectsApi(api).get_namespaced_custom_object(
            "keda.sh", "v1alpha1", namespace, "scaledobjects", name, _preload_content=False
        )
    else:
        api_type, suffix = _PLURAL_API[kind]
        read = getattr(api_type(api), f"read_namespaced_{suffix}")
        response = await read(name, namespace, _preload_content=False)
    try:
        if response.status == 404:
            return None
        assert response.status == 200, await response.text()
        body: dict[str, Any] = json.loads(await response.read())
        return body
    finally:
        response.release()


def _needed(server: KubeApiServer | None) -> KubeApiServer:
    """The test API server, or skip: a real cluster has none of its controls."""
    if server is None:
        pytest.skip("needs the test API server's controls")
    return server


@dataclass
class Cluster:
    """The runtime under test, plus a client of its own to check the API."""

    runtime: KubernetesRuntime
    api: ApiClient
    namespace: str
    server: KubeApiServer | None
    """The test API server; None on a real cluster."""

    def need_server(self) -> KubeApiServer:
        return _needed(self.server)

    def mark_ready(self, name: str) -> None:
        """Fake a finished rollout (test server only; a no-op on a real cluster)."""
        if self.server is not None:
            self.server.mark_ready(self.namespace, name)

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object as the API serves it (a GET), or None."""
        return await read_object(self.api, kind, self.namespace, name)

    async def delete(self, kind: str, name: str) -> None:
        api_type, suffix = _PLURAL_API[kind]
        delete = getattr(api_type(self.api), f"delete_namespaced_{suffix}")
        await delete(name, self.namespace)

    async def scale(self, name: str, replicas: int, manager: str) -> None:
        """Change a Deployment's replicas through `/scale`, as an HPA does."""
        await client.AppsV1Api(self.api).patch_namespaced_deployment_scale(
            name,
            self.namespace,
            {"spec": {"replicas": replicas}},
            field_manager=manager,
            **AS_MERGE,
        )


async def api_client(kubeconfig: Path, user_agent: str | None = None) -> ApiClient:
    """A client of the API in `kubeconfig`; `user_agent` tells its requests apart
    in the test server's request log."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    api = ApiClient(configuration)
    if user_agent is not None:
        api.user_agent = user_agent
    return api


@dataclass
class ApiTarget:
    """An API server to test against: the test server, or the real cluster of
    `SERVEFLEET_TEST_KUBECONFIG` with a namespace of the test's own."""

    kubeconfig: Path
    namespace: str
    server: KubeApiServer | None
    """The test API server; None on a real cluster."""

    def need_server(self) -> KubeApiServer:
        return _needed(self.server)


@asynccontextmanager
async def api_target(tmp_path: Path, **server_options: Any) -> AsyncIterator[ApiTarget]:
    """The test server (started with `server_options`) or the real cluster, for
    the duration of the block; the real cluster's namespace is deleted afterwards."""
    if REAL_KUBECONFIG:
        namespace = f"servefleet-test-{uuid.uuid4().hex[:10]}"
        api = await api_client(Path(REAL_KUBECONFIG))
        await client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        try:
            yield ApiTarget(Path(REAL_KUBECONFIG), namespace, None)
        finally:
            await client.CoreV1Api(api).delete_namespace(namespace)
            await api.close()
        return
    async with KubeApiServer(**server_options) as server:
        yield ApiTarget(server.write_kubeconfig(tmp_path / "kubeconfig"), "llm", server)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with api_target(tmp_path, bookmark_interval=0.5) as target:
        api = await api_client(target.kubeconfig)
        runtime = await KubernetesRuntime.from_kubeconfig(
            "r1", RegionSettings(namespace=target.namespace), target.kubeconfig, cluster=FAST
        )
        try:
            async with runtime:
                yield Cluster(runtime, api, target.namespace, target.server)
        finally:
            await api.close()
