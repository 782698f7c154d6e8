from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.kubeapi import KubeApiServer

#: Real kube-apiserver request/response pairs, shared by the project's sessions.
FIXTURES = (Path(__file__).resolve().parents[2] / "../shared/kubernetes-fixtures").resolve()


@pytest.fixture
async def kube() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer() as server:
        yield server
