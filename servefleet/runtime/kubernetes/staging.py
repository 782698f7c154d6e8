"""Model staging on Kubernetes, as the runtime reads it.

The pods whose init container stages a model carry `servefleet.io/stages-model=true`
and have a watch cache of their own (`pod_entry`: what the init container is doing,
its source, exit code, restarts and termination message, which `servefleet.stage`
writes). While a stage runs, every `staging_poll_interval` the runtime reads the
tail of its log (`StagingProgress`; one pod per endpoint, at most
`staging_log_reads` pods a round, taking turns) for the last progress line, in
whole percents like the local runtime. A pod event yields its endpoint only when
what is kept of its staging changed (`stage_unchanged`), so replicas coming and
going cost no pass. A failed staging (the kubelet retries it) is reported as
`Observed.failure` (`staging_of`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Final

from servefleet.plan import staging_percent, staging_progress
from servefleet.runtime.base import RuntimeFailure
from servefleet.runtime.kubernetes.api import ClusterApi
from servefleet.runtime.kubernetes.events import EndpointEvents
from servefleet.runtime.kubernetes.render_names import LABEL_NAME, LABEL_ROLE, Manifest
from servefleet.runtime.kubernetes.render_pod import STAGE_CONTAINER
from servefleet.runtime.kubernetes.settings import ClusterSettings
from servefleet.runtime.kubernetes.watches import Cache, endpoint_of
from servefleet.spec import ModelStaging

__all__ = ["StagingProgress", "pod_entry", "stage_unchanged", "staging_of"]

log = logging.getLogger(__name__)

_ROUTINE_WAITS: Final = ("PodInitializing", "ContainerCreating")


def pod_entry(kind: str, pod: Manifest) -> Manifest:
    """What the pods' cache keeps of a pod: its endpoint, role and staging."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    return {
        "kind": kind,
        "metadata": {
            "name": metadata.get("name"),
            "labels": {key: labels[key] for key in (LABEL_NAME, LABEL_ROLE) if key in labels},
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "stage": _stage_of(pod),
    }


def stage_unchanged(previous: Manifest, current: Manifest) -> bool:
    """Whether a pod's change left its staging as it was (a replica's readiness)."""
    return bool(previous["stage"] == current["stage"])


def _stage_of(pod: Manifest) -> dict[str, Any]:
    """What the pod's staging init container is doing, from its spec and status.

    `phase`: waiting (not started), running, done, or failed: the last finished
    run failed (also while the kubelet runs it again: it retries with back-off, so
    a failure shown only between retries would flap). `held_up`: why a waiting
    container cannot start (an image that cannot be pulled, say), if not routine."""
    metadata = pod.get("metadata") or {}
    containers = (pod.get("spec") or {}).get("initContainers") or []
    spec: Manifest = next((c for c in containers if c.get("name") == STAGE_CONTAINER), {})
    env = {item.get("name"): item.get("value") for item in spec.get("env") or []}
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
    status: Manifest = next((s for s in statuses if s.get("name") == STAGE_CONTAINER), {})
    state = status.get("state") or {}
    terminated = state.get("terminated")
    finished = (
        terminated if terminated is not None else (status.get("lastState") or {}).get("terminated")
    )
    if terminated is not None:
        phase = "done" if terminated.get("exitCode") == 0 else "failed"
    elif finished is not None and finished.get("exitCode") != 0:
        phase = "failed"
    else:
        phase = "running" if "running" in state else "waiting"
    outcome = _outcome(finished) if finished is not None else {"bytes_total": None}
    waiting = state.get("waiting") or {}
    held_up = ""
    if phase == "waiting" and waiting.get("reason") not in (None, *_ROUTINE_WAITS):
        held_up = f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
    return {
        "phase": phase,
        "held_up": held_up,
        "source": str(env.get("SERVEFLEET_MODEL_SOURCE") or ""),
        "restarts": int(status.get("restartCount") or 0),
        "terminating": bool(metadata.get("deletionTimestamp")),
        **outcome,
    }


def _outcome(terminated: Manifest) -> dict[str, Any]:
    """A finished staging run: its exit code and what `servefleet.stage` left in the
    termination message (or, if it died first, the log's tail the kubelet put there)."""
    text = str(terminated.get("message") or "").strip()
    try:
        recorded = json.loads(text) if text.startswith("{") else {}
    except ValueError:
        recorded = {}
    message = str(recorded.get("message") or "") if isinstance(recorded, dict) else ""
    total = recorded.get("bytes_total") if isinstance(recorded, dict) else None
    return {
        "exit_code": terminated.get("exitCode"),
        "message": message or text[-500:] or str(terminated.get("reason") or ""),
        "bytes_total": total if isinstance(total, int) else None,
    }


def staging_of(
    pods: list[Manifest], progress: dict[str, tuple[int, int]]
) -> tuple[ModelStaging | None, str, str]:
    """The endpoint's staging as (status, failure, problem) from its pods' cache
    entries and the progress last read from their logs (by pod name)."""
    stages = [(pod["metadata"]["name"], pod["stage"]) for pod in pods]
    stages = [(name, stage) for name, stage in stages if not stage["terminating"]]
    if not stages:
        return None, "", ""
    for name, stage in stages:
        if stage["phase"] == "failed":
            restarts = stage["restarts"]
            failure = (
                f"{stage['message'] or 'model staging failed'} (pod {name}: init container "
                f"{STAGE_CONTAINER} exited with code {stage['exit_code']}; "
                f"restarted {restarts} time{'' if restarts == 1 else 's'})"
            )
            return ModelStaging(), failure, ""
    unfinished = [(name, stage) for name, stage in stages if stage["phase"] != "done"]
    if not unfinished:
        total = next((s["bytes_total"] for _, s in stages if s["bytes_total"] is not None), None)
        return ModelStaging(bytes_done=total or 0, bytes_total=total, complete=True), "", ""
    done, total = max((progress.get(name, (0, -1)) for name, _ in unfinished), default=(0, -1))
    staging = ModelStaging(bytes_done=done, bytes_total=total if total >= 0 else None)
    problem = staging_progress(unfinished[0][1]["source"], staging)
    for name, stage in unfinished:
        if stage["held_up"]:
            problem += f" (pod {name}: {stage['held_up']})"
            break
    return staging, "", problem


def _progress_line(log_tail: bytes) -> tuple[int, int] | None:
    """(bytes done, bytes total) of the last progress line in a staging log's tail."""
    for line in reversed(log_tail.decode(errors="replace").splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "progress":
            done, total = event.get("bytes_done"), event.get("bytes_total")
            if isinstance(done, int) and isinstance(total, int):
                return done, total
    return None


class StagingProgress:
    """The progress of running staging init containers, read from their logs."""

    def __init__(
        self,
        region: str,
        api: ClusterApi,
        settings: ClusterSettings,
        events: EndpointEvents,
        pods: Cache,
    ) -> None:
        self.region = region
        self._api = api
        self._settings = settings
        self._events = events
        self._pods = pods
        self.by_pod: dict[str, tuple[int, int]] = {}
        """Pod name -> (bytes done, bytes total) last read from its staging log."""
        self._turn = 0

    async def follow(self) -> None:
        """Every poll interval, read the logs of this round's share of the running
        stagings and yield each endpoint whose progress moved a whole percent."""
        while True:
            await asyncio.sleep(self._settings.staging_poll_interval)
            running: dict[str, str] = {}  # endpoint -> one of its pods staging
            for name in sorted(self._pods.objects):
                entry = self._pods.objects[name]
                endpoint = endpoint_of(entry)
                stage = entry["stage"]
                if endpoint and stage["phase"] == "running" and not stage["terminating"]:
                    running.setdefault(endpoint, name)
            pods = set(running.values())
            for gone in self.by_pod.keys() - pods:
                del self.by_pod[gone]
            turn = sorted(running.items())
            if len(turn) > self._settings.staging_log_reads:
                start = self._turn % len(turn)
                turn = (turn[start:] + turn[:start])[: self._settings.staging_log_reads]
                self._turn = start + len(turn)
            for endpoint, pod in turn:
                try:
                    log_tail = await self._api.stage_log_tail(pod)
                except RuntimeFailure as error:
                    log.debug("%s: %s", self.region, error)  # not started yet, or gone
                    continue
                progress = _progress_line(log_tail) if log_tail else None
                if progress is None:
                    continue
                shown = self.by_pod.get(pod)
                if shown is None or staging_percent(*shown) != staging_percent(*progress):
                    self.by_pod[pod] = progress
                    self._events.notify([endpoint])
