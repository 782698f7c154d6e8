"""What this process last applied for each endpoint, so a change costs only the
objects it touches.

apply() sends an object only when the digest of the fields servefleet sets on it
(`drift.fields_digest`, recorded on the object) differs from the one the watch
cache holds for it, or the object drifted: a replica change re-applies the
Deployment alone, a canary weight change the canary's Ingress alone. The objects it
leaves alone keep the workload hash of their own last apply, so the hashes on the
objects no longer say which workload is in place; this memory does: per endpoint,
the workload hash of the last apply that completed and the digest of each object it
rendered. observe() reports that hash while the cached objects are exactly those,
each at that digest. Without it (a new leader, a restart) observe() falls back to
the objects' own annotations (`observe.py`): they agree only if every object was
last applied together; if not, the reconciler applies once more, which sends
nothing for objects already in place and fills this memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from servefleet.runtime.kubernetes.drift import ANNOTATION_FIELDS
from servefleet.runtime.kubernetes.render import Manifest

__all__ = ["AppliedWorkloads"]


@dataclass(frozen=True, slots=True)
class _Applied:
    workload_hash: str
    digests: Mapping[str, str]
    """`Kind/name` of every object the workload renders → its fields digest."""


@dataclass
class AppliedWorkloads:
    """Per endpoint, the last workload whose apply completed (module docstring)."""

    _by_endpoint: dict[str, _Applied] = field(default_factory=dict)

    def record(self, endpoint: str, workload_hash: str, digests: Mapping[str, str]) -> None:
        self._by_endpoint[endpoint] = _Applied(workload_hash, dict(digests))

    def forget(self, endpoint: str) -> None:
        self._by_endpoint.pop(endpoint, None)

    def in_place(self, endpoint: str, held: list[tuple[str, Manifest]]) -> str | None:
        """The hash of the workload last applied for `endpoint` if the cached objects
        `held` are exactly its objects, each at the digest it was applied with; None
        when that is not known."""
        applied = self._by_endpoint.get(endpoint)
        if applied is None or len(held) != len(applied.digests):
            return None
        for kind, obj in held:
            digest = applied.digests.get(f"{kind}/{obj['metadata']['name']}")
            annotations = obj["metadata"].get("annotations") or {}
            if digest is None or annotations.get(ANNOTATION_FIELDS) != digest:
                return None
        return applied.workload_hash
