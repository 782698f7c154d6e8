"""The API's own series on `/metrics`: every request counted by route template,
method and status class, never by its path."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from servefleet.metrics import NO_ROUTE
from servefleet.spec import Role
from tests.api.conftest import API_LOOP, Api, unique

pytestmark = API_LOOP


async def _requests(api: Api) -> dict[tuple[str, str, str], float]:
    async with api.session.get(f"{api.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    counted: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "servefleet_api_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    key = (labels["route"], labels["method"], labels["status_class"])
                    counted[key] = sample.value
    return counted


async def test_requests_are_counted_by_route_template_method_and_status_class(api: Api) -> None:
    """Verify the counts a few requests imply, and that no path becomes a label."""
    name = unique("metered")
    await api.endpoint(name)
    before = await _requests(api)

    assert (await api.call("GET", f"/v1/endpoints/{name}", role=Role.VIEWER)).status == 200
    assert (await api.call("GET", f"/v1/endpoints/{name}", role=None)).status == 401
    assert (await api.call("GET", "/v1/endpoints/not-there", role=Role.VIEWER)).status == 404
    async with api.session.get(f"{api.url}/no/such/secret-path") as missing:
        assert missing.status == 404
    # A method the parser knows (uvicorn's httptools refuses unknown ones before the
    # app) but no route serves: it must count as "other", never as a label of its own.
    async with api.session.request("PURGE", f"{api.url}/v1/endpoints") as odd:
        assert odd.status == 405

    after = await _requests(api)
    grown = {key: after[key] - before.get(key, 0) for key in after}
    one = "/v1/endpoints/{name}"
    assert grown[(one, "GET", "2xx")] == 1
    assert grown[(one, "GET", "4xx")] == 2
    assert grown[(NO_ROUTE, "GET", "4xx")] == 1
    assert grown[("/v1/endpoints", "other", "4xx")] == 1
    labels = {value for key in after for value in key}
    assert not any(name in value or "secret-path" in value for value in labels)
