"""Deployment readiness faked without Pods: the status the deployment controller
would write once the replicas are available, on request (`mark_ready`) or a
while after each spec change (`auto_ready`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .controller import deployment_status
from .engine import Engine
from .errors import ApiError
from .resources import DEPLOYMENTS, ResourceType

CONTROLLER_MANAGER = "kube-controller-manager"


class FakedReadiness:
    """One server's faked readiness: `set_ready`, and `after_commit` (an engine hook)
    marks a Deployment ready `delay` seconds after its spec changes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.delay: float | None = None
        """Seconds after each Deployment spec change to mark it ready (None: never)."""
        self._timers: set[asyncio.TimerHandle] = set()

    def cancel(self) -> None:
        """Forget the Deployments waiting to be marked ready."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def set_ready(self, namespace: str, name: str, ready: int | None = None) -> dict[str, Any]:
        """`KubeApiServer.mark_ready`; the Deployment as stored (not a copy: read it
        only)."""
        current = self._engine.peek(DEPLOYMENTS, namespace, name)
        desired = int((current.get("spec") or {}).get("replicas", 1))
        ready = desired if ready is None else ready
        status = deployment_status(
            current, replicas=desired, updated=desired, ready=ready, available=ready
        )
        return self._engine.set_status(
            DEPLOYMENTS, namespace, name, status, CONTROLLER_MANAGER
        ).body

    def after_commit(
        self, resource: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        if resource is not DEPLOYMENTS or self.delay is None:
            return
        generation = obj["metadata"].get("generation")
        if old is not None and old["metadata"].get("generation") == generation:
            return
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            if self._engine.store.get(DEPLOYMENTS, namespace, name) is None:
                return
            with contextlib.suppress(ApiError):
                self.set_ready(namespace, name)

        handle = loop.call_later(self.delay, fire)
        self._timers.add(handle)
