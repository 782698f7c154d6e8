"""`/v1/endpoints` and `/v1/apply`: the service's endpoint operations over HTTP,
and the rollout verbs (`/v1/endpoints/{name}/rollout/...`).

Bodies are the documents `servefleet get -o json` prints and `apply -f` takes
(`EndpointManifest`). Every answer about one endpoint carries its revision as
`ETag`; every change takes `If-Match: <revision>` and is then made only to the
record still at that revision (409 otherwise), without the service's retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from servefleet.api.auth import allow
from servefleet.api.context import Endpoints
from servefleet.api.errors import ERROR_RESPONSES
from servefleet.rollout_service import RolloutService
from servefleet.service import Applied, ApplyOutcome, EndpointService
from servefleet.spec import (
    AutoscalingMetric,
    DesiredState,
    Endpoint,
    EndpointManifest,
    EndpointName,
    InvalidInput,
    Problem,
    RegionName,
    Role,
    RolloutState,
    status_section,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["endpoints"], responses=ERROR_RESPONSES)

Name = Annotated[EndpointName, Path(description="The endpoint's name.")]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="The revision the change is meant for (an ETag of an earlier read); "
        "a record at another revision is left alone and the answer is 409.",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScaleRequest(_Body):
    replicas: int


class AutoscaleRequest(_Body):
    """Autoscaling on, with the settings given laid over the declared ones (what is
    left out stays), or off (`enabled: false`), running `replicas` if given."""

    enabled: bool = True
    replicas: int | None = None
    """Only with `enabled: false`: the count to run; the declared one when left out."""
    min_replicas: int | None = None
    max_replicas: int | None = None
    metrics: list[AutoscalingMetric] | None = None
    """Replaces the declared metrics."""
    scale_to_zero_after: int | None = None
    scale_up_window: int | None = None
    scale_down_window: int | None = None
    panic_window: int | None = None
    panic_threshold: float | None = None


class UpdateImageRequest(_Body):
    image: str
    region: str | None = None
    """Only in this region (a per-region override); everywhere when left out."""


class CanaryRequest(_Body):
    """What to set of the canary; what is left out stays as it is."""

    image: str | None = None
    weight: int | None = None
    replicas: int | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: dict[str, str] | None = None
    """Added to, or overriding keys of, the canary's env; keys set before are kept."""


class AppliedBody(BaseModel):
    name: str
    outcome: ApplyOutcome
    generation: int
    revision: int

    @classmethod
    def of(cls, applied: Applied) -> AppliedBody:
        endpoint = applied.endpoint
        return cls(
            name=endpoint.name,
            outcome=applied.outcome,
            generation=endpoint.generation,
            revision=endpoint.revision,
        )


class StatusDocument(BaseModel):
    """What `servefleet status NAME -o json` prints: per target region, its report
    (`RegionStatus` without the names) or `{"state": "pending"}` before the first."""

    model_config = ConfigDict(populate_by_name=True)

    name: str
    generation: int
    desired_state: DesiredState = Field(alias="desiredState")
    regions: dict[str, dict[str, Any]]
    rollout: RolloutState | None = None


def _revision(if_match: str | None) -> int | None:
    """The revision an `If-Match` names (`"3"`, `3` or `W/"3"`); None without one or for `*`."""
    if if_match is None or if_match.strip() == "*":
        return None
    text = if_match.strip().removeprefix("W/").strip('"')
    if not text.isascii() or not text.isdigit():
        raise InvalidInput(
            [
                Problem(
                    "If-Match",
                    f'must be a revision from an ETag, like "3" (got {if_match!r})',
                    if_match,
                )
            ]
        )
    return int(text)


def _tag(response: Response, endpoint: Endpoint) -> None:
    response.headers["ETag"] = f'"{endpoint.revision}"'


def _with_etag(response: Response, endpoint: Endpoint) -> EndpointManifest:
    _tag(response, endpoint)
    return EndpointManifest.of(endpoint)


@router.get(
    "/endpoints",
    dependencies=[allow(Role.VIEWER)],
    response_model_exclude_none=True,
    summary="List endpoints (as `servefleet list -o json`)",
)
async def list_endpoints(
    endpoints: Endpoints,
    state: Annotated[DesiredState | None, Query(description="Only in this state.")] = None,
    region: Annotated[RegionName | None, Query(description="Only targeting this region.")] = None,
) -> list[EndpointManifest]:
    found = await endpoints.list_endpoints(region=region, desired_state=state)
    return [EndpointManifest.of(endpoint) for endpoint in found]


@router.post(
    "/endpoints",
    dependencies=[allow(Role.DEPLOYER)],
    status_code=status.HTTP_201_CREATED,
    summary="Create an endpoint (409 if the name is taken)",
    response_model_exclude_none=True,
)
async def create_endpoint(
    manifest: EndpointManifest, response: Response, endpoints: Endpoints
) -> EndpointManifest:
    created = await endpoints.create(manifest)
    response.headers["Location"] = f"/v1/endpoints/{created.name}"
    return _with_etag(response, created)


@router.post(
    "/apply",
    dependencies=[allow(Role.DEPLOYER)],
    summary="Apply declarations, all or none (as `servefleet apply -f`)",
)
async def apply_all(manifests: list[EndpointManifest], endpoints: Endpoints) -> list[AppliedBody]:
    if not manifests:
        raise InvalidInput(["no endpoint documents found"])
    return [AppliedBody.of(applied) for applied in await endpoints.apply_all(manifests)]


@router.get(
    "/endpoints/{name}",
    dependencies=[allow(Role.VIEWER)],
    summary="An endpoint's declaration and status (as `servefleet get NAME -o json`)",
    response_model_exclude_none=True,
)
async def get_endpoint(name: Name, response: Response, endpoints: Endpoints) -> EndpointManifest:
    endpoint, statuses = await endpoints.status(name)
    _tag(response, endpoint)
    return EndpointManifest.of(endpoint, status_section(endpoint, statuses))


@router.get(
    "/endpoints/{name}/status",
    dependencies=[allow(Role.VIEWER)],
    summary="How each region is doing (as `servefleet status NAME -o json`)",
    response_model_exclude_none=True,  # `rollout` only where there is one
)
async def endpoint_status(name: Name, response: Response, endpoints: Endpoints) -> StatusDocument:
    endpoint, statuses = await endpoints.status(name)
    _tag(response, endpoint)
    section = status_section(endpoint, statuses)
    return StatusDocument.model_validate(
        {"name": name, "generation": endpoint.generation, **section}
    )


@router.put(
    "/endpoints/{name}",
    dependencies=[allow(Role.DEPLOYER)],
    summary="Apply one declaration: create the endpoint or make it match",
)
async def apply_one(
    name: Name,
    manifest: EndpointManifest,
    response: Response,
    endpoints: Endpoints,
    if_match: IfMatch = None,
) -> AppliedBody:
    if manifest.metadata.name != name:
        raise InvalidInput(
            [
                Problem(
                    "metadata.name",
                    f"must be the name in the path, {name!r} (got {manifest.metadata.name!r})",
                    manifest.metadata.name,
                )
            ]
        )
    applied = await endpoints.apply(manifest, expected_revision=_revision(if_match))
    if applied.outcome is ApplyOutcome.CREATED:
        response.status_code = status.HTTP_201_CREATED
    _tag(response, applied.endpoint)
    return AppliedBody.of(applied)


@router.post(
    "/endpoints/{name}/scale",
    dependencies=[allow(Role.DEPLOYER)],
    summary="Set the number of replicas",
    response_model_exclude_none=True,
)
async def scale(
    name: Name,
    request: ScaleRequest,
    response: Response,
    endpoints: Endpoints,
    if_match: IfMatch = None,
) -> EndpointManifest:
    revision = _revision(if_match)
    scaled = await endpoints.scale(name, request.replicas, expected_revision=revision)
    return _with_etag(response, scaled)


@router.post(
    "/endpoints/{name}/autoscale",
    dependencies=[allow(Role.DEPLOYER)],
    summary="Turn autoscaling on with new bounds, metrics or windows, or off",
    response_model_exclude_none=True,
)
async def autoscale(
    name: Name,
    request: AutoscaleRequest,
    response: Response,
    endpoints: Endpoints,
    if_match: IfMatch = None,
) -> EndpointManifest:
    changed = await endpoints.autoscale(
        name,
        enabled=request.enabled,
        settings=request.model_dump(exclude_none=True, exclude={"enabled", "replicas"}),
        replicas=request.replicas,
        expected_revision=_revision(if_match),
    )
    return _with_etag(response, changed)


@router.post(
    "/endpoints/{name}/update-image",
    dependencies=[allow(Role.DEPLOYER)],
    summary="Roll out a new image, everywhere or in one region",
    response_model_exclude_none=True,
)
async def update_image(
    name: Name,
    request: UpdateImageRequest,
    response: Response,
    endpoints: Endpoints,
    if_match: IfMatch = None,
) -> EndpointManifest:
    updated = await endpoints.update_image(
        name, request.image, request.region, expected_revision=_revision(if_match)
    )
    return _with_etag(response, updated)


@router.post(
    "/endpoints/{name}/canary",
    dependencies=[allow(Role.DEPLOYER)],
    summary="Add a canary version, or change the one there is",
    response_model_exclude_none=True,
)
async def canary(
    name: Name,
    request: CanaryRequest,
    response: Response,
    endpoints: Endpoints,
    if_match: IfMatch = None,
) -> EndpointManifest:
    changed = await endpoints.canary(
        name,
        image=request.image,
        weight=request.weight,
        replicas=request.replicas,
        command=request.command,
        args=request.args,
        env=request.env,
        expected_revision=_revision(if_match),
    )
    return _with_etag(response, changed)


NameOnlyOperation = Callable[..., Awaitable[Endpoint]]


def _name_only_verb(verb: str, call: NameOnlyOperation, summary: str) -> None:
    """Register `POST /endpoints/{name}/<verb>`: `call(service, name)`, with If-Match."""

    async def operation(
        name: Name, response: Response, endpoints: Endpoints, if_match: IfMatch = None
    ) -> EndpointManifest:
        changed = await call(endpoints, name, expected_revision=_revision(if_match))
        return _with_etag(response, changed)

    operation.__name__ = verb
    router.post(
        f"/endpoints/{{name}}/{verb}",
        dependencies=[allow(Role.DEPLOYER)],
        summary=summary,
        response_model_exclude_none=True,
    )(operation)


_name_only_verb(
    "stop", EndpointService.stop, "Stop every replica and remove the route; the declaration stays"
)
_name_only_verb("start", EndpointService.start, "Run a stopped endpoint again")
_name_only_verb(
    "promote", EndpointService.promote, "Make the canary the primary version, remove the canary"
)
_name_only_verb(
    "rollback", EndpointService.rollback, "Remove the canary; all traffic goes to the primary"
)


@router.delete(
    "/endpoints/{name}",
    dependencies=[allow(Role.DEPLOYER)],
    summary="Delete from every region; the record is purged once all are clean",
    response_model_exclude_none=True,
)
async def delete(
    name: Name, response: Response, endpoints: Endpoints, if_match: IfMatch = None
) -> EndpointManifest:
    deleted = await endpoints.delete(name, expected_revision=_revision(if_match))
    return _with_etag(response, deleted)


# Progressive rollouts: each answers the document with its status section (as
# `GET /v1/endpoints/{name}`), whose `rollout` shows the wave, step, weights and
# last decision.


class StartRequest(_Body):
    image: str
    """The new version's image, brought in wave by wave (`spec.rollout`)."""


async def _with_rollout_status(
    response: Response, endpoints: Endpoints, changed: Endpoint
) -> EndpointManifest:
    _, statuses = await endpoints.status(changed.name)
    _tag(response, changed)
    return EndpointManifest.of(changed, status_section(changed, statuses))


@router.post(
    "/endpoints/{name}/rollout/start",
    dependencies=[allow(Role.DEPLOYER)],
    summary="Roll a new image out wave by wave, rolled back everywhere on a breach",
    response_model_exclude_none=True,
)
async def start(
    name: Name,
    request: StartRequest,
    response: Response,
    endpoints: Endpoints,
    if_match: IfMatch = None,
) -> EndpointManifest:
    started = await RolloutService(endpoints).start(
        name, request.image, expected_revision=_revision(if_match)
    )
    return await _with_rollout_status(response, endpoints, started)


def _rollout_verb(verb: Literal["pause", "resume", "abort"], summary: str) -> None:
    async def operation(
        name: Name, response: Response, endpoints: Endpoints, if_match: IfMatch = None
    ) -> EndpointManifest:
        rollouts = RolloutService(endpoints)
        call = {"pause": rollouts.pause, "resume": rollouts.resume, "abort": rollouts.abort}[verb]
        changed = await call(name, expected_revision=_revision(if_match))
        return await _with_rollout_status(response, endpoints, changed)

    operation.__name__ = f"rollout_{verb}"
    router.post(
        f"/endpoints/{{name}}/rollout/{verb}",
        dependencies=[allow(Role.DEPLOYER)],
        summary=summary,
        response_model_exclude_none=True,
    )(operation)


_rollout_verb("pause", "Hold the rollout's weights (guard rails still roll back)")
_rollout_verb("resume", "Go on after a pause, or start the next wave")
_rollout_verb("abort", "Roll back now: the old version in every region")
