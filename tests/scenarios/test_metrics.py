"""`/metrics`, `/healthz` and `/readyz` of `servefleet up` (`--metrics-port`), scraped
over HTTP after a small scenario and parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from servefleet.metrics import NO_ENDPOINT, NO_VERSION
from tests.scenarios.harness import SETTLE, demo_spec, local_fleet, manifest, up_process
from tests.scenarios.test_kubernetes_autoscaling import REGION as KUBERNETES_REGION
from tests.scenarios.test_kubernetes_autoscaling import one_cluster
from tests.waiting import eventually

ENDPOINT = "metered"
REQUESTS = 7

FAMILIES = {
    "servefleet_reconcile_duration_seconds": "histogram",
    "servefleet_reconcile": "counter",
    "servefleet_workqueue_depth": "gauge",
    "servefleet_propagation_delay_seconds": "histogram",
    "servefleet_runtime_api_requests": "counter",
    "servefleet_runtime_api_rate": "gauge",
    "servefleet_watchdog_events": "counter",
    "servefleet_leader": "gauge",
    "servefleet_endpoint_replicas_ready": "gauge",
    "servefleet_endpoint_replicas_desired": "gauge",
    "servefleet_gateway_requests": "counter",
    "servefleet_gateway_request_duration_seconds": "histogram",
    "servefleet_gateway_requests_in_flight": "gauge",
}


@dataclass(frozen=True)
class Scrape:
    types: dict[str, str]
    """Family name -> type."""
    samples: list[tuple[str, dict[str, str], float]]

    def value(self, sample: str, **labels: str) -> float:
        """The one sample named `sample` whose labels include `labels`."""
        found = [
            value
            for name, have, value in self.samples
            if name == sample and labels.items() <= have.items()
        ]
        assert len(found) == 1, (sample, labels, found)
        return found[0]

    def label_values(self, label: str) -> set[str]:
        return {have[label] for _, have, _ in self.samples if label in have}


async def scrape(client: aiohttp.ClientSession, base_url: str) -> Scrape:
    async with client.get(f"{base_url}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    types: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        samples += [(s.name, dict(s.labels), s.value) for s in family.samples]
    return Scrape(types, samples)


async def test_metrics_after_a_deployment_and_requests_through_the_gateway(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Verify that every family is exposed with the values a deployment of two
    replicas, some requests and a deletion imply, and that the deleted endpoint's
    series go away."""
    async with local_fleet(sqlite_url, tmp_path) as fleet:
        await fleet.service.apply(manifest(ENDPOINT, demo_spec(replicas=2), ["r1"]))
        await fleet.settled(ENDPOINT, replicas=2)
        answers = await fleet.chats(ENDPOINT, REQUESTS)
        assert [answer.status for answer in answers] == [200] * REQUESTS
        async with fleet.client.get(f"{fleet.gateway_url}/no/such/secret-path") as missing:
            assert missing.status == 404

        metrics = await scrape(fleet.client, fleet.metrics_url)

        assert metrics.types == metrics.types | FAMILIES  # every family, of its type
        served = {"endpoint": ENDPOINT, "region": "r1", "version": "primary"}
        requests = "servefleet_gateway_requests_total"
        assert metrics.value(requests, **served, status_class="2xx") == REQUESTS
        assert metrics.value(requests, **served, status_class="5xx") == 0
        assert (
            metrics.value(
                requests,
                endpoint=NO_ENDPOINT,
                region="r1",
                version=NO_VERSION,
                status_class="4xx",
            )
            == 1
        )
        assert not any("secret-path" in value for value in metrics.label_values("endpoint"))
        latency = "servefleet_gateway_request_duration_seconds"
        assert metrics.value(f"{latency}_count", **served) == REQUESTS
        assert metrics.value(f"{latency}_bucket", **served, le="+Inf") == REQUESTS
        assert metrics.value("servefleet_gateway_requests_in_flight", **served) == 0

        assert metrics.value("servefleet_leader", region="r1") == 1
        placed = {"endpoint": ENDPOINT, "region": "r1"}
        assert metrics.value("servefleet_endpoint_replicas_ready", **placed) == 2
        assert metrics.value("servefleet_endpoint_replicas_desired", **placed) == 2
        assert metrics.value("servefleet_reconcile_total", region="r1", outcome="success") >= 1
        assert metrics.value("servefleet_reconcile_total", region="r1", outcome="error") == 0
        assert metrics.value("servefleet_reconcile_duration_seconds_count", region="r1") >= 1
        # At least the first apply; each is from the record's write to the apply.
        delays = "servefleet_propagation_delay_seconds"
        assert metrics.value(f"{delays}_count", region="r1") >= 1
        assert 0 <= metrics.value(f"{delays}_sum", region="r1") < SETTLE * 10
        assert metrics.value("servefleet_workqueue_depth", region="r1") >= 0
        for action in ("unroute", "route"):
            assert (
                metrics.value("servefleet_watchdog_events_total", region="r1", action=action) == 0
            )

        await fleet.service.delete(ENDPOINT)
        await eventually(lambda: fleet.purged(ENDPOINT), within=SETTLE)

        async def series_removed() -> bool:
            after = await scrape(fleet.client, fleet.metrics_url)
            return ENDPOINT not in after.label_values("endpoint")

        await eventually(series_removed, within=SETTLE)


async def test_healthz_and_readyz_of_up(sqlite_url: str, tmp_path: Path) -> None:
    """Verify that /healthz answers and /readyz names the store and the region's leader."""
    async with local_fleet(sqlite_url, tmp_path) as fleet:
        async with fleet.client.get(f"{fleet.metrics_url}/healthz") as alive:
            assert alive.status == 200
            assert await alive.json() == {"alive": True}
        async with fleet.client.get(f"{fleet.metrics_url}/readyz") as ready:
            assert ready.status == 200
            assert await ready.json() == {
                "ready": True,
                "store": "ok",
                "regions": {"r1": "leader"},
            }


async def test_up_serves_monitoring_on_the_metrics_port_and_logs_json(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Verify `servefleet up --metrics-port 0 --log-format json` as a process: the
    banner names the listener, which is ready once the region has its leader, and
    every log line is a JSON object."""
    log = tmp_path / "up.log"
    args = ("--regions", "r1", "--port", "0", "--metrics-port", "0", "--log-format", "json")
    async with up_process(sqlite_url, *args, stderr=log) as up:
        base = up.metrics_url
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base)
        async with aiohttp.ClientSession() as client:

            async def ready() -> bool:
                async with client.get(f"{base}/readyz") as answer:
                    return answer.status == 200

            await eventually(ready, within=SETTLE)
            metrics = await scrape(client, base)
        assert metrics.value("servefleet_leader", region="r1") == 1
        up.process.send_signal(signal.SIGTERM)
        assert await up.process.wait() == 0

    lines = log.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(entries) >= 2, lines  # the region registered, its leader elected
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    # The rest is the CLI's own word to the person at the terminal.
    assert [line for line in lines if not line.startswith("{")] == ["stopped"]


async def test_a_kubernetes_region_s_requests_are_counted(tmp_path: Path) -> None:
    """Verify that `up` hands its registry to a Kubernetes region's runtime: the
    lists its watch caches start from are counted under the region."""
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with (
        one_cluster(tmp_path, store_url),
        local_fleet(store_url, tmp_path, (KUBERNETES_REGION,)) as fleet,
        aiohttp.ClientSession() as client,
    ):
        scraped = await scrape(client, fleet.metrics_url)

    lists = [
        value
        for name, labels, value in scraped.samples
        if name == "servefleet_runtime_api_requests_total"
        and labels["region"] == KUBERNETES_REGION
        and labels["verb"] == "list"
    ]
    assert sum(lists) >= 1
