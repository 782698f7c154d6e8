"""`observe()`: what the region holds for an endpoint, read from the watch caches only.

Whether the workload is in place is decided from what this process applied last
(`applied.py`: the workload hash, and the fields digest of each object, which the
caches hold) and, failing that, from the objects alone: every applied object
carries, besides the workload hash (`servefleet.io/workload-hash`), the list of
objects that workload renders (`servefleet.io/objects`, e.g.
`Deployment/llm,Ingress/llm,Service/llm`). The endpoint then reports the hash only
when the cached objects of the endpoint are exactly that list and all carry the same
hash and list: a missing object (a hand-deleted Service), an extra one (a canary
left behind), or one applied for another workload all report "" — which matches no
workload, so the reconciler applies again. The fallback survives restarts and leader
changes; after a change that touched only some objects it reports "", and the apply
that follows sends nothing and fills the memory.

An object whose fields servefleet set were changed by someone else (the cache's
`drift` mark, `drift.py`) reports "" as well, so the reconciler re-applies — unless
its repairs are in a fight and the next must wait (`drift.DriftRepairs`; the
endpoint is looked at again when it may). Recent repairs are part of the problem
the region reports.

During a canary, the versions' traffic is what `traffic.PrometheusTraffic` last read
from the region's Prometheus (when the region has one), for the Deployments'
images; a failure to read it is part of the problem too.
"""

from __future__ import annotations

from servefleet.plan import Observed, VersionObservation
from servefleet.runtime.kubernetes.applied import AppliedWorkloads
from servefleet.runtime.kubernetes.drift import DriftRepairs
from servefleet.runtime.kubernetes.render_names import ANNOTATION_HASH, Manifest
from servefleet.runtime.kubernetes.staging import staging_of
from servefleet.runtime.kubernetes.traffic import PrometheusTraffic
from servefleet.runtime.kubernetes.traffic_queries import Role
from servefleet.runtime.kubernetes.watches import ANNOTATION_OBJECTS, Watches, deployment_problem

__all__ = ["observe"]


def observe(
    endpoint: str,
    watches: Watches,
    staging_progress: dict[str, tuple[int, int]],
    repairs: DriftRepairs,
    applied: AppliedWorkloads,
    traffic: PrometheusTraffic | None = None,
) -> Observed | None:
    """The endpoint as the caches show it; None when the region holds none of it.
    `staging_progress`: (bytes done, bytes total) last read from each staging pod's log;
    `traffic`: the versions' traffic, in a region that reads it."""
    held = watches.held_objects(endpoint)
    if not held:
        if traffic is not None:
            traffic.forget(endpoint)
        return None
    keys = [f"{kind}/{obj['metadata']['name']}" for kind, obj in held]
    repair = any(
        repairs.wait(endpoint, key) == 0
        for key, (_kind, obj) in zip(keys, held, strict=True)
        if repairs.drifted(key, obj.get("drift"))
    )
    deployments = {
        obj["metadata"]["name"]: obj for obj in watches.caches["Deployment"].of(endpoint)
    }
    primary = deployments.get(endpoint)
    canary = deployments.get(f"{endpoint}-canary")
    staging, failure, staging_problem = staging_of(watches.pods.of(endpoint), staging_progress)
    counted, traffic_problem = None, ""
    if traffic is not None:
        running: dict[Role, Manifest | None] = {"primary": primary, "canary": canary}
        images: dict[Role, str | None] = {
            role: deployment.get("image")
            for role, deployment in running.items()
            if deployment is not None
        }
        counted, traffic_problem = traffic.observed(endpoint, images)
    problems = (
        staging_problem,
        _problem(primary),
        _problem(canary),
        repairs.report(keys),
        traffic_problem,
    )
    problem = "; ".join(p for p in problems if p)
    return Observed(
        workload_hash="" if repair else _hash_in_place(endpoint, held, applied),
        primary=_version(primary),
        canary=_version(canary),
        routed=any(
            obj["metadata"]["name"] == endpoint for obj in watches.caches["Ingress"].of(endpoint)
        ),
        problem=problem,
        failure=failure,
        staging=staging,
        traffic=counted,
    )


def _hash_in_place(
    endpoint: str, held: list[tuple[str, Manifest]], applied: AppliedWorkloads
) -> str:
    """The hash of the workload this process last applied, while its objects are in
    place as applied; else the hash every object of the endpoint records, if the
    cached objects are exactly the ones that workload renders; else "" (matches no
    workload)."""
    remembered = applied.in_place(endpoint, held)
    if remembered is not None:
        return remembered
    recorded = {
        (
            (obj["metadata"].get("annotations") or {}).get(ANNOTATION_HASH, ""),
            (obj["metadata"].get("annotations") or {}).get(ANNOTATION_OBJECTS, ""),
        )
        for _kind, obj in held
    }
    if len(recorded) != 1:
        return ""
    ((digest, objects),) = recorded
    present = ",".join(sorted(f"{kind}/{obj['metadata']['name']}" for kind, obj in held))
    return digest if digest and objects == present else ""


def _version(deployment: Manifest | None) -> VersionObservation:
    """Replicas of the Deployment's current template: during a rollout its status
    counts the old pods too, so of `readyReplicas` only what exceeds the old pods
    (`replicas - updatedReplicas`) is surely new — a new version whose pods never
    get ready (a model that cannot be staged) must not look ready on the old ones."""
    if deployment is None:
        return VersionObservation()
    status = deployment.get("status") or {}
    current = status.get("observedGeneration") == deployment["metadata"].get("generation")
    running = int(status.get("replicas") or 0)
    old = running - int(status.get("updatedReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    new_ready = max(0, ready - old) if current else 0
    return VersionObservation(ready=new_ready, running=running, outgoing_ready=ready - new_ready)


def _problem(deployment: Manifest | None) -> str:
    """A rollout that ran out of time, or replicas the controller cannot create."""
    if deployment is None:
        return ""
    name = deployment["metadata"]["name"]
    return "; ".join(
        f"{name}: {condition.get('message') or condition.get('reason')}"
        for condition in (deployment.get("status") or {}).get("conditions") or []
        if deployment_problem(condition)
    )
