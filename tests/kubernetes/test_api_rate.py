"""The runtime's client rate adapts to an API server that refuses what exceeds its
concurrency (429 with Retry-After, as --max-requests-inflight and API Priority and
Fairness answer), over real HTTP on the test API server."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path

from servefleet.metrics import Metrics
from servefleet.ratelimit import AdaptiveRateSettings
from servefleet.runtime.kubernetes.api import ClusterApi
from servefleet.runtime.kubernetes.render import ObjectRef
from servefleet.runtime.kubernetes.render_names import Manifest
from tests.kubernetes.conftest import FAST, api_client, api_target

SERVICES = 60


def apply_service(api: ClusterApi, namespace: str, index: int) -> Awaitable[Manifest]:
    """Server-side apply of Service `svc-<index>` as servefleet."""
    name = f"svc-{index}"
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"port": 80}]},
    }
    return api.apply(ObjectRef("v1", "Service", namespace, name), body, "servefleet", force=True)


def _rate(metrics: Metrics) -> float:
    for family in metrics.registry.collect():
        if family.name == "servefleet_runtime_api_rate":
            (sample,) = family.samples
            return sample.value
    raise AssertionError("servefleet_runtime_api_rate is not exposed")


async def test_refusals_lower_the_rate_and_every_request_still_lands(tmp_path: Path) -> None:
    async with api_target(tmp_path) as target:
        server = target.need_server()
        server.max_in_flight = 2
        server.add_latency(0.02)
        client = await api_client(target.kubeconfig)
        metrics = Metrics()
        settings = replace(FAST, retries=20, rate=AdaptiveRateSettings(ceiling=1000))
        api = ClusterApi("r1", target.namespace, client, settings, metrics=metrics)
        assert _rate(metrics) == 1000

        try:
            await asyncio.gather(
                *(apply_service(api, target.namespace, index) for index in range(SERVICES))
            )
        finally:
            await api.close()
            await client.close()

    assert server.refused_in_flight > 0
    assert _rate(metrics) < 1000  # lowered by the refusals
    applied = server.requests["patch", "services"] - server.refused_in_flight
    assert applied == SERVICES


async def test_a_garbage_collection_of_our_own_mid_request_does_not_lower_the_rate(
    tmp_path: Path,
) -> None:
    """Every answer that arrives after a long collection seems late by all of it,
    at once; the server was not slow, so the rate stays at its ceiling."""
    heap = [[index] for index in range(3_000_000)]  # what makes a collection long
    async with api_target(tmp_path) as target:
        server = target.need_server()
        client = await api_client(target.kubeconfig)
        metrics = Metrics()
        settings = replace(FAST, request_timeout=30, rate=AdaptiveRateSettings(ceiling=1000))
        api = ClusterApi("r1", target.namespace, client, settings, metrics=metrics)

        try:
            server.add_latency(0.02)
            for index in range(10):  # the lowest latency seen: about 20 ms
                await apply_service(api, target.namespace, index)
            server.clear_latency()
            server.add_latency(0.05)  # still being answered when the collection starts
            in_flight = [
                asyncio.ensure_future(apply_service(api, target.namespace, index))
                for index in range(10, 42)
            ]
            async with asyncio.timeout(10):
                while server.requests["patch", "services"] < 42:  # noqa: ASYNC110 - a count, not an event
                    await asyncio.sleep(0.001)
            started = time.monotonic()
            gc.collect()
            stalled = time.monotonic() - started
            await asyncio.gather(*in_flight)
        finally:
            await api.close()
            await client.close()
    del heap

    assert stalled > 0.2, f"the collection took only {stalled:.3f} s: too short to tell"
    assert _rate(metrics) == 1000
