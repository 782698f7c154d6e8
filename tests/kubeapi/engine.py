"""The API semantics, independent of HTTP: create, get, list, update, patch, apply,
delete, the `scale` and `status` subresources, validation, defaulting and
managed fields. Every method either returns the answer body or raises `ApiError`.

The operations come from the modules beside this one: `reads`, `writes` (create,
update, delete, status), `patching` (PATCH, server-side apply included) and `scale`;
`decoding`, `normalization` and `service_allocations` are what their writes share.
"""

from __future__ import annotations

from .patching import EnginePatches
from .scale import EngineScale

__all__ = ["Engine"]


class Engine(EnginePatches, EngineScale):
    """Every operation of the API, over one store and one schema."""
