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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient

from servefleet.runtime.kubernetes.cluster import ClusterSettings, KubernetesRuntime
from servefleet.runtime.kubernetes.render import RegionSettings
from tests.kubeapi import KubeApiServer

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
}


@dataclass
class Cluster:
    """The runtime under test, plus a client of its own to check the API."""

    runtime: KubernetesRuntime
    api: ApiClient
    namespace: str
    server: KubeApiServer | None
    """The test API server; None on a real cluster."""

    def need_server(self) -> KubeApiServer:
        if self.server is None:
            pytest.skip("needs the test API server's controls")
        return self.server

    def mark_ready(self, name: str) -> None:
        """Fake a finished rollout (test server only; a no-op on a real cluster)."""
        if self.server is not None:
            self.server.mark_ready(self.namespace, name)

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object as the API serves it (a GET), or None."""
        api_type, suffix = _PLURAL_API[kind]
        read = getattr(api_type(self.api), f"read_namespaced_{suffix}")
        response = await read(name, self.namespace, _preload_content=False)
        try:
            if response.status == 404:
                return None
            assert response.status == 200, await response.text()
            body: dict[str, Any] = json.loads(await response.read())
            return body
        finally:
            response.release()

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


async def _client(kubeconfig: Path) -> ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return ApiClient(configuration)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    if REAL_KUBECONFIG:
        namespace = f"servefleet-test-{uuid.uuid4().hex[:10]}"
        api = await _client(Path(REAL_KUBECONFIG))
        await client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        runtime = await KubernetesRuntime.from_kubeconfig(
            "r1", RegionSettings(namespace=namespace), REAL_KUBECONFIG, cluster=FAST
        )
        try:
            async with runtime:
                yield Cluster(runtime, api, namespace, None)
        finally:
            await client.CoreV1Api(api).delete_namespace(namespace)
            await api.close()
        return
    async with KubeApiServer(bookmark_interval=0.5) as server:
        path = server.write_kubeconfig(tmp_path / "kubeconfig")
        api = await _client(path)
        runtime = await KubernetesRuntime.from_kubeconfig(
            "r1", RegionSettings(namespace="llm"), path, cluster=FAST
        )
        try:
            async with runtime:
                yield Cluster(runtime, api, "llm", server)
        finally:
            await api.close()
