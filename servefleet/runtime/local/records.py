"""What the local runtime holds per endpoint: its replicas and its model stagings.

Plain records, shared by every part of the runtime so that none of them has to
import `supervisor`, which takes the decisions about them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

from servefleet.autoscale import AutoscaleState
from servefleet.plan import Version, Workload
from servefleet.runtime.local.routing import Backend
from servefleet.spec import REQUEST_METRICS

__all__ = [
    "ROLES",
    "EndpointRecord",
    "Phase",
    "Replica",
    "Role",
    "Scaling",
    "Staging",
    "alive",
    "autoscaled_roles",
    "current_staging",
    "serves",
    "spec_key",
    "version_of",
]

Role = Literal["primary", "canary"]
ROLES: tuple[Role, Role] = ("primary", "canary")


class Phase(Enum):
    """Where a replica is in its life (see `supervisor`)."""

    STARTING = "starting"
    READY = "ready"
    UNREADY = "unready"
    WAITING = "waiting"


@dataclass(eq=False)
class Staging:
    """One model source being copied into `directory` (see `staging`)."""

    source: str
    directory: Path
    env: dict[str, str]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_done: int = 0
    bytes_total: int | None = None
    failure: str = ""
    """Why the last attempt failed, with when the next starts; cleared on success."""
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class Replica:
    """One replica of an endpoint: what it runs, and the process running it now, if any."""

    name: str
    role: Role
    index: int
    key: str
    version: Version
    health_path: str
    log: Path
    phase: Phase = Phase.WAITING
    since: float = 0.0
    process: asyncio.subprocess.Process | None = None
    port: int | None = None
    backend: Backend | None = None
    retiring: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    crashes: int = 0
    """Restarts in a row, without serving `backoff_reset_after` in between (when the
    backoff starts over, so does this count)."""
    backoff: float = 0.0
    failure: str = ""
    """Why the last process ended, with when the next starts; cleared once ready."""
    probe_error: str = ""
    task: asyncio.Task[None] | None = None
    staging: Staging | None = None
    """The model this replica waits for before it starts; None without one."""


@dataclass(eq=False)
class Scaling:
    """The local autoscaler's count for one version (see `autoscaler`)."""

    target: int
    """How many replicas to run now; moves one at a time toward `decided`."""
    decided: int
    """The count the autoscaler last chose: reported as the version's desired count."""
    reason: str
    """Why `decided` is what it is, as of the decision that changed it."""
    state: AutoscaleState | None = None
    """What the last decision handed the next; None until the first one."""
    waking: bool = False
    """Started from zero, with no replica ready since (see `VersionObservation.waking`)."""


@dataclass(eq=False)
class EndpointRecord:
    """One endpoint the runtime holds: the workload to run and what runs for it."""

    name: str
    workload: Workload | None
    """None while it is being removed."""
    hash: str
    replicas: list[Replica] = field(default_factory=list)
    stagings: dict[str, Staging] = field(default_factory=dict)
    """By model source: the current one, and older ones replicas still wait for."""
    scaling: dict[Role, Scaling] = field(default_factory=dict)
    """The versions whose count the autoscaler sets: none unless the workload
    autoscales on requests."""


def serves(replica: Replica) -> bool:
    """Whether the gateway sends the replica requests."""
    return replica.phase is Phase.READY and not replica.retiring


def alive(replica: Replica) -> bool:
    return replica.process is not None and replica.process.returncode is None


def current_staging(record: EndpointRecord) -> Staging | None:
    """The staging of the model the endpoint's workload declares, if it started."""
    workload = record.workload
    if workload is None or workload.model_source is None:
        return None
    return record.stagings.get(workload.model_source)


def autoscaled_roles(workload: Workload | None) -> tuple[Role, ...]:
    """The versions of `workload` whose count the local autoscaler sets: each of
    them, when it autoscales on requests."""
    spec = workload.autoscaling if workload else None
    if workload is None or spec is None:
        return ()
    if not any(metric.type in REQUEST_METRICS for metric in spec.metrics):
        return ()  # cpu and memory: nothing local measures them; the minimum runs
    return ROLES if workload.canary is not None else ("primary",)


def version_of(workload: Workload | None, role: Role) -> Version | None:
    if workload is None:
        return None
    return workload.primary if role == "primary" else workload.canary


def spec_key(workload: Workload | None, version: Version | None) -> str | None:
    """What makes two replicas interchangeable; a new key means a rollout."""
    if workload is None or version is None:
        return None
    return json.dumps(
        [
            version.image,
            version.command,
            version.args,
            version.env,
            workload.port,
            workload.health_path,
            workload.model_source,
        ],
        sort_keys=True,
    )
