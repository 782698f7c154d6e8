"""Every route of the app, walked from `app.routes`: 401 without a live token, 403
below its role, success with it. A route added without an entry here fails
`test_every_route_is_listed`; one added without a role check fails the rest."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute

from servefleet.api import PUBLIC_PATHS
from servefleet.rollout_service import RolloutService
from servefleet.spec import Region, RegionKind, Role
from servefleet.tokens import TokenService
from tests.api.conftest import API_LOOP, Api, unique

pytestmark = API_LOOP

IMAGE = "ghcr.io/org/server:1.0"


async def _nothing(api: Api, name: str) -> None:
    return None


async def _endpoint(api: Api, name: str) -> None:
    await api.endpoint(name)


async def _endpoint_with_canary(api: Api, name: str) -> None:
    await api.endpoint(name)
    await api.service.canary(name, image="ghcr.io/org/server:2.0")


async def _endpoint_rolling_out(api: Api, name: str) -> None:
    await api.endpoint(name)
    await RolloutService(api.service).start(name, "ghcr.io/org/server:2.0")


async def _endpoint_rolling_out_paused(api: Api, name: str) -> None:
    await _endpoint_rolling_out(api, name)
    await RolloutService(api.service).pause(name)


async def _unused_region(api: Api, name: str) -> None:
    await api.store.put_region(Region(name=name, kind=RegionKind.LOCAL))


async def _token(api: Api, name: str) -> None:
    await TokenService(api.store).create(name, "viewer")


def _declaration(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"image": IMAGE}}


@dataclass(frozen=True)
class Case:
    """How to call a route successfully: its role, what must exist first (named
    `name`), and the body."""

    role: Role
    arrange: Callable[[Api, str], Awaitable[None]] = _nothing
    body: Callable[[str], Any] = lambda name: None
    streams: bool = False
    """The answer never ends (server-sent events): success is its start."""


ROUTES: dict[tuple[str, str], Case] = {
    ("GET", "/v1/endpoints"): Case(Role.VIEWER),
    ("POST", "/v1/endpoints"): Case(Role.DEPLOYER, body=_declaration),
    ("POST", "/v1/apply"): Case(Role.DEPLOYER, body=lambda name: [_declaration(name)]),
    ("GET", "/v1/endpoints/{name}"): Case(Role.VIEWER, _endpoint),
    ("GET", "/v1/endpoints/{name}/status"): Case(Role.VIEWER, _endpoint),
    ("PUT", "/v1/endpoints/{name}"): Case(Role.DEPLOYER, body=_declaration),
    ("POST", "/v1/endpoints/{name}/scale"): Case(
        Role.DEPLOYER, _endpoint, lambda name: {"replicas": 3}
    ),
    ("POST", "/v1/endpoints/{name}/autoscale"): Case(
        Role.DEPLOYER, _endpoint, lambda name: {"max_replicas": 4}
    ),
    ("POST", "/v1/endpoints/{name}/update-image"): Case(
        Role.DEPLOYER, _endpoint, lambda name: {"image": "ghcr.io/org/server:2.0"}
    ),
    ("POST", "/v1/endpoints/{name}/canary"): Case(
        Role.DEPLOYER, _endpoint, lambda name: {"image": "ghcr.io/org/server:2.0"}
    ),
    ("POST", "/v1/endpoints/{name}/stop"): Case(Role.DEPLOYER, _endpoint),
    ("POST", "/v1/endpoints/{name}/start"): Case(Role.DEPLOYER, _endpoint),
    ("POST", "/v1/endpoints/{name}/promote"): Case(Role.DEPLOYER, _endpoint_with_canary),
    ("POST", "/v1/endpoints/{name}/rollback"): Case(Role.DEPLOYER, _endpoint_with_canary),
    ("DELETE", "/v1/endpoints/{name}"): Case(Role.DEPLOYER, _endpoint),
    ("POST", "/v1/endpoints/{name}/rollout/start"): Case(
        Role.DEPLOYER, _endpoint, lambda name: {"image": "ghcr.io/org/server:2.0"}
    ),
    ("POST", "/v1/endpoints/{name}/rollout/pause"): Case(Role.DEPLOYER, _endpoint_rolling_out),
    ("POST", "/v1/endpoints/{name}/rollout/resume"): Case(
        Role.DEPLOYER, _endpoint_rolling_out_paused
    ),
    ("POST", "/v1/endpoints/{name}/rollout/abort"): Case(Role.DEPLOYER, _endpoint_rolling_out),
    ("GET", "/v1/regions"): Case(Role.VIEWER),
    ("GET", "/v1/regions/{name}"): Case(Role.VIEWER, _unused_region),
    ("POST", "/v1/regions"): Case(Role.ADMIN, body=lambda name: {"name": name, "kind": "local"}),
    ("DELETE", "/v1/regions/{name}"): Case(Role.ADMIN, _unused_region),
    ("POST", "/v1/regions/{name}/drain"): Case(Role.ADMIN, _unused_region),
    ("POST", "/v1/regions/{name}/undrain"): Case(Role.ADMIN, _unused_region),
    ("GET", "/v1/whoami"): Case(Role.VIEWER),
    ("GET", "/v1/tokens"): Case(Role.ADMIN),
    ("POST", "/v1/tokens"): Case(Role.ADMIN, body=lambda name: {"name": name, "role": "viewer"}),
    ("DELETE", "/v1/tokens/{name}"): Case(Role.ADMIN, _token),
    ("GET", "/v1/watch"): Case(Role.VIEWER, _endpoint, streams=True),
}


async def test_every_route_is_listed(api: Api) -> None:
    served = set()
    for route in api.app.routes:
        if route.path in PUBLIC_PATHS:  # type: ignore[attr-defined]
            continue
        assert isinstance(route, APIRoute), route
        served |= {(method, route.path) for method in route.methods}
    assert served == set(ROUTES)


@pytest.mark.parametrize(
    ("method", "template"), [pytest.param(*route, id=" ".join(route)) for route in ROUTES]
)
async def test_each_route_needs_a_live_token_of_its_role(
    api: Api, method: str, template: str
) -> None:
    case = ROUTES[(method, template)]
    name = unique("auth")
    await case.arrange(api, name)
    path = template.format(name=name)
    body = case.body(name)
    before = await api.snapshot()

    for token in (None, api.revoked, "sf1.nobody.secret", "not-a-token"):
        refused = await api.call(method, path, body, role=None, token=token)
        assert refused.status == 401, (token, refused.body)
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    basic = await api.call(method, path, body, role=None, headers={"Authorization": "Basic eA=="})
    assert basic.status == 401
    for role in Role:
        if not role.allows(case.role):
            forbidden = await api.call(method, path, body, role=role)
            assert forbidden.status == 403, (role, forbidden.body)
            assert forbidden.body["message"] == (
                f"token '{role.value}-token' has role {role.value}; this needs {case.role.value}"
            )
    assert await api.snapshot() == before

    if case.streams:
        async with api.watch(role=case.role) as stream:
            assert await stream.next() is not None
        return
    allowed = await api.call(method, path, body, role=case.role)

    assert 200 <= allowed.status < 300, allowed.body


async def test_the_openapi_document_monitoring_and_the_dashboard_need_no_token(
    api: Api,
) -> None:
    """The only routes without a role: scrapers and probes send no token, the
    dashboard's files ask for one before reading anything, and none of these answers
    holds a record (see `servefleet.api.auth`)."""
    assert {
        "/openapi.json",
        "/metrics",
        "/healthz",
        "/readyz",
        "/",
        "/dashboard.js",
        "/dashboard.css",
    } == PUBLIC_PATHS
    await api.endpoint(secret := unique("unlisted"))
    for path in sorted(PUBLIC_PATHS):
        async with api.session.get(f"{api.url}{path}") as response:
            assert response.status == 200, path
            assert secret not in await response.text(), path


async def test_whoami_names_the_calling_token_and_its_role(api: Api) -> None:
    for role in Role:
        answer = await api.call("GET", "/v1/whoami", role=role)
        assert (answer.status, answer.body["name"], answer.body["role"]) == (
            200,
            f"{role.value}-token",
            role.value,
        )
        assert "token" not in answer.body


async def test_tokens_made_over_the_api_work_at_once_and_stop_when_revoked(api: Api) -> None:
    name = unique("ci")

    created = await api.call("POST", "/v1/tokens", {"name": name, "role": "deployer"})

    assert created.status == 201
    assert set(created.body) == {"name", "role", "created_at", "token"}
    token = created.body["token"]
    listed = await api.call("GET", "/v1/tokens")
    assert {"name": name, "role": "deployer"}.items() <= next(
        item for item in listed.body if item["name"] == name
    ).items()
    assert all("token" not in item and "digest" not in item for item in listed.body)
    assert (await api.call("GET", "/v1/endpoints", role=None, token=token)).status == 200
    assert (await api.call("GET", "/v1/tokens", role=None, token=token)).status == 403

    assert (await api.call("DELETE", f"/v1/tokens/{name}")).status == 204

    assert (await api.call("GET", "/v1/endpoints", role=None, token=token)).status == 401
    missing = await api.call("DELETE", f"/v1/tokens/{name}")
    assert (missing.status, missing.body["message"]) == (404, f"token {name!r} not found")
    taken = await api.call("POST", "/v1/tokens", {"name": "admin-token", "role": "viewer"})
    assert taken.status == 409
    bad = await api.call("POST", "/v1/tokens", {"name": unique("x"), "role": "root"})
    assert bad.problem == {
        "field": "role",
        "message": "must be 'viewer', 'deployer' or 'admin' (got 'root')",
        "value": "root",
    }
