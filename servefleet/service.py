"""The operations users perform on endpoints and regions, with their rules.

Every change of an endpoint is a read-modify-write loop: read the record, work out
the new one, write it with compare-and-set on `revision`, and on a conflict read
again and redo the change on top of what the other writer stored. So concurrent
writers (two CLI invocations, the CLI and a reconciler) never lose each other's
work, and a rule is always checked against the record it is applied to.

A change whose result equals the stored intent writes nothing, so re-applying
the same declaration leaves even `revision` untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from servefleet.spec import (
    CanarySpec,
    DesiredState,
    Endpoint,
    EndpointManifest,
    EndpointSpec,
    InvalidInput,
    Problem,
    Region,
    RegionStatus,
    declared_more_than_once,
    invalid_input,
)
from servefleet.store import (
    EndpointExists,
    EndpointNotFound,
    RevisionConflict,
    Store,
)

__all__ = [
    "ApplyOutcome",
    "EndpointService",
    "OperationRefused",
    "RegionNotTargeted",
    "UnregisteredRegion",
    "utc_now",
]

_MAX_ATTEMPTS = 50


class OperationRefused(Exception):
    """The operation breaks a rule about the endpoint's current state."""


class UnregisteredRegion(InvalidInput):
    """A region named for an endpoint is not registered.

    `field` is the name the user gave the regions under: the record's
    `target_regions`, a declaration's `regions`, the command line's `--region`. The
    service names its own; a front end that calls them something else renames it
    with `named`, so the one message reads right wherever the region came from.
    """

    def __init__(self, field: str, region: str, registered: list[str]) -> None:
        super().__init__(
            [
                Problem(
                    field,
                    f"region {region!r} is not registered "
                    f"(registered: {', '.join(registered) or 'none'})",
                    region,
                )
            ]
        )
        self.field = field
        self.region = region
        self.registered = registered

    def named(self, field: str) -> UnregisteredRegion:
        return UnregisteredRegion(field, self.region, self.registered)


class RegionNotTargeted(OperationRefused):
    """A registered region named for a change of one region's part of an endpoint is
    not one of the endpoint's targets. `field` and `named` as for `UnregisteredRegion`."""

    def __init__(self, field: str, region: str, endpoint: str, targets: list[str]) -> None:
        super().__init__(
            f"{field}: region {region!r} is not a target of {endpoint!r} "
            f"(targets: {', '.join(targets)})"
        )
        self.field = field
        self.region = region
        self.endpoint = endpoint
        self.targets = targets

    def named(self, field: str) -> RegionNotTargeted:
        return RegionNotTargeted(field, self.region, self.endpoint, self.targets)


class ApplyOutcome(StrEnum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Applied:
    endpoint: Endpoint
    outcome: ApplyOutcome


def utc_now() -> datetime:
    return datetime.now(UTC)


def revise_spec(spec: EndpointSpec, **changes: Any) -> EndpointSpec:
    """The spec with `changes`, checked by every rule again (`model_copy` checks none)."""
    try:
        return EndpointSpec.model_validate({**spec.model_dump(), **changes})
    except ValidationError as error:
        raise invalid_input(error, "spec") from None


Change = Callable[[Endpoint], Endpoint]


class EndpointService:
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

    # Declaring.

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
        self, name: str, spec: EndpointSpec, regions: list[str] | None, *, stopped: bool
    ) -> Endpoint:
        known = await self._store.list_regions()
        registered = _names(known)
        targets = _targets(registered, regions, "target_regions")
        _check_region_images(registered, spec)
        _check_scale_to_zero(known, spec, targets)
        endpoint = self._new_record(name, spec, targets, stopped=stopped)
        _check_rollout(endpoint)
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

    async def _check(self, manifest: EndpointManifest, known: list[Region]) -> None:
        registered = _names(known)
        if manifest.regions is not None:
            _targets(registered, manifest.regions, "regions")
        _check_region_images(registered, manifest.spec)
        name = manifest.metadata.name
        try:
            current = await self._store.get_endpoint(name)
        except EndpointNotFound:
            if manifest.state == "deleted":
                raise _deletion_is_not_applied() from None
            targets = _targets(registered, manifest.regions, "target_regions")
            stopped = manifest.state == "stopped"
            record = self._new_record(name, manifest.spec, targets, stopped=stopped)
        else:
            _refuse_if_deleted(current)
            record = self._next_record(current, _declaration(manifest)(current))
        _check_scale_to_zero(known, record.spec, record.target_regions)
        _check_rollout(record)
        self._store.check_endpoint(record)

    async def apply_all(self, manifests: list[EndpointManifest]) -> list[Applied]:
        """`apply` each declaration, having checked them all first: one refused
        declaration leaves the store as it was."""
        duplicates = declared_more_than_once(manifests)
        if duplicates:
            raise InvalidInput(duplicates)
        known = await self._store.list_regions()
        for manifest in manifests:
            await self._check(manifest, known)
        return [await self._apply_checked(manifest) for manifest in manifests]

    async def apply(
        self, manifest: EndpointManifest, *, expected_revision: int | None = None
    ) -> Applied:
        """Create the endpoint, or make it match the declaration; nothing when it does.

        With `expected_revision`, only an existing record still at that revision is
        changed (`RevisionConflict` otherwise), as with every other change."""
        await self.check(manifest)
        return await self._apply_checked(manifest, expected_revision)

    async def _apply_checked(
        self, manifest: EndpointManifest, expected_revision: int | None = None
    ) -> Applied:
        name = manifest.metadata.name
        for _ in range(_MAX_ATTEMPTS):
            try:
                current = await self._current(name, expected_revision)
            except EndpointNotFound:
                if expected_revision is not None:
                    raise RevisionConflict(name, expected_revision, None) from None
                try:
                    created = await self._create(
                        name, manifest.spec, manifest.regions, stopped=manifest.state == "stopped"
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
        raise _busy(name)

    # Changing.

    async def scale(
        self, name: str, replicas: int, *, expected_revision: int | None = None
    ) -> Endpoint:
        def scale(current: Endpoint) -> Endpoint:
            autoscaling = current.spec.autoscaling
            if autoscaling.enabled:
                raise OperationRefused(
                    f"replicas: {name!r} is autoscaled between {autoscaling.min_replicas} and "
                    f"{autoscaling.max_replicas}, so its count is the autoscaler's; change the "
                    f"bounds (servefleet autoscale {name} --min N --max M) or turn autoscaling "
                    f"off with a count (servefleet autoscale {name} --off --replicas {replicas})"
                )
            return _with_spec(current, revise_spec(current.spec, replicas=replicas))

        return await self._mutate(name, scale, expected_revision)

    async def autoscale(
        self,
        name: str,
        *,
        enabled: bool = True,
        settings: Mapping[str, Any] | None = None,
        replicas: int | None = None,
        expected_revision: int | None = None,
    ) -> Endpoint:
        """Turn autoscaling on with `settings` (fields of `AutoscalingSpec`: bounds,
        metrics, windows) laid over the ones declared, or off, running `replicas`
        (the declared count when None). The settings are kept while it is off, so
        turning it on again restores them."""
        given = dict(settings or {})
        if not enabled and given:
            raise InvalidInput(
                [
                    Problem(field, "sets autoscaling; it cannot go with turning it off")
                    for field in sorted(given)
                ]
            )
        if enabled and replicas is not None:
            raise InvalidInput(
                [
                    Problem(
                        "replicas",
                        "only with turning autoscaling off: while it is on, the count is "
                        "the autoscaler's, between min_replicas and max_replicas",
                        replicas,
                    )
                ]
            )

        def autoscale(current: Endpoint) -> Endpoint:
            autoscaling = {**current.spec.autoscaling.model_dump(), **given, "enabled": enabled}
            changes: dict[str, Any] = {"autoscaling": autoscaling}
            if replicas is not None:
                changes["replicas"] = replicas
            return _with_spec(current, revise_spec(current.spec, **changes))

        return await self._mutate(name, autoscale, expected_revision)

    async def update_image(
        self,
        name: str,
        image: str,
        region: str | None = None,
        *,
        expected_revision: int | None = None,
    ) -> Endpoint:
        """Roll out `image` everywhere, or only in `region` (a per-region override)."""
        if region is not None:
            _targets(await self._registered(), [region], "region")

        def update(current: Endpoint) -> Endpoint:
            if region is None:
                return _with_spec(current, revise_spec(current.spec, image=image))
            if region not in current.target_regions:
                raise RegionNotTargeted("region", region, name, current.target_regions)
            images = {**current.spec.region_images, region: image}
            return _with_spec(current, revise_spec(current.spec, region_images=images))

        return await self._mutate(name, update, expected_revision)

    async def stop(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        return await self._mutate(name, _with_state(DesiredState.STOPPED), expected_revision)

    async def start(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        return await self._mutate(name, _with_state(DesiredState.DEPLOYING), expected_revision)

    async def canary(
        self,
        name: str,
        *,
        image: str | None = None,
        weight: int | None = None,
        replicas: int | None = None,
        command: list[str] | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        expected_revision: int | None = None,
    ) -> Endpoint:
        """Add a canary version, or change the one there is.

        The canary runs the primary's env with its own `env` laid over it; `env`
        adds or overrides keys of that overlay and keeps the ones set before, as
        `update_image(region=...)` does with per-region images.
        """
        given = {
            key: value
            for key, value in {
                "image": image,
                "weight": weight,
                "replicas": replicas,
                "command": command,
                "args": args,
                "env": env,
            }.items()
            if value is not None
        }

        def set_canary(current: Endpoint) -> Endpoint:
            existing = current.spec.canary
            if existing is None and not given.keys() & {"image", "command", "args", "env"}:
                raise OperationRefused(
                    f"canary.image: {name!r} has no canary yet; give the new version's image "
                    "(or its command, args or env)"
                )
            canary = (existing.model_dump() if existing else {}) | given
            if env is not None and existing is not None:
                canary["env"] = {**existing.env, **env}
            return _with_spec(current, revise_spec(current.spec, canary=canary))

        return await self._mutate(name, set_canary, expected_revision)

    async def promote(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        """Make the canary version the primary one and remove the canary."""

        def promote(current: Endpoint) -> Endpoint:
            canary = _require_canary(current, "promote")
            changes: dict[str, Any] = {"canary": None, "env": {**current.spec.env, **canary.env}}
            for field in ("image", "command", "args"):
                if getattr(canary, field) is not None:
                    changes[field] = getattr(canary, field)
            return _with_spec(current, revise_spec(current.spec, **changes))

        return await self._mutate(name, promote, expected_revision)

    async def rollback(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        """Remove the canary; all traffic goes back to the primary version."""

        def rollback(current: Endpoint) -> Endpoint:
            _require_canary(current, "roll back")
            return _with_spec(current, revise_spec(current.spec, canary=None))

        return await self._mutate(name, rollback, expected_revision)

    async def delete(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        """Mark the endpoint deleted; it is purged once every region has removed it."""

        def delete(current: Endpoint) -> Endpoint:
            return current.model_copy(update={"desired_state": DesiredState.DELETED})

        return await self._mutate(name, delete, expected_revision, allow_deleted=True)

    # Regions.

    async def add_region(self, region: Region) -> None:
        """Register `region`, or change how it is registered."""
        if not region.scales_to_zero:
            # The rule `_check_scale_to_zero` applies to endpoints, seen from the region.
            to_zero = [
                endpoint.name
                for endpoint in await self._store.list_endpoints(region=region.name)
                if endpoint.spec.autoscaling.min_replicas == 0
                and endpoint.desired_state is not DesiredState.DELETED
            ]
            if to_zero:
                raise OperationRefused(
                    f"autoscaler: {', '.join(to_zero)} scale to zero in {region.name!r} "
                    "(autoscaling.min_replicas 0), which its HorizontalPodAutoscaler "
                    "cannot: it keeps at least 1 replica; register the region with "
                    "--autoscaler keda, or raise their min_replicas or move them first"
                )
        await self._store.put_region(region)

    async def list_regions(self) -> list[Region]:
        return await self._store.list_regions()

    async def get_region(self, name: str) -> Region:
        return await self._store.get_region(name)

    async def remove_region(self, name: str) -> None:
        await self._store.get_region(name)
        users = [
            endpoint.name
            for endpoint in await self._store.list_endpoints()
            if name in endpoint.target_regions or name in endpoint.spec.region_images
        ]
        if users:
            raise OperationRefused(
                f"region: {name!r} is still a target of {', '.join(users)}; "
                "move or delete those endpoints first"
            )
        await self._store.delete_region(name)

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
        for _ in range(_MAX_ATTEMPTS):
            current = await self._current(name, expected_revision)
            updated = await self._change(
                change,
                current=current,
                allow_deleted=allow_deleted,
                expected_revision=expected_revision,
            )
            if updated is not None:
                return updated
        raise _busy(name)

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
            _refuse_if_deleted(current)
        wanted = change(current)
        if wanted.intent() == current.intent():
            if wanted.rollout == current.rollout:
                return current
            # A rollout's pause or reason: written, but nothing for a region to do.
            record = wanted.model_copy(update={"updated_at": self._clock()})
            return await self._write(current, record, expected_revision)
        _check_rollout(wanted)
        if wanted.spec.region_images != current.spec.region_images:
            _check_region_images(await self._registered(), wanted.spec)
        if (wanted.spec.autoscaling, wanted.target_regions) != (
            current.spec.autoscaling,
            current.target_regions,
        ):
            _check_scale_to_zero(
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
        return _names(await self._store.list_regions())


def _names(regions: list[Region]) -> list[str]:
    return [region.name for region in regions]


def _targets(registered: list[str], regions: Iterable[str] | None, field: str) -> list[str]:
    """`regions`, each one registered (`field` is what the caller calls them), or
    every registered region when none are named."""
    if regions is None:
        if not registered:
            raise OperationRefused(
                "target_regions: no region is registered; add one with "
                "`servefleet regions add NAME --kind local`"
            )
        return registered
    targets = list(regions)
    for region in targets:
        if region not in registered:
            raise UnregisteredRegion(field, region, registered)
    return targets


def _check_region_images(registered: list[str], spec: EndpointSpec) -> None:
    for region in spec.region_images:
        if region not in registered:
            raise UnregisteredRegion("spec.region_images", region, registered)


def _check_scale_to_zero(known: list[Region], spec: EndpointSpec, targets: list[str]) -> None:
    """Refuse `min_replicas: 0` for a kubernetes region that scales with a
    HorizontalPodAutoscaler rather than have it quietly keep a replica: the API
    server refuses `minReplicas: 0` unless an alpha feature gate is on. A region
    registered with `--autoscaler keda` scales to zero through its ScaledObject.
    Checked whatever `enabled` says, like the spec's own autoscaling rules, so
    switching autoscaling on later meets no surprise."""
    if spec.autoscaling.min_replicas > 0:
        return
    cannot = {region.name for region in known if not region.scales_to_zero}
    for region in targets:
        if region in cannot:
            raise InvalidInput(
                [
                    Problem(
                        "spec.autoscaling.min_replicas",
                        f"region {region!r} scales with the HorizontalPodAutoscaler, which "
                        "cannot scale to zero; register it with --autoscaler keda, set "
                        f"min_replicas to 1 or more, or leave {region!r} out of the "
                        "regions (got 0)",
                        0,
                    )
                ]
            )


def _check_rollout(endpoint: Endpoint) -> None:
    """The rollout policy's waves against the targets; and no manual canary beside a
    rollout under way, whose new version is the canary wherever it has reached."""
    if endpoint.spec.rollout is not None:
        problems = endpoint.spec.rollout.wave_problems(endpoint.target_regions)
        if problems:
            raise InvalidInput(problems)
    rollout = endpoint.rollout
    if rollout is not None and rollout.phase.active and endpoint.spec.canary is not None:
        raise OperationRefused(
            f"canary: {endpoint.name!r} is rolling out {rollout.image}, whose canary it is; "
            f"abort the rollout first (servefleet rollout abort {endpoint.name})"
        )


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


def _with_spec(endpoint: Endpoint, spec: EndpointSpec) -> Endpoint:
    return endpoint.model_copy(update={"spec": spec})


def _with_state(state: DesiredState) -> Change:
    def change(current: Endpoint) -> Endpoint:
        if current.desired_state.runs and state.runs:
            return current
        return current.model_copy(update={"desired_state": state})

    return change


def _refuse_if_deleted(endpoint: Endpoint) -> None:
    if endpoint.desired_state is DesiredState.DELETED:
        raise OperationRefused(f"endpoint {endpoint.name!r} is being deleted")


def _require_canary(endpoint: Endpoint, verb: str) -> CanarySpec:
    if endpoint.spec.canary is None:
        raise OperationRefused(f"canary: {endpoint.name!r} has no canary to {verb}")
    return endpoint.spec.canary


def _deletion_is_not_applied() -> InvalidInput:
    return InvalidInput(
        ["state: 'deleted' is reported by get, not applied; use `servefleet delete NAME`"]
    )


def _busy(name: str) -> OperationRefused:
    return OperationRefused(
        f"endpoint {name!r} is being changed by other writers too often; try again"
    )
