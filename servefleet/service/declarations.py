"""Creating endpoints and applying declarations (`deploy`, `create`, `apply`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

from servefleet.service.checks import (
    check_region_images,
    check_rollout,
    check_scale_to_zero,
    refuse_if_deleted,
    region_names,
    registered_targets,
)
from servefleet.service.records import MAX_ATTEMPTS, Change, EndpointRecords
from servefleet.service.refusals import OperationRefused, UnregisteredRegion, busy
from servefleet.spec import (
    DesiredState,
    Endpoint,
    EndpointManifest,
    EndpointSpec,
    InvalidInput,
    Region,
    declared_more_than_once,
    invalid_input,
)
from servefleet.store import EndpointExists, EndpointNotFound, RevisionConflict

__all__ = [
    "Applied",
    "ApplyOutcome",
    "DeclarationOperations",
]


class _Unread:
    """No record was read for `_apply_checked`: it reads one."""


_UNREAD = _Unread()


class ApplyOutcome(StrEnum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Applied:
    endpoint: Endpoint
    outcome: ApplyOutcome


class DeclarationOperations(EndpointRecords):
    """Creating an endpoint, or making it match a declaration."""

    async def deploy(
        self,
        name: str,
        spec: EndpointSpec,
        regions: list[str] | None = None,
        *,
        stopped: bool = False,
    ) -> Endpoint:
        """Create a new endpoint; refused if the name is taken."""
        try:
            return await self._create(name, spec, regions, stopped=stopped)
        except EndpointExists:
            raise OperationRefused(
                f"name: endpoint {name!r} already exists; change it with apply, scale, "
                "update-image or canary, or delete it first"
            ) from None

    async def create(self, manifest: EndpointManifest) -> Endpoint:
        """`deploy` from a declaration: refused, like `deploy`, if the name is taken."""
        if manifest.state == "deleted":
            raise _deletion_is_not_applied()
        try:
            return await self.deploy(
                manifest.metadata.name,
                manifest.spec,
                manifest.regions,
                stopped=manifest.state == "stopped",
            )
        except UnregisteredRegion as unregistered:
            if unregistered.field != "target_regions":
                raise
            raise unregistered.named("regions") from None  # the declaration's word for them

    async def _create(
        self,
        name: str,
        spec: EndpointSpec,
        regions: list[str] | None,
        *,
        stopped: bool,
        known: list[Region] | None = None,
    ) -> Endpoint:
        if known is None:
            known = await self._store.list_regions()
        registered = region_names(known)
        targets = registered_targets(registered, regions, "target_regions")
        check_region_images(registered, spec)
        check_scale_to_zero(known, spec, targets)
        endpoint = self._new_record(name, spec, targets, stopped=stopped)
        check_rollout(endpoint)
        return await self._store.create_endpoint(endpoint)

    def _new_record(
        self, name: str, spec: EndpointSpec, targets: list[str], *, stopped: bool
    ) -> Endpoint:
        now = self._clock()
        try:
            return Endpoint(
                name=name,
                spec=spec,
                target_regions=targets,
                desired_state=DesiredState.STOPPED if stopped else DesiredState.DEPLOYING,
                created_at=now,
                updated_at=now,
            )
        except ValidationError as error:
            raise invalid_input(error) from None

    async def check(self, manifest: EndpointManifest) -> None:
        """Every rule that needs the store, so a batch can be checked before any write:
        the regions, and that the store can hold the record `apply` would write. (That
        record is worked out from the one stored now; should another writer change it
        in between, the store still refuses, at the write, a record it cannot hold.)"""
        await self._check(manifest, await self._store.list_regions())

    async def _check(self, manifest: EndpointManifest, known: list[Region]) -> Endpoint | None:
        """`check` against the regions `known`; the stored record it read (None:
        there is none)."""
        registered = region_names(known)
        if manifest.regions is not None:
            registered_targets(registered, manifest.regions, "regions")
        check_region_images(registered, manifest.spec)
        name = manifest.metadata.name
        current = await self._current_if_any(name, None)
        if current is None:
            if manifest.state == "deleted":
                raise _deletion_is_not_applied()
            targets = registered_targets(registered, manifest.regions, "target_regions")
            stopped = manifest.state == "stopped"
            record = self._new_record(name, manifest.spec, targets, stopped=stopped)
        else:
            refuse_if_deleted(current)
            record = self._next_record(current, _declaration(manifest)(current))
        check_scale_to_zero(known, record.spec, record.target_regions)
        check_rollout(record)
        self._store.check_endpoint(record)
        return current

    async def apply_all(self, manifests: list[EndpointManifest]) -> list[Applied]:
        """`apply` each declaration, having checked them all first: one refused
        declaration leaves the store as it was."""
        duplicates = declared_more_than_once(manifests)
        if duplicates:
            raise InvalidInput(duplicates)
        # One look at the regions and at each record serves the check and the write:
        # a record changed in between fails the write's compare-and-set, which reads
        # it again (a batch of N costs N reads and N writes, not 2N reads and N
        # listings more).
        known = await self._store.list_regions()
        read = [await self._check(manifest, known) for manifest in manifests]
        return [
            await self._apply_checked(manifest, read=current, known=known)
            for manifest, current in zip(manifests, read, strict=True)
        ]

    async def apply(
        self, manifest: EndpointManifest, *, expected_revision: int | None = None
    ) -> Applied:
        """Create the endpoint, or make it match the declaration; nothing when it does.

        With `expected_revision`, only an existing record still at that revision is
        changed (`RevisionConflict` otherwise), as with every other change."""
        await self.check(manifest)
        return await self._apply_checked(manifest, expected_revision)

    async def _apply_checked(
        self,
        manifest: EndpointManifest,
        expected_revision: int | None = None,
        *,
        read: Endpoint | _Unread | None = _UNREAD,
        known: list[Region] | None = None,
    ) -> Applied:
        """`apply` a checked declaration; the first attempt takes the record `read`
        by the check if given (None: there was none) and the regions `known`."""
        name = manifest.metadata.name
        for _ in range(MAX_ATTEMPTS):
            if isinstance(read, _Unread):
                current = await self._current_if_any(name, expected_revision)
            else:
                current = read
            read = _UNREAD  # a retry reads again: another writer got there first
            if current is None:
                if expected_revision is not None:
                    raise RevisionConflict(name, expected_revision, None)
                try:
                    created = await self._create(
                        name,
                        manifest.spec,
                        manifest.regions,
                        stopped=manifest.state == "stopped",
                        known=known,
                    )
                except EndpointExists:
                    continue
                return Applied(created, ApplyOutcome.CREATED)
            updated = await self._change(
                _declaration(manifest), current=current, expected_revision=expected_revision
            )
            if updated is None:
                continue
            outcome = ApplyOutcome.UNCHANGED if updated == current else ApplyOutcome.CONFIGURED
            return Applied(updated, outcome)
        raise busy(name)

    async def _current_if_any(self, name: str, expected_revision: int | None) -> Endpoint | None:
        try:
            return await self._current(name, expected_revision)
        except EndpointNotFound:
            return None


def _declaration(manifest: EndpointManifest) -> Change:
    """The change `apply` makes to an existing record: the manifest's spec, and its
    regions and state where it names them."""
    stopped = manifest.state == "stopped"

    def declare(current: Endpoint) -> Endpoint:
        if manifest.state == "deleted":
            raise _deletion_is_not_applied()
        state = current.desired_state
        if manifest.state is not None and stopped != (state is DesiredState.STOPPED):
            state = DesiredState.STOPPED if stopped else DesiredState.DEPLOYING
        return current.model_copy(
            update={
                "spec": manifest.spec,
                "target_regions": manifest.regions or current.target_regions,
                "desired_state": state,
            }
        )

    return declare


def _deletion_is_not_applied() -> InvalidInput:
    return InvalidInput(
        ["state: 'deleted' is reported by get, not applied; use `servefleet delete NAME`"]
    )
