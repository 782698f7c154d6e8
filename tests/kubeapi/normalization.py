"""The form in which a write stores an object, as the real server's decoding,
defaulting and registry give it: nulls and empty maps and lists dropped (Go's
omitempty), timestamps canonical, the server's metadata (uid, creationTimestamp,
generation) set or kept, the kind's defaults and status, and the key order of its
JSON."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC
from typing import Any, Final

from . import clock
from .json_values import json_equal
from .resources import SERVICES, ResourceType
from .schema import CONTAINERS, MICROTIME_REF, TIME_REF, TypeNode
from .service_allocations import ServiceAllocations

_TIME_REFS: Final = (TIME_REF, MICROTIME_REF)


def finalize(
    resource: ResourceType,
    node: TypeNode,
    namespace: str,
    name: str,
    candidate: dict[str, Any],
    old: dict[str, Any] | None,
    services: ServiceAllocations,
    subresource: str = "",
) -> dict[str, Any]:
    """The object a write stores: normalized, defaulted, server fields set."""
    obj = _normalize(candidate, node)
    if subresource == "status" and old is not None:
        status = obj.get("status")
        # The rest is the stored object's, kept whole: shared, not copied (only the
        # metadata, rewritten below, is). A stored object is never modified, and the
        # defaulters below only fill in what is missing, which it lacks no longer.
        obj = {**old, "metadata": dict(old["metadata"])}
        if status is None:
            obj.pop("status", None)
        else:
            obj["status"] = status
    obj["apiVersion"] = resource.group_version
    obj["kind"] = resource.kind
    metadata = obj.setdefault("metadata", {})
    metadata["name"] = name
    if resource.namespaced:
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)
    for key in ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation"):
        metadata.pop(key, None)
    for key in ("selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"):
        metadata.pop(key, None)
    if old is not None:
        old_meta = old["metadata"]
        metadata["uid"] = old_meta["uid"]
        metadata["creationTimestamp"] = old_meta["creationTimestamp"]
        if "generation" in old_meta:
            metadata["generation"] = old_meta["generation"]
    else:
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = clock.now_rfc3339()
    if resource.default_status is not None and subresource != "status":
        if old is None:
            obj["status"] = resource.default_status()
        elif "status" in old:
            obj["status"] = old["status"]  # shared, as the rest of a status write
        else:
            obj.pop("status", None)
    resource.defaulter(obj)
    if resource is SERVICES:
        services.assign(obj, old)
    if resource.has_generation:
        if old is None:
            metadata["generation"] = 1
        elif subresource != "status" and not json_equal(old.get("spec"), obj.get("spec")):
            metadata["generation"] = int(old["metadata"].get("generation", 0)) + 1
    metadata["resourceVersion"] = old["metadata"]["resourceVersion"] if old else ""
    ordered = {"kind": obj.pop("kind"), "apiVersion": obj.pop("apiVersion")}
    ordered["metadata"] = _order_metadata(obj.pop("metadata"))
    ordered.update(obj)
    return ordered


def _normalize(value: Any, node: TypeNode) -> Any:
    """Drop nulls and empty maps/lists (Go's omitempty), canonicalise timestamps.
    (Scalars other than timestamps are kept without a call, and strings are looked
    at only where a time may be: every write normalizes its whole object.)"""
    if isinstance(value, dict):
        out = {}
        declared, other = node.children
        timed = node.timed_children
        for name, child in value.items():
            if child is None:
                continue
            if isinstance(child, CONTAINERS):
                child_node = declared.get(name, other)
                child = _normalize(child, child_node)
                if not child and child_node.kind in ("map", "list"):
                    continue
            elif timed and isinstance(child, str):
                child_node = declared.get(name, other)
                if child_node.ref in _TIME_REFS:
                    child = _normalize(child, child_node)
            out[name] = child
        return out
    if isinstance(value, list):
        elem = node.elem
        timed = elem.ref in _TIME_REFS
        return [
            _normalize(item, elem)
            if isinstance(item, CONTAINERS) or (timed and isinstance(item, str))
            else item
            for item in value
            if item is not None
        ]
    if isinstance(value, str) and node.ref in _TIME_REFS:
        return _canonical_time(value, node.ref == TIME_REF)
    return value


@functools.lru_cache(maxsize=4096)
def _canonical_time(value: str, whole_seconds: bool) -> str:
    """A Time (whole seconds) or MicroTime as the server writes it. Remembered: the
    same few times (a condition's, a lease's renewal) come back with every write of
    an object, and parsing and formatting each took a tenth of a status write."""
    parsed = clock.parse_time(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    if whole_seconds:
        return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_META_ORDER = (
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)


def _order_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: metadata[key] for key in _META_ORDER if key in metadata}
    ordered.update({k: v for k, v in metadata.items() if k not in ordered})
    return ordered
