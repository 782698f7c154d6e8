"""What the local runtime tells its region's gateway: each endpoint's route.

The runtime is the only writer of its region's `Router` (`routing`). An
endpoint's route lists the replicas that serve (ready and not retiring) of each
version, with the canary's weight; it is published again on every change, so a
replica leaves the route before its drain begins. An endpoint that is not routed
(stopped, or withdrawn by the health watchdog) keeps its path, and its 503 says
why. The router is marked as leading while a runtime writes it, so a standby's
gateway says it has no routes instead of answering 404.
"""

from __future__ import annotations

from servefleet.plan import Workload
from servefleet.runtime.local.records import ROLES, Replica, serves
from servefleet.runtime.local.routing import Router

__all__ = ["RoutePublisher"]


class RoutePublisher:
    """Writes one runtime's endpoints into its region's `Router`."""

    def __init__(self, router: Router) -> None:
        self._router = router
        router.leading = True

    def publish(self, workload: Workload, replicas: list[Replica]) -> None:
        """Route the workload's path to those of `replicas` that serve; raises
        `RouteConflict` when another endpoint holds the path."""
        routed = {
            role: [r.backend for r in replicas if r.role == role and serves(r) and r.backend]
            for role in ROLES
        }
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
        )

    def withdraw(self, endpoint: str) -> None:
        """Stop routing to `endpoint`: its path answers 404."""
        self._router.remove_route(endpoint)

    def step_down(self) -> None:
        """The runtime closes: the router no longer has a leader behind it."""
        self._router.leading = False
