"""Drift: a field servefleet applied, changed by someone else, and its repair.

Deciding needs no memory and no request. apply() records on every object the
digest of the fields it sets (`ANNOTATION_FIELDS`, `fields_digest`). The watch
cache computes, from each live object it receives, the digest of exactly the fields
servefleet's own `managedFields` entry still holds (`live_digest`) and keeps only
whether the two differ, with who holds what servefleet lost (`drift_of`). When
another manager changes one of servefleet's fields (`kubectl set image`, a merge
patch, a forced apply) the API server moves the field to that manager, so the live
projection loses it and the digests differ; a write of the same value shares the
field and changes nothing. Fields servefleet does not set (an HPA's
`spec.replicas`, another tool's annotation, status, server defaults) are outside
both digests, so they never look drifted. Both sides are compared in one canonical
form: identity fields and servefleet's bookkeeping annotations (the digest, the
workload hash, the object list) left out, zero values dropped (the API server
omits empty fields) and quantities compared by value (it rewrites "0.5" as "500m").
Should the API server still serve servefleet's fields other than as sent (a
mutating admission webhook), apply() notices from its answer and the object is
judged against what was served (`DriftRepairs.applied`).

A repair is a forced re-apply, decided by the reconciler from `observe()` (the
endpoint reports no workload hash). A fight — another controller setting the
field back again and again — is paced by `DriftRepairs`: after `fight_repairs`
repairs in a row, each next one waits twice as long as the last, and the region's
status says who keeps changing what.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from servefleet.canonical import canonical_json
from servefleet.runtime.kubernetes.render import FIELD_MANAGER, HANDOFF_MANAGER
from servefleet.runtime.kubernetes.render_names import ANNOTATION_HASH, Manifest
from servefleet.spec import parse_quantity

__all__ = [
    "ANNOTATION_FIELDS",
    "Change",
    "Drift",
    "DriftRepairs",
    "DriftSettings",
    "LiveDigests",
    "drift_of",
    "fields_digest",
    "live_digest",
    "rendered_paths",
]

ANNOTATION_FIELDS: Final = "servefleet.io/fields-digest"
"""On every applied object: the digest of the fields servefleet set on it, but for its
bookkeeping annotations — the workload hash and the object list (`applied.py`: an
object a change leaves alone keeps its digest).
Named anew when what it covers changed, so that an object recorded under the old
rule is not taken for drifted: it has no digest to compare until its next apply."""
ANNOTATION_OBJECTS: Final = "servefleet.io/objects"  # re-exported by watches.py
"""On every applied object: the objects its workload renders, `Kind/name,...` sorted."""

Change = tuple[str, str]
"""A field servefleet set that another manager holds now: (path, manager)."""


@dataclass(frozen=True, slots=True)
class Drift:
    """What a cache entry keeps of an object whose fields differ from the digest
    servefleet recorded on it."""

    live: str
    """The digest of servefleet's fields as the object holds them now."""
    changes: tuple[Change, ...]
    """The fields other managers hold that servefleet does not, with their managers."""


_IDENTITY: Final = ("name", "namespace")
_QUANTITY_KEYS: Final = frozenset({"requests", "limits"})
_QUANTITY_FIELDS: Final = frozenset({"sizeLimit", "averageValue"})


def fields_digest(manifest: Manifest) -> str:
    """The digest of the fields `manifest` sets, as apply() sends it."""
    metadata = {k: v for k, v in manifest["metadata"].items() if k not in _IDENTITY}
    spec = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    return _digest(manifest, _canonical({"metadata": metadata, **spec}, ""))


def live_digest(obj: Manifest) -> str | None:
    """The digest of the fields servefleet's `managedFields` entry holds on the live
    object; None if it holds none."""
    owned = _servefleet_fields(obj)
    if owned is None:
        return None
    projected = _project(obj, owned, "")
    projected.pop("apiVersion", None)
    projected.pop("kind", None)
    metadata = projected.get("metadata")
    if isinstance(metadata, dict):
        for key in _IDENTITY:
            metadata.pop(key, None)
    return _digest(obj, projected)


class LiveDigests:
    """`live_digest` computed once per object version, and not again for a version
    that cannot have changed servefleet's fields. The answer to an apply and the
    watch event of that write carry the same object (the same resourceVersion);
    a write that leaves the spec, the labels and the annotations as they were — a
    Deployment's status, say, written several times as its pods come up — keeps the
    generation and those maps, and servefleet sets nothing else (bench/: Kubernetes
    convergence). Keeps the last digest of each object until it is used again or
    the object is forgotten — of the last `kept` objects only: the next look comes
    within moments, and a digest kept for every object cost ~10 MB at 10,000
    endpoints x 3 regions. What proves the labels and annotations unchanged is
    their hash, not the maps: a reference would keep each object's maps alive."""

    def __init__(self, kept: int = 8192) -> None:
        self._kept = kept
        self._last: dict[str, _Seen] = {}
        """By `Kind/name`, oldest first."""

    def of(self, obj: Manifest) -> str | None:
        """`live_digest(obj)`; `obj` names its kind."""
        metadata = obj.get("metadata") or {}
        key = f"{obj.get('kind')}/{metadata.get('name')}"
        version = str(metadata.get("resourceVersion") or "")
        last = self._last.pop(key, None)
        if last is not None and version and last.version == version:
            self._last[key] = last  # the same object: its marks are the ones kept
            return last.live
        generation = metadata.get("generation")
        marks = _marks(metadata) if isinstance(generation, int) else None
        if (
            last is not None
            and marks is not None
            and last.generation == generation
            and last.marks == marks
        ):
            live = last.live
        else:
            live = live_digest(obj)
            if len(self._last) >= self._kept:
                del self._last[next(iter(self._last))]
        self._last[key] = _Seen(version, generation, marks, live)
        return live

    def forget(self, key: str) -> None:
        """Object `key` (`Kind/name`) was deleted."""
        self._last.pop(key, None)


@dataclass(frozen=True, slots=True)
class _Seen:
    """The last version of an object `LiveDigests` digested, and its digest."""

    version: str
    generation: Any
    marks: int | None
    """The hash of its labels and annotations (`_marks`), where it has a generation."""
    live: str | None


def _marks(metadata: Manifest) -> int:
    """A hash of an object's labels and annotations: equal for equal maps as the API
    server writes them (keys sorted), and it changes with any key or value."""
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    return hash((tuple(labels.items()), tuple(annotations.items())))


def drift_of(obj: Manifest, digests: LiveDigests | None = None) -> Drift | None:
    """None if the live object still holds every field servefleet set on it, as
    servefleet set it (or records no digest to compare: applied by an older
    version, it gets one at its next apply); else the fields other managers hold
    that servefleet does not, with their managers — servefleet's lost fields among
    them (`rendered_paths` tells which are). `digests` may know the live digest."""
    recorded = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_FIELDS)
    live = digests.of(obj) if digests is not None else live_digest(obj)
    if not recorded or live is None or live == recorded:
        return None
    ours = set(_leaf_paths(obj, _servefleet_fields(obj) or {}))
    changes: list[Change] = []
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        manager = str(entry.get("manager") or "")
        if manager in (FIELD_MANAGER, HANDOFF_MANAGER) or entry.get("subresource") == "status":
            continue
        for path in _leaf_paths(obj, entry.get("fieldsV1") or {}):
            if path not in ours and not path.startswith("status"):
                changes.append((path, manager))
    return Drift(live, tuple(changes))


def rendered_paths(manifest: Manifest) -> set[str]:
    """Every path `manifest` sets, leaves and the maps and lists above them, in the
    form `drift_of` names fields."""
    paths: set[str] = set()

    def walk(value: Any, path: str) -> None:
        if path:
            paths.add(path)
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, _join(path, key))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                walk(child, f"{path}[{index}]")

    walk(manifest, "")
    return paths


def _digest(obj: Manifest, canonical: dict[str, Any]) -> str:
    """The digest of `canonical`, fields of `obj` in canonical form. The Deployment an
    HPA or a ScaledObject scales leaves out `spec.replicas`: servefleet sets it only
    to create the Deployment at the autoscaler's minimum, and from then on it is the
    autoscaler's."""
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    listed = str(annotations.get(ANNOTATION_OBJECTS, "")).split(",")
    autoscaled = any(
        f"{autoscaler}/{metadata.get('name')}" in listed
        for autoscaler in ("HorizontalPodAutoscaler", "ScaledObject")
    )
    kept_annotations = (canonical.get("metadata") or {}).get("annotations")
    if isinstance(kept_annotations, dict):
        for bookkeeping in (ANNOTATION_FIELDS, ANNOTATION_HASH, ANNOTATION_OBJECTS):
            kept_annotations.pop(bookkeeping, None)
    if obj.get("kind") == "Deployment" and autoscaled:
        (canonical.get("spec") or {}).pop("replicas", None)
        # Else a stopped Deployment (`replicas: 0`, dropped as a zero value) would
        # digest as the autoscaled one it was, and apply() would skip the stop.
        canonical = {**canonical, "autoscaled": True}
    return hashlib.sha256(canonical_json(canonical, default=str)).hexdigest()[:16]


def _canonical(value: Any, key: str, in_quantities: bool = False) -> Any:
    """`value` (of field `key`) with its zero values dropped — those the API server
    omits (Go's omitempty), so neither side counts them: None, false, 0, "", {} and
    [], the falsy JSON values — and its quantities as numbers. A scalar other than a
    quantity is kept as it is without a call (as in `_project`: both run on every
    digest)."""
    if isinstance(value, dict):
        quantities = key in _QUANTITY_KEYS
        kept = {}
        for child_key, child in value.items():
            if isinstance(child, dict | list) or (
                isinstance(child, str) and (quantities or child_key in _QUANTITY_FIELDS)
            ):
                child = _canonical(child, child_key, quantities)
            if child:
                kept[child_key] = child
        return kept
    if isinstance(value, list):
        return [_canonical(item, key) for item in value]
    if isinstance(value, str) and (in_quantities or key in _QUANTITY_FIELDS):
        return _quantity(value)
    return value


def _quantity(raw: str) -> str:
    try:
        value = parse_quantity(raw.strip())
    except ValueError:
        return raw
    return format(value.normalize(), "f")


def _servefleet_fields(obj: Manifest) -> dict[str, Any] | None:
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if (
            entry.get("manager") == FIELD_MANAGER
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
        ):
            fields = entry.get("fieldsV1")
            return fields if isinstance(fields, dict) else {}
    return None


def _project(value: Any, fields: dict[str, Any], key: str, in_quantities: bool = False) -> Any:
    """What of `value` (of field `key`) the fieldsV1 set `fields` names, in the
    canonical form of `_canonical` (one pass: this runs on every watch event)."""
    if not fields:
        return _canonical(value, key, in_quantities)
    if isinstance(value, dict):
        quantities = key in _QUANTITY_KEYS
        kept = {}
        for field_key, child in fields.items():
            if field_key.startswith("f:"):
                name = field_key[2:]
                if name not in value:
                    continue
                projected = value[name]
                if child:
                    projected = _project(projected, child, name, quantities)
                elif isinstance(projected, dict | list) or (
                    isinstance(projected, str) and (quantities or name in _QUANTITY_FIELDS)
                ):
                    projected = _canonical(projected, name, quantities)
                if projected:
                    kept[name] = projected
        return kept
    if isinstance(value, list):
        kept_items = []
        for index, item in enumerate(value):
            child = _element(item, index, fields)
            if child is not None:
                kept_items.append(_project(item, child, key))
        return kept_items
    return _canonical(value, key, in_quantities)


def _element(item: Any, index: int, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The fieldsV1 set of list element `item` at `index`, if `fields` names it."""
    for key, child in fields.items():
        kind = key[:2]
        if kind == "k:":
            named = _member_key(key)
            if (
                isinstance(named, dict)
                and isinstance(item, dict)
                and all(item.get(k) == v for k, v in named.items())
            ):
                return dict(child)
        elif kind == "v:":
            if item == _member_key(key):
                return dict(child)
        elif key == f"i:{index}":
            return dict(child)
    return None


@functools.lru_cache(maxsize=4096)
def _member_key(key: str) -> Any:
    """The JSON of a `k:`/`v:` member of a fieldsV1 set; the same few keys recur
    on every object, so parsing each once is worth keeping."""
    return json.loads(key[2:])


def _leaf_paths(value: Any, fields: dict[str, Any], path: str = "") -> Iterable[str]:
    """The paths of the leaves of fieldsV1 set `fields` on `value` (list elements by
    their index in `value`)."""
    named = [key for key in fields if key != "."]
    if not named:
        if path:
            yield path
        return
    if isinstance(value, dict):
        for key in named:
            if key.startswith("f:"):
                yield from _leaf_paths(value.get(key[2:]), fields[key], _join(path, key[2:]))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            child = _element(item, index, fields)
            if child is not None:
                yield from _leaf_paths(item, child, f"{path}[{index}]")


def _join(path: str, key: str) -> str:
    name = f"[{key}]" if "." in key or "/" in key else key
    if not path:
        return name
    return f"{path}{name}" if name.startswith("[") else f"{path}.{name}"


@dataclass(frozen=True)
class DriftSettings:
    """How repairs of one object are paced (seconds)."""

    fight_repairs: int = 3
    """Repairs in a row after which the object is in a fight: each next repair
    waits, and the status says so."""
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    """At most `window`: a repair further apart is not in a row."""
    window: float = 60.0
    """Repairs further apart than this are not in a row; a repair is reported this
    long."""


@dataclass
class _Repairs:
    """One object's repairs in a row (each within `window` of the last)."""

    count: int
    last: float
    changes: tuple[Change, ...]
    timer: asyncio.TimerHandle | None = None


class DriftRepairs:
    """The recent repairs of one region's objects, by `Kind/name`: when the next
    may happen, and what the region's status says about them. Holds only objects
    repaired within the last `window` (plus their backoff)."""

    def __init__(
        self,
        settings: DriftSettings,
        wake: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._wake = wake
        """Makes the reconciler look at an endpoint again."""
        self._clock = clock
        self._objects: dict[str, _Repairs] = {}
        self._served: dict[str, str] = {}
        """Objects whose fields the API server changed while servefleet applied them
        (a mutating admission webhook, say), by key: the digest of servefleet's
        fields as it served them, which the object is then compared with instead
        of the recorded one — or each of its events would look like drift. After a
        restart, the first repair of such an object learns it again."""

    def applied(self, key: str, sent: str, served: str | None) -> bool:
        """Object `key` was applied with fields digest `sent` and served back with
        `served`; whether the two agree."""
        if served is None or served == sent:
            self._served.pop(key, None)
            return True
        self._served[key] = served
        return False

    def forget(self, key: str) -> None:
        """Object `key` was deleted."""
        self._served.pop(key, None)

    def drifted(self, key: str, drift: Drift | None) -> bool:
        """Whether the cache's `drift` mark of object `key` is drift."""
        return drift is not None and drift.live != self._served.get(key)

    def record(self, endpoint: str, key: str, changes: tuple[Change, ...]) -> None:
        """A repair of object `key` of `endpoint` is being applied."""
        now = self._clock()
        repairs = self._objects.get(key)
        if repairs is None or now - repairs.last > self._settings.window:
            repairs = self._objects[key] = _Repairs(0, now, ())
        repairs.count += 1
        repairs.last = now
        repairs.changes = changes or repairs.changes
        # The report ends with the window: look again then, to clear it.
        self._schedule(endpoint, key, repairs, self._settings.window)

    def wait(self, endpoint: str, key: str) -> float:
        """Seconds until object `key` may be repaired again (0: now). If it must wait,
        `endpoint` is looked at again when it may."""
        repairs = self._objects.get(key)
        if repairs is None:
            return 0.0
        remaining = repairs.last + self._backoff(repairs) - self._clock()
        if remaining <= 0:
            return 0.0
        self._schedule(endpoint, key, repairs, remaining)
        return remaining

    def report(self, keys: Iterable[str]) -> str:
        """What the status says about the recent repairs of these objects."""
        notes = []
        for key in keys:
            repairs = self._objects.get(key)
            if repairs is None:
                continue
            fields = ", ".join(sorted({path for path, _ in repairs.changes})) or "its fields"
            managers = ", ".join(sorted({manager for _, manager in repairs.changes}))
            if repairs.count >= self._settings.fight_repairs:
                notes.append(
                    f"drift: {fields} keeps being changed by manager {managers or 'unknown'} "
                    f"({key}: {repairs.count} repairs in a row, the next after "
                    f"{self._backoff(repairs):g}s)"
                )
            else:
                by = f" (changed by manager {managers})" if managers else ""
                notes.append(f"drift repaired: {key} {fields}{by}")
        return "; ".join(notes)

    def _backoff(self, repairs: _Repairs) -> float:
        """How long after the last repair the next may be: none until the fight
        starts, then doubling."""
        beyond = repairs.count - self._settings.fight_repairs
        if beyond < 0:
            return 0.0
        return min(self._settings.backoff_initial * 2.0**beyond, self._settings.backoff_max)

    def _schedule(self, endpoint: str, key: str, repairs: _Repairs, delay: float) -> None:
        if repairs.timer is not None:
            repairs.timer.cancel()
        repairs.timer = asyncio.get_running_loop().call_later(
            delay, self._look_again, endpoint, key
        )

    def _look_again(self, endpoint: str, key: str) -> None:
        repairs = self._objects.get(key)
        if repairs is not None:
            repairs.timer = None
            remaining = repairs.last + self._settings.window - self._clock()
            if remaining <= 0:
                del self._objects[key]
            else:  # look again when the report ends, to clear it
                self._schedule(endpoint, key, repairs, remaining)
        self._wake(endpoint)
