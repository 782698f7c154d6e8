"""What the local runtime tells its region's gateway: each endpoint's route.

The runtime is the only writer of its region's `Router` (`routing`). An
endpoint's route lists the replicas that serve (ready and not retiring) of each
version, with the canary's weight; it is published again on every change, so a
replica leaves the route before its drain begins. An endpoint that is not routed
(stopped, or withdrawn by the health watchdog) keeps its path, and its 503 says
why. The versions an autoscaler may take to zero (`min_replicas: 0`) wake: a
request finding none of their replicas is held by the gateway, which calls the
runtime's `wake` to start one. The router is marked as leading while a runtime
writes it, so a standby's gateway says it has no routes instead of answering 404;
and as synced only once the reconciler has looked at every endpoint, so a new
leader's gateway answers a path it has no route for yet 503 (starting), not 404.
"""

from __future__ import annotations

from collections.abc import Callable

from servefleet.plan import Workload
from servefleet.runtime.local.load import LoadMeter
from servefleet.runtime.local.records import ROLES, Replica, Role, autoscaled_roles, serves
from servefleet.runtime.local.routing import Router

__all__ = ["RoutePublisher"]


class RoutePublisher:
    """Writes one runtime's endpoints into its region's `Router`."""

    def __init__(self, router: Router, wake: Callable[[str, Role], None]) -> None:
        """`wake(endpoint, role)` starts a version's first replica."""
        self._router = router
        router.leading = True
        router.synced = False
        router.on_wake = wake

    def publish(self, workload: Workload, replicas: list[Replica]) -> None:
        """Route the workload's path to those of `replicas` that serve; raises
        `RouteConflict` when another endpoint holds the path."""
        routed = {
            role: [r.backend for r in replicas if r.role == role and serves(r) and r.backend]
            for role in ROLES
        }
        scales_to_zero = workload.autoscaling is not None and workload.autoscaling.min_replicas == 0
        if workload.routed:
            reason = ""
        elif workload.replicas_desired == 0:
            reason = "endpoint is stopped"
        else:
            reason = "traffic withdrawn by the health watchdog"
        self._router.set_route(
            workload.endpoint,
            workload.ingress_path,
            routed=workload.routed,
            reason=reason,
            weight=workload.canary_weight,
            primary=routed["primary"],
            canary=routed["canary"],
            wakes=autoscaled_roles(workload) if scales_to_zero else (),
        )

    def load(self, endpoint: str, role: Role) -> LoadMeter | None:
        """What the gateway counted for one version of `endpoint` (see `load`)."""
        return self._router.load(endpoint, role)

    def withdraw(self, endpoint: str) -> None:
        """Stop routing to `endpoint`: its path answers 404."""
        self._router.remove_route(endpoint)

    def synced(self) -> None:
        """Every endpoint of the region has been looked at: a path with no route is
        not one (404) from now on."""
        self._router.synced = True

    def step_down(self) -> None:
        """The runtime closes: the router no longer has a leader behind it."""
        self._router.leading = False
        self._router.on_wake = None
