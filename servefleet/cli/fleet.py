"""What the store-backed verbs call: `Fleet`, the operations they need, with two
implementations — `StoreFleet` over `EndpointService` on an opened store, and
`ApiFleet` (`api_fleet.py`) over a `servefleet serve`'s HTTP API.

Both keep the service's contract, so a verb prints the same whichever it got: the
same records back, and the same refusals — `InvalidInput` with the service's field
names, `OperationRefused`, `EndpointNotFound`/`RegionNotFound` and other
`StoreError`s with the service's words. What only the API can answer (a refused
token, no answer at all) is an `ApiError`, whose message is the line to print.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from servefleet.rollout_service import RolloutService
from servefleet.service import ApplyOutcome, EndpointService, OperationRefused
from servefleet.spec import (
    Endpoint,
    EndpointManifest,
    EndpointSpec,
    InvalidInput,
    Problem,
    Region,
    RegionStatus,
)

__all__ = [
    "POLL_INTERVAL",
    "ApiError",
    "Applied",
    "Changes",
    "Fleet",
    "Polled",
    "RolloutVerb",
    "StoreFleet",
    "renamed",
]

RolloutVerb = Literal["start", "pause", "resume", "abort"]

POLL_INTERVAL = 0.25
"""Seconds between looks where nothing announces a change."""


class ApiError(Exception):
    """The API could not be reached, refused the token, or answered what the CLI
    cannot read; the message says which, in one line."""


@dataclass(frozen=True)
class Applied:
    """What `apply` did to one declaration."""

    name: str
    outcome: ApplyOutcome


class Changes(Protocol):
    """When the endpoints being waited for may have changed (`--wait`)."""

    async def next(self, within: float) -> None:
        """Return once something may have changed, or after `within` seconds."""


class Polled:
    """Changes nobody announces: it is worth looking again every `POLL_INTERVAL`."""

    async def next(self, within: float) -> None:
        await asyncio.sleep(max(0.0, min(within, POLL_INTERVAL)))


class Fleet(Protocol):
    async def get(self, name: str) -> Endpoint: ...

    async def status(self, name: str) -> tuple[Endpoint, list[RegionStatus]]: ...

    async def list_endpoints(self, *, region: str | None = None) -> list[Endpoint]: ...

    async def deploy(
        self, name: str, spec: EndpointSpec, regions: list[str] | None, *, stopped: bool
    ) -> Endpoint: ...

    async def apply_all(self, manifests: Sequence[EndpointManifest]) -> list[Applied]: ...

    async def scale(self, name: str, replicas: int) -> Endpoint: ...

    async def autoscale(
        self,
        name: str,
        *,
        enabled: bool,
        settings: Mapping[str, Any],
        replicas: int | None,
    ) -> Endpoint: ...

    async def update_image(self, name: str, image: str, region: str | None) -> Endpoint: ...

    async def canary(
        self,
        name: str,
        *,
        image: str | None,
        weight: int | None,
        replicas: int | None,
        command: list[str] | None,
        env: dict[str, str] | None,
    ) -> Endpoint: ...

    async def stop(self, name: str) -> Endpoint: ...

    async def start(self, name: str) -> Endpoint: ...

    async def promote(self, name: str) -> Endpoint: ...

    async def rollback(self, name: str) -> Endpoint: ...

    async def delete(self, name: str) -> Endpoint: ...

    async def rollout(self, name: str, verb: RolloutVerb, image: str | None = None) -> Endpoint:
        """`servefleet rollout VERB NAME`: start (with `image`), pause, resume or abort."""
        ...

    async def list_regions(self) -> list[Region]: ...

    async def add_region(self, region: Region) -> None: ...

    async def drain_region(self, name: str, *, drained: bool) -> Region:
        """`servefleet regions drain|undrain NAME`: the region as stored now."""
        ...

    async def remove_region(self, name: str) -> None: ...

    def changes(self, names: Sequence[str]) -> AbstractAsyncContextManager[Changes]:
        """While open, tells when endpoints `names` or their statuses may have changed."""
        ...


class StoreFleet:
    """The fleet as the store holds it, through the service."""

    def __init__(self, service: EndpointService) -> None:
        self._service = service

    async def get(self, name: str) -> Endpoint:
        return await self._service.get(name)

    async def status(self, name: str) -> tuple[Endpoint, list[RegionStatus]]:
        return await self._service.status(name)

    async def list_endpoints(self, *, region: str | None = None) -> list[Endpoint]:
        return await self._service.list_endpoints(region=region)

    async def deploy(
        self, name: str, spec: EndpointSpec, regions: list[str] | None, *, stopped: bool
    ) -> Endpoint:
        return await self._service.deploy(name, spec, regions, stopped=stopped)

    async def apply_all(self, manifests: Sequence[EndpointManifest]) -> list[Applied]:
        applied = await self._service.apply_all(list(manifests))
        return [Applied(each.endpoint.name, each.outcome) for each in applied]

    async def scale(self, name: str, replicas: int) -> Endpoint:
        return await self._service.scale(name, replicas)

    async def autoscale(
        self,
        name: str,
        *,
        enabled: bool,
        settings: Mapping[str, Any],
        replicas: int | None,
    ) -> Endpoint:
        return await self._service.autoscale(
            name, enabled=enabled, settings=settings, replicas=replicas
        )

    async def update_image(self, name: str, image: str, region: str | None) -> Endpoint:
        return await self._service.update_image(name, image, region)

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
        return await self._service.canary(
            name, image=image, weight=weight, replicas=replicas, command=command, env=env
        )

    async def stop(self, name: str) -> Endpoint:
        return await self._service.stop(name)

    async def start(self, name: str) -> Endpoint:
        return await self._service.start(name)

    async def promote(self, name: str) -> Endpoint:
        return await self._service.promote(name)

    async def rollback(self, name: str) -> Endpoint:
        return await self._service.rollback(name)

    async def delete(self, name: str) -> Endpoint:
        return await self._service.delete(name)

    async def rollout(self, name: str, verb: RolloutVerb, image: str | None = None) -> Endpoint:
        rollouts = RolloutService(self._service)
        if verb == "start":
            assert image is not None
            return await rollouts.start(name, image)
        operation = {"pause": rollouts.pause, "resume": rollouts.resume, "abort": rollouts.abort}
        return await operation[verb](name)

    async def list_regions(self) -> list[Region]:
        return await self._service.list_regions()

    async def add_region(self, region: Region) -> None:
        await self._service.add_region(region)

    async def drain_region(self, name: str, *, drained: bool) -> Region:
        return await self._service.drain_region(name, drained=drained)

    async def remove_region(self, name: str) -> None:
        await self._service.remove_region(name)

    @asynccontextmanager
    async def changes(self, names: Sequence[str]) -> AsyncIterator[Changes]:
        # The change feed carries no region status: polling sees both.
        yield Polled()


def renamed(refusal: InvalidInput | OperationRefused, names: Mapping[str, str]) -> Exception:
    """`refusal` (of the same kind) with its problems about a field of `names` naming
    it as `names` says: the name the user gave it under (`--region` for the
    service's `region`)."""
    if isinstance(refusal, InvalidInput):
        return InvalidInput(
            [
                dataclasses.replace(problem, field=names.get(problem.field, problem.field))
                for problem in refusal.details
            ]
        )
    problem = Problem.of(str(refusal))
    if problem.field not in names:
        return refusal
    return OperationRefused(str(dataclasses.replace(problem, field=names[problem.field])))
