"""A Deployment controller for the test server: Pods per Deployment, status from them.

It runs with the simulated kubelet (`KubeApiServer(kubelet=Kubelet())`) and does what
kube-controller-manager's Deployment and ReplicaSet controllers (and the scheduler)
would, in one step:

- Pods are created by `generateName` `<deployment>-<template hash>-`, so named
  `<deployment>-<hash>-<5 chars>`, with the template's labels and annotations plus
  `pod-template-hash`, the template's spec bound to the kubelet's node
  (`spec.nodeName`), and a controller ownerReference to the ReplicaSet
  `<deployment>-<hash>` (ReplicaSet objects themselves are not served).
- spec.replicas Pods of the current template. A rollout creates all of the new
  template's Pods at once; an old Pod is deleted only while enough Pods stay Ready
  (maxUnavailable 0 whatever the strategy says; old Pods that are not Ready go at
  once), so a new version that never gets ready leaves the old Pods serving. Scaling
  to 0 and deleting the Deployment delete its Pods; a Pod deleted by a client is
  replaced. Pods it did not create are neither adopted nor touched.
- The Deployment's status is written from its Pods (`deployment_status`, shared with
  `KubeApiServer.mark_ready`), as manager `kube-controller-manager`.

It reacts to the store's events (a watcher on Deployments and Pods, like an
informer) and reconciles each affected Deployment level-based: a pass reads the
store, decides (`plan_pods`, pure) and writes.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from .clock import now_rfc3339
from .engine import Engine
from .json_values import clone
from .resources import DEPLOYMENTS, PODS
from .store import Event
from .watching import WatchingController
from .writes import WriteOptions

MANAGER = "kube-controller-manager"
HASH_LABEL = "pod-template-hash"


#: k8s.io/apimachinery/pkg/util/rand's alphabet (no vowels, no look-alikes)
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: dict[str, Any]) -> str:
    """A stable hash of a pod template, spelled like the real `pod-template-hash`: a
    32-bit hash's decimal digits through SafeEncodeString. (The real one hashes Go's
    dump of the template, FNV-1a, which no client recomputes; a byte-wise FNV loop in
    Python was a few per cent of a busy test server's CPU.)"""
    canonical = orjson.dumps(template, option=orjson.OPT_SORT_KEYS)
    value = int.from_bytes(hashlib.blake2b(canonical, digest_size=4).digest())
    return "".join(_SAFE[ord(digit) % len(_SAFE)] for digit in str(value))


def replica_set_name(deployment: dict[str, Any]) -> str:
    template = (deployment.get("spec") or {}).get("template") or {}
    return f"{deployment['metadata']['name']}-{template_hash(template)}"


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def deployment_status(
    deployment: dict[str, Any], *, replicas: int, updated: int, ready: int, available: int
) -> dict[str, Any]:
    """A Deployment's status as the controller writes it for these Pod counts (zero
    counts omitted, as the real server does)."""
    desired = int((deployment.get("spec") or {}).get("replicas", 1))
    status: dict[str, Any] = {"observedGeneration": deployment["metadata"].get("generation", 1)}
    if replicas:
        status["replicas"] = replicas
    if updated:
        status["updatedReplicas"] = updated
    if ready:
        status["readyReplicas"] = ready
    if available:
        status["availableReplicas"] = available
    if replicas > available:
        status["unavailableReplicas"] = replicas - available
    complete = updated == desired and replicas == desired and available >= desired
    status["conditions"] = _conditions(
        deployment, available >= desired, complete, replica_set_name(deployment)
    )
    return status


def _conditions(
    current: dict[str, Any], available: bool, complete: bool, replica_set: str
) -> list[dict[str, Any]]:
    previous = {c.get("type"): c for c in (current.get("status") or {}).get("conditions") or []}
    wanted = [
        (
            "Available",
            "True" if available else "False",
            "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
            "Deployment has minimum availability."
            if available
            else "Deployment does not have minimum availability.",
        ),
        (
            "Progressing",
            "True",
            "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
            f'ReplicaSet "{replica_set}" has successfully progressed.'
            if complete
            else f'ReplicaSet "{replica_set}" is progressing.',
        ),
    ]
    stamp = now_rfc3339()
    out = []
    for kind, state, reason, message in wanted:
        before = previous.get(kind) or {}
        same = before.get("status") == state and before.get("reason") == reason
        out.append(
            {
                "type": kind,
                "status": state,
                "lastUpdateTime": before.get("lastUpdateTime", stamp) if same else stamp,
                "lastTransitionTime": before.get("lastTransitionTime", stamp)
                if before.get("status") == state
                else stamp,
                "reason": reason,
                "message": message,
            }
        )
    return out


@dataclass(frozen=True)
class PodPlan:
    create: int
    delete: tuple[str, ...]


def _newest_unready_first(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    newest = sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
    return sorted(newest, key=is_ready)  # stable: not ready first, newest first within


def plan_pods(desired: int, current_hash: str, pods: list[dict[str, Any]]) -> PodPlan:
    """What to create and delete so that `desired` Pods of the current template run,
    never letting the Ready count drop below `desired` for old Pods' sake."""
    new = [p for p in pods if p["metadata"]["labels"].get(HASH_LABEL) == current_hash]
    old = [p for p in pods if p["metadata"]["labels"].get(HASH_LABEL) != current_hash]
    surplus = _newest_unready_first(new)[: max(len(new) - desired, 0)]
    kept_ready = sum(1 for p in new if is_ready(p) and p not in surplus)
    old_ready = [p for p in old if is_ready(p)]
    removable = max(0, min(len(old_ready), kept_ready + len(old_ready) - desired))
    oldest_first = sorted(old_ready, key=lambda p: p["metadata"]["creationTimestamp"])
    doomed = surplus + [p for p in old if not is_ready(p)] + oldest_first[:removable]
    return PodPlan(
        create=max(desired - len(new), 0),
        delete=tuple(p["metadata"]["name"] for p in doomed),
    )


def _controller_ref(pod: dict[str, Any]) -> dict[str, Any] | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "ReplicaSet":
            return dict(ref)
    return None


def _owner(pod: dict[str, Any]) -> str | None:
    """The Deployment that a Pod of ours belongs to (by its ReplicaSet's name)."""
    ref = _controller_ref(pod)
    pod_hash = pod["metadata"].get("labels", {}).get(HASH_LABEL)
    if ref is None or not pod_hash or not str(ref.get("name", "")).endswith(f"-{pod_hash}"):
        return None
    return str(ref["name"])[: -len(pod_hash) - 1]


class DeploymentController(WatchingController):
    watched = (DEPLOYMENTS, PODS)

    def __init__(self, engine: Engine, node_name: str) -> None:
        super().__init__(engine)
        self.node_name = node_name

    def keys(self, event: Event) -> list[tuple[str, str]]:
        metadata = event.obj["metadata"]
        namespace = str(metadata.get("namespace", ""))
        if event.obj.get("kind") == "Deployment":
            return [(namespace, str(metadata["name"]))]
        owner = _owner(event.obj)
        return [] if owner is None else [(namespace, owner)]

    def reconcile(self, namespace: str, name: str) -> None:
        stored = self.engine.store.get(DEPLOYMENTS, namespace, name)
        deployment = stored.obj if stored is not None else None
        mine: list[dict[str, Any]] = []
        for pod_stored in self.engine.store.items(PODS, namespace):
            pod = pod_stored.obj
            if _owner(pod) != name:
                continue
            if deployment is not None and self._owned(deployment, pod):
                mine.append(pod)
            else:  # its Deployment is gone (or was replaced): the garbage collector's job
                self.engine.delete(PODS, namespace, pod["metadata"]["name"])
        if deployment is None:
            return
        spec = deployment.get("spec") or {}
        current_hash = template_hash(spec.get("template") or {})
        plan = plan_pods(int(spec.get("replicas", 1)), current_hash, mine)
        for pod_name in plan.delete:
            self.engine.delete(PODS, namespace, pod_name)
        for _ in range(plan.create):
            self.engine.create(
                PODS, namespace, self._pod(deployment, current_hash), WriteOptions(MANAGER)
            )
        self._write_status(deployment, current_hash)

    @staticmethod
    def _replica_set_uid(deployment: dict[str, Any], pod_hash: str) -> str:
        return str(uuid.uuid5(uuid.UUID(deployment["metadata"]["uid"]), pod_hash))

    def _owned(self, deployment: dict[str, Any], pod: dict[str, Any]) -> bool:
        ref = _controller_ref(pod) or {}
        pod_hash = pod["metadata"]["labels"][HASH_LABEL]
        return ref.get("uid") == self._replica_set_uid(deployment, pod_hash)

    def _pod(self, deployment: dict[str, Any], pod_hash: str) -> dict[str, Any]:
        template = deployment["spec"].get("template") or {}
        template_meta = template.get("metadata") or {}
        replica_set = f"{deployment['metadata']['name']}-{pod_hash}"
        metadata: dict[str, Any] = {
            "generateName": f"{replica_set}-",
            "labels": {**(template_meta.get("labels") or {}), HASH_LABEL: pod_hash},
        }
        if template_meta.get("annotations"):
            metadata["annotations"] = dict(template_meta["annotations"])
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": replica_set,
                "uid": self._replica_set_uid(deployment, pod_hash),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        spec = clone(template.get("spec") or {})
        spec["nodeName"] = self.node_name
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}

    def _write_status(self, deployment: dict[str, Any], current_hash: str) -> None:
        metadata = deployment["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        pods = [
            s.obj
            for s in self.engine.store.items(PODS, namespace)
            if _owner(s.obj) == name and self._owned(deployment, s.obj)
        ]
        ready = sum(1 for pod in pods if is_ready(pod))
        updated = sum(1 for pod in pods if pod["metadata"]["labels"][HASH_LABEL] == current_hash)
        status = deployment_status(
            deployment, replicas=len(pods), updated=updated, ready=ready, available=ready
        )
        self.engine.set_status(DEPLOYMENTS, namespace, name, status, MANAGER)


__all__ = [
    "DeploymentController",
    "PodPlan",
    "deployment_status",
    "is_ready",
    "plan_pods",
    "replica_set_name",
    "template_hash",
]
