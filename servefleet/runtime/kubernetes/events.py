"""Which endpoints the reconciler should look at again (`Runtime.events()`), and when.

Every change the watch caches see yields its endpoint (`app.kubernetes.io/name`)
to each subscriber, except the runtime's own writes: while `apply()` or `remove()`
writes an endpoint's objects its events are held (`holding`), and one is passed on
afterwards only if some event showed something other than those writes (a hand
edit, a status update, another version). Whoever called apply() or remove()
observes after it, and apply has waited for its own events (`wait_for_change`): a
pass they started would find nothing to do (one per endpoint and apply, bench/:
Kubernetes convergence).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator

from servefleet.runtime.base import EventSubscription
from servefleet.runtime.kubernetes.render import ObjectRef

__all__ = ["EndpointEvents", "Seen", "Written"]

Seen = tuple[str, str, str | None]
"""A watch event: (kind, name, resourceVersion, or None if deleted)."""
Written = list[tuple[ObjectRef, str | None]]
"""The runtime's own writes: each object and its resourceVersion, or None if deleted."""


class EndpointEvents:
    """The subscribers of one runtime's events, and the events held back from them."""

    def __init__(self) -> None:
        self._subscriptions: weakref.WeakSet[EventSubscription] = weakref.WeakSet()
        self._changed = asyncio.Event()
        self._held: dict[str, list[Seen]] = {}
        """Endpoint -> its watch events while apply() or remove() writes its objects."""
        self._closed = False

    def subscribe(self) -> AsyncIterator[str]:
        subscription = EventSubscription()
        if self._closed:
            subscription.close()
        self._subscriptions.add(subscription)
        return subscription

    def close(self) -> None:
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.close()

    def notify(self, names: Iterable[str | None]) -> None:
        """Yield these endpoints to every subscriber, and wake `wait_for_change`."""
        for name in names:
            if name is not None:
                for subscription in list(self._subscriptions):
                    subscription.push(name)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def seen(self, event: Seen, endpoints: set[str | None]) -> None:
        """A watch event concerning `endpoints`: held for those being written, yielded
        for the others."""
        for endpoint, held in self._held.items():
            if endpoint in endpoints:
                held.append(event)
        self.notify(endpoints - self._held.keys())

    async def wait_for_change(self) -> None:
        """Until the caches change next (any object, any endpoint)."""
        await self._changed.wait()

    @contextlib.contextmanager
    def holding(self, endpoint: str, written: Written) -> Iterator[None]:
        """Hold back `endpoint`'s events while the caller writes the objects it
        records in `written`, then pass one on only if some event was not one of
        them. The controller never writes one endpoint twice at once; if something
        does, the second writer's events are simply not held."""
        if endpoint in self._held:
            yield
            return
        held = self._held[endpoint] = []
        try:
            yield
        finally:
            del self._held[endpoint]
            ours = {(ref.kind, ref.name, version) for ref, version in written}
            if any(event not in ours for event in held):
                self.notify([endpoint])
