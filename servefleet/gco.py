"""The reference design's endpoint items (AWS GCO's `gco-inference-endpoints` table)
as servefleet declarations, for `servefleet import --from-gco-table`.

Pure: an item as plain data in, an `EndpointManifest` out, or `InvalidInput` naming
the field in servefleet's terms, or `Skipped` saying why there is nothing to import.

Where a reference field was optional, its implicit default is made explicit, so the
imported endpoint runs as the reference ran it: one NVIDIA GPU per replica, requests
of 1 CPU and 4Gi and limits of 4 CPUs and 16Gi, port 8000, health path `/health`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from servefleet.spec import EndpointManifest, InvalidInput, invalid_input

__all__ = ["Skipped", "endpoint_name", "to_manifest"]

_RESOURCE_DEFAULTS = {
    "requests": {"cpu": "1", "memory": "4Gi"},
    "limits": {"cpu": "4", "memory": "16Gi"},
}
# Reference spec field -> servefleet spec field, where the names differ.
_RENAMED = {"health_check_path": "health_path", "region_image_uris": "region_images"}
_STATES = {"deploying": "running", "running": "running", "stopped": "stopped"}


class Skipped(Exception):
    """The item declares nothing to import (it was deleted in the reference table)."""


def endpoint_name(item: Mapping[str, Any]) -> str:
    """The item's name as written, for reports (even when it is not a valid name)."""
    return str(item.get("endpoint_name", "?"))


def _text_values(value: object) -> object:
    """The reference stored env values and quantities as numbers or text alike."""
    if isinstance(value, Mapping):
        return {
            key: str(item) if isinstance(item, int | float) else item for key, item in value.items()
        }
    return value


def to_manifest(item: Mapping[str, Any]) -> EndpointManifest:
    """The declaration equivalent to one reference item."""
    state = item.get("desired_state", "deploying")
    if state == "deleted":
        raise Skipped("deleted in the reference table")
    if state not in _STATES:
        raise InvalidInput(
            [f"desired_state: must be one of deploying, running, stopped, deleted (got {state!r})"]
        )
    source = item.get("spec")
    if not isinstance(source, Mapping):
        raise InvalidInput([f"spec: must be a map (got {source!r})"])
    spec: dict[str, Any] = {
        _RENAMED.get(str(key), str(key)): value for key, value in source.items()
    }
    gpu_count = spec.setdefault("gpu_count", 1)
    spec.setdefault("accelerator", "nvidia" if gpu_count else "none")
    resources = spec.get("resources", {})
    if isinstance(resources, Mapping):
        spec["resources"] = {
            kind: _text_values(amounts)
            for kind, amounts in {**_RESOURCE_DEFAULTS, **resources}.items()
        }
    spec["env"] = _text_values(spec.get("env", {}))
    for field in ("namespace", "ingress_path", "labels"):
        if field in item and field not in spec:
            spec[field] = item[field]
    document = {
        "metadata": {"name": item.get("endpoint_name")},
        "regions": item.get("target_regions"),
        "state": _STATES[state],
        "spec": spec,
    }
    try:
        return EndpointManifest.model_validate(document)
    except ValidationError as error:
        raise invalid_input(error) from None
