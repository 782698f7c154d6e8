"""`/v1/endpoints/{name}/rollout/...` over real HTTP: each verb answers the document
with its status section (the rollout's wave, step, weights and last decision),
refusals are 4xx naming the field, and a refused request stores nothing."""

from __future__ import annotations

from typing import Any

from servefleet.spec import EndpointManifest, Role, status_section
from tests.api.conftest import API_LOOP, Api, unique

pytestmark = API_LOOP

NEW = "ghcr.io/org/server:2.0"


async def test_the_rollout_verbs_change_the_record_and_show_the_rollout(api: Api) -> None:
    name = unique("roll")
    await api.endpoint(name, rollout={"waves": [["r1"], ["r2"]], "steps": [{"weight": 20}]})
    path = f"/v1/endpoints/{name}/rollout"

    async def post(verb: str, body: Any = None) -> dict[str, Any]:
        answer = await api.call("POST", f"{path}/{verb}", body, role=Role.DEPLOYER)
        assert answer.status == 200, answer.body
        stored, statuses = await api.service.status(name)
        assert answer.headers["ETag"] == f'"{stored.revision}"'
        assert (
            answer.body == EndpointManifest.of(stored, status_section(stored, statuses)).document()
        )
        rollout: dict[str, Any] = answer.body["status"]["rollout"]
        return rollout

    started = await post("start", {"image": NEW})
    assert (started["wave"], started["step"], started["weights"]) == (0, 0, {"r1": 20})
    assert started["reason"] == "wave 1 started: 20 % in r1"
    assert (await post("pause"))["paused"] is True
    assert (await post("resume"))["reason"] == "resumed by the user"
    aborted = await post("abort")
    assert (aborted["phase"], aborted["weights"]) == ("rolled_back", {})
    shown = await api.call("GET", f"/v1/endpoints/{name}/status", role=Role.VIEWER)
    assert shown.body["rollout"] == aborted


async def test_refused_rollout_verbs_name_the_field_and_store_nothing(api: Api) -> None:
    name = unique("refused")
    await api.endpoint(name)
    path = f"/v1/endpoints/{name}/rollout"
    before = await api.snapshot()

    bad_image = await api.call("POST", f"{path}/start", {"image": "Not An Image"})
    not_running = await api.call("POST", f"{path}/pause")
    unknown = await api.call("POST", f"{path}/start", {"image": NEW, "weight": 5})
    viewer = await api.call("POST", f"{path}/start", {"image": NEW}, role=Role.VIEWER)

    assert (bad_image.status, bad_image.problem["field"]) == (422, "image")
    assert not_running.status == 409
    assert "no rollout under way to pause" in str(not_running.body)
    assert (unknown.status, unknown.problem["field"]) == (422, "weight")
    assert viewer.status == 403
    assert await api.snapshot() == before
