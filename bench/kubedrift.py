"""Benchmark 4, drift: from a hand edit of a managed object to its repair.

N endpoints converged in one region (the test API server and the reconciler
process of the convergence rows); then, one at a time on endpoints spread over
the fleet, the Deployment's image is changed by another field manager as
`kubectl set image` does (a strategic-merge patch, manager `kubectl-set`). The
clock runs from sending the edit (its own round trip included) to the watch
event that shows servefleet's
image back (a resourceVersion after the edit's), seen by a watch of the bench's
own. The goal (issue 15): repaired within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.api_client import ApiClient

from bench.kubernetes_fleet import (
    IMAGE,
    LATENCY,
    NAMESPACE,
    create_endpoints,
    fleet,
    reconciler,
    settled,
    wait_ready,
)
from bench.progress import show
from bench.report import Row, latency_text
from bench.stats import summary
from bench.stores import endpoint_name

__all__ = ["FULL", "QUICK", "Plan", "run"]


@dataclass(frozen=True)
class Plan:
    endpoints: int
    edits: int
    within: float
    """Seconds the fleet may take to converge before the case gives up."""


FULL = Plan(endpoints=1000, edits=100, within=330.0)
QUICK = Plan(endpoints=300, edits=20, within=120.0)

EDITED_IMAGE = "registry.local/other:1"
EDITOR = "kubectl-set"
REPAIR_WITHIN = 30.0
"""Seconds an edit may stay unrepaired before it counts as missed."""
GOAL_MS = 1000.0
_STRATEGIC_MERGE: dict[str, Any] = {"_content_type": "application/strategic-merge-patch+json"}


class Repairs:
    """Follows the Deployments' watch for the Deployment being edited: the first
    event after its edit (a later resourceVersion) that shows servefleet's image."""

    def __init__(self) -> None:
        self._name = ""
        self._events: list[tuple[int, str, float]] = []
        """(resourceVersion, image, when seen) of the followed Deployment's events."""
        self._changed = asyncio.Event()

    def follow(self, name: str) -> None:
        self._name = name
        self._events.clear()

    def seen(self, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] != self._name:
            return
        (container,) = obj["spec"]["template"]["spec"]["containers"]
        version = int(obj["metadata"]["resourceVersion"])
        self._events.append((version, container["image"], time.perf_counter()))
        self._changed.set()

    async def repaired_after(self, edited_version: int) -> float:
        """When the followed Deployment showed servefleet's image after the edit."""
        while True:
            for version, image, when in self._events:
                if version > edited_version and image == IMAGE:
                    return when
            self._changed.clear()
            await self._changed.wait()


@asynccontextmanager
async def _api(kubeconfig: str) -> AsyncIterator[ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    api = ApiClient(configuration)
    try:
        yield api
    finally:
        await api.close()


async def _follow(api: ApiClient, repairs: Repairs, since: str) -> None:
    apps = client.AppsV1Api(api)
    version = since
    while True:
        stream = watch.Watch().stream(
            apps.list_namespaced_deployment, NAMESPACE, resource_version=version
        )
        async for event in stream:
            obj = event["raw_object"]
            version = obj["metadata"].get("resourceVersion", version)
            if event["type"] in ("ADDED", "MODIFIED"):
                repairs.seen(obj)


async def _edit(api: ApiClient, name: str, container: str) -> int:
    """Change the Deployment's image as `kubectl set image` would; its new resourceVersion."""
    answer: Any = await client.AppsV1Api(api).patch_namespaced_deployment(
        name,
        NAMESPACE,
        {
            "spec": {
                "template": {"spec": {"containers": [{"name": container, "image": EDITED_IMAGE}]}}
            }
        },
        field_manager=EDITOR,
        _preload_content=False,
        **_STRATEGIC_MERGE,
    )
    try:
        body = await answer.json()
    finally:
        answer.release()
    return int(body["metadata"]["resourceVersion"])


async def _time_repairs(kubeconfig: str, plan: Plan) -> tuple[list[float], int]:
    """Edit `plan.edits` Deployments one at a time; the repair delays (ms) and the
    edits not repaired within `REPAIR_WITHIN`."""
    repairs = Repairs()
    delays: list[float] = []
    missed = 0
    async with _api(kubeconfig) as api:
        listed = await client.AppsV1Api(api).list_namespaced_deployment(NAMESPACE, limit=1)
        container = listed.items[0].spec.template.spec.containers[0].name
        follower = asyncio.create_task(_follow(api, repairs, listed.metadata.resource_version))
        try:
            step = max(1, plan.endpoints // plan.edits)
            for index in range(plan.edits):
                name = endpoint_name((index * step) % plan.endpoints)
                show(f"drift: edit {index + 1}/{plan.edits} ({name})")
                repairs.follow(name)
                edited = time.perf_counter()
                version = await _edit(api, name, container)
                try:
                    async with asyncio.timeout(REPAIR_WITHIN):
                        repaired = await repairs.repaired_after(version)
                except TimeoutError:
                    missed += 1
                    continue
                delays.append((repaired - edited) * 1000)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
    return delays, missed


async def run(plan: Plan) -> list[Row]:
    async with fleet(1) as place:
        region, server = next(iter(place.servers.items()))
        await create_endpoints(place.writer, plan.endpoints, [region])
        async with reconciler(place) as host:
            _, ready = await wait_ready(
                place, host, plan.endpoints, plan.within, f"drift N={plan.endpoints:,}: converging"
            )
            if ready < plan.endpoints:
                raise RuntimeError(
                    f"only {ready} of {plan.endpoints} endpoints READY in {plan.within:.0f} s"
                )
            await settled(place, host)
            delays, missed = await _time_repairs(server.hello["kubeconfig"], plan)
    figures: dict[str, Any] = {
        "endpoints": plan.endpoints,
        "edits": plan.edits,
        "missed": missed,
        "repair_ms": summary(delays),
    }
    p99 = figures["repair_ms"]["p99"]
    return [
        Row(
            "k8s drift repair",
            f"N={plan.endpoints:,}, 1 region: {plan.edits} hand edits, one at a time",
            f"test API server ({LATENCY * 1000:.0f} ms latency) and the reconciler process of "
            "the convergence rows, converged; each edit changes a Deployment's image by a "
            f"strategic-merge patch as field manager {EDITOR!r} (kubectl set image); timed "
            "from sending the edit to the watch event showing servefleet's image again",
            f"{latency_text(figures['repair_ms'])} · {missed} not repaired within "
            f"{REPAIR_WITHIN:.0f} s",
            figures,
            goal=f"every edit repaired; p99 < {GOAL_MS / 1000:g} s",
            met=missed == 0 and p99 is not None and p99 < GOAL_MS,
        )
    ]
