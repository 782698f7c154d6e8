"""A stand-in for the HorizontalPodAutoscaler controller: the replica bounds only.

Opt-in (`KubeApiServer(hpa_controller=True)`). It is NOT an autoscaler: it reads no
metrics and never scales on load. It applies the one rule of kube-controller-manager's
HPA controller (`pkg/controller/podautoscaler/horizontal.go`, `reconcileAutoscaler`)
that holds before any metric is read, for every autoscaling/v2 HPA whose
`scaleTargetRef` is a Deployment of its namespace:

    target's spec.replicas          what the real controller does
    0 (and minReplicas is not 0)    nothing: status condition ScalingActive=False,
                                    reason ScalingDisabled ("scaling is disabled since
                                    the replica count of the target is zero")
    above maxReplicas               scales it to maxReplicas
    below minReplicas               scales it to minReplicas
    within the bounds               nothing here (the real one would act on metrics)

A scale is written as the real controller writes it: an update of the Deployment's
`scale` subresource by manager `kube-controller-manager`. The HPA's status gets
`currentReplicas`, `desiredReplicas` and, at 0 replicas, the ScalingActive condition;
the real controller writes more (other conditions, metrics, `lastScaleTime`).
Unlike the real one, which looks every 15 s, it acts at once on every HPA or
Deployment change, like the other simulated controllers here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .clock import now_rfc3339
from .resources import DEPLOYMENTS, HPAS
from .store import Event
from .watching import WatchingController
from .writes import WriteOptions

MANAGER = "kube-controller-manager"
SCALING_DISABLED = "scaling is disabled since the replica count of the target is zero"


@dataclass(frozen=True)
class Decision:
    replicas: int
    """The target's replica count once the controller has acted."""
    disabled: bool = False
    """Scaling is disabled: the target is at 0 replicas."""


def decide(current: int, minimum: int, maximum: int) -> Decision:
    """What the HPA controller does with a target at `current` replicas, before
    reading any metric (see the module docstring)."""
    if current == 0 and minimum != 0:
        return Decision(0, disabled=True)
    if current > maximum:
        return Decision(maximum)
    if current < minimum:
        return Decision(minimum)
    return Decision(current)


class AutoscalerController(WatchingController):
    watched = (HPAS, DEPLOYMENTS)

    def keys(self, event: Event) -> list[tuple[str, str]]:
        """The HPAs (namespace, name) an event concerns: itself, or those targeting
        the Deployment."""
        metadata = event.obj["metadata"]
        namespace = str(metadata.get("namespace", ""))
        if event.obj.get("kind") == "HorizontalPodAutoscaler":
            return [] if event.type == "DELETED" else [(namespace, str(metadata["name"]))]
        return [
            (namespace, str(stored.obj["metadata"]["name"]))
            for stored in self.engine.store.items(HPAS, namespace)
            if _target(stored.obj) == metadata["name"]
        ]

    def reconcile(self, namespace: str, name: str) -> None:
        stored = self.engine.store.get(HPAS, namespace, name)
        if stored is None:
            return
        hpa = stored.obj
        target = _target(hpa)
        deployment = (
            self.engine.store.get(DEPLOYMENTS, namespace, target) if target is not None else None
        )
        if deployment is None:
            return  # the real controller reports FailedGetScale; nothing to stand in for
        spec = hpa.get("spec") or {}
        current = int((deployment.obj.get("spec") or {}).get("replicas", 1))
        decision = decide(current, int(spec.get("minReplicas", 1)), int(spec["maxReplicas"]))
        if decision.replicas != current:
            self.engine.write_scale(
                DEPLOYMENTS,
                namespace,
                target or "",
                {"spec": {"replicas": decision.replicas}},
                None,
                WriteOptions(MANAGER),
            )
        self._write_status(hpa, current, decision)

    def _write_status(self, hpa: dict[str, Any], current: int, decision: Decision) -> None:
        previous = hpa.get("status") or {}
        status: dict[str, Any] = {
            "currentReplicas": current,
            "desiredReplicas": decision.replicas,
        }
        if decision.disabled:
            before = next(
                (c for c in previous.get("conditions") or [] if c.get("type") == "ScalingActive"),
                {},
            )
            status["conditions"] = [
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "lastTransitionTime": before.get("lastTransitionTime", now_rfc3339()),
                    "reason": "ScalingDisabled",
                    "message": SCALING_DISABLED,
                }
            ]
        if {key: previous.get(key) for key in status} == status and (
            decision.disabled or not previous.get("conditions")
        ):
            return  # unchanged: no write, so no event to react to again
        metadata = hpa["metadata"]
        self.engine.set_status(HPAS, metadata["namespace"], metadata["name"], status, MANAGER)


def _target(hpa: dict[str, Any]) -> str | None:
    ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    if ref.get("kind") != "Deployment" or ref.get("apiVersion", "apps/v1") != "apps/v1":
        return None
    name = ref.get("name")
    return str(name) if name else None


__all__ = ["SCALING_DISABLED", "AutoscalerController", "Decision", "decide"]
