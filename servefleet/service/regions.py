"""Registering regions, and removing them once no endpoint uses them."""

from __future__ import annotations

from collections.abc import Callable

from servefleet.service.records import MAX_ATTEMPTS, EndpointRecords
from servefleet.service.refusals import OperationRefused
from servefleet.spec import DesiredState, Region
from servefleet.store import RegionChanged, RegionNotFound

__all__ = [
    "RegionOperations",
]


class RegionOperations(EndpointRecords):
    """Registering, reading and removing regions."""

    async def add_region(self, region: Region) -> None:
        """Register `region`, or change how it is registered. A region registered
        again keeps its `drained` flag: draining is what `drain_region` changes, not
        a setting that a new registration returns to its default."""
        if not region.scales_to_zero:
            # The rule `check_scale_to_zero` applies to endpoints, seen from the region.
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
        await self._write_region(
            region.name,
            lambda stored: (
                region if stored is None else region.model_copy(update={"drained": stored.drained})
            ),
        )

    async def drain_region(self, name: str, *, drained: bool = True) -> Region:
        """Mark the region drained (the global entry sends it no new request) or not;
        the region as stored now."""

        def drain(stored: Region | None) -> Region:
            if stored is None:
                raise RegionNotFound(name)
            return stored.model_copy(update={"drained": drained})

        return await self._write_region(name, drain)

    async def _write_region(self, name: str, change: Callable[[Region | None], Region]) -> Region:
        """Write `change(stored)` (None: not registered) as a compare-and-set on the
        stored record, again on top of another writer's work after a conflict."""
        for _ in range(MAX_ATTEMPTS):
            try:
                stored: Region | None = await self._store.get_region(name)
            except RegionNotFound:
                stored = None
            region = change(stored)
            if region == stored:
                return region
            try:
                await self._store.replace_region(region, expected=stored)
            except RegionChanged:
                continue
            return region
        raise OperationRefused(
            f"region: {name!r} was changed by other writers {MAX_ATTEMPTS} times in a row "
            "while this change was being written; try again"
        )

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
