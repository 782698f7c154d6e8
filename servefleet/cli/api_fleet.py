"""`ApiFleet`: the `Fleet` over a `servefleet serve`'s HTTP API (`/v1`, aiohttp).

It keeps the service's contract (`fleet.py`), so a verb prints what it prints on
the store:

- records come back as `Endpoint`s made from the API's documents (the ones `get -o
  json` prints); the exact desired state, which a declaration shows as `running`
  for both `deploying` and `running`, comes from the status section where there is
  one, and the list asks which endpoints are still deploying (`?state=deploying`);
- refusals become the service's exceptions: 422 `InvalidInput` with each problem's
  field, message and value as the API sent them (the service's wording), renamed
  back to the service's field names where the API's document names them otherwise
  (`deploy` sends a declaration: `metadata.name`, `regions`); 404 the store's
  not-found error when the API says exactly that; 409 `OperationRefused`;
- 401 and 403 (the token), any other status and no answer at all are `ApiError`s
  naming the API's URL;
- `--wait` learns of changes from the watch stream (`api_watch.py`).

No request carries `If-Match`: as on the store, each change applies to the record
as the service finds it (the API's service retries on a concurrent write).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import aiohttp
from pydantic import ValidationError

from servefleet.cli.api_watch import watched
from servefleet.cli.fleet import ApiError, Applied, Changes, RolloutVerb, renamed
from servefleet.service import ApplyOutcome, OperationRefused
from servefleet.spec import (
    DesiredState,
    Endpoint,
    EndpointManifest,
    EndpointSpec,
    InvalidInput,
    Problem,
    Region,
    RegionStatus,
)
from servefleet.store import EndpointNotFound, RegionNotFound, StoreError

__all__ = ["ApiFleet", "connected"]

Read = TypeVar("Read")

CONNECT_TIMEOUT = 10.0
ANSWER_TIMEOUT = 120.0

_NO_REPORT = {"state": "pending"}
"""What a status section shows for a target region that has not reported yet."""

_DECLARATION_FIELDS = {"metadata.name": "name", "regions": "target_regions"}
"""A declaration's fields under the names `EndpointService.deploy` gives them."""


@asynccontextmanager
async def connected(base_url: str, token: str | None, *, named_by: str) -> AsyncIterator[ApiFleet]:
    """The fleet behind the API at `base_url`, which `named_by` (a flag, a variable,
    the saved login) gave."""
    if not base_url.startswith(("http://", "https://")):
        raise ApiError(f"{named_by}: must be an http:// or https:// URL (got {base_url!r})")
    timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT, connect=CONNECT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield ApiFleet(session, base_url, token)


class ApiFleet:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    # Endpoints.

    async def get(self, name: str) -> Endpoint:
        endpoint, _ = await self.status(name)
        return endpoint

    async def status(self, name: str) -> tuple[Endpoint, list[RegionStatus]]:
        document = await self._call("GET", f"/endpoints/{name}", missing=EndpointNotFound(name))
        return _read(lambda: _with_status(document))

    async def list_endpoints(self, *, region: str | None = None) -> list[Endpoint]:
        where = {"region": region} if region is not None else {}
        listed = await self._call("GET", "/endpoints", params=where)
        endpoints = _read(lambda: [_endpoint(document) for document in listed])
        if any(endpoint.desired_state is DesiredState.RUNNING for endpoint in endpoints):
            deploying = await self._call(
                "GET", "/endpoints", params={**where, "state": DesiredState.DEPLOYING.value}
            )
            names = _read(lambda: {_endpoint(document).name for document in deploying})
            endpoints = [
                endpoint.model_copy(update={"desired_state": DesiredState.DEPLOYING})
                if endpoint.name in names
                else endpoint
                for endpoint in endpoints
            ]
        return endpoints

    async def deploy(
        self, name: str, spec: EndpointSpec, regions: list[str] | None, *, stopped: bool
    ) -> Endpoint:
        declaration: dict[str, Any] = {
            "metadata": {"name": name},
            "spec": spec.model_dump(mode="json", exclude_none=True),
        }
        if regions is not None:
            declaration["regions"] = regions
        if stopped:
            declaration["state"] = DesiredState.STOPPED.value
        try:
            created = await self._call("POST", "/endpoints", declaration)
        except InvalidInput as refused:
            raise renamed(refused, _DECLARATION_FIELDS) from None
        return _read(lambda: _endpoint(created))

    async def apply_all(self, manifests: Sequence[EndpointManifest]) -> list[Applied]:
        answer = await self._call("POST", "/apply", [m.document() for m in manifests])
        return _read(
            lambda: [Applied(str(each["name"]), ApplyOutcome(each["outcome"])) for each in answer]
        )

    async def scale(self, name: str, replicas: int) -> Endpoint:
        return await self._change(name, "scale", {"replicas": replicas})

    async def autoscale(
        self,
        name: str,
        *,
        enabled: bool,
        settings: Mapping[str, Any],
        replicas: int | None,
    ) -> Endpoint:
        count = {"replicas": replicas} if replicas is not None else {}
        request = {"enabled": enabled, **count, **settings}
        return await self._change(name, "autoscale", request)

    async def update_image(self, name: str, image: str, region: str | None) -> Endpoint:
        request = {"image": image} | ({"region": region} if region is not None else {})
        return await self._change(name, "update-image", request)

    async def canary(
        self,
        name: str,
        *,
        image: str | None,
        weight: int | None,
        replicas: int | None,
        command: list[str] | None,
        env: dict[str, str] | None,
    ) -> Endpoint:
        request = {
            "image": image,
            "weight": weight,
            "replicas": replicas,
            "command": command,
            "env": env,
        }
        given = {field: value for field, value in request.items() if value is not None}
        return await self._change(name, "canary", given)

    async def stop(self, name: str) -> Endpoint:
        return await self._change(name, "stop")

    async def start(self, name: str) -> Endpoint:
        return await self._change(name, "start")

    async def promote(self, name: str) -> Endpoint:
        return await self._change(name, "promote")

    async def rollback(self, name: str) -> Endpoint:
        return await self._change(name, "rollback")

    async def delete(self, name: str) -> Endpoint:
        deleted = await self._call("DELETE", f"/endpoints/{name}", missing=EndpointNotFound(name))
        return _read(lambda: _endpoint(deleted))

    async def rollout(self, name: str, verb: RolloutVerb, image: str | None = None) -> Endpoint:
        changed = await self._call(
            "POST",
            f"/endpoints/{name}/rollout/{verb}",
            {"image": image} if verb == "start" else {},
            missing=EndpointNotFound(name),
        )
        return _read(lambda: _with_status(changed)[0])

    async def _change(self, name: str, verb: str, request: Any = None) -> Endpoint:
        """`POST /v1/endpoints/NAME/VERB`, whose answer is the changed declaration."""
        changed = await self._call(
            "POST", f"/endpoints/{name}/{verb}", request or {}, missing=EndpointNotFound(name)
        )
        return _read(lambda: _endpoint(changed))

    def changes(self, names: Sequence[str]) -> AbstractAsyncContextManager[Changes]:
        return watched(self._session, self._base_url, self._headers, names)

    # The token.

    async def whoami(self) -> tuple[str, str]:
        """The calling token's name and role."""
        answer = await self._call("GET", "/whoami")
        return _read(lambda: (str(answer["name"]), str(answer["role"])))

    # Regions.

    async def list_regions(self) -> list[Region]:
        listed = await self._call("GET", "/regions")
        return _read(lambda: [Region.model_validate(document) for document in listed])

    async def add_region(self, region: Region) -> None:
        await self._call("POST", "/regions", region.model_dump(mode="json"))

    async def drain_region(self, name: str, *, drained: bool) -> Region:
        verb = "drain" if drained else "undrain"
        stored = await self._call("POST", f"/regions/{name}/{verb}", missing=RegionNotFound(name))
        return Region.model_validate(stored)

    async def remove_region(self, name: str) -> None:
        await self._call("DELETE", f"/regions/{name}", missing=RegionNotFound(name))

    # HTTP.

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        missing: StoreError | None = None,
    ) -> Any:
        """The answer's JSON document, or the refusal raised (`missing`: what a 404
        saying exactly it means)."""
        url = f"{self._base_url}/v1{path}"
        try:
            async with self._session.request(
                method, url, json=body, params=params, headers=self._headers
            ) as response:
                status, text = response.status, await response.text()
        except aiohttp.ClientError as error:
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise ApiError(f"cannot reach the API at {self._base_url}: {reason}") from None
        except TimeoutError:
            raise ApiError(
                f"the API at {self._base_url} did not answer {method} {path} within "
                f"{ANSWER_TIMEOUT:g}s"
            ) from None
        if 200 <= status < 300:
            return _parsed(text) if text else None
        raise self._refusal(status, text, missing)

    def _refusal(self, status: int, text: str, missing: StoreError | None) -> Exception:
        try:
            answer = _parsed(text)
            message = str(answer["message"])
            problems = [
                Problem(str(p["field"]), str(p["message"]), *([p["value"]] if "value" in p else []))
                for p in answer["problems"]
            ]
        except (ApiError, KeyError, TypeError):
            shown = text.strip()[:200] or "(no body)"
            return ApiError(f"the API at {self._base_url} answered HTTP {status}: {shown}")
        if status == 422:
            return InvalidInput(problems)
        if status == 404 and missing is not None and message == str(missing):
            return missing
        if status == 409:
            return OperationRefused(message)
        if status == 401:
            return ApiError(
                f"the API at {self._base_url} refused the request: {message} "
                "(give a token with --token or SERVEFLEET_TOKEN, or `servefleet login`)"
            )
        if status == 403:
            return ApiError(f"the API at {self._base_url} refused the request: {message}")
        return ApiError(f"the API at {self._base_url} answered HTTP {status}: {message}")


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ApiError(f"the API answered something that is not JSON: {text[:200]!r}") from None


def _read(make: Callable[[], Read]) -> Read:
    """`make()`, the API's documents read into records; an `ApiError` if they cannot be."""
    try:
        return make()
    except (ValidationError, KeyError, TypeError, ValueError) as error:
        raise ApiError(f"the API answered a document the CLI cannot read: {error}") from None


def _endpoint(document: Any, desired_state: str | None = None, rollout: Any = None) -> Endpoint:
    """The record an endpoint document (`get -o json`) shows; its status section
    holds the exact desired state and the rollout."""
    manifest = EndpointManifest.model_validate(document)
    metadata = manifest.metadata
    return Endpoint.model_validate(
        {
            "name": metadata.name,
            "spec": manifest.spec,
            "desired_state": desired_state or manifest.state,
            "target_regions": manifest.regions,
            "generation": metadata.generation,
            "revision": metadata.revision,
            "created_at": metadata.created_at,
            "updated_at": metadata.updated_at,
            "rollout": rollout,
        }
    )


def _with_status(document: Any) -> tuple[Endpoint, list[RegionStatus]]:
    """The record and the regions' reports of a document with its status section."""
    section = document["status"]
    endpoint = _endpoint(document, section["desiredState"], section.get("rollout"))
    reports = [
        RegionStatus.model_validate({**report, "endpoint": endpoint.name, "region": region})
        for region, report in section["regions"].items()
        if report != _NO_REPORT
    ]
    return endpoint, reports
