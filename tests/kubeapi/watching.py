"""What every simulated controller here shares: watch some kinds, reconcile the
objects their events concern, one batch of events at a time.

A subclass names what it watches (`watched`; the first kind's objects are also
reconciled once at start) and says which objects an event concerns (`keys`) and
what to do with one (`reconcile`). Like a real controller, it works on the
current state of the store, not on the event; unlike one, it acts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from .engine import Engine
from .errors import ApiError
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector
from .store import Event, Watcher

__all__ = ["WatchingController"]

_log = logging.getLogger(__name__)


class WatchingController:
    watched: Sequence[ResourceType] = ()
    """The kinds whose events reach `keys`; the first is the kind `reconcile` takes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._watchers: list[Watcher] = []
        self._task: asyncio.Task[None] | None = None

    def keys(self, event: Event) -> list[tuple[str, str]]:
        """The objects (namespace, name) of the reconciled kind `event` concerns."""
        raise NotImplementedError

    def reconcile(self, namespace: str, name: str) -> None:
        raise NotImplementedError

    def start(self) -> None:
        store = self.engine.store
        for resource in self.watched:
            watcher = Watcher(resource, None, LabelSelector(), FieldSelector(), self._queue)
            store.watchers.add(watcher)
            self._watchers.append(watcher)
        for stored in store.items(self.watched[0], None):
            self._queue.put_nowait(Event(0, "ADDED", stored.obj))
        self._task = asyncio.create_task(self._run(), name=f"kubeapi {type(self).__name__}")

    async def stop(self) -> None:
        for watcher in self._watchers:
            self.engine.store.watchers.discard(watcher)
        self._watchers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            events = [await self._queue.get()]
            while not self._queue.empty():
                events.append(self._queue.get_nowait())
            keys = {key for event in events if event is not None for key in self.keys(event)}
            for namespace, name in sorted(keys):
                try:
                    self.reconcile(namespace, name)
                except ApiError as error:
                    # A real controller would retry; here the next event will.
                    _log.warning(
                        "%s %s/%s: %s", self.watched[0].kind, namespace, name, error.message
                    )
