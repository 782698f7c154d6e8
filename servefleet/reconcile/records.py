"""What a region's controller knows of the store's endpoint records.

A pass reuses the endpoint record it last read (or the listing read) unless the
feed has since shown a newer revision of it: every write reaches the feed, so the
store is read once per change rather than once per pass. The controllers of one
process share what their own writes tell (`shared.SharedRecords`): a record this
process settled as `running` is taken from the feed without a pass or a read. A
purged endpoint is forgotten (its record and feed revision) once its purge is
seen: a name created again starts over at revision 1, and purged names do not
pile up in memory.
"""

from __future__ import annotations

from collections.abc import Awaitable

from servefleet.plan import only_settled
from servefleet.reconcile.shared import SharedRecords
from servefleet.spec import Endpoint
from servefleet.store import Change, ChangeKind, EndpointNotFound, Store

__all__ = ["KnownRecords"]


class KnownRecords:
    """The endpoint records one region's controller holds, and the newer revisions
    the feed has shown of them (module docstring)."""

    def __init__(self, store: Store, shared: SharedRecords) -> None:
        self._store = store
        self._shared = shared
        self._records: dict[str, Endpoint] = {}
        self._feed_revisions: dict[str, int] = {}
        """Per endpoint, a revision the feed showed that `_records` does not hold yet."""
        self._listings: list[set[str]] = []
        """One per listing under way: the names forgotten meanwhile, whose listed
        record may be the one just purged."""

    async def record(self, name: str) -> Endpoint | None:
        """The endpoint's record: the one last read, unless the feed has shown a newer one."""
        known = self._records.get(name)
        if known is not None and known.revision >= self._feed_revisions.get(name, 0):
            return known
        try:
            endpoint = await self._store.get_endpoint(name)
        except EndpointNotFound:
            self.forget(name)
            return None
        self.remember(endpoint)
        return endpoint

    def remember(self, endpoint: Endpoint) -> None:
        self._records[endpoint.name] = self._shared.one_copy(endpoint)
        if endpoint.revision >= self._feed_revisions.get(endpoint.name, 0):
            self._feed_revisions.pop(endpoint.name, None)

    def forget(self, name: str) -> None:
        """Drop the record and feed revision of `name`, gone from the store: a record
        created again under the name starts over at revision 1. A listing under way
        may have read the purged record; it will not keep it."""
        self._records.pop(name, None)
        self._feed_revisions.pop(name, None)
        for forgotten in self._listings:
            forgotten.add(name)

    async def keep_listing(self, listing: Awaitable[list[Endpoint]]) -> set[str]:
        """Hold the records of `listing` (the store's listing of the region, awaited
        here) in place of those held; their names."""
        forgotten: set[str] = set()
        self._listings.append(forgotten)
        try:
            endpoints = await listing
        finally:
            self._listings.remove(forgotten)
        one_copy = self._shared.one_copy
        listed = {e.name: one_copy(e) for e in endpoints if e.name not in forgotten}
        for name, endpoint in listed.items():
            known = self._records.get(name)
            if known is not None and known.revision > endpoint.revision:
                listed[name] = known  # read while this listing was under way
        self._records = listed
        return set(listed)

    async def saw(self, change: Change) -> bool:
        """Take in `change`, shown by the feed; whether its endpoint wants a pass."""
        name = change.name
        known = self._records.get(name)
        if change.kind is ChangeKind.PURGED:
            self.forget(name)
            self._shared.purged(name)
            return True
        # A change to the record this process settled as running changes nothing for
        # this region: then it is taken as the record, with no pass
        # (`shared.SharedRecords`). Inline: every change of the feed comes here.
        await self._shared.after_settling(name)
        settled = self._shared.settled(name)
        held = self._records.get(name)  # again: the settling controller remembers its write
        if (
            settled is not None
            and held is not None
            and settled.revision == change.revision
            and (held is settled or only_settled(held, settled))
        ):
            self.remember(settled)
            return False
        if known is None or known.revision < change.revision:
            self._shared.changed(name, change.revision)
            seen = self._feed_revisions.get(name, 0)
            self._feed_revisions[name] = max(seen, change.revision)
        return True

    def remembered(self) -> set[str]:
        """The endpoints held here with a record or a feed revision."""
        return self._records.keys() | self._feed_revisions.keys()

    def held(self, name: str) -> Endpoint:
        """The record held for `name` (`KeyError`: none), without reading the store:
        for tests to look at."""
        return self._records[name]
