"""Writing a region: `apply()` a workload and `remove()` an endpoint.

apply() follows `render.steps`: it deletes only what the watch cache holds (a
steady fleet sends no DELETE answered 404), server-side applies each rendered
object (field manager `servefleet`, force) annotated with the list of objects the
workload renders (`watches.ANNOTATION_OBJECTS`, read by `observe.py`) and the digest
of the fields it sets (`drift.ANNOTATION_FIELDS`, read by the watch caches) — but
only an object whose digest changed or that drifted, so a change costs the objects
it touches (`applied.py` remembers what is in place) — and hands
`spec.replicas` over before the first apply that omits it
(`render.replicas_handoff`) — at the autoscaler's minimum when the HPA or
ScaledObject is being (re)created for a Deployment below it, since an HPA never
scales up from 0 (render.py, *Replicas and the autoscaler*). remove() deletes every
cached object of the endpoint, routes first. A kind the region does not watch (a
ScaledObject once the region no longer scales with KEDA: without KEDA its CRD may
not exist) is deleted when the objects list of each cached object of the endpoint
names it: the switch removes it once (what it applies lists it no more), and a
steady region sends nothing. Both then wait
(bounded by `sync_timeout`) until the watches have delivered their own writes, so
the observation that follows already shows them, and hold the endpoint's events
meanwhile (`events.EndpointEvents.holding`).

An apply that finds an object's fields drifted (a hand edit) is its repair: it
logs and records which of servefleet's fields which managers had changed
(`drift.DriftRepairs`, reported by observe()).

The runtime manages one namespace: a workload that names another one is refused
with `WorkloadUnsupported`, since its objects would be invisible to the caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Final

from servefleet.plan import Workload, workload_hash
from servefleet.runtime.base import WorkloadUnsupported
from servefleet.runtime.kubernetes.api import ClusterApi
from servefleet.runtime.kubernetes.applied import AppliedWorkloads
from servefleet.runtime.kubernetes.drift import (
    ANNOTATION_FIELDS,
    DriftRepairs,
    LiveDigests,
    fields_digest,
    rendered_paths,
)
from servefleet.runtime.kubernetes.events import EndpointEvents, Written
from servefleet.runtime.kubernetes.render import (
    FIELD_MANAGER,
    HANDOFF_MANAGER,
    ObjectRef,
    all_objects,
    replicas_handoff,
    steps,
)
from servefleet.runtime.kubernetes.render_autoscaler import min_replicas
from servefleet.runtime.kubernetes.render_names import Manifest, namespace_of
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from servefleet.runtime.kubernetes.watches import (
    ANNOTATION_OBJECTS,
    Watches,
    at_least,
    owns_replicas,
    resource_version,
)

__all__ = ["Writer"]

log = logging.getLogger(__name__)

_REMOVAL_ORDER: Final = {
    "Ingress": 0,
    "HorizontalPodAutoscaler": 1,
    "ScaledObject": 1,
    "Deployment": 2,
    "Service": 3,
}
_AUTOSCALERS: Final = ("HorizontalPodAutoscaler", "ScaledObject")


class Writer:
    """apply() and remove() of one region's runtime (module docstring)."""

    def __init__(
        self,
        region: str,
        settings: RegionSettings,
        api: ClusterApi,
        watches: Watches,
        events: EndpointEvents,
        repairs: DriftRepairs,
        applied: AppliedWorkloads,
        digests: LiveDigests,
        sync_timeout: float,
    ) -> None:
        self.region = region
        self.settings = settings
        self.namespace = settings.namespace
        self._api = api
        self._watches = watches
        self._events = events
        self._repairs = repairs
        self._applied = applied
        self._digests = digests
        self._sync_timeout = sync_timeout

    async def apply(self, workload: Workload) -> None:
        namespace = namespace_of(workload, self.settings)
        if namespace != self.namespace:
            raise WorkloadUnsupported(
                f"namespace: region {self.region} manages namespace {self.namespace!r} only "
                f"(got {namespace!r})"
            )
        plan = steps(workload, self.settings)  # WorkloadUnsupported for an image-less spec
        objects = _object_list(step.ref for step in plan if step.verb == "apply")
        creates_autoscaler = any(
            step.verb == "apply"
            and step.ref.kind in _AUTOSCALERS
            and self._watches.cached(step.ref) is None
            for step in plan
        )
        written: Written = []
        digests: dict[str, str] = {}
        with self._events.holding(workload.endpoint, written):
            for step in plan:
                if step.verb == "delete":
                    if self._held(workload.endpoint, step.ref):
                        await self._api.delete(step.ref)
                        self._forget(step.ref)
                        written.append((step.ref, None))
                    continue
                assert step.manifest is not None
                # Copied only down to what changes: the rest is sent, never modified.
                metadata = step.manifest["metadata"]
                annotations = {**metadata["annotations"], ANNOTATION_OBJECTS: objects}
                manifest = {**step.manifest, "metadata": {**metadata, "annotations": annotations}}
                hands_off = step.ref.kind == "Deployment" and "replicas" not in manifest["spec"]
                if not (hands_off and creates_autoscaler) and self._in_place(step.ref, manifest):
                    digests[_key(step.ref)] = fields_digest(manifest)
                    continue
                if hands_off:
                    manifest = await self._hand_off_replicas(
                        workload, step.ref, manifest, creates_autoscaler
                    )
                digest = manifest["metadata"]["annotations"][ANNOTATION_FIELDS] = fields_digest(
                    manifest
                )
                digests[_key(step.ref)] = digest
                self._note_repair(workload.endpoint, step.ref, manifest)
                result = await self._api.apply(step.ref, manifest, FIELD_MANAGER, force=True)
                if not self._repairs.applied(_key(step.ref), digest, self._digests.of(result)):
                    log.warning(
                        "%s/%s: the API server changed fields servefleet set while applying "
                        "%s (a mutating webhook?); its drift is judged against what it served",
                        self.region,
                        step.ref.name,
                        step.ref.kind,
                    )
                written.append((step.ref, resource_version(result)))
            await self._synced(written)
        self._applied.record(workload.endpoint, workload_hash(workload), digests)

    async def remove(self, endpoint: str) -> None:
        refs = sorted(
            self._held_refs(endpoint),
            key=lambda ref: (_REMOVAL_ORDER[ref.kind], not ref.name.endswith("-canary")),
        )
        written: Written = []
        self._applied.forget(endpoint)
        with self._events.holding(endpoint, written):
            for ref in refs:
                await self._api.delete(ref)
                self._forget(ref)
                written.append((ref, None))
            await self._synced(written)

    async def _hand_off_replicas(
        self, workload: Workload, ref: ObjectRef, manifest: Manifest, creates_autoscaler: bool
    ) -> Manifest:
        """Before applying the autoscaled Deployment `manifest` (without `replicas`):
        make sure omitting the field neither drops the count to 1 nor leaves it where
        the HPA about to be created would never scale it; the manifest to apply.

        Decided from the cache alone (render's *Replicas and the autoscaler*): a new
        Deployment is created at the HPA's minimum; one the HPA is (re)created for, at
        0 or below the minimum, is set to the minimum by the hand-off manager, forced
        (the count it takes over is servefleet's own, from a fixed count or a stop,
        and with no HPA yet there is no HPA decision to override); otherwise a count
        servefleet alone holds is shared with the hand-off manager at its live value,
        so it stays. A stale cache that missed a live HPA is the one way this could
        override one; apply() waits for its own writes to reach the cache to keep
        that window small."""
        assert workload.autoscaling is not None
        minimum = min_replicas(workload.autoscaling, self.settings)
        live = self._watches.cached(ref)
        if live is None:
            return {**manifest, "spec": {"replicas": minimum, **manifest["spec"]}}
        replicas = int((live.get("spec") or {}).get("replicas", 1))
        if creates_autoscaler and replicas < minimum:
            body = replicas_handoff(workload, self.settings, minimum)
            await self._api.apply(ref, body, HANDOFF_MANAGER, force=True)
            log.info(
                "%s/%s: spec.replicas %d -> %d (the autoscaler's minimum) and handed over",
                self.region,
                ref.name,
                replicas,
                minimum,
            )
        elif _sole_replicas_owner(live):
            body = replicas_handoff(workload, self.settings, replicas)
            await self._api.apply(ref, body, HANDOFF_MANAGER, force=False)
            log.info("%s/%s: spec.replicas (%d) handed over", self.region, ref.name, replicas)
        return manifest

    def _forget(self, ref: ObjectRef) -> None:
        """`ref` was deleted."""
        self._repairs.forget(_key(ref))
        self._digests.forget(_key(ref))

    def _in_place(self, ref: ObjectRef, manifest: Manifest) -> bool:
        """Whether the cached object holds every field of `manifest` as servefleet
        last set them (the same fields digest, and no drift since)."""
        cached = self._watches.cached(ref)
        if cached is None or self._repairs.drifted(_key(ref), cached.get("drift")):
            return False
        recorded = (cached["metadata"].get("annotations") or {}).get(ANNOTATION_FIELDS)
        return recorded == fields_digest(manifest)

    def _note_repair(self, endpoint: str, ref: ObjectRef, manifest: Manifest) -> None:
        """If the cached object drifted, this apply repairs it: say which of the
        fields servefleet sets, changed by whom."""
        drift = (self._watches.cached(ref) or {}).get("drift")
        if drift is None or not self._repairs.drifted(_key(ref), drift):
            return
        ours = rendered_paths(manifest)
        changes = tuple((path, manager) for path, manager in drift.changes if path in ours)
        self._repairs.record(endpoint, _key(ref), changes)
        log.info(
            "%s/%s: repairing drift: %s",
            self.region,
            ref.name,
            ", ".join(f"{path} (changed by {manager})" for path, manager in changes)
            or f"{ref.kind} fields servefleet sets",
        )

    def _held(self, endpoint: str, ref: ObjectRef) -> bool:
        """Whether the region may hold `ref`: its cache says so, or for a kind not
        watched here, the objects list of every cached object of the endpoint names
        it (the objects applied since it was deleted do not)."""
        if self._watches.watches(ref.kind):
            return self._watches.cached(ref) is not None
        held = self._watches.held_objects(endpoint)
        return bool(held) and all(
            f"{ref.kind}/{ref.name}"
            in (obj["metadata"].get("annotations") or {}).get(ANNOTATION_OBJECTS, "").split(",")
            for _kind, obj in held
        )

    def _held_refs(self, endpoint: str) -> list[ObjectRef]:
        known = {(ref.kind, ref.name): ref for ref in all_objects(endpoint, self.namespace)}
        refs = [
            ref
            for ref in known.values()
            if not self._watches.watches(ref.kind) and self._held(endpoint, ref)
        ]
        for kind, obj in self._watches.held_objects(endpoint):
            name = obj["metadata"]["name"]
            refs.append(
                known.get((kind, name))
                or ObjectRef(obj.get("apiVersion", ""), kind, self.namespace, name)
            )
        return refs

    async def _synced(self, written: Written) -> None:
        """Wait (bounded) until the caches show these writes: each applied object at
        least at its resourceVersion, each deleted one gone."""

        def caught_up() -> bool:
            for ref, version in written:
                cached = self._watches.cached(ref)
                if version is None:
                    if cached is not None:
                        return False
                elif cached is None or not at_least(resource_version(cached), version):
                    return False
            return True

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._sync_timeout):
                while not caught_up():
                    await self._events.wait_for_change()
                return
        log.warning("%s: the watches did not show our writes within the sync timeout", self.region)


def _key(ref: ObjectRef) -> str:
    """How `DriftRepairs` names an object."""
    return f"{ref.kind}/{ref.name}"


def _object_list(refs: Iterable[ObjectRef]) -> str:
    return ",".join(sorted(f"{ref.kind}/{ref.name}" for ref in refs))


def _sole_replicas_owner(deployment: Manifest) -> bool:
    """Whether servefleet alone manages the Deployment's `spec.replicas`."""
    entries = (deployment.get("metadata") or {}).get("managedFields") or []
    owners = {
        (entry.get("manager"), entry.get("subresource") or "")
        for entry in entries
        if owns_replicas(entry)
    }
    return owners == {(FIELD_MANAGER, "")}
