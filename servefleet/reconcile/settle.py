"""The fleet-wide consequences of one region's report, drawn by its controller.

After each pass (`Controller.reconcile`) the region's report may settle the whole
endpoint: `deploying` becomes `running` once every target region is READY at the
current generation, and a deleted endpoint is purged once every region that held
it reports it removed. A region that turns READY reads every region's report only
when none led here still keeps the endpoint deploying (`shared.SharedRecords`):
the last of them to turn READY does, unless every target region is led here (their
reports here are then the store's). A purged endpoint is forgotten by its
controller (`records.KnownRecords`) along with its report.
"""

from __future__ import annotations

import logging

from servefleet.plan import fleet_state, purgeable, ready_in
from servefleet.reconcile.records import KnownRecords
from servefleet.reconcile.settings import Fence, log_fields
from servefleet.reconcile.shared import SharedRecords
from servefleet.spec import DesiredState, Endpoint, RegionState, RegionStatus
from servefleet.store import EndpointNotFound, RevisionConflict, Store

__all__ = ["Settler"]

log = logging.getLogger(__name__)


class Settler:
    """Settles what one region's reports decide for the fleet (module docstring)."""

    def __init__(
        self,
        store: Store,
        region: str,
        *,
        fence: Fence,
        shared: SharedRecords,
        records: KnownRecords,
        statuses: dict[str, RegionStatus],
    ) -> None:
        self._store = store
        self._region = region
        self._fence = fence
        self._shared = shared
        self._records = records
        self._statuses = statuses
        """The region's reports, by endpoint: its controller's, updated in place."""

    async def settle(self, endpoint: Endpoint, report: RegionStatus) -> None:
        """The fleet-wide consequences of this region's report: a deleted endpoint
        purged once every region has removed it; `deploying` becoming `running`.
        Each write passes `fence()` first, as runtime and status writes do, so a
        deposed leader does neither (the store checks no lease token on these two:
        their revision check is what it enforces)."""
        if endpoint.desired_state is DesiredState.DELETED:
            if report.state is not RegionState.DELETED:
                return
            statuses = await self._store.list_region_status(endpoint=endpoint.name)
            if purgeable(endpoint, statuses):
                self._fence()
                try:
                    await self._store.purge_endpoint(
                        endpoint.name, expected_revision=endpoint.revision
                    )
                except (RevisionConflict, EndpointNotFound):
                    return  # changed or purged meanwhile; the feed brings it back if needed
                self._statuses.pop(endpoint.name, None)
                self._records.forget(endpoint.name)
                log.info(
                    "%s: purged; every region has removed it",
                    endpoint.name,
                    extra=log_fields(self._region, endpoint.name, endpoint.generation),
                )
            return
        if not (
            endpoint.desired_state is DesiredState.DEPLOYING
            and report.state is RegionState.READY
            and report.observed_generation == endpoint.generation
        ):
            return
        # The regions led here need no read: the last of them to turn READY reads,
        # and only if some target region is led elsewhere.
        led_here = self._shared.reports(endpoint.name)
        if not ready_in(endpoint, led_here):
            return
        if not led_here.keys() >= set(endpoint.target_regions):
            statuses = await self._store.list_region_status(endpoint=endpoint.name)
            if fleet_state(endpoint, statuses) is not DesiredState.RUNNING:
                return
        self._fence()
        epoch = self._shared.epoch
        running: Endpoint | None = None
        settling = self._shared.settling(endpoint.name)
        try:
            running = await self._store.update_endpoint(
                endpoint.model_copy(update={"desired_state": DesiredState.RUNNING}),
                expected_revision=endpoint.revision,
            )
        except (RevisionConflict, EndpointNotFound):
            return
        finally:
            self._shared.settled_as(endpoint.name, settling, running, epoch=epoch)
        self._records.remember(running)
