"""Regions over real HTTP: what `regions list -o json` prints, register, remove,
and the refusals (404 unknown, 409 still a target, 422 a rule), storing nothing."""

from __future__ import annotations

from servefleet.spec import Region, RegionKind, Role
from tests.api.conftest import API_LOOP, Api, unique

pytestmark = API_LOOP


async def test_regions_are_listed_as_regions_list_prints_them(api: Api) -> None:
    answer = await api.call("GET", "/v1/regions", role=Role.VIEWER)

    assert answer.status == 200
    regions = await api.store.list_regions()
    assert answer.body == [region.model_dump(mode="json") for region in regions]


async def test_a_region_is_registered_read_replaced_and_removed(api: Api) -> None:
    name = unique("eu")
    body = {"name": name, "kind": "kubernetes", "context": "eu", "namespace": "llm"}

    added = await api.call("POST", "/v1/regions", body)
    read = await api.call("GET", f"/v1/regions/{name}", role=Role.VIEWER)

    assert added.status == 200
    assert read.body == added.body == Region.model_validate(body).model_dump(mode="json")
    assert (await api.store.get_region(name)).context == "eu"

    replaced = await api.call("POST", "/v1/regions", {**body, "namespace": "other"})
    assert replaced.status == 200
    assert (await api.store.get_region(name)).namespace == "other"

    removed = await api.call("DELETE", f"/v1/regions/{name}")

    assert (removed.status, removed.body) == (204, None)
    assert name not in {region.name for region in await api.store.list_regions()}


async def test_a_region_is_drained_and_undrained_by_an_admin_only(api: Api) -> None:
    name = unique("eu")
    await api.store.put_region(Region(name=name, kind=RegionKind.KUBERNETES))

    refused = await api.call("POST", f"/v1/regions/{name}/drain", role=Role.VIEWER)
    assert refused.status == 403
    assert not (await api.store.get_region(name)).drained

    drained = await api.call("POST", f"/v1/regions/{name}/drain")
    assert (drained.status, drained.body["drained"]) == (200, True)
    assert (await api.store.get_region(name)).drained
    undrained = await api.call("POST", f"/v1/regions/{name}/undrain")
    assert (undrained.status, undrained.body["drained"]) == (200, False)
    assert not (await api.store.get_region(name)).drained
    assert (await api.call("POST", f"/v1/regions/{unique('absent')}/drain")).status == 404


async def test_refused_region_changes_store_nothing(api: Api) -> None:
    used = unique("used")
    await api.store.put_region(Region(name=used, kind=RegionKind.LOCAL))
    endpoint = unique("user")
    await api.call("POST", "/v1/endpoints", {**_declaration(endpoint), "regions": [used]})
    absent = unique("absent")
    before = await api.snapshot()

    unknown = await api.call("GET", f"/v1/regions/{absent}", role=Role.VIEWER)
    assert (unknown.status, unknown.problem) == (
        404,
        {"field": "", "message": f"region {absent!r} is not registered"},
    )
    assert (await api.call("DELETE", f"/v1/regions/{absent}")).status == 404
    targeted = await api.call("DELETE", f"/v1/regions/{used}")
    assert (targeted.status, targeted.problem) == (
        409,
        {
            "field": "region",
            "message": f"{used!r} is still a target of {endpoint}; "
            "move or delete those endpoints first",
        },
    )
    invalid = await api.call(
        "POST", "/v1/regions", {"name": unique("x"), "kind": "local", "context": "c"}
    )
    assert (invalid.status, invalid.problem) == (
        422,
        {"field": "kubeconfig", "message": "only kubernetes regions take a kubeconfig or context"},
    )
    kind = await api.call("POST", "/v1/regions", {"name": "Bad Name", "kind": "moon"})
    assert kind.status == 422
    assert [problem["field"] for problem in kind.body["problems"]] == ["name", "kind"]
    assert await api.snapshot() == before


def _declaration(name: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"image": "ghcr.io/org/server:1.0"}}
