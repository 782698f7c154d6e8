"""What a region reports on an endpoint: its state, replicas, model staging and,
during a rollout, its traffic per version."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from servefleet.spec.rules import EndpointName, RegionName, SpecModel
from servefleet.spec.traffic import RegionTraffic

__all__ = [
    "ModelStaging",
    "RegionState",
    "RegionStatus",
]


class RegionState(StrEnum):
    PENDING = "pending"
    PROGRESSING = "progressing"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETED = "deleted"


class ModelStaging(SpecModel):
    """How far a region has copied and verified an endpoint's model."""

    bytes_done: int = 0
    bytes_total: int | None = None
    """None until the source's manifest has been read."""
    complete: bool = False


class RegionStatus(SpecModel):
    """One region's report on one endpoint; written only by that region's reconciler."""

    endpoint: EndpointName
    region: RegionName
    state: RegionState = RegionState.PENDING
    observed_generation: int = 0
    replicas_ready: int = 0
    replicas_desired: int = 0
    canary_ready: int = 0
    canary_desired: int = 0
    routed: bool = False
    message: str = ""
    scale_reason: str = ""
    """Why `replicas_desired` and `canary_desired` are what they are, when the
    region's own autoscaler chose them (a local region); "" otherwise."""
    last_transition: datetime | None = None
    heartbeat: datetime | None = None
    unready_since: datetime | None = None
    staging: ModelStaging | None = None
    """Copying `model_source` into the region before replicas start; None without one."""
    traffic: RegionTraffic | None = None
    """Each version's requests, 5xx answers and latency through the region's gateway,
    while a rollout has reached the region and the region counts them (a local one);
    None otherwise."""
