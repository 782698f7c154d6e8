"""The endpoint operations over real HTTP: the same documents as `get -o json` and
`apply -f`, ETags and If-Match, and every refusal answered with its status, field,
value and the CLI's wording, leaving the store as it was."""

from __future__ import annotations

from typing import Any

import pytest

from servefleet.spec import EndpointManifest, RegionState, RegionStatus, Role, status_section
from tests.api.conftest import API_LOOP, Api, unique

pytestmark = API_LOOP

IMAGE = "ghcr.io/org/server:1.0"


def declaration(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"image": IMAGE, **spec}}


async def test_create_answers_the_stored_document_with_its_etag(api: Api) -> None:
    name = unique("create")

    created = await api.call(
        "POST", "/v1/endpoints", declaration(name, replicas=2), role=Role.DEPLOYER
    )

    stored = await api.store.get_endpoint(name)
    assert created.status == 201
    assert created.headers["ETag"] == '"1"'
    assert created.headers["Location"] == f"/v1/endpoints/{name}"
    assert created.body == EndpointManifest.of(stored).document()
    assert stored.spec.replicas == 2
    assert stored.target_regions == api.regions


async def test_get_is_what_get_o_json_prints_and_applies_unchanged(api: Api) -> None:
    name = unique("get")
    endpoint = await api.endpoint(name, replicas=3)
    await api.store.put_region_status(
        RegionStatus(endpoint=name, region="r1", state=RegionState.READY, replicas_ready=3)
    )

    got = await api.call("GET", f"/v1/endpoints/{name}", role=Role.VIEWER)

    statuses = await api.store.list_region_status(endpoint=name)
    assert got.status == 200
    assert got.headers["ETag"] == f'"{endpoint.revision}"'
    assert got.body == EndpointManifest.of(endpoint, status_section(endpoint, statuses)).document()
    assert got.body["status"]["regions"]["r1"]["state"] == "ready"
    assert got.body["status"]["regions"]["r2"] == {"state": "pending"}

    applied = await api.call("PUT", f"/v1/endpoints/{name}", got.body)

    assert applied.status == 200
    assert applied.body == {"name": name, "outcome": "unchanged", "generation": 1, "revision": 1}
    assert (await api.store.get_endpoint(name)).revision == endpoint.revision


async def test_status_is_what_status_o_json_prints(api: Api) -> None:
    name = unique("status")
    endpoint = await api.endpoint(name)

    answer = await api.call("GET", f"/v1/endpoints/{name}/status", role=Role.VIEWER)

    assert answer.status == 200
    assert answer.headers["ETag"] == f'"{endpoint.revision}"'
    assert answer.body == {
        "name": name,
        "generation": 1,
        "desiredState": "deploying",
        "regions": {"r1": {"state": "pending"}, "r2": {"state": "pending"}},
    }


async def test_list_filters_by_state_and_region(api: Api) -> None:
    running = unique("list-run")
    stopped = unique("list-stop")
    only_r2 = unique("list-r2")
    await api.endpoint(running)
    await api.endpoint(stopped)
    await api.service.stop(stopped)
    await api.call("POST", "/v1/endpoints", {**declaration(only_r2), "regions": ["r2"]})

    async def names(query: str) -> set[str]:
        answer = await api.call("GET", f"/v1/endpoints{query}", role=Role.VIEWER)
        assert answer.status == 200
        return {document["metadata"]["name"] for document in answer.body}

    everything = await names("")
    assert {running, stopped, only_r2} <= everything
    assert {running, stopped} & await names("?state=stopped") == {stopped}
    assert {running, only_r2} <= await names("?state=deploying")
    assert {running, stopped, only_r2} & await names("?region=r1") == {running, stopped}
    assert only_r2 in await names("?region=r2&state=deploying")
    listed = await api.call("GET", "/v1/endpoints", role=Role.VIEWER)
    by_name = {document["metadata"]["name"]: document for document in listed.body}
    stored = await api.store.get_endpoint(running)
    assert by_name[running] == EndpointManifest.of(stored).document()


async def test_every_operation_changes_the_record_as_the_cli_would(api: Api) -> None:
    name = unique("ops")
    await api.endpoint(name, replicas=1)
    path = f"/v1/endpoints/{name}"

    async def post(verb: str, body: Any = None) -> dict[str, Any]:
        answer = await api.call("POST", f"{path}/{verb}", body, role=Role.DEPLOYER)
        assert answer.status == 200, answer.body
        stored = await api.store.get_endpoint(name)
        assert answer.headers["ETag"] == f'"{stored.revision}"'
        assert answer.body == EndpointManifest.of(stored).document()
        return answer.body

    assert (await post("scale", {"replicas": 4}))["spec"]["replicas"] == 4
    assert (await post("update-image", {"image": "ghcr.io/org/server:2.0"}))["spec"][
        "image"
    ] == "ghcr.io/org/server:2.0"
    regional = await post("update-image", {"image": "ghcr.io/org/server:2.1", "region": "r2"})
    assert regional["spec"]["region_images"] == {"r2": "ghcr.io/org/server:2.1"}
    assert (await post("stop"))["state"] == "stopped"
    assert (await post("start"))["state"] == "running"
    canary = await post(
        "canary", {"image": "ghcr.io/org/server:3.0", "weight": 20, "env": {"A": "1"}}
    )
    assert canary["spec"]["canary"]["weight"] == 20
    assert (await post("canary", {"weight": 50}))["spec"]["canary"]["env"] == {"A": "1"}
    promoted = await post("promote")
    assert promoted["spec"]["image"] == "ghcr.io/org/server:3.0"
    assert "canary" not in promoted["spec"]
    await post("canary", {"image": "ghcr.io/org/server:4.0"})
    assert "canary" not in (await post("rollback"))["spec"]

    deleted = await api.call("DELETE", path, role=Role.DEPLOYER)

    assert deleted.status == 200
    assert deleted.body["state"] == "deleted"
    assert (await api.store.get_endpoint(name)).desired_state.value == "deleted"


async def test_if_match_changes_only_the_revision_it_names(api: Api) -> None:
    name = unique("etag")
    await api.endpoint(name)
    read = await api.call("GET", f"/v1/endpoints/{name}", role=Role.VIEWER)
    etag = read.headers["ETag"]

    scaled = await api.call(
        "POST", f"/v1/endpoints/{name}/scale", {"replicas": 3}, headers={"If-Match": etag}
    )
    assert scaled.status == 200
    assert scaled.headers["ETag"] == '"2"'

    before = await api.snapshot()
    stale = await api.call(
        "POST", f"/v1/endpoints/{name}/scale", {"replicas": 5}, headers={"If-Match": etag}
    )
    assert stale.status == 409
    assert stale.problem == {
        "field": "If-Match",
        "message": f"endpoint {name!r} changed since it was read: expected revision 1, "
        "it is at revision 2",
        "value": 1,
    }
    assert await api.snapshot() == before

    # The unquoted form the CLI user might type works too.
    again = await api.call(
        "POST", f"/v1/endpoints/{name}/scale", {"replicas": 5}, headers={"If-Match": "2"}
    )
    assert again.status == 200


async def test_apply_is_all_or_nothing(api: Api) -> None:
    fresh, existing = unique("apply-new"), unique("apply-old")
    await api.endpoint(existing, replicas=1)
    before = await api.snapshot()

    refused = await api.call(
        "POST",
        "/v1/apply",
        [declaration(fresh), {**declaration(existing, replicas=2), "regions": ["nowhere"]}],
    )

    assert refused.status == 422
    assert refused.problem == {
        "field": "regions",
        "message": "region 'nowhere' is not registered (registered: r1, r2)",
        "value": "nowhere",
    }
    assert await api.snapshot() == before

    twice = await api.call("POST", "/v1/apply", [declaration(fresh), declaration(fresh)])
    assert twice.status == 422
    assert twice.body["message"] == f"metadata.name: {fresh!r} is declared more than once"
    assert await api.snapshot() == before

    applied = await api.call(
        "POST", "/v1/apply", [declaration(fresh), declaration(existing, replicas=2)]
    )

    assert applied.status == 200
    assert [(item["name"], item["outcome"]) for item in applied.body] == [
        (fresh, "created"),
        (existing, "configured"),
    ]
    assert (await api.store.get_endpoint(existing)).spec.replicas == 2


async def test_put_creates_then_configures(api: Api) -> None:
    name = unique("put")
    path = f"/v1/endpoints/{name}"

    created = await api.call("PUT", path, declaration(name))
    configured = await api.call("PUT", path, declaration(name, replicas=3))

    assert (created.status, created.body["outcome"]) == (201, "created")
    assert (configured.status, configured.body["outcome"]) == (200, "configured")
    assert configured.headers["ETag"] == '"2"'


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "problem"),
    [
        pytest.param(
            "POST",
            "/v1/endpoints",
            declaration("{name}", replicas=5000),
            {},
            422,
            {
                "field": "spec.replicas",
                "message": "must be less than or equal to 1000 (got 5000)",
                "value": 5000,
            },
            id="422-create-rule",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints",
            {**declaration("{name}"), "regions": ["nowhere"]},
            {},
            422,
            {
                "field": "regions",
                "message": "region 'nowhere' is not registered (registered: r1, r2)",
                "value": "nowhere",
            },
            id="422-create-unregistered-region",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints",
            {**declaration("{name}"), "state": "deleted"},
            {},
            422,
            {
                "field": "state",
                "message": "'deleted' is reported by get, not applied; use "
                "`servefleet delete NAME`",
            },
            id="422-create-deleted",
        ),
        pytest.param(
            "POST",
            "/v1/apply",
            [declaration("{name}"), declaration("{existing}", gpu_count=2)],
            {},
            422,
            {
                "field": "1.spec.gpu_count",
                "message": "2 accelerators requested but accelerator is 'none' "
                "(set accelerator to 'nvidia' or 'neuron')",
            },
            id="422-apply-names-the-document-by-index",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints/{existing}/scale",
            {"replicas": 2000},
            {},
            422,
            {
                "field": "spec.replicas",
                "message": "must be less than or equal to 1000 (got 2000)",
                "value": 2000,
            },
            id="422-scale-rule",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints/{existing}/scale",
            {"replicas": "many"},
            {},
            422,
            {
                "field": "replicas",
                "message": "must be a valid integer, unable to parse string "
                "as an integer (got 'many')",
                "value": "many",
            },
            id="422-scale-type",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints/{existing}/scale",
            {"replicas": 2, "replica": 2},
            {},
            422,
            {"field": "replica", "message": "is not a known field", "value": 2},
            id="422-unknown-field",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints/{existing}/canary",
            {"image": "ghcr.io/o/s:2", "weight": 150},
            {},
            422,
            {
                "field": "spec.canary.weight",
                "message": "must be less than or equal to 99 (got 150)",
                "value": 150,
            },
            id="422-canary-weight",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints/{existing}/update-image",
            {"image": "Not An Image"},
            {},
            422,
            {
                "field": "spec.image",
                "message": "is not a valid OCI image reference like "
                "'ghcr.io/org/server:1.2' (got 'Not An Image')",
                "value": "Not An Image",
            },
            id="422-image",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints/{existing}/scale",
            {"replicas": 2},
            {"If-Match": "soon"},
            422,
            {
                "field": "If-Match",
                "message": "must be a revision from an ETag, like \"3\" (got 'soon')",
                "value": "soon",
            },
            id="422-if-match-syntax",
        ),
        pytest.param(
            "GET",
            "/v1/endpoints/Bad_Name",
            None,
            {},
            422,
            {
                "field": "name",
                "message": "must be lowercase letters, digits and '-', start with "
                "a letter and end with a letter or digit (got 'Bad_Name')",
                "value": "Bad_Name",
            },
            id="422-path-name",
        ),
        pytest.param(
            "GET",
            "/v1/endpoints?state=sleeping",
            None,
            {},
            422,
            {
                "field": "state",
                "message": "must be 'deploying', 'running', 'stopped' or "
                "'deleted' (got 'sleeping')",
                "value": "sleeping",
            },
            id="422-query",
        ),
        pytest.param(
            "GET",
            "/v1/endpoints/{name}",
            None,
            {},
            404,
            {"field": "", "message": "endpoint '{name}' not found"},
            id="404-get",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints/{name}/scale",
            {"replicas": 2},
            {},
            404,
            {"field": "", "message": "endpoint '{name}' not found"},
            id="404-scale",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints",
            declaration("{existing}"),
            {},
            409,
            {
                "field": "name",
                "message": "endpoint '{existing}' already exists; change it with "
                "apply, scale, update-image or canary, or delete it first",
            },
            id="409-exists",
        ),
        pytest.param(
            "DELETE",
            "/v1/endpoints/{existing}",
            None,
            {"If-Match": '"7"'},
            409,
            {
                "field": "If-Match",
                "message": "endpoint '{existing}' changed since it was read: "
                "expected revision 7, it is at revision 1",
                "value": 7,
            },
            id="409-stale-if-match",
        ),
        pytest.param(
            "PUT",
            "/v1/endpoints/{name}",
            declaration("{name}"),
            {"If-Match": "1"},
            409,
            {
                "field": "If-Match",
                "message": "endpoint '{name}' changed since it was read: "
                "expected revision 1, it no longer exists",
                "value": 1,
            },
            id="409-if-match-on-a-missing-endpoint",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints/{existing}/promote",
            None,
            {},
            409,
            {"field": "canary", "message": "'{existing}' has no canary to promote"},
            id="409-refused",
        ),
        pytest.param(
            "POST",
            "/v1/endpoints/{existing}/update-image",
            {"image": "ghcr.io/o/s:2", "region": "r9"},
            {},
            422,
            {
                "field": "region",
                "message": "region 'r9' is not registered (registered: r1, r2)",
                "value": "r9",
            },
            id="422-update-image-region",
        ),
    ],
)
async def test_refusals_name_the_field_and_store_nothing(
    api: Api,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    problem: dict[str, Any],
) -> None:
    names = {"name": unique("absent"), "existing": unique("present")}
    await api.endpoint(names["existing"])

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.format(**names) if "{" in value and "}" in value else value
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    before = await api.snapshot()

    answer = await api.call(method, fill(path), fill(body), headers=headers)

    assert answer.status == status, answer.body
    assert answer.problem == fill(problem)
    assert answer.body["message"] == (
        f"{answer.problem['field']}: {answer.problem['message']}"
        if answer.problem["field"]
        else answer.problem["message"]
    )
    assert await api.snapshot() == before


async def test_a_body_that_is_not_json_is_a_422_naming_the_body(api: Api) -> None:
    before = await api.snapshot()

    answer = await api.call("POST", "/v1/endpoints", data='{"metadata": ')

    assert answer.status == 422
    assert answer.problem["field"] == "body"
    assert answer.problem["message"].startswith("is not valid JSON")
    assert await api.snapshot() == before


async def test_a_body_that_is_not_utf8_is_a_422_naming_the_body(api: Api) -> None:
    # Found by fuzzing: FastAPI answered 400 with no field.
    before = await api.snapshot()

    answer = await api.call("POST", "/v1/apply", data=b'[{"metadata": "\xe5"}]')

    assert (answer.status, answer.problem) == (
        422,
        {"field": "body", "message": "is not valid JSON: not UTF-8 text (byte 0xe5 at 15)"},
    )
    assert await api.snapshot() == before


async def test_the_openapi_document_describes_the_documents(api: Api) -> None:
    answer = await api.call("GET", "/openapi.json", role=None)

    assert answer.status == 200
    schemas = answer.body["components"]["schemas"]
    assert "apiVersion" in schemas["EndpointManifest"]["properties"]
    assert "ErrorBody" in schemas
    operations = [
        operation for path in answer.body["paths"].values() for operation in path.values()
    ]
    assert operations
    assert all(operation["security"] == [{"HTTPBearer": []}] for operation in operations)


async def test_a_number_json_cannot_carry_back_is_shown_as_text(api: Api) -> None:
    """1e400 parses as infinity, which a JSON answer cannot hold: the value is its repr."""
    before = await api.snapshot()

    answer = await api.call(
        "POST",
        "/v1/endpoints",
        data=f'{{"metadata": {{"name": "{unique("inf")}"}}, '
        '"spec": {"image": "ghcr.io/org/server:1.0", "replicas": 1e400}}',
    )

    assert answer.status == 422
    assert answer.problem == {
        "field": "spec.replicas",
        "message": "must be a finite number (got inf)",
        "value": "inf",
    }
    assert await api.snapshot() == before
