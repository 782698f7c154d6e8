"""A change sends only the objects it touches, and the region still says which
workload is in place: after the change, after a restart, after a failed apply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from servefleet.plan import workload_hash
from servefleet.runtime.base import RuntimeUnavailable
from servefleet.runtime.kubernetes.cluster import KubernetesRuntime
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from tests.kubeapi import KubeApiServer, matching
from tests.kubernetes.conftest import FAST, ApiTarget, api_target
from tests.kubernetes.test_cluster import planned

WRITES = ("create", "update", "patch", "delete")


@asynccontextmanager
async def runtime_of(target: ApiTarget) -> AsyncIterator[KubernetesRuntime]:
    runtime = await KubernetesRuntime.from_kubeconfig(
        "r1", RegionSettings(namespace=target.namespace), target.kubeconfig, cluster=FAST
    )
    async with runtime:
        yield runtime


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[ApiTarget]:
    async with api_target(tmp_path, bookmark_interval=0.5) as found:
        yield found


def writes(server: KubeApiServer) -> dict[tuple[str, str], int]:
    return {key: n for key, n in server.requests.items() if key[0] in WRITES}


async def in_place(runtime: KubernetesRuntime, name: str = "llm") -> str | None:
    observed = await runtime.observe(name)
    return observed.workload_hash if observed else None


async def test_a_change_sends_only_the_objects_it_touches(target: ApiTarget) -> None:
    server = target.need_server()
    async with runtime_of(target) as runtime:
        await runtime.apply(planned(replicas=2, canary={"weight": 10}))

        server.reset_counts()
        scaled = planned(replicas=3, canary={"weight": 10})
        await runtime.apply(scaled)
        assert writes(server) == {("patch", "deployments"): 1}
        assert await in_place(runtime) == workload_hash(scaled)

        server.reset_counts()
        shifted = planned(replicas=3, canary={"weight": 30})
        await runtime.apply(shifted)
        assert writes(server) == {("patch", "ingresses"): 1}
        assert await in_place(runtime) == workload_hash(shifted)

        server.reset_counts()
        await runtime.apply(shifted)  # already in place: nothing to send
        assert writes(server) == {}


async def test_a_new_leader_knows_a_partly_applied_workload_without_sending_it(
    target: ApiTarget,
) -> None:
    server = target.need_server()
    scaled = planned(replicas=3)
    async with runtime_of(target) as runtime:
        await runtime.apply(planned(replicas=2))
        await runtime.apply(scaled)
    async with runtime_of(target) as runtime:
        # The objects' own hashes disagree (the Service was left as it was), so a
        # process that did not apply them cannot tell: the reconciler applies again…
        assert await in_place(runtime) == ""
        server.reset_counts()
        await runtime.apply(scaled)
        # …which sends nothing, and from then on the workload is known to be in place.
        assert writes(server) == {}
        assert await in_place(runtime) == workload_hash(scaled)


async def test_an_apply_that_failed_halfway_is_not_taken_for_in_place(
    target: ApiTarget,
) -> None:
    server = target.need_server()
    async with runtime_of(target) as runtime:
        await runtime.apply(planned(replicas=2))
        # A new port changes the Service and then the Deployment; the Deployment fails.
        server.fail(500, times=None, match=matching(verb="patch", resource="deployments"))
        with pytest.raises(RuntimeUnavailable):
            await runtime.apply(planned(replicas=2, port=9000))
        assert await in_place(runtime) == ""

        server.clear_faults()
        moved = planned(replicas=2, port=9000)
        server.reset_counts()
        await runtime.apply(moved)
        assert writes(server) == {("patch", "deployments"): 1}
        assert await in_place(runtime) == workload_hash(moved)
