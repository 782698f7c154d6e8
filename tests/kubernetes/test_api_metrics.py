"""Every request `ClusterApi` sends is counted by verb and status
(`servefleet_runtime_api_requests`), retried attempts included, against the test API
server over HTTP."""

from __future__ import annotations

from pathlib import Path

from servefleet.metrics import Metrics
from servefleet.runtime.kubernetes.api import KINDS, ClusterApi
from servefleet.runtime.kubernetes.render import ObjectRef
from tests.kubernetes.conftest import FAST, api_client, api_target


def _counts(metrics: Metrics) -> dict[tuple[str, str], float]:
    """(verb, status) -> requests, as exposed for region r1."""
    counted: dict[tuple[str, str], float] = {}
    for family in metrics.registry.collect():
        if family.name != "servefleet_runtime_api_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["region"] == "r1":
                counted[sample.labels["verb"], sample.labels["status"]] = sample.value
    return counted


async def test_requests_are_counted_by_verb_and_status(tmp_path: Path) -> None:
    """Verify that a retried apply counts its 500 and its success, a delete of
    something gone its 404, and a list its page."""
    async with api_target(tmp_path) as target:
        server = target.need_server()
        client = await api_client(target.kubeconfig)
        metrics = Metrics()
        api = ClusterApi("r1", target.namespace, client, FAST, metrics=metrics)
        ref = ObjectRef("v1", "Service", target.namespace, "counted")
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "counted", "namespace": target.namespace},
            "spec": {"ports": [{"port": 80}]},
        }
        try:
            server.fail(500, times=1)
            await api.apply(ref, service, "servefleet", force=True)
            await api.delete(ref)
            await api.delete(ref)
            await api.list_page(KINDS[0], None)
        finally:
            await api.close()
            await client.close()

    counted = _counts(metrics)
    applied = {status for verb, status in counted if verb == "apply" and status != "500"}
    assert len(applied) == 1
    assert applied <= {"200", "201"}
    assert counted == {
        ("apply", "500"): 1,
        ("apply", applied.pop()): 1,
        ("delete", "200"): 1,
        ("delete", "404"): 1,
        ("list", "200"): 1,
    }
