"""A Kubernetes region's leader-election lease: a `coordination.k8s.io/v1` Lease.

`KubernetesLease` is the lease backend (the `LeaseBackend` protocol of
`servefleet.reconcile.leader`, which drives renewal, the renew deadline and
`fence()`) of one Kubernetes region: the Lease `servefleet-region-<region>` in
the region's namespace, kept as client-go's `leaderelection` keeps its Lease:

- The record is the Lease's spec: `holderIdentity`, `leaseDurationSeconds`,
  `acquireTime`, `renewTime`, `leaseTransitions`. A change of holder sets
  `acquireTime` and adds one to `leaseTransitions`; a renewal moves `renewTime`.
- An absent Lease is created; 409 AlreadyExists means another candidate created
  it first, and this round is lost.
- Every update carries the `resourceVersion` it was based on; 409 means someone
  wrote in between, and this round is lost.
- Another holder's Lease is taken only after `leaseDurationSeconds` have passed
  since *this process* saw the record last change (its monotonic clock), never
  by comparing the remote `renewTime` with the local wall clock: clock skew
  between hosts cannot hand the lease over early.
- A leader renews from the record it last wrote (one PUT); only when that fails
  does it read the Lease again. A standby reads, and writes only to take over.
- `release()` (clean shutdown, client-go's `ReleaseOnCancel`) empties
  `holderIdentity` and sets `leaseDurationSeconds` to 1, so a standby takes over
  at once instead of waiting for the lease to run out.

Fencing: `leaseTransitions` is the Lease's fencing token (`HeldLease.token`). The
store cannot read a Kubernetes Lease, so its holder tells it: on taking the Lease,
before acting, it records the token as the region's fence in the store
(`servefleet.reconcile.leader.StoreFencedLeases`, `Store.record_fence`, which only
ever raises it), and every status write carries that token, refused by the store
in the same statement or transaction once a higher one is recorded. A deposed
leader stops writing at its renew deadline (counted from when the last renewal
was sent), before the Lease has run out for anyone else; a status write it had
already sent that lands after the new holder recorded its token is refused. One
that lands between the takeover and that record is still accepted: the new
holder has not acted yet, and its first report replaces it.

Errors: timeouts are left to the caller (the election bounds every attempt);
connection errors and any answer other than success, 404 or 409 raise
`RuntimeUnavailable`, which the election retries.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient

from servefleet.runtime.base import RuntimeUnavailable
from servefleet.runtime.kubernetes.api import make_api_client
from servefleet.runtime.kubernetes.errors import status_message

__all__ = ["Clock", "HeldLease", "KubernetesLease", "lease_name"]

_LOST: Final = 409
_ABSENT: Final = 404
_RAW: Final[dict[str, Any]] = {"_preload_content": False}

Record = dict[str, Any]
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def lease_name(region: str) -> str:
    return f"servefleet-region-{region}"


@dataclass(frozen=True)
class HeldLease:
    """The Lease as this process last wrote it while holding it."""

    holder: str
    transitions: int

    @property
    def token(self) -> int:
        """The fencing token: `leaseTransitions`, which grows at every change of holder."""
        return self.transitions


def _micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubernetesLease:
    """The Lease of one region (see the module docstring). `close()` closes the
    API client when this object made it."""

    def __init__(
        self,
        api_client: ApiClient,
        namespace: str,
        region: str,
        *,
        owns_client: bool = False,
        clock: Clock = _utc_now,
    ) -> None:
        self.namespace = namespace
        self._clock = clock
        """What `acquireTime` and `renewTime` are written from (this host's wall clock,
        which may be off: expiry is never judged by it)."""
        self.lease = lease_name(region)
        self._api_client = api_client
        # Typed loosely: the stubs promise V1Lease models, but with `_preload_content=False`
        # the calls answer the raw response, whose status is then ours to interpret.
        self._api: Any = client.CoordinationV1Api(api_client)
        self._owns_client = owns_client
        self._record: Record | None = None
        """The Lease as last read or written."""
        self._observed_at = 0.0
        """When (monotonic) the record was last seen to change."""

    @classmethod
    async def from_kubeconfig(
        cls,
        namespace: str,
        region: str,
        path: Path | str | None = None,
        *,
        context: str | None = None,
        clock: Clock = _utc_now,
    ) -> KubernetesLease:
        """The Lease on the cluster of a kubeconfig file (default: $KUBECONFIG or
        ~/.kube/config) and context (default: the current one)."""
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=str(path) if path is not None else None,
            context=context,
            client_configuration=configuration,
        )
        return cls(make_api_client(configuration), namespace, region, owns_client=True, clock=clock)

    @classmethod
    def in_cluster(cls, namespace: str, region: str, *, clock: Clock = _utc_now) -> KubernetesLease:
        """The Lease on the cluster this process runs in (the pod's service account)."""
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(make_api_client(configuration), namespace, region, owns_client=True, clock=clock)

    async def close(self) -> None:
        if self._owns_client:
            await self._api_client.close()

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.lease}"

    # The LeaseBackend protocol.

    async def acquire_or_renew(self, holder: str, ttl: float) -> HeldLease | None:
        duration = max(1, math.ceil(ttl))
        if self._holder() == holder:
            renewed = await self._replace(self._next(holder, duration))
            if renewed is not None:
                return self._held(renewed)
        current = await self._read()
        if current is None:
            created = await self._create(self._next(holder, duration, previous={}))
            return self._held(created) if created is not None else None
        spec = current.get("spec") or {}
        other = spec.get("holderIdentity") or ""
        if other not in ("", holder) and not self._expired(spec):
            return None
        taken = await self._replace(self._next(holder, duration))
        return self._held(taken) if taken is not None else None

    async def release(self, holder: str) -> None:
        if self._holder() != holder:
            return
        assert self._record is not None
        spec = self._record.get("spec") or {}
        now = _micro_time(self._clock())
        released = {
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": spec.get("leaseTransitions") or 0,
        }
        await self._replace(released)
        self._record = None

    # The record.

    def _holder(self) -> str | None:
        if self._record is None:
            return None
        holder: str | None = (self._record.get("spec") or {}).get("holderIdentity")
        return holder

    def _expired(self, spec: Record) -> bool:
        duration = spec.get("leaseDurationSeconds") or 0
        return time.monotonic() >= self._observed_at + duration

    def _next(self, holder: str, duration: int, previous: Record | None = None) -> Record:
        """The spec that gives (or keeps) the lease to `holder`."""
        if previous is None:
            previous = (self._record or {}).get("spec") or {}
        now = _micro_time(self._clock())
        transitions: int = previous.get("leaseTransitions") or 0
        if previous.get("holderIdentity") == holder and previous.get("acquireTime"):
            acquired = previous["acquireTime"]
        else:
            acquired = now
            if previous:  # a change of holder; creating the Lease is none
                transitions += 1
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": acquired,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _observe(self, record: Record) -> Record:
        """Remember `record`, and when it was first seen at its resourceVersion."""
        seen = (self._record or {}).get("metadata", {}).get("resourceVersion")
        if record["metadata"].get("resourceVersion") != seen:
            self._observed_at = time.monotonic()
        self._record = record
        return record

    def _held(self, record: Record) -> HeldLease:
        spec = record["spec"]
        return HeldLease(spec["holderIdentity"], spec.get("leaseTransitions") or 0)

    # Requests.

    async def _read(self) -> Record | None:
        current = await self._send(
            "read",
            lambda: self._api.read_namespaced_lease(self.lease, self.namespace, **_RAW),
            none_for=(_ABSENT,),
        )
        if current is None:
            self._record = None
            return None
        return self._observe(current)

    async def _create(self, spec: Record) -> Record | None:
        body: Record = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}
        body |= {"metadata": {"name": self.lease, "namespace": self.namespace}, "spec": spec}
        created = await self._send(
            "create",
            lambda: self._api.create_namespaced_lease(self.namespace, body, **_RAW),
            none_for=(_LOST,),
        )
        return None if created is None else self._observe(created)

    async def _replace(self, spec: Record) -> Record | None:
        """Write `spec` over the record last seen; None when someone wrote in between
        (or the Lease is gone)."""
        if self._record is None:
            return None
        body = {**self._record, "spec": spec}
        replaced = await self._send(
            "update",
            lambda: self._api.replace_namespaced_lease(self.lease, self.namespace, body, **_RAW),
            none_for=(_LOST, _ABSENT),
        )
        return None if replaced is None else self._observe(replaced)

    async def _send(
        self,
        verb: str,
        call: Callable[[], Awaitable[aiohttp.ClientResponse]],
        *,
        none_for: tuple[int, ...],
    ) -> Record | None:
        """The Lease the API answers, or None for an answer in `none_for`."""
        what = f"{verb} Lease {self.name}"
        try:
            response = await call()
            try:
                raw = await response.read()
            finally:
                response.release()
        except (aiohttp.ClientError, OSError) as error:
            raise RuntimeUnavailable(f"{what}: {type(error).__name__}: {error}") from error
        if response.status in none_for:
            return None
        if not 200 <= response.status < 300:
            message = status_message(raw, response.status)
            raise RuntimeUnavailable(f"{what}: HTTP {response.status}: {message}")
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict) or not isinstance(decoded.get("metadata"), dict):
            raise RuntimeUnavailable(f"{what}: the answer is not a Lease")
        return decoded
