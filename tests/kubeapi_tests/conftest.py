from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient

from tests.kubeapi import KubeApiServer

#: Real kube-apiserver request/response pairs, shared by the project's sessions.
FIXTURES = (Path(__file__).resolve().parents[2] / "../shared/kubernetes-fixtures").resolve()


@pytest.fixture
async def kube() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer() as server:
        yield server


@asynccontextmanager
async def client_of(kube: KubeApiServer, tmp_path: Path) -> AsyncIterator[ApiClient]:
    """A kubernetes-asyncio client of `kube`, through a kubeconfig in `tmp_path`."""
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        client_configuration=configuration,
    )
    async with ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
async def api(kube: KubeApiServer, tmp_path: Path) -> AsyncIterator[ApiClient]:
    """A client of `kube` (a module may override `kube`)."""
    async with client_of(kube, tmp_path) as api_client:
        yield api_client
