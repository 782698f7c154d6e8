"""Objects, the global resourceVersion, per-resource event history and watchers.

Every committed write takes the next resourceVersion (one counter for the whole
server, like etcd's revision), is recorded in a bounded per-resource event log and is
handed synchronously to the open watchers of that resource. A watch that starts from
a resourceVersion replays the log after it; one older than the log's floor is
"too old" (the watch answers an ERROR event with a 410 Expired Status).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .json_values import clone
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector
from .ssa import ManagedFields

Key = tuple[str, str, str]  # (plural, namespace, name)


@dataclass
class StoredObject:
    resource: ResourceType
    obj: dict[str, Any]
    managed: ManagedFields

    @property
    def resource_version(self) -> int:
        return int(self.obj["metadata"]["resourceVersion"])


@dataclass
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


@dataclass(eq=False)
class Watcher:
    resource: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)

    def _matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        metadata = obj.get("metadata") or {}
        if self.namespace is not None and metadata.get("namespace") != self.namespace:
            return False
        return self.labels.matches(metadata.get("labels")) and self.fields.matches(obj)

    def translate(self, event: Event) -> Event | None:
        """The event as this watcher sees it (a change in or out of its selection is an
        ADDED or DELETED), or None when it does not concern the watcher."""
        now = self._matches(event.obj)
        if event.type != "MODIFIED":
            return event if now else None
        before = self._matches(event.old)
        if now and before:
            return event
        if now:
            return Event(event.rv, "ADDED", event.obj)
        if before:
            return Event(event.rv, "DELETED", event.obj)
        return None

    def offer(self, event: Event) -> None:
        seen = self.translate(event)
        if seen is not None:
            self.queue.put_nowait(seen)

    def close(self) -> None:
        self.queue.put_nowait(None)


class TooOld(Exception):
    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class Store:
    def __init__(self, initial_resource_version: int = 1000, history: int = 10_000) -> None:
        self.resource_version = initial_resource_version
        self.history = history
        self.objects: dict[Key, StoredObject] = {}
        self._logs: dict[str, deque[Event]] = {}
        self._floors: dict[str, int] = {}
        self._initial = initial_resource_version
        self.watchers: set[Watcher] = set()

    def next_resource_version(self) -> int:
        self.resource_version += 1
        return self.resource_version

    def get(self, resource: ResourceType, namespace: str, name: str) -> StoredObject | None:
        return self.objects.get((resource.plural, namespace, name))

    def items(
        self,
        resource: ResourceType,
        namespace: str | None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> list[StoredObject]:
        out = []
        for (plural, ns, _), stored in sorted(self.objects.items()):
            if plural != resource.plural or (namespace is not None and ns != namespace):
                continue
            metadata = stored.obj["metadata"]
            if labels is not None and not labels.matches(metadata.get("labels")):
                continue
            if fields is not None and not fields.matches(stored.obj):
                continue
            out.append(stored)
        return out

    def namespaces_in_use(self) -> set[str]:
        return {ns for (_, ns, _) in self.objects if ns}

    def floor(self, resource: ResourceType) -> int:
        return self._floors.get(resource.plural, self._initial)

    def commit(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        stored: StoredObject | None,
        old: dict[str, Any] | None,
        deleted: dict[str, Any] | None = None,
    ) -> int:
        """Record a write: `stored` is the new state (None for a delete, with the
        deleted object's final form in `deleted`). Stamps the new resourceVersion."""
        rv = self.next_resource_version()
        key = (resource.plural, namespace, name)
        if stored is None:
            assert deleted is not None
            deleted["metadata"]["resourceVersion"] = str(rv)
            self.objects.pop(key, None)
            event = Event(rv, "DELETED", clone(deleted))
        else:
            stored.obj["metadata"]["resourceVersion"] = str(rv)
            self.objects[key] = stored
            # Shared, not copied: a stored object is never modified (a write stores a new one).
            event = Event(rv, "ADDED" if old is None else "MODIFIED", stored.obj, old)
        log = self._logs.setdefault(resource.plural, deque())
        log.append(event)
        while len(log) > self.history:
            dropped = log.popleft()
            self._floors[resource.plural] = dropped.rv
        for watcher in list(self.watchers):
            if watcher.resource is resource:
                watcher.offer(event)
        return rv

    def since(self, resource: ResourceType, rv: int) -> list[Event]:
        """Events of `resource` after `rv`; raises TooOld when history has been lost."""
        floor = self.floor(resource)
        if rv < floor:
            raise TooOld(rv, floor + 1)
        return [event for event in self._logs.get(resource.plural, ()) if event.rv > rv]

    def compact(self) -> None:
        """Forget all history: only watches from now on can start."""
        self._logs.clear()
        for resource_plural in {key[0] for key in self.objects} | set(self._floors):
            self._floors[resource_plural] = self.resource_version
        self._initial = self.resource_version
