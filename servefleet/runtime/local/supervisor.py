"""The local runtime: replica processes on this machine, kept alive and routed.

`LocalRuntime.apply` only records the desired workload; the work happens in one
background task per replica (its *keeper*), so a slow model load never blocks
the reconciler. Every decision about how many replicas of which spec should run
is taken in one synchronous function, `_converge`, called whenever anything
changes (an apply, a replica becoming ready or dying, a retirement finishing).
Being synchronous, it sees and changes the whole endpoint at once; the keepers
only report what happened to their process.

A replica's life:

    start ──► starting ──(startup probe passes)──► ready ◄──► unready
      ▲          │ exit / no success within startup_timeout     │ exit / liveness
      │          ▼                                               ▼
      └── waiting (exponential backoff; reset once it stayed ready for a while)

Retiring a replica (scale-down, rollout, stop, remove, close) takes it out of
the route first, waits until its requests in flight are answered (up to
`drain_timeout`), then sends SIGTERM to its process group and SIGKILL after
`terminate_grace` (`processes.terminate`). So no request in flight is dropped by
a change of the spec.

Rollout: when a version's spec (image, command, args, env, port, health path)
changes, replacements for every replica start at once; each replacement that
becomes ready is routed and lets one old replica retire. A replacement that
never becomes ready leaves the old replicas serving.

Replicas run as `command + args` (an argv list, never a shell; see `processes`).
Neither a replica nor a staging child sees servefleet's whole environment (the
store's URL, credentials): each gets an allowlist, the region's `pass_env` and
its own variables (`environment.child_environment`). Output goes to
`log_dir/<region>/<endpoint>/<role>-<n>.log`.

This module takes the decisions and runs the keepers; one part per concern, each
in its own module, does the rest:

    module          concern
    records.py      what is held per endpoint: replicas, stagings, phases
    processes.py    child processes: start (own session, PDEATHSIG), signals, stop
    probes.py       startup, readiness and liveness probes (`Probes`)
    staging.py      model staging runs and their progress (`Stager`)
    model_cache.py  which cached models stay, and the deletion of the rest
    routes.py       each endpoint's route in the gateway's `Router`
    autoscaler.py   the replica count of versions that autoscale on requests
    traffic.py      each version's answers, reported during a rollout
    settings.py     `LocalSettings`, the timings all of them read
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from servefleet.metrics import Metrics
from servefleet.plan import (
    Observed,
    Version,
    VersionObservation,
    Workload,
    staging_progress,
    workload_hash,
)
from servefleet.runtime.base import (
    ApplyConflict,
    EventSubscription,
    RuntimeUnavailable,
    WorkloadUnsupported,
)
from servefleet.runtime.local.autoscaler import Autoscaler
from servefleet.runtime.local.environment import child_environment
from servefleet.runtime.local.model_cache import ModelCache
from servefleet.runtime.local.probes import Probes, replica_failure, replica_problem
from servefleet.runtime.local.processes import (
    free_port,
    open_log,
    replica_command,
    signal_group,
    start_child,
    terminate,
)
from servefleet.runtime.local.records import (
    ROLES,
    EndpointRecord,
    Phase,
    Replica,
    Role,
    alive,
    current_staging,
    serves,
    spec_key,
    version_of,
)
from servefleet.runtime.local.routes import RoutePublisher
from servefleet.runtime.local.routing import Backend, RouteConflict, Router
from servefleet.runtime.local.settings import LocalSettings
from servefleet.runtime.local.staging import Stager, observed_progress, staged
from servefleet.runtime.local.traffic import TrafficCounts
from servefleet.spec import ModelStaging

__all__ = ["LocalRuntime", "LocalSettings", "ReplicaInfo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaInfo:
    """One replica as `LocalRuntime.replicas` reports it."""

    name: str
    role: Role
    state: str
    """starting, ready, unready or waiting (no process: restarting after a backoff)."""
    current: bool
    """Whether it runs the spec last applied (else it is an old one being replaced)."""
    retiring: bool
    pid: int | None
    port: int | None
    restarts: int
    log: Path


class LocalRuntime:
    """The `Runtime` of a local region: replica processes behind `router`.

    Autoscaling: a workload that autoscales on requests has each version's count
    set by `autoscaler`; one on cpu or memory only runs `autoscaling.min_replicas`
    (nothing here measures them).
    """

    def __init__(
        self,
        region: str,
        router: Router,
        *,
        log_dir: Path,
        model_cache_dir: Path | None = None,
        settings: LocalSettings = LocalSettings(),
        pass_env: Sequence[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        """`model_cache_dir` defaults to `model-cache` beside `log_dir`; `pass_env`
        names variables of this process that every child gets (see `environment`);
        `metrics`, those its region's gateways count into, from which it reports
        each version's answers (`traffic`; none reported without)."""
        self.region = region
        self._pass_env = tuple(pass_env)
        # The autoscaler, made below, reads the routes' load; the routes wake it.
        self._routes = RoutePublisher(router, wake=lambda *wanted: self._autoscaler.wake(*wanted))
        self._log_dir = log_dir
        self.model_cache_dir = model_cache_dir or log_dir.parent / "model-cache"
        self._settings = settings
        self._endpoints: dict[str, EndpointRecord] = {}
        self._cache = ModelCache(
            region, self.model_cache_dir, self._endpoints, retry_after=settings.restart_backoff_max
        )
        self._stager = Stager(
            region, self._cache, log_dir, settings, self._pass_env, notify=self._notify
        )
        self._probes = Probes(settings)
        self._autoscaler = Autoscaler(
            region, self._endpoints, self._routes, self._converge, _running
        )
        self._traffic = TrafficCounts(region, metrics, notify=self._notify)
        self._subscriptions: weakref.WeakSet[EventSubscription] = weakref.WeakSet()
        self._closed = False

    async def observe(self, endpoint: str) -> Observed | None:
        record = self._endpoints.get(endpoint)
        if record is None:
            return None
        workload = record.workload
        counts: dict[Role, VersionObservation] = {}
        problems: list[str] = []
        failures: list[str] = []
        for role in ROLES:
            version = version_of(workload, role)
            key = spec_key(workload, version)
            current = [r for r in record.replicas if r.role == role and r.key == key]
            serving = [r for r in record.replicas if r.role == role and serves(r)]
            scaling = record.scaling.get(role)
            counts[role] = VersionObservation(
                ready=sum(serves(r) for r in current),
                running=sum(alive(r) for r in current),
                outgoing_ready=sum(r.key != key for r in serving),
                desired=scaling.decided if scaling else None,
                scale_reason=scaling.reason if scaling else "",
                waking=bool(scaling and scaling.waking),
            )
            problems += [replica_problem(r, self._settings) for r in current if not r.retiring]
            failures += [replica_failure(r) for r in current if not r.retiring]
        problems = [problem for problem in problems if problem]
        staging = current_staging(record)
        progress: ModelStaging | None = None
        if staging is not None:
            progress = observed_progress(staging)
            if not (progress.complete or staging.failure):
                problems.insert(0, staging_progress(staging.source, progress))
        problem = problems[0] if problems else ""
        if len(problems) > 1:
            problem += f" (and {len(problems) - 1} more)"
        return Observed(
            workload_hash=record.hash,
            primary=counts["primary"],
            canary=counts["canary"],
            routed=workload is not None and workload.routed,
            problem=problem,
            failure=(staging.failure if staging else "") or next(filter(None, failures), ""),
            staging=progress,
            traffic=self._traffic.observed(endpoint),
        )

    async def held(self) -> set[str]:
        return set(self._endpoints)

    def synced(self) -> None:
        self._routes.synced()

    async def apply(self, workload: Workload) -> None:
        """Record `workload` as what to run and start converging to it; returns at once."""
        if self._closed:
            raise RuntimeUnavailable(f"local region {self.region!r} is shut down")
        for version in (workload.primary, workload.canary):
            if version is not None and not version.command:
                raise WorkloadUnsupported(
                    f"local regions run a command; endpoint {workload.endpoint!r} declares "
                    "only an image — give it a command, or target a kubernetes region"
                )
        record = self._endpoints.get(workload.endpoint)
        try:
            # Claims the path now, so a conflict is refused before anything starts.
            self._routes.publish(workload, record.replicas if record else [])
        except RouteConflict as error:
            raise ApplyConflict(f"ingress_path: {error}") from error
        if record is None:
            record = EndpointRecord(workload.endpoint, workload, workload_hash(workload))
            self._endpoints[workload.endpoint] = record
        record.workload = workload
        record.hash = workload_hash(workload)
        self._autoscaler.adopt(record)
        self._traffic.adopt(record)
        self._converge(record)

    async def remove(self, endpoint: str) -> None:
        """Withdraw the route, then retire every replica in the background; the
        endpoint is held (and observed) until its last process is gone."""
        record = self._endpoints.get(endpoint)
        if record is not None:
            record.workload = None
            self._traffic.adopt(record)
            self._converge(record)

    def events(self) -> AsyncIterator[str]:
        subscription = EventSubscription()
        if self._closed:
            subscription.close()
        self._subscriptions.add(subscription)
        return subscription

    def replicas(self, endpoint: str) -> list[ReplicaInfo]:
        """Every replica process held for `endpoint`, for people and tests to look at."""
        record = self._endpoints.get(endpoint)
        if record is None:
            return []
        workload = record.workload
        version_keys = {role: spec_key(workload, version_of(workload, role)) for role in ROLES}
        return [
            ReplicaInfo(
                name=r.name,
                role=r.role,
                state=r.phase.value,
                current=version_keys.get(r.role) == r.key,
                retiring=r.retiring,
                pid=r.process.pid if r.process and alive(r) else None,
                port=r.port if alive(r) else None,
                restarts=r.restarts,
                log=r.log,
            )
            for r in sorted(record.replicas, key=lambda r: (r.role, r.index))
        ]

    async def close(self) -> None:
        """Retire every replica (drained, then SIGTERM, then SIGKILL) and wait for them."""
        self._closed = True
        await self._autoscaler.close()
        await self._traffic.close()
        self._cache.stop_deleting()
        self._routes.step_down()
        for record in list(self._endpoints.values()):
            record.workload = None
            self._converge(record)
        tasks = [r.task for record in self._endpoints.values() for r in record.replicas if r.task]
        await asyncio.gather(*tasks, *self._cache.tasks(), return_exceptions=True)
        await self._probes.close()
        for subscription in list(self._subscriptions):
            subscription.close()

    # Decisions (synchronous: each sees and changes one endpoint as a whole).

    def _converge(self, record: EndpointRecord) -> None:
        workload = record.workload
        self._stager.stage_model(record)
        for role in ROLES:
            version = version_of(workload, role)
            wanted = _replica_count(record, role)
            key = spec_key(workload, version)
            live = [r for r in record.replicas if r.role == role and not r.retiring]
            current = [r for r in live if r.key == key]
            old = [r for r in live if r.key != key]
            if workload is not None and version is not None and key is not None:
                for _ in range(wanted - len(current)):
                    current.append(self._start(record, workload, version, key))
            for replica in _retire_order(current)[: max(0, len(current) - wanted)]:
                replica.retiring = True
                replica.stop.set()
            ready = sum(serves(r) for r in current)
            keep_old = max(0, wanted - ready)
            for replica in _retire_order(old)[: max(0, len(old) - keep_old)]:
                replica.retiring = True
                replica.stop.set()
        if workload is None:
            self._routes.withdraw(record.name)
            if not record.replicas and self._endpoints.get(record.name) is record:
                del self._endpoints[record.name]
        else:
            self._routes.publish(workload, record.replicas)
        self._stager.drop_unwanted_stagings(record)
        self._cache.collect(record.name)
        self._notify(record.name)

    def _notify(self, endpoint: str) -> None:
        for subscription in self._subscriptions:
            subscription.push(endpoint)

    def _start(
        self, record: EndpointRecord, workload: Workload, version: Version, key: str
    ) -> Replica:
        taken = {r.index for r in record.replicas if r.role == version.role}
        index = next(n for n in range(len(taken) + 1) if n not in taken)
        name = f"{version.role}-{index}"
        replica = Replica(
            name=name,
            role=version.role,
            index=index,
            key=key,
            version=version,
            health_path=workload.health_path,
            log=self._log_dir / self.region / record.name / f"{name}.log",
            backoff=self._settings.restart_backoff_initial,
            staging=record.stagings.get(workload.model_source or ""),
        )
        record.replicas.append(replica)
        keeper = self._keep(record, replica)
        replica.task = asyncio.create_task(keeper, name=f"{record.name}/{name}")
        return replica

    def _set_phase(self, record: EndpointRecord, replica: Replica, phase: Phase) -> None:
        replica.phase = phase
        replica.since = time.monotonic()
        if phase is Phase.READY:
            replica.failure = replica.probe_error = ""
            if (scaling := record.scaling.get(replica.role)) is not None:
                scaling.waking = False
        if phase is Phase.WAITING:
            log.warning("%s/%s: %s", self.region, record.name, replica.failure)
        else:
            pid = replica.process.pid if replica.process else None
            log.info(
                "%s/%s: replica %s %s (pid %s, port %s)",
                *(self.region, record.name, replica.name, phase.value, pid, replica.port),
            )
        self._converge(record)

    # Work (one keeper task per replica).

    async def _keep(self, record: EndpointRecord, replica: Replica) -> None:
        """Run `replica` until it is retired: start, probe, restart with backoff."""
        settings = self._settings
        try:
            while not replica.retiring:
                failure = await self._run(record, replica)
                if replica.retiring:
                    break
                delay = replica.backoff
                replica.backoff = min(delay * 2, settings.restart_backoff_max)
                replica.restarts += 1
                replica.crashes += 1
                replica.failure = (
                    f"replica {replica.name} {failure}, restarting in {delay:g}s; see {replica.log}"
                )
                self._set_phase(record, replica, Phase.WAITING)  # out of the route now
                if replica.process is not None:
                    await terminate(replica.process, settings.terminate_grace)
                replica.process = replica.backend = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await replica.stop.wait()
            if replica.backend is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.drain_timeout):
                        await replica.backend.idle()
            if replica.process is not None:
                await terminate(replica.process, settings.terminate_grace)
        except asyncio.CancelledError:
            # Only when the loop itself is torn down without close(): no time to drain.
            if replica.process is not None and replica.process.returncode is None:
                signal_group(replica.process.pid, signal.SIGKILL)
            raise
        except Exception:
            # A bug here must not leave a process nobody watches: stop it, and let
            # `_converge` start a fresh replica in its place.
            log.exception("keeper of %s/%s failed", record.name, replica.name)
            if replica.process is not None:
                await terminate(replica.process, settings.terminate_grace)
        record.replicas.remove(replica)
        self._converge(record)

    async def _run(self, record: EndpointRecord, replica: Replica) -> str:
        """Start one process of `replica` and watch it until it fails (returns why)
        or the replica retires (returns ""). The process, if any, is left to the
        keeper to stop: at once after a failure, after draining when retiring."""
        staging = replica.staging
        if staging is not None and not await staged(staging, replica):
            return ""  # retired while its model was staging
        port = free_port({r.port for held in self._endpoints.values() for r in held.replicas})
        model_dir = staging.directory if staging is not None else None
        argv, own = replica_command(replica.version, port, model_dir)
        env = child_environment(os.environ, own, pass_env=self._pass_env)
        header = f"--- servefleet: starting {record.name}/{replica.name} on port {port}: {argv!r}\n"
        try:
            output = await asyncio.to_thread(open_log, replica.log, header)
        except OSError as error:
            return f"could not open its log file: {error}"
        try:
            process = await start_child(
                argv, stdout=output, stderr=asyncio.subprocess.STDOUT, env=env
            )
        except OSError as error:
            return f"could not start {argv[0]!r}: {error.strerror or error}"
        finally:
            output.close()
        replica.process = process
        replica.port = port
        replica.backend = Backend(f"{record.name}/{replica.name}", f"http://127.0.0.1:{port}")
        self._set_phase(record, replica, Phase.STARTING)
        set_phase = functools.partial(self._set_phase, record, replica)
        changed = functools.partial(self._notify, record.name)
        return await self._probes.watch(replica, process, set_phase, changed)


def _replica_count(record: EndpointRecord, role: Role) -> int:
    """How many replicas of `role` to run: the autoscaler's count, if it sets it."""
    workload, scaling = record.workload, record.scaling.get(role)
    if workload is None:
        return 0
    if scaling is not None:
        return scaling.target
    return workload.primary_desired if role == "primary" else workload.canary_desired


def _running(record: EndpointRecord, role: Role) -> int:
    """Replicas of `role` running the current spec (or starting to), not retiring."""
    key = spec_key(record.workload, version_of(record.workload, role))
    return sum(r.role == role and r.key == key and not r.retiring for r in record.replicas)


def _retire_order(replicas: list[Replica]) -> list[Replica]:
    """Replicas that serve nothing go first, then the newest."""
    return sorted(replicas, key=lambda r: (r.phase is Phase.READY, -r.index))
