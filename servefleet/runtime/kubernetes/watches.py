"""The watch caches: what the region's namespace holds, kept current by list + watch.

One list + watch per managed kind (Services, Deployments, HorizontalPodAutoscalers,
Ingresses, and KEDA's ScaledObjects in keda regions only, `api.managed_kinds`), selected
by `app.kubernetes.io/managed-by=servefleet` (ScaledObjects by their own mark,
`render_keda.LABEL_SCALED_BY`), and one of the
pods that stage a model (`staging.py`). A watch resumes from the last
resourceVersion it saw (BOOKMARKs keep that fresh), asks for `timeoutSeconds` and
is opened again when it ends; a 410 Gone (an ERROR event or the answer to the
watch request) lists again. As in client-go's reflector, a stream that ends or
breaks resumes from its resourceVersion (nothing is lost: the server replays from
there) and only an expired resourceVersion costs a LIST. A watch request the
server refuses is opened again after a backoff, or after its Retry-After when that
is longer (a 429 from an overloaded apiserver). Every change is handed
to `events.EndpointEvents`. A converged region therefore costs the open watches
and nothing else.

A cache keeps only the fields read (`managed_entry`): name, the endpoint's name
label, the three
servefleet annotations (workload hash, object list, fields digest), resourceVersion;
for Deployments also generation, status (its conditions only when they say the
rollout is stuck), `spec.replicas`, which managers own it (managedFields) and the
serving container's image; keys and repeated strings shared across entries (at
10,000 endpoints x 3 regions what the decoder made per object was ~120 MB of the
reconciler's memory). managedFields and the spec are
most of an object's size (about 1.6 GB for 10,000 endpoints in 3 regions, bench/:
Kubernetes convergence). Whether servefleet's own fields drifted is decided from
the whole object as it arrives (`drift.drift_of`; the digest apply() took of its
answer is reused for the event of that write, `drift.LiveDigests`); an entry keeps
the answer, `drift`, only when they did.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import aiohttp
import orjson

from servefleet.runtime.base import RuntimeUnavailable
from servefleet.runtime.kubernetes.api import ClusterApi, Kind
from servefleet.runtime.kubernetes.drift import (
    ANNOTATION_FIELDS,
    ANNOTATION_OBJECTS,
    LiveDigests,
    drift_of,
)
from servefleet.runtime.kubernetes.errors import (
    WatchExpired,
    WatchFailed,
    retry_after,
    status_message,
)
from servefleet.runtime.kubernetes.events import EndpointEvents
from servefleet.runtime.kubernetes.render import ObjectRef
from servefleet.runtime.kubernetes.render_names import ANNOTATION_HASH, LABEL_NAME, Manifest
from servefleet.runtime.kubernetes.settings import ClusterSettings

__all__ = [
    "ANNOTATION_OBJECTS",
    "Cache",
    "Watches",
    "at_least",
    "deployment_problem",
    "endpoint_of",
    "managed_entry",
    "owns_replicas",
    "resource_version",
]

log = logging.getLogger(__name__)

Entry = Callable[[str, Manifest], Manifest]
"""What a cache keeps of an object of a kind (list items name no kind of their own)."""
Unchanged = Callable[[Manifest, Manifest], bool]
"""Whether a MODIFIED object's new entry tells observe() nothing new."""


@dataclass(eq=False)
class Cache:
    """One kind's objects in the namespace, by name and by endpoint."""

    kind: Kind
    entry: Entry
    unchanged: Unchanged | None = None
    objects: dict[str, Manifest] = field(default_factory=dict)
    by_endpoint: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Names by endpoint, as tuples: one or two names each, where sets would take
    four times the memory, for every endpoint."""
    resource_version: str | None = None
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, obj: Manifest) -> None:
        name = obj["metadata"]["name"]
        self.remove(name)
        obj = self.entry(self.kind.kind, obj)
        self.objects[name] = obj
        endpoint = endpoint_of(obj)
        if endpoint is not None:
            self.by_endpoint[endpoint] = (*self.by_endpoint.get(endpoint, ()), name)

    def remove(self, name: str) -> None:
        previous = self.objects.pop(name, None)
        endpoint = endpoint_of(previous) if previous is not None else None
        if endpoint is not None:
            names = tuple(kept for kept in self.by_endpoint.get(endpoint, ()) if kept != name)
            if names:
                self.by_endpoint[endpoint] = names
            else:
                self.by_endpoint.pop(endpoint, None)

    def replace(self, objects: list[Manifest]) -> None:
        self.objects.clear()
        self.by_endpoint.clear()
        for obj in objects:
            self.put(obj)

    def of(self, endpoint: str) -> list[Manifest]:
        return [self.objects[name] for name in sorted(self.by_endpoint.get(endpoint, ()))]


_SHARED_METADATA: Final = ("name", "namespace")
"""Cached metadata whose values other entries hold too: held once (`_shared`)."""
_OWN_METADATA: Final = ("resourceVersion", "generation")
"""Cached metadata whose values are the object's alone: interning them would only
grow the interpreter's table."""
_SHARED_ANNOTATIONS: Final = (ANNOTATION_HASH, ANNOTATION_OBJECTS)
"""The same on every object of an endpoint (the fields digest is each object's own)."""
_CACHED_DEPLOYMENT_STATUS: Final = (
    "observedGeneration",
    "readyReplicas",
    "replicas",
    "updatedReplicas",
)
_CACHED_CONDITION: Final = ("type", "status", "reason", "message")
_OWNS_REPLICAS: Final[Mapping[str, Any]] = MappingProxyType(
    {"f:spec": MappingProxyType({"f:replicas": MappingProxyType({})})}
)
"""The fieldsV1 of every cached managedFields entry (only owners of `spec.replicas`
are kept): one read-only copy for all."""


def _shared(text: Any) -> Any:
    """A string many cached objects hold the same value of (a namespace, an image,
    an endpoint's name in its three objects' labels), held once."""
    return sys.intern(text) if isinstance(text, str) else text


def deployment_problem(condition: Manifest) -> bool:
    """Whether a Deployment condition says its rollout is stuck: out of time, or
    replicas the controller cannot create."""
    kind, state, reason = condition.get("type"), condition.get("status"), condition.get("reason")
    return (kind == "Progressing" and reason == "ProgressDeadlineExceeded") or (
        kind == "ReplicaFailure" and state == "True"
    )


def managed_entry(kind: str, obj: Manifest, digests: LiveDigests | None = None) -> Manifest:
    """What a cache keeps of an object servefleet manages: only what observe(),
    apply() and remove() read. Of a Deployment's spec and managedFields only
    `spec.replicas` and which managers own it are read (the replicas hand-off), and
    its container's image (whose traffic is counted); of
    every object's fields, only whether servefleet's drifted and who changed them
    (`digests`: the live digests apply() already took)."""
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    # Built from this module's keys and shared strings: an entry held for every
    # object must not keep what the decoder made for each one (its own copy of every
    # key and of values that repeat across objects).
    kept: Manifest = {key: _shared(metadata[key]) for key in _SHARED_METADATA if key in metadata}
    kept.update((key, metadata[key]) for key in _OWN_METADATA if key in metadata)
    labels = metadata.get("labels") or {}
    # Of the labels only the endpoint's name is read (which endpoint owns the object).
    kept["labels"] = {LABEL_NAME: _shared(labels[LABEL_NAME])} if LABEL_NAME in labels else {}
    kept["annotations"] = {
        key: _shared(annotations[key]) for key in _SHARED_ANNOTATIONS if key in annotations
    }
    if ANNOTATION_FIELDS in annotations:
        kept["annotations"][ANNOTATION_FIELDS] = annotations[ANNOTATION_FIELDS]
    entry: Manifest = {
        "apiVersion": _shared(obj.get("apiVersion", "")),
        "kind": kind,
        "metadata": kept,
    }
    drift = drift_of({**obj, "kind": kind}, digests)
    if drift is not None:
        entry["drift"] = drift
    if kind == "Deployment":
        kept["managedFields"] = [
            {
                "manager": _shared(owner.get("manager")),
                "subresource": _shared(owner.get("subresource") or ""),
                "fieldsV1": _OWNS_REPLICAS,
            }
            for owner in metadata.get("managedFields") or []
            if owns_replicas(owner)
        ]
        spec = obj.get("spec") or {}
        entry["spec"] = {"replicas": spec["replicas"]} if "replicas" in spec else {}
        # What runs, for the version's traffic (`traffic.py`): the serving container's
        # image (the model stager is an init container).
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        if containers:
            entry["image"] = _shared(containers[0].get("image"))
        status = obj.get("status") or {}
        cached = {key: status[key] for key in _CACHED_DEPLOYMENT_STATUS if key in status}
        problems = [
            {key: condition[key] for key in _CACHED_CONDITION if key in condition}
            for condition in status.get("conditions") or []
            if deployment_problem(condition)
        ]
        if problems:
            cached["conditions"] = problems
        entry["status"] = cached
    return entry


def owns_replicas(managed_fields_entry: Manifest) -> bool:
    """Whether a managedFields entry claims `spec.replicas`."""
    fields = managed_fields_entry.get("fieldsV1") or {}
    return "f:replicas" in (fields.get("f:spec") or {})


def endpoint_of(obj: Manifest) -> str | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    name = labels.get(LABEL_NAME)
    return name if isinstance(name, str) else None


def resource_version(obj: Manifest) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def at_least(have: str, want: str) -> bool:
    """Whether resourceVersion `have` is `want` or later (numeric, as etcd's are)."""
    try:
        return int(have) >= int(want)
    except ValueError:
        return have == want


class Watches:
    """The caches of one namespace and the list + watch loops that keep them."""

    def __init__(
        self,
        region: str,
        api: ClusterApi,
        settings: ClusterSettings,
        events: EndpointEvents,
        managed: list[Cache],
        pods: Cache,
    ) -> None:
        self.region = region
        self._api = api
        self._settings = settings
        self._events = events
        self.caches = {cache.kind.kind: cache for cache in managed}
        """The kinds servefleet applies, by kind."""
        self.pods = pods

    @property
    def all(self) -> list[Cache]:
        return [*self.caches.values(), self.pods]

    def watches(self, kind: str) -> bool:
        """Whether this region watches `kind` (a ScaledObject only in keda regions)."""
        return kind in self.caches

    def cached(self, ref: ObjectRef) -> Manifest | None:
        """The cache's entry of `ref`; None if not held, or of a kind not watched here
        (a ScaledObject outside keda regions)."""
        cache = self.caches.get(ref.kind)
        if cache is None or ref.namespace != self._api.namespace:
            return None
        return cache.objects.get(ref.name)

    def held_objects(self, endpoint: str) -> list[tuple[str, Manifest]]:
        """(kind, entry) of every managed object of `endpoint`."""
        return [(kind, obj) for kind, cache in self.caches.items() for obj in cache.of(endpoint)]

    def held_endpoints(self) -> set[str]:
        return {name for cache in self.caches.values() for name in cache.by_endpoint}

    async def follow(self, cache: Cache) -> None:
        """List, then watch from the list's resourceVersion, forever."""
        backoff = self._settings.backoff_initial
        while True:
            try:
                if cache.resource_version is None:
                    await self._relist(cache)
                await self._watch(cache)
                backoff = self._settings.backoff_initial
            except WatchExpired:
                log.info("%s: %s watch expired; listing again", self.region, cache.kind.kind)
                cache.resource_version = None
            except (
                WatchFailed,
                RuntimeUnavailable,
                aiohttp.ClientError,
                TimeoutError,
                OSError,
                ValueError,
            ) as error:
                log.warning("%s: %s watch failed: %s", self.region, cache.kind.kind, error)
                await asyncio.sleep(self._pause(backoff, error))
                backoff = min(backoff * 2, self._settings.backoff_max)
            except Exception:  # a refused LIST, a malformed event: start over from a list
                log.exception("%s: %s watch broke; listing again", self.region, cache.kind.kind)
                cache.resource_version = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.backoff_max)

    def _pause(self, backoff: float, error: BaseException) -> float:
        """Seconds before a failed watch is opened again: the backoff, or longer when
        the server answered with a Retry-After (a 429 of an overloaded apiserver), as
        `api.py` waits before retrying any other request (capped alike)."""
        asked = error.retry_after if isinstance(error, WatchFailed) else None
        if asked is None:
            return backoff
        return min(max(backoff, asked), max(self._settings.backoff_max, 1.0))

    async def _relist(self, cache: Cache) -> None:
        objects: dict[str, Manifest] = {}  # by name
        token: str | None = None
        version = ""
        while True:
            page = await self._api.list_page(cache.kind, token)
            for item in page.get("items") or []:
                objects[item["metadata"]["name"]] = item
            metadata = page.get("metadata") or {}
            version = str(metadata.get("resourceVersion", ""))
            token = metadata.get("continue")
            if not token:
                break
        old = cache.objects
        changed = {
            endpoint_of(obj)
            for name, obj in objects.items()
            if name not in old or resource_version(old[name]) != resource_version(obj)
        } | {endpoint_of(obj) for name, obj in old.items() if name not in objects}
        cache.replace(list(objects.values()))
        cache.resource_version = version
        cache.synced.set()
        self._events.notify(changed)

    async def _watch(self, cache: Cache) -> None:
        """One watch request from the cache's resourceVersion, until it ends."""
        response = await self._api.watch(cache.kind, cache.resource_version)
        try:
            if response.status == 410:
                raise WatchExpired()
            if response.status != 200:
                raw = await response.read()
                raise WatchFailed(
                    response.status,
                    status_message(raw, response.status),
                    retry_after(response.headers),
                )
            while True:
                line = await response.content.readline()
                if not line:
                    return
                if not line.strip():
                    continue
                self._on_event(cache, orjson.loads(line))
        finally:
            response.release()

    def _on_event(self, cache: Cache, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpired()
            raise WatchFailed(int(obj.get("code") or 500), str(obj.get("message", "")))
        version = resource_version(obj)
        if kind == "BOOKMARK":
            cache.resource_version = version or cache.resource_version
            return
        name = obj["metadata"]["name"]
        previous = cache.objects.get(name)
        if kind == "DELETED":
            cache.remove(name)
        elif kind in ("ADDED", "MODIFIED"):
            cache.put(obj)
        else:
            return
        cache.resource_version = version or cache.resource_version
        if (
            cache.unchanged is not None
            and kind == "MODIFIED"
            and previous is not None
            and cache.unchanged(previous, cache.objects[name])
        ):
            return
        endpoints = {endpoint_of(obj)}
        if previous is not None:
            endpoints.add(endpoint_of(previous))
        seen = (cache.kind.kind, name, None if kind == "DELETED" else version)
        self._events.seen(seen, endpoints)
