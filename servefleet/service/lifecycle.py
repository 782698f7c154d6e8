"""An endpoint's image, running or stopped, and deletion."""

from __future__ import annotations

from servefleet.service.checks import registered_targets
from servefleet.service.records import Change, EndpointRecords, revise_spec, with_spec
from servefleet.service.refusals import RegionNotTargeted
from servefleet.spec import DesiredState, Endpoint

__all__ = [
    "LifecycleOperations",
]


class LifecycleOperations(EndpointRecords):
    """A new image, stopping and starting, and deleting."""

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
            registered_targets(await self._registered(), [region], "region")

        def update(current: Endpoint) -> Endpoint:
            if region is None:
                return with_spec(current, revise_spec(current.spec, image=image))
            if region not in current.target_regions:
                raise RegionNotTargeted("region", region, name, current.target_regions)
            images = {**current.spec.region_images, region: image}
            return with_spec(current, revise_spec(current.spec, region_images=images))

        return await self._mutate(name, update, expected_revision)

    async def stop(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        return await self._mutate(name, _with_state(DesiredState.STOPPED), expected_revision)

    async def start(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        return await self._mutate(name, _with_state(DesiredState.DEPLOYING), expected_revision)

    async def delete(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        """Mark the endpoint deleted; it is purged once every region has removed it."""

        def delete(current: Endpoint) -> Endpoint:
            return current.model_copy(update={"desired_state": DesiredState.DELETED})

        return await self._mutate(name, delete, expected_revision, allow_deleted=True)


def _with_state(state: DesiredState) -> Change:
    def change(current: Endpoint) -> Endpoint:
        if current.desired_state.runs and state.runs:
            return current
        return current.model_copy(update={"desired_state": state})

    return change
