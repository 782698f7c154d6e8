"""Reading endpoint records and writing their changes.

Every change of an endpoint is a read-modify-write loop: read the record, work out
the new one, write it with compare-and-set on `revision`, and on a conflict read
again and redo the change on top of what the other writer stored.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from servefleet.service.checks import (
    check_region_images,
    check_rollout,
    check_scale_to_zero,
    refuse_if_deleted,
    region_names,
)
from servefleet.service.refusals import busy
from servefleet.spec import DesiredState, Endpoint, EndpointSpec, RegionStatus, invalid_input
from servefleet.store import RevisionConflict, Store

__all__ = [
    "MAX_ATTEMPTS",
    "Change",
    "EndpointRecords",
    "revise_spec",
    "utc_now",
    "with_spec",
]

MAX_ATTEMPTS = 50


def utc_now() -> datetime:
    return datetime.now(UTC)


def revise_spec(spec: EndpointSpec, **changes: Any) -> EndpointSpec:
    """The spec with `changes`, checked by every rule again (`model_copy` checks none)."""
    try:
        return EndpointSpec.model_validate({**spec.model_dump(), **changes})
    except ValidationError as error:
        raise invalid_input(error, "spec") from None


Change = Callable[[Endpoint], Endpoint]


class EndpointRecords:
    """Reading the endpoint records, and the loop every change of one runs: read,
    work out the new record, write it with compare-and-set on `revision`."""

    def __init__(self, store: Store, clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._clock = clock

    # Reading.

    async def get(self, name: str) -> Endpoint:
        return await self._store.get_endpoint(name)

    async def list_endpoints(
        self, *, region: str | None = None, desired_state: DesiredState | None = None
    ) -> list[Endpoint]:
        return await self._store.list_endpoints(region=region, desired_state=desired_state)

    async def status(self, name: str) -> tuple[Endpoint, list[RegionStatus]]:
        endpoint = await self._store.get_endpoint(name)
        return endpoint, await self._store.list_region_status(endpoint=name)

    # The machinery.

    async def change(
        self, name: str, change: Change, *, expected_revision: int | None = None
    ) -> Endpoint:
        """Apply `change` to the record under every rule of `_mutate`, for operations
        kept beside this class (`servefleet.rollout_service`)."""
        return await self._mutate(name, change, expected_revision)

    async def _mutate(
        self,
        name: str,
        change: Change,
        expected_revision: int | None = None,
        *,
        allow_deleted: bool = False,
    ) -> Endpoint:
        """Apply `change` to the current record, again on top of another writer's
        work after a conflict; with `expected_revision`, only to the record at that
        revision (optimistic concurrency left to the caller: no retry)."""
        for _ in range(MAX_ATTEMPTS):
            current = await self._current(name, expected_revision)
            updated = await self._change(
                change,
                current=current,
                allow_deleted=allow_deleted,
                expected_revision=expected_revision,
            )
            if updated is not None:
                return updated
        raise busy(name)

    async def _current(self, name: str, expected_revision: int | None) -> Endpoint:
        current = await self._store.get_endpoint(name)
        if expected_revision is not None and current.revision != expected_revision:
            raise RevisionConflict(name, expected_revision, current.revision)
        return current

    async def _change(
        self,
        change: Change,
        *,
        current: Endpoint,
        allow_deleted: bool = False,
        expected_revision: int | None = None,
    ) -> Endpoint | None:
        """Write `change(current)`; None when another writer got there first, unless
        the caller named the revision it read: it learns that revision is stale."""
        if not allow_deleted:
            refuse_if_deleted(current)
        wanted = change(current)
        if wanted.intent() == current.intent():
            if wanted.rollout == current.rollout:
                return current
            # A rollout's pause or reason: written, but nothing for a region to do.
            record = wanted.model_copy(update={"updated_at": self._clock()})
            return await self._write(current, record, expected_revision)
        check_rollout(wanted)
        if wanted.spec.region_images != current.spec.region_images:
            check_region_images(await self._registered(), wanted.spec)
        if (wanted.spec.autoscaling, wanted.target_regions) != (
            current.spec.autoscaling,
            current.target_regions,
        ):
            check_scale_to_zero(
                await self._store.list_regions(), wanted.spec, wanted.target_regions
            )
        return await self._write(current, self._next_record(current, wanted), expected_revision)

    async def _write(
        self, current: Endpoint, record: Endpoint, expected_revision: int | None
    ) -> Endpoint | None:
        try:
            return await self._store.update_endpoint(record, expected_revision=current.revision)
        except RevisionConflict:
            if expected_revision is not None:
                raise
            return None

    def _next_record(self, current: Endpoint, wanted: Endpoint) -> Endpoint:
        """`wanted` as the record that follows `current`: its next generation."""
        # A new generation is not running until the regions say so.
        state = wanted.desired_state
        if state is DesiredState.RUNNING:
            state = DesiredState.DEPLOYING
        return wanted.model_copy(
            update={
                "generation": current.generation + 1,
                "desired_state": state,
                "updated_at": self._clock(),
            }
        )

    async def _registered(self) -> list[str]:
        return region_names(await self._store.list_regions())


def with_spec(endpoint: Endpoint, spec: EndpointSpec) -> Endpoint:
    return endpoint.model_copy(update={"spec": spec})
