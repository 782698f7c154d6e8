"""The runtime's client rate adapts to an API server that refuses what exceeds its
concurrency (429 with Retry-After, as --max-requests-inflight and API Priority and
Fairness answer), over real HTTP on the test API server."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from servefleet.metrics import Metrics
from servefleet.ratelimit import AdaptiveRateSettings
from servefleet.runtime.kubernetes.api import ClusterApi
from servefleet.runtime.kubernetes.render import ObjectRef
from tests.kubernetes.conftest import FAST, api_client, api_target

SERVICES = 60


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

        async def apply(index: int) -> None:
            name = f"svc-{index}"
            ref = ObjectRef("v1", "Service", target.namespace, name)
            body = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": target.namespace},
                "spec": {"ports": [{"port": 80}]},
            }
            await api.apply(ref, body, "servefleet", force=True)

        try:
            await asyncio.gather(*(apply(index) for index in range(SERVICES)))
        finally:
            await client.close()

    assert server.refused_in_flight > 0
    assert _rate(metrics) < 1000  # lowered by the refusals
    applied = server.requests["patch", "services"] - server.refused_in_flight
    assert applied == SERVICES
