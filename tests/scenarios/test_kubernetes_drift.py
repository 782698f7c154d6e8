"""Hand edits of a Kubernetes region, through `servefleet up`: a field servefleet
applied and someone else changed is put back within seconds, and the region's
status says which field and which manager; what servefleet does not set (an HPA's
count, another tool's annotation) is left alone; another controller setting a
field back again and again is answered at a growing interval, not in a loop.

The edits are sent as the tools send them (`kubectl set image`: a strategic merge
patch; `kubectl patch --type merge|json`; `kubectl annotate`), each under its own
field manager. The region is a test API server (with a simulated kubelet and the
HPA stand-in), or with `SERVEFLEET_TEST_KUBECONFIG` a namespace of that cluster;
what is asserted holds on both, apart from counting requests (test server only).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from servefleet.runtime.kubernetes.drift import DriftSettings
from servefleet.runtime.kubernetes.render import FIELD_MANAGER, HANDOFF_MANAGER
from tests.scenarios.harness import SETTLE, Fleet, local_fleet, manifest
from tests.scenarios.test_kubernetes_autoscaling import (
    REGION,
    converged,
    one_cluster,
    replicas,
    spec,
)
from tests.scenarios.test_kubernetes_two_regions import TEST_AGENT, WEIGHTED, World
from tests.waiting import eventually

IMAGE = "ghcr.io/example/server:1.0"
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
FIGHT_REPAIRS = DriftSettings().fight_repairs
_PATCH: dict[str, tuple[type[Any], str]] = {
    "services": (client.CoreV1Api, "service"),
    "deployments": (client.AppsV1Api, "deployment"),
    "ingresses": (client.NetworkingV1Api, "ingress"),
}


async def edit(world: World, plural: str, body: Any, manager: str, content_type: str) -> None:
    """Patch the endpoint's object of `plural` as another tool (field manager `manager`)."""
    cluster = world.clusters[REGION]
    api_type, suffix = _PATCH[plural]
    patch = getattr(api_type(cluster.api), f"patch_namespaced_{suffix}")
    await patch("llm", cluster.namespace, body, field_manager=manager, _content_type=content_type)


async def set_image(world: World, image: str, manager: str = "kubectl-set") -> None:
    """What `kubectl set image deployment/llm '*=<image>'` sends."""
    (container,) = (await world.need(REGION, "deployments"))["spec"]["template"]["spec"][
        "containers"
    ]
    body = {
        "spec": {
            "template": {"spec": {"containers": [{"name": container["name"], "image": image}]}}
        }
    }
    await edit(world, "deployments", body, manager, SMP)


async def repaired(fleet: Fleet, world: World, check: Any, *, field: str, manager: str) -> float:
    """Wait until `check()` holds again and the region's status names `field` and
    `manager`; the seconds it took."""
    started = time.monotonic()

    async def done() -> bool:
        status = await fleet.status("llm", REGION)
        return (
            bool(await check())
            and status is not None
            and field in status.message
            and f"manager {manager}" in status.message
        )

    await eventually(done, within=SETTLE)
    return time.monotonic() - started


def runtime_writes(world: World, since: int) -> list[tuple[str, str | None]]:
    """(resource, name) of every write servefleet sent to the endpoint's objects on
    the test server after request number `since` (the Lease's renewals aside)."""
    server = world.clusters[REGION].server
    assert server is not None
    return [
        (info.resource, info.name)
        for info in server.request_log[since:]
        if info.user_agent != TEST_AGENT
        and info.resource != "leases"
        and info.verb in ("patch", "update", "create", "delete")
    ]


async def test_fields_servefleet_applied_are_restored_and_reported(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with (
        one_cluster(tmp_path, store_url) as world,
        local_fleet(store_url, tmp_path, (REGION,)) as fleet,
    ):
        await fleet.service.deploy("llm", spec(None, replicas=2), [REGION])
        await converged(world, fleet, ready=2)

        # kubectl set image: a strategic merge patch naming the container.
        await set_image(world, "registry.local/other:1")

        async def image_back() -> bool:
            return bool((await world.container(REGION))["image"] == IMAGE)

        took = await repaired(
            fleet,
            world,
            image_back,
            field="spec.template.spec.containers[0].image",
            manager="kubectl-set",
        )
        print(f"image repaired {took:.2f}s after the edit")

        # An env value edited by a merge patch (which replaces the whole list).
        container = await world.container(REGION)
        container["env"] = [
            {**var, "value": "hacked"} if var["name"] == "MODE" else var for var in container["env"]
        ]
        body: Any = {"spec": {"template": {"spec": {"containers": [container]}}}}
        await edit(world, "deployments", body, "kubectl-patch", MERGE)

        async def env_back() -> bool:
            return (await world.env(REGION))["MODE"] == "a"

        await repaired(fleet, world, env_back, field=".env[", manager="kubectl-patch")

        # The Service's port sent elsewhere.
        body = {"spec": {"ports": [{"port": 80, "targetPort": 9999}]}}
        await edit(world, "services", body, "kubectl-edit", SMP)

        async def port_back() -> bool:
            service = await world.need(REGION, "services")
            return [port["targetPort"] for port in service["spec"]["ports"]] == [8000]

        await repaired(
            fleet, world, port_back, field="spec.ports[0].targetPort", manager="kubectl-edit"
        )

        # The Ingress's backend pointed at another Service.
        body = [
            {
                "op": "replace",
                "path": "/spec/rules/0/http/paths/0/backend/service/name",
                "value": "elsewhere",
            }
        ]
        await edit(world, "ingresses", body, "kubectl-patch", JSON_PATCH)

        async def backend_back() -> bool:
            ingress = await world.need(REGION, "ingresses")
            path = ingress["spec"]["rules"][0]["http"]["paths"][0]
            return bool(path["backend"]["service"]["name"] == "llm")

        await repaired(fleet, world, backend_back, field="spec.rules", manager="kubectl-patch")

        # A canary's weight, in the weighted-routing annotation.
        await fleet.service.apply(
            manifest("llm", spec(None, replicas=2, canary={"weight": 10}), [REGION])
        )
        await converged(world, fleet)
        ingress = await world.need(REGION, "ingresses")
        weighted = ingress["metadata"]["annotations"][WEIGHTED]
        body = {
            "metadata": {"annotations": {WEIGHTED: weighted.replace('"weight":10', '"weight":90')}}
        }
        await edit(world, "ingresses", body, "kubectl-annotate", MERGE)

        async def weight_back() -> bool:
            ingress = await world.need(REGION, "ingresses")
            return bool(ingress["metadata"]["annotations"][WEIGHTED] == weighted)

        await repaired(
            fleet, world, weight_back, field=f"annotations[{WEIGHTED}]", manager="kubectl-annotate"
        )


async def test_fields_servefleet_does_not_set_are_left_alone(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with (
        one_cluster(tmp_path, store_url) as world,
        local_fleet(store_url, tmp_path, (REGION,)) as fleet,
    ):
        await fleet.service.deploy("llm", spec(2), [REGION])
        await converged(world, fleet, ready=2)
        server = world.clusters[REGION].server
        since = len(server.request_log) if server is not None else 0

        # The HPA's count, and an annotation and a label of another tool's.
        await world.scale_as_autoscaler(REGION, 4)
        body = {
            "metadata": {
                "annotations": {"example.com/owner": "team-a"},
                "labels": {"example.com/cost-center": "42"},
            }
        }
        await edit(world, "deployments", body, "kubectl-annotate", MERGE)
        await edit(world, "services", body, "kubectl-annotate", MERGE)

        # Then a field of servefleet's: once it is repaired, the watch has delivered
        # the edits above too, and they must have caused no write of their own.
        await set_image(world, "registry.local/other:1")

        async def image_back() -> bool:
            return bool((await world.container(REGION))["image"] == IMAGE)

        await repaired(
            fleet,
            world,
            image_back,
            field="spec.template.spec.containers[0].image",
            manager="kubectl-set",
        )
        status = await fleet.status("llm", REGION)
        assert status is not None
        assert "example.com" not in status.message
        assert "replicas" not in status.message
        count, owners = await replicas(world)
        assert count == 4
        assert not owners & {FIELD_MANAGER, HANDOFF_MANAGER}
        for plural in ("deployments", "services"):
            metadata = (await world.need(REGION, plural))["metadata"]
            assert metadata["annotations"]["example.com/owner"] == "team-a"
            assert metadata["labels"]["example.com/cost-center"] == "42"
        if server is not None:
            # One repair: each object applied once, and nothing before it.
            writes = runtime_writes(world, since)
            assert sorted(writes) == sorted(set(writes)), writes
            assert ("deployments", "llm") in writes


async def test_a_fight_is_answered_at_a_growing_interval_and_reported(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with (
        one_cluster(tmp_path, store_url) as world,
        local_fleet(store_url, tmp_path, (REGION,)) as fleet,
    ):
        await fleet.service.deploy("llm", spec(None), [REGION])
        await converged(world, fleet, ready=1)
        restorations: list[float] = []
        """When the rogue controller found servefleet's image back."""

        async def rogue_controller() -> None:
            """Sets its own image whenever it finds servefleet's, as fast as it can look."""
            while True:
                image = (await world.container(REGION))["image"]
                if image == IMAGE:
                    restorations.append(time.monotonic())
                    await set_image(world, "registry.local/rogue:1", manager="rogue-controller")
                await asyncio.sleep(0.05)

        rogue = asyncio.create_task(rogue_controller())
        try:

            async def reported() -> bool:
                status = await fleet.status("llm", REGION)
                return (
                    status is not None
                    and (
                        "drift: spec.template.spec.containers[0].image keeps being changed "
                        "by manager rogue-controller"
                    )
                    in status.message
                )

            await eventually(reported, within=SETTLE)

            async def still_repairing() -> bool:
                # The setup's image, three repairs at once, three at the backoff's pace.
                return len(restorations) >= 1 + FIGHT_REPAIRS + 3

            await eventually(still_repairing, within=SETTLE)
        finally:
            rogue.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rogue
        # Servefleet's repairs and the rogue's edits alternate, so restoration i + 1 is
        # repair i: the first three come at once, then they wait 1 s, 2 s, 4 s. What
        # the rogue sees is each repair plus how late it saw it, which load stretches
        # by up to a second here and there, so the bounds leave that much; a hot loop
        # would put all three within a second.
        gaps = [later - earlier for earlier, later in itertools.pairwise(restorations)]
        paced = gaps[FIGHT_REPAIRS : FIGHT_REPAIRS + 3]
        assert sum(paced) >= 7.0 - 2.0, gaps
        assert paced[-1] >= 4.0 - 1.5, gaps


async def test_a_repair_the_api_server_refuses_is_reported_with_its_field(tmp_path: Path) -> None:
    """Another tool moves the Service's port to another number. The list is keyed by
    port and protocol, so the edit's item is that tool's: servefleet's forced
    re-apply cannot remove it and puts its own port 80 beside it, and the API server
    refuses two ports named "http" (422). The region's status carries the server's
    message, naming the field; the object stays as the edit left it."""
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with (
        one_cluster(tmp_path, store_url) as world,
        local_fleet(store_url, tmp_path, (REGION,)) as fleet,
    ):
        await fleet.service.deploy("llm", spec(None), [REGION])
        await converged(world, fleet, ready=1)
        (port,) = (await world.need(REGION, "services"))["spec"]["ports"]

        server = world.clusters[REGION].server
        since = len(server.request_log) if server is not None else 0

        # kubectl patch service llm --type merge: the whole list, with a new number.
        body = {"spec": {"ports": [{**port, "port": 8080}]}}
        await edit(world, "services", body, "kubectl-patch", MERGE)

        async def refusal_reported() -> bool:
            status = await fleet.status("llm", REGION)
            return (
                status is not None
                and 'Service "llm" is invalid: spec.ports[1].name: Duplicate value: "http"'
                in status.message
            )

        await eventually(refusal_reported, within=SETTLE)
        service = await world.need(REGION, "services")
        assert [(item["name"], item["port"]) for item in service["spec"]["ports"]] == [
            ("http", 8080)
        ]
        if server is not None:
            # The repair was sent (and refused), not skipped.
            assert ("services", "llm") in runtime_writes(world, since)
