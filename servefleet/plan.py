"""Pure decisions: what a region should run, whether it runs it, what to report.

Every function here takes records and observations in and returns values out; the
clock is an argument (`now`). The reconciler executes what these functions decide,
so every corner of the decision logic is testable without a runtime, a store or
time passing.

- `desired_workload` — the endpoint as one region should run it, or None when the
  region should hold nothing of it.
- `workload_hash` — a stable digest of a workload; runtimes record it on what
  they apply, and the reconciler writes only when the two differ.
- `only_settled`, `ready_in` — which of the reconciler's own writes need no pass,
  and which of its regions still keep an endpoint deploying.
- `watchdog` — whether an endpoint that stays unready should lose its route.
- `region_status` — the report for the store, from the workload and observation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from servefleet.canonical import canonical_json
from servefleet.spec import (
    AutoscalingSpec,
    DesiredState,
    Endpoint,
    ModelStaging,
    RegionState,
    RegionStatus,
    RegionTraffic,
    Resources,
)

__all__ = [
    "Observed",
    "Version",
    "VersionObservation",
    "WatchdogDecision",
    "Workload",
    "desired_workload",
    "fleet_state",
    "only_settled",
    "purgeable",
    "ready_in",
    "region_status",
    "staging_percent",
    "staging_progress",
    "status_changed",
    "watchdog",
    "workload_hash",
]


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Version(_Value):
    """One set of identical replicas: the primary version, or the canary."""

    role: Literal["primary", "canary"]
    image: str | None
    command: list[str] | None
    args: list[str] | None
    env: dict[str, str]
    replicas: int | None
    """None while an autoscaler owns the count (see `Workload.autoscaling`)."""


class Workload(_Value):
    """Everything one region needs to run one endpoint."""

    endpoint: str
    region: str
    generation: int
    namespace: str | None
    port: int
    health_path: str
    ingress_path: str
    primary: Version
    canary: Version | None
    canary_weight: int = Field(ge=0, le=99)
    """Percent of requests for the canary; 0 when there is none."""
    routed: bool
    """Whether the endpoint receives traffic: false when stopped or pulled by the watchdog."""
    autoscaling: AutoscalingSpec | None
    resources: Resources
    accelerator: str
    gpu_count: int
    capacity_type: str | None
    node_selector: dict[str, str]
    labels: dict[str, str]
    model_source: str | None
    model_path: str | None
    resume_replicas: tuple[int, int] | None = None
    """The primary and canary counts the region's own autoscaler last reported:
    where a runtime that holds nothing yet (a new leader) starts, rather than at
    `min_replicas`. Left out of the hash, since the count is not the workload's."""

    @property
    def primary_desired(self) -> int:
        if self.primary.replicas is not None:
            return self.primary.replicas
        return self.autoscaling.min_replicas if self.autoscaling else 0

    @property
    def canary_desired(self) -> int:
        return self.canary.replicas or 0 if self.canary else 0

    @property
    def replicas_desired(self) -> int:
        return self.primary_desired + self.canary_desired


def desired_workload(
    endpoint: Endpoint,
    region: str,
    *,
    unrouted: bool = False,
    reported: RegionStatus | None = None,
) -> Workload | None:
    """The workload `region` should run for `endpoint`; None when it should run nothing
    (the endpoint is deleted or no longer targets the region). `reported` is the
    region's last status, whose autoscaled counts a new runtime resumes from."""
    if endpoint.desired_state is DesiredState.DELETED or region not in endpoint.target_regions:
        return None
    spec = endpoint.spec
    runs = endpoint.desired_state.runs
    autoscaling = spec.autoscaling if spec.autoscaling.enabled and runs else None
    image = spec.region_images.get(region, spec.image)
    primary = Version(
        role="primary",
        image=image,
        command=spec.command,
        args=spec.args,
        env=dict(sorted(spec.env.items())),
        replicas=None if autoscaling else (spec.replicas if runs else 0),
    )
    canary = None
    canary_weight = 0
    rollout = endpoint.rollout
    if rollout is not None and rollout.phase.active and region in rollout.weights:
        # A progressive rollout's new version: the primary's command and env, its
        # image, at the weight the rollout has reached in this region.
        canary = primary.model_copy(
            update={
                "role": "canary",
                "image": rollout.image,
                "replicas": spec.rollout_policy.canary_replicas if runs else 0,
            }
        )
        canary_weight = rollout.weights[region]
    elif spec.canary is not None:
        canary = Version(
            role="canary",
            image=spec.canary.image or image,
            command=spec.canary.command if spec.canary.command is not None else spec.command,
            args=spec.canary.args if spec.canary.args is not None else spec.args,
            env=dict(sorted({**spec.env, **spec.canary.env}.items())),
            replicas=spec.canary.replicas if runs else 0,
        )
        canary_weight = spec.canary.weight
    return Workload(
        endpoint=endpoint.name,
        region=region,
        generation=endpoint.generation,
        namespace=spec.namespace,
        port=spec.port,
        health_path=spec.health_path,
        ingress_path=endpoint.ingress_path,
        primary=primary,
        canary=canary,
        canary_weight=canary_weight,
        routed=runs and not unrouted,
        autoscaling=autoscaling,
        resources=spec.resources,
        accelerator=spec.accelerator,
        gpu_count=spec.gpu_count,
        capacity_type=spec.capacity_type,
        node_selector=spec.node_selector,
        labels=spec.labels,
        model_source=spec.model_source,
        model_path=spec.model_path,
        resume_replicas=(
            (reported.replicas_desired, reported.canary_desired)
            if autoscaling and reported is not None and reported.scale_reason
            else None
        ),
    )


_HASHED: dict[int, tuple[Workload, str]] = {}
"""The last workloads hashed, by identity (each kept, so its id is not reused): one
pass asks for its workload's hash up to four times (the reconciler's check, the
report, the runtime's render and its memory of what it applied)."""
_HASHED_KEPT = 64


def workload_hash(workload: Workload) -> str:
    """Digest of what the runtime must do. The generation is left out: a new
    generation that changes nothing for this region (another region's image, say)
    costs no write here; so is where an autoscaled count resumes from."""
    hashed = _HASHED.get(id(workload))
    if hashed is not None and hashed[0] is workload:
        return hashed[1]
    data = workload.model_dump(mode="json", exclude={"generation", "resume_replicas"})
    digest = hashlib.sha256(canonical_json(data)).hexdigest()[:16]
    if len(_HASHED) >= _HASHED_KEPT:
        del _HASHED[next(iter(_HASHED))]
    _HASHED[id(workload)] = (workload, digest)
    return digest


class VersionObservation(_Value):
    ready: int = 0
    running: int = 0
    outgoing_ready: int = 0
    """Ready replicas of the version this one replaces: still serving until the
    rollout ends (a new version staging its model for minutes, say)."""
    desired: int | None = None
    """The count the runtime's own autoscaler chose; None when the workload's stands."""
    scale_reason: str = ""
    """Why the autoscaler chose `desired`, e.g. "concurrency 11.8/4 per replica → 3"."""
    waking: bool = False
    """The autoscaler started the version from zero (a request arrived) and none of
    its replicas has been ready since: its first replica is starting."""

    @property
    def asleep(self) -> bool:
        """At zero by its autoscaler, or starting its first replica from there: either
        way its gateway holds the requests that arrive until a replica is ready."""
        return self.desired == 0 or (self.waking and self.ready == 0)


class Observed(_Value):
    """What a runtime holds for one endpoint."""

    workload_hash: str
    """The hash recorded when the workload now in place was applied."""
    primary: VersionObservation = VersionObservation()
    canary: VersionObservation = VersionObservation()
    routed: bool = False
    problem: str = ""
    """Why replicas are not coming up (a crash loop, a failing probe), if known."""
    failure: str = ""
    """Why this workload cannot come up without outside help (its model cannot be
    staged); the runtime keeps retrying, the region reports it as failed."""
    staging: ModelStaging | None = None
    traffic: RegionTraffic | None = None
    """Each version's answers, from a runtime that counts them (a local one)."""

    @property
    def ready(self) -> int:
        return self.primary.ready + self.canary.ready

    @property
    def serving(self) -> int:
        """Ready replicas of any version, the outgoing ones included."""
        return self.ready + self.primary.outgoing_ready + self.canary.outgoing_ready

    @property
    def asleep(self) -> bool:
        """Every version is at zero by the runtime's autoscaler, or starting its first
        replica from there (`VersionObservation.asleep`)."""
        return self.primary.asleep and (self.canary.desired is None or self.canary.asleep)


def staging_percent(done: int, total: int | None) -> int | None:
    """Staging progress as runtimes report it: in whole percents, since each change
    is a status write to the global store."""
    return None if total is None else done * 100 // max(total, 1)


def staging_progress(source: str, staging: ModelStaging) -> str:
    """A region's message while it copies an endpoint's model (either runtime)."""
    progress = f"{staging.bytes_done / 1e6:.1f} MB"
    if staging.bytes_total is not None:
        progress += f" of {staging.bytes_total / 1e6:.1f} MB"
    return f"staging the model from {source}: {progress}"


class WatchdogDecision(_Value):
    unrouted: bool
    unready_since: datetime | None
    """When the endpoint was last seen going from some to no ready replica."""
    recheck_at: datetime | None
    """When the decision may change with no event: the threshold running out."""


def watchdog(
    previous: RegionStatus | None,
    observed: Observed | None,
    *,
    wants_replicas: bool,
    now: datetime,
    threshold: timedelta,
) -> WatchdogDecision:
    """Pull the route from an endpoint that has had no ready replica for `threshold`;
    restore it as soon as one is ready. Replicas of an outgoing version count: a
    rollout whose new version is slow to come up still has its old one serving.
    An endpoint its autoscaler holds at zero keeps its route: its next request
    starts a replica, and the route stays however long that replica takes to start
    (a model server may load for longer than `threshold`), since the requests
    waiting for it are held on that route. The clock starts from the report kept
    in the store, so the decision survives a restart or a change of leader."""
    if (
        not wants_replicas
        or (observed is not None and observed.serving > 0)
        or (observed is not None and observed.asleep)
    ):
        return WatchdogDecision(unrouted=False, unready_since=None, recheck_at=None)
    since = previous.unready_since if previous and previous.unready_since else now
    deadline = since + threshold
    if now >= deadline:
        return WatchdogDecision(unrouted=True, unready_since=since, recheck_at=None)
    return WatchdogDecision(unrouted=False, unready_since=since, recheck_at=deadline)


def region_status(
    endpoint: Endpoint,
    region: str,
    workload: Workload | None,
    observed: Observed | None,
    *,
    previous: RegionStatus | None,
    decision: WatchdogDecision | None,
    error: str = "",
    now: datetime,
) -> RegionStatus:
    """The region's report on `endpoint`. `error` is why the last apply failed."""
    in_place = (
        workload is not None
        and observed is not None
        and observed.workload_hash == workload_hash(workload)
    )
    ready = observed.primary.ready if observed else 0
    canary_ready = observed.canary.ready if observed else 0
    desired = workload.primary_desired if workload else 0
    canary_desired = workload.canary_desired if workload else 0
    reported_desired, reported_canary, scale_reason = desired, canary_desired, ""
    if workload is not None and observed is not None:
        # The autoscaler's count is reported; readiness is judged on the workload's
        # floor (or the autoscaler's count below it), so a region scaling up is not
        # degraded while its new replicas start.
        if observed.primary.desired is not None:
            reported_desired, scale_reason = observed.primary.desired, observed.primary.scale_reason
        if observed.canary.desired is not None:
            reported_canary = observed.canary.desired
            scale_reason += f"; canary: {observed.canary.scale_reason}"
    message = error or (observed.failure or observed.problem if observed else "")
    if workload is None:
        state = RegionState.DELETED if observed is None else RegionState.PROGRESSING
        message = message or ("" if observed is None else "removing")
    elif error:
        state = RegionState.FAILED
    elif not in_place:
        state = RegionState.PROGRESSING
    elif observed is not None and observed.failure:
        state = RegionState.FAILED
    elif not endpoint.desired_state.runs:
        running = observed.primary.running + observed.canary.running if observed else 0
        state = RegionState.STOPPED if running == 0 else RegionState.PROGRESSING
    elif ready >= min(desired, reported_desired) and canary_ready >= min(
        canary_desired, reported_canary
    ):
        state = RegionState.READY
    elif previous is not None and previous.state in (RegionState.READY, RegionState.DEGRADED):
        state = RegionState.DEGRADED
    else:
        state = RegionState.PROGRESSING
    if decision is not None and decision.unrouted:
        message = (
            f"no ready replica since {decision.unready_since:%Y-%m-%d %H:%M:%S}Z; "
            "traffic withdrawn until one is ready" + (f" ({message})" if message else "")
        )
    observed_generation = (
        endpoint.generation if in_place else (previous.observed_generation if previous else 0)
    )
    return RegionStatus(
        endpoint=endpoint.name,
        region=region,
        state=state,
        observed_generation=observed_generation,
        replicas_ready=ready,
        replicas_desired=reported_desired,
        canary_ready=canary_ready,
        canary_desired=reported_canary,
        scale_reason=scale_reason[:500],
        routed=bool(observed and observed.routed),
        message=message[:500],
        last_transition=(previous.last_transition if previous and previous.state is state else now),
        heartbeat=now,
        unready_since=decision.unready_since if decision else None,
        staging=observed.staging if observed and workload else None,
        # Only while a rollout judges them: they change with every request.
        traffic=observed.traffic if observed and _rollout_reached(endpoint, region) else None,
    )


def _rollout_reached(endpoint: Endpoint, region: str) -> bool:
    rollout = endpoint.rollout
    return rollout is not None and rollout.phase.active and region in rollout.weights


def status_changed(
    previous: RegionStatus | None, report: RegionStatus, *, now: datetime, heartbeat: timedelta
) -> bool:
    """Whether `report` must be written: it says something new, or the last
    write is older than the heartbeat interval."""
    if previous is None:
        return True
    if previous.model_copy(update={"heartbeat": None}) != report.model_copy(
        update={"heartbeat": None}
    ):
        return True
    return previous.heartbeat is None or now - previous.heartbeat >= heartbeat


def fleet_state(endpoint: Endpoint, statuses: list[RegionStatus]) -> DesiredState:
    """`running` once every target region runs the current generation with all
    replicas ready; `deploying` until then. Other states are the user's to set."""
    if not endpoint.desired_state.runs:
        return endpoint.desired_state
    by_region = {status.region: status for status in statuses}
    reports = {region: by_region.get(region) for region in endpoint.target_regions}
    return DesiredState.RUNNING if ready_in(endpoint, reports) else DesiredState.DEPLOYING


def ready_in(endpoint: Endpoint, reports: Mapping[str, RegionStatus | None]) -> bool:
    """Whether every region of `reports` that `endpoint` targets reports its current
    generation READY (None: the region reported nothing)."""
    return all(
        status is not None
        and status.observed_generation == endpoint.generation
        and status.state is RegionState.READY
        for region, status in reports.items()
        if region in endpoint.target_regions
    )


def only_settled(before: Endpoint, after: Endpoint) -> bool:
    """Whether `after` is `before` turned from `deploying` to `running` and nothing
    else but its revision: the reconciler's own write once every region is READY.
    No region's pass acts on it (both states run the endpoint, and only a deploying
    one is settled), so it needs none."""
    return (
        before.desired_state is DesiredState.DEPLOYING
        and after.desired_state is DesiredState.RUNNING
        and after.model_copy(
            update={"desired_state": before.desired_state, "revision": before.revision}
        )
        == before
    )


def purgeable(endpoint: Endpoint, statuses: list[RegionStatus]) -> bool:
    """A deleted endpoint may be purged once every region that reported on it,
    and every region it targeted, reports it removed."""
    if endpoint.desired_state is not DesiredState.DELETED:
        return False
    reported = {status.region: status.state for status in statuses}
    regions = set(endpoint.target_regions) | reported.keys()
    return all(reported.get(region) is RegionState.DELETED for region in regions)
