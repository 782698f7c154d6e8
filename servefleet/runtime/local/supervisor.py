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
`terminate_grace`. So no request in flight is dropped by a change of the spec.

Rollout: when a version's spec (image, command, args, env, port, health path)
changes, replacements for every replica start at once; each replacement that
becomes ready is routed and lets one old replica retire. A replacement that
never becomes ready leaves the old replicas serving.

Model staging: a workload with a `model_source` first has the model copied
into `model_cache_dir/<region>/<endpoint>/<digest of the source>` by
`python -m servefleet.stage`, the command Kubernetes init containers run, as a
child process given the source only in its environment (never a shell). Its
JSON progress lines become the region status (`staging`: bytes done / total);
replicas of that workload are started only once it exits 0, which means every
file is in place and verified. A failed stage (bad source, retries exhausted,
`stage_timeout` passed) is reported as a failure and tried again after a
backoff (as replica restarts are); no replica starts meanwhile. A directory
staged before is verified and reused, not copied again. Replicas find the model
in `SERVEFLEET_MODEL_DIR` and in "{model_dir}" in their arguments.
(`model_path` places the model in a container; local replicas use the cache.)

Cache collection: an endpoint's directory in the cache keeps only what is in
use, decided by `_cache_kept`: the directory of every replica still held
(retiring ones, of either role, included), of every staging the endpoint waits
for or whose process has not ended yet, and of the workload's own source (a
stopped endpoint starts again without staging again). Everything else in it is
deleted, in a thread, whenever that set changes, but not while the workload's
model is still staging: should the new model fail, the old one is still there
to roll back to. A removed endpoint's directory goes once its last replica has.
Deletion opens each directory with O_NOFOLLOW and removes symbolic links
without following them; a failure is logged and tried again at the next change
or after `restart_backoff_max`, and never fails the workload.
A staging waits for a deletion under way in its endpoint's directory, which
may be removing the very model it is about to stage. Nothing is deleted once
the runtime closes (a restart must find its models). Only endpoints the runtime
runs are collected (what an earlier run left in their directories goes at their
first collection); there is no sweep of the whole region at start: the runtime
then holds nothing yet, so every model would be staged again, and another
`servefleet up` may still run replicas of this region on this machine (a leader
handing over). So the directory of an endpoint that left the region while no
leader ran stays until someone deletes it.

Replicas run as `command + args` (an argv list, never a shell) with "{port}"
replaced by a free port, which is also in `PORT`. Neither a replica nor a staging
child sees servefleet's whole environment (the store's URL, credentials): each
gets an allowlist, the region's `pass_env` and its own variables
(`environment.child_environment`). Each has its own session and, on Linux, dies
with the process that started it (PR_SET_PDEATHSIG), so no replica outlives a
killed servefleet. Output goes to
`log_dir/<region>/<endpoint>/<role>-<n>.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Literal

import aiohttp

from servefleet.plan import (
    Observed,
    Version,
    VersionObservation,
    Workload,
    staging_percent,
    staging_progress,
    workload_hash,
)
from servefleet.runtime.base import (
    ApplyConflict,
    EventSubscription,
    RuntimeUnavailable,
    WorkloadUnsupported,
)
from servefleet.runtime.local.environment import child_environment
from servefleet.runtime.local.gateway import Backend, RouteConflict, Router
from servefleet.spec import ModelStaging

__all__ = ["LocalRuntime", "LocalSettings", "ReplicaInfo"]

log = logging.getLogger(__name__)

Role = Literal["primary", "canary"]
_ROLES: tuple[Role, Role] = ("primary", "canary")


@dataclass(frozen=True)
class LocalSettings:
    """Timing of probes, restarts and shutdowns (seconds unless said otherwise)."""

    startup_timeout: float = 600.0
    """How long a replica may take to pass its first probe. Model loads take minutes,
    so this is generous; there is no short fixed liveness delay to kill them."""
    probe_interval: float = 1.0
    probe_timeout: float = 2.0
    liveness_failures: int = 3
    """Consecutive failed probes, after the first success, that get a replica restarted."""
    restart_backoff_initial: float = 1.0
    restart_backoff_max: float = 30.0
    backoff_reset_after: float = 60.0
    """A replica ready this long starts over from `restart_backoff_initial`."""
    terminate_grace: float = 10.0
    """Between SIGTERM and SIGKILL."""
    drain_timeout: float = 30.0
    """How long a retiring replica may finish the requests it has in flight."""
    stage_timeout: float = 3600.0
    """How long staging a model may take in all (`up --stage-timeout`; an
    endpoint's own `SERVEFLEET_STAGE_TIMEOUT` env wins, as it does in Kubernetes)."""


class _Phase(Enum):
    STARTING = "starting"
    READY = "ready"
    UNREADY = "unready"
    WAITING = "waiting"


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


@dataclass(eq=False)
class _Staging:
    """One model source being copied into `directory` (see the module doc)."""

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
class _Replica:
    name: str
    role: Role
    index: int
    key: str
    version: Version
    health_path: str
    log: Path
    phase: _Phase = _Phase.WAITING
    since: float = 0.0
    process: asyncio.subprocess.Process | None = None
    port: int | None = None
    backend: Backend | None = None
    retiring: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    backoff: float = 0.0
    failure: str = ""
    """Why the last process ended, with when the next starts; cleared once ready."""
    probe_error: str = ""
    task: asyncio.Task[None] | None = None
    staging: _Staging | None = None
    """The model this replica waits for before it starts; None without one."""


@dataclass(eq=False)
class _Endpoint:
    name: str
    workload: Workload | None
    """None while it is being removed."""
    hash: str
    replicas: list[_Replica] = field(default_factory=list)
    stagings: dict[str, _Staging] = field(default_factory=dict)
    """By model source: the current one, and older ones replicas still wait for."""


class LocalRuntime:
    """The `Runtime` of a local region: replica processes behind `router`.

    Autoscaling: there is no local autoscaler yet, so an autoscaled workload
    (`primary.replicas` is None) runs `autoscaling.min_replicas` replicas.
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
    ) -> None:
        """`model_cache_dir` defaults to `model-cache` beside `log_dir`; `pass_env`
        names variables of this process that every child gets (see `environment`)."""
        self.region = region
        self._pass_env = tuple(pass_env)
        self._router = router
        router.leading = True
        self._log_dir = log_dir
        self.model_cache_dir = model_cache_dir or log_dir.parent / "model-cache"
        self._stagings_running: set[_Staging] = set()
        """Every staging whose task has not ended, dropped ones included."""
        self._sweeps: dict[str, asyncio.Task[None]] = {}
        """By endpoint: the deletion of its unused cache directories under way."""
        self._swept: dict[str, frozenset[str]] = {}
        """By endpoint: the cache directories kept by its last successful deletion."""
        self._settings = settings
        self._endpoints: dict[str, _Endpoint] = {}
        self._subscriptions: weakref.WeakSet[EventSubscription] = weakref.WeakSet()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def observe(self, endpoint: str) -> Observed | None:
        record = self._endpoints.get(endpoint)
        if record is None:
            return None
        workload = record.workload
        counts: dict[Role, VersionObservation] = {}
        problems: list[str] = []
        for role in _ROLES:
            version = _version(workload, role)
            key = _spec_key(workload, version)
            current = [r for r in record.replicas if r.role == role and r.key == key]
            serving = [r for r in record.replicas if r.role == role and _serves(r)]
            counts[role] = VersionObservation(
                ready=sum(_serves(r) for r in current),
                running=sum(_alive(r) for r in current),
                outgoing_ready=sum(r.key != key for r in serving),
            )
            problems += [self._problem(r) for r in current if not r.retiring]
        problems = [problem for problem in problems if problem]
        staging = _current_staging(record)
        progress: ModelStaging | None = None
        if staging is not None:
            progress = ModelStaging(
                bytes_done=staging.bytes_done,
                bytes_total=staging.bytes_total,
                complete=staging.done.is_set(),
            )
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
            failure=staging.failure if staging else "",
            staging=progress,
        )

    async def held(self) -> set[str]:
        return set(self._endpoints)

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
            self._publish(workload, record.replicas if record else [])
        except RouteConflict as error:
            raise ApplyConflict(f"ingress_path: {error}") from error
        if record is None:
            record = _Endpoint(workload.endpoint, workload, workload_hash(workload))
            self._endpoints[workload.endpoint] = record
        record.workload = workload
        record.hash = workload_hash(workload)
        self._converge(record)

    async def remove(self, endpoint: str) -> None:
        """Withdraw the route, then retire every replica in the background; the
        endpoint is held (and observed) until its last process is gone."""
        record = self._endpoints.get(endpoint)
        if record is not None:
            record.workload = None
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
        version_keys = {role: _spec_key(workload, _version(workload, role)) for role in _ROLES}
        return [
            ReplicaInfo(
                name=r.name,
                role=r.role,
                state=r.phase.value,
                current=version_keys.get(r.role) == r.key,
                retiring=r.retiring,
                pid=r.process.pid if r.process and _alive(r) else None,
                port=r.port if _alive(r) else None,
                restarts=r.restarts,
                log=r.log,
            )
            for r in sorted(record.replicas, key=lambda r: (r.role, r.index))
        ]

    async def close(self) -> None:
        """Retire every replica (drained, then SIGTERM, then SIGKILL) and wait for them."""
        self._closed = True
        self._router.leading = False
        for record in list(self._endpoints.values()):
            record.workload = None
            self._converge(record)
        tasks = [r.task for record in self._endpoints.values() for r in record.replicas if r.task]
        stagings = [staging.task for staging in self._stagings_running if staging.task]
        await asyncio.gather(*tasks, *stagings, *self._sweeps.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        for subscription in list(self._subscriptions):
            subscription.close()

    # Decisions (synchronous: each sees and changes one endpoint as a whole).

    def _converge(self, record: _Endpoint) -> None:
        workload = record.workload
        self._stage_model(record)
        for role in _ROLES:
            version = _version(workload, role)
            wanted = _replica_count(workload, role)
            key = _spec_key(workload, version)
            live = [r for r in record.replicas if r.role == role and not r.retiring]
            current = [r for r in live if r.key == key]
            old = [r for r in live if r.key != key]
            if workload is not None and version is not None and key is not None:
                for _ in range(wanted - len(current)):
                    current.append(self._start(record, workload, version, key))
            for replica in _retire_order(current)[: max(0, len(current) - wanted)]:
                replica.retiring = True
                replica.stop.set()
            ready = sum(_serves(r) for r in current)
            keep_old = max(0, wanted - ready)
            for replica in _retire_order(old)[: max(0, len(old) - keep_old)]:
                replica.retiring = True
                replica.stop.set()
        if workload is None:
            self._router.remove_route(record.name)
            if not record.replicas and self._endpoints.get(record.name) is record:
                del self._endpoints[record.name]
        else:
            self._publish(workload, record.replicas)
        self._drop_unwanted_stagings(record)
        self._collect_cache(record.name)
        self._notify(record.name)

    def _notify(self, endpoint: str) -> None:
        for subscription in self._subscriptions:
            subscription.push(endpoint)

    def _stage_model(self, record: _Endpoint) -> None:
        """Start staging the workload's model, unless that is under way or done."""
        workload = record.workload
        source = workload.model_source if workload and workload.replicas_desired else None
        if source is None or source in record.stagings:
            return
        staging = _Staging(
            source=source,
            directory=self._endpoint_cache(record.name) / _cache_name(source),
            env=workload.primary.env if workload else {},
        )
        record.stagings[source] = staging
        staging.task = asyncio.create_task(
            self._stage(record, staging), name=f"{record.name}/stage-model"
        )
        self._stagings_running.add(staging)

        def ended(_task: asyncio.Task[None]) -> None:
            self._stagings_running.discard(staging)
            self._collect_cache(record.name)

        staging.task.add_done_callback(ended)

    def _drop_unwanted_stagings(self, record: _Endpoint) -> None:
        """Stop staging what neither the workload nor a replica waits for any more."""
        wanted = {r.staging for r in record.replicas if r.staging and not r.retiring}
        current = _current_staging(record)
        for source, staging in list(record.stagings.items()):
            if staging is not current and staging not in wanted:
                del record.stagings[source]
                if staging.task is not None:
                    staging.task.cancel()

    def _endpoint_cache(self, endpoint: str) -> Path:
        return self.model_cache_dir / self.region / endpoint

    def _collect_cache(self, endpoint: str) -> None:
        """Start deleting the endpoint's cache directories that nothing uses any more,
        if that set changed since the last deletion (see the module doc)."""
        if self._closed or endpoint in self._sweeps:
            return  # the deletion under way looks again when it ends
        directory = self._endpoint_cache(endpoint)
        running = [s for s in self._stagings_running if s.directory.parent == directory]
        kept = _cache_kept(self._endpoints.get(endpoint), running)
        if kept is None or kept == self._swept.get(endpoint):
            return
        self._sweeps[endpoint] = asyncio.create_task(
            self._sweep_cache(endpoint, kept), name=f"{endpoint}/collect-model-cache"
        )

    async def _sweep_cache(self, endpoint: str, kept: frozenset[str]) -> None:
        directory = self._endpoint_cache(endpoint)
        try:
            deleted = await asyncio.to_thread(_delete_unkept, directory.parent, endpoint, kept)
        except OSError as error:
            retry = self._settings.restart_backoff_max
            log.warning(
                "%s/%s: could not delete unused model cache in %s (trying again in %gs "
                "or at the next change): %s",
                *(self.region, endpoint, directory, retry, error),
            )
            asyncio.get_running_loop().call_later(retry, self._collect_cache, endpoint)
            return
        finally:
            del self._sweeps[endpoint]
        self._swept[endpoint] = kept
        if deleted:
            log.info(
                "%s/%s: deleted unused model cache %s",
                *(self.region, endpoint, ", ".join(str(directory / name) for name in deleted)),
            )
        self._collect_cache(endpoint)  # what changed while this one ran

    def _publish(self, workload: Workload, replicas: list[_Replica]) -> None:
        routed = {
            role: [r.backend for r in replicas if r.role == role and _serves(r) and r.backend]
            for role in _ROLES
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

    def _start(self, record: _Endpoint, workload: Workload, version: Version, key: str) -> _Replica:
        taken = {r.index for r in record.replicas if r.role == version.role}
        index = next(n for n in range(len(taken) + 1) if n not in taken)
        name = f"{version.role}-{index}"
        replica = _Replica(
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

    def _set_phase(self, record: _Endpoint, replica: _Replica, phase: _Phase) -> None:
        replica.phase = phase
        replica.since = time.monotonic()
        if phase is _Phase.READY:
            replica.failure = replica.probe_error = ""
        if phase is _Phase.WAITING:
            log.warning("%s/%s: %s", self.region, record.name, replica.failure)
        else:
            pid = replica.process.pid if replica.process else None
            log.info(
                "%s/%s: replica %s %s (pid %s, port %s)",
                *(self.region, record.name, replica.name, phase.value, pid, replica.port),
            )
        self._converge(record)

    def _problem(self, replica: _Replica) -> str:
        if replica.phase is _Phase.WAITING:
            return replica.failure
        if replica.phase is _Phase.UNREADY:
            return f"replica {replica.name} is failing its readiness probe: {replica.probe_error}"
        if replica.phase is _Phase.STARTING and replica.probe_error:
            # No elapsed time here: a report that changes every look is a status write each time.
            limit = self._settings.startup_timeout
            text = (
                f"replica {replica.name}: starting, probe not passing yet (allowed {limit:.0f}s): "
            )
            text += replica.probe_error
            if replica.restarts:
                text += f" (restart {replica.restarts}; before: {replica.failure})"
            return text
        return ""

    # Work (one keeper task per replica).

    async def _keep(self, record: _Endpoint, replica: _Replica) -> None:
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
                replica.failure = (
                    f"replica {replica.name} {failure}, restarting in {delay:g}s; see {replica.log}"
                )
                self._set_phase(record, replica, _Phase.WAITING)  # out of the route now
                if replica.process is not None:
                    await self._terminate(replica.process)
                replica.process = replica.backend = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(replica.stop.wait(), delay)
            if replica.backend is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(replica.backend.idle(), settings.drain_timeout)
            if replica.process is not None:
                await self._terminate(replica.process)
        except asyncio.CancelledError:
            # Only when the loop itself is torn down without close(): no time to drain.
            if replica.process is not None and replica.process.returncode is None:
                _signal_group(replica.process.pid, signal.SIGKILL)
            raise
        except Exception:
            # A bug here must not leave a process nobody watches: stop it, and let
            # `_converge` start a fresh replica in its place.
            log.exception("keeper of %s/%s failed", record.name, replica.name)
            if replica.process is not None:
                await self._terminate(replica.process)
        record.replicas.remove(replica)
        self._converge(record)

    async def _run(self, record: _Endpoint, replica: _Replica) -> str:
        """Start one process of `replica` and watch it until it fails (returns why)
        or the replica retires (returns ""). The process, if any, is left to the
        keeper to stop: at once after a failure, after draining when retiring."""
        staging = replica.staging
        if staging is not None and not await _staged(staging, replica):
            return ""  # retired while its model was staging
        version = replica.version
        port = self._free_port()
        template = (version.command or []) + (version.args or [])
        argv = [part.replace("{port}", str(port)) for part in template]
        own = {**version.env, "PORT": str(port)}
        if staging is not None:
            argv = [part.replace("{model_dir}", str(staging.directory)) for part in argv]
            own["SERVEFLEET_MODEL_DIR"] = str(staging.directory)
        env = child_environment(os.environ, own, pass_env=self._pass_env)
        header = f"--- servefleet: starting {record.name}/{replica.name} on port {port}: {argv!r}\n"
        try:
            output = await asyncio.to_thread(_open_log, replica.log, header)
        except OSError as error:
            return f"could not open its log file: {error}"
        try:
            process = await _start_child(
                argv, stdout=output, stderr=asyncio.subprocess.STDOUT, env=env
            )
        except OSError as error:
            return f"could not start {argv[0]!r}: {error.strerror or error}"
        finally:
            output.close()
        replica.process = process
        replica.port = port
        replica.backend = Backend(f"{record.name}/{replica.name}", f"http://127.0.0.1:{port}")
        self._set_phase(record, replica, _Phase.STARTING)
        return await self._watch(record, replica, process)

    async def _stage(self, record: _Endpoint, staging: _Staging) -> None:
        """Run the stage command until it succeeds, backing off between failures."""
        settings = self._settings
        sweep = self._sweeps.get(record.name)
        if sweep is not None:
            await asyncio.wait([sweep])  # it may be deleting this directory
        delay = settings.restart_backoff_initial
        attempt = 1
        while failure := await self._stage_once(record, staging):
            staging.failure = f"{failure} (attempt {attempt}; next in {delay:g}s)"
            log.warning("%s/%s: %s", self.region, record.name, staging.failure)
            self._notify(record.name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.restart_backoff_max)
            attempt += 1
        staging.failure = ""
        staging.done.set()
        log.info("%s/%s: model staged in %s", self.region, record.name, staging.directory)
        self._notify(record.name)

    async def _stage_once(self, record: _Endpoint, staging: _Staging) -> str:
        """One run of `python -m servefleet.stage`; why it failed, or ""."""
        own = {
            "SERVEFLEET_STAGE_TIMEOUT": f"{self._settings.stage_timeout:g}",
            **staging.env,
            "SERVEFLEET_MODEL_SOURCE": staging.source,
            "SERVEFLEET_MODEL_DIR": str(staging.directory),
        }
        env = child_environment(
            os.environ, own, pass_env=self._pass_env, model_source=staging.source
        )
        try:
            limit = float(env["SERVEFLEET_STAGE_TIMEOUT"])
        except ValueError:
            limit = self._settings.stage_timeout  # the stage command says what is wrong
        log_path = self._log_dir / self.region / record.name / "stage-model.log"
        header = f"--- servefleet: staging {staging.source} into {staging.directory}\n"
        try:
            output = await asyncio.to_thread(_open_log, log_path, header)
        except OSError as error:
            return f"model staging could not open its log file: {error}"
        try:
            process = await _start_child(
                [sys.executable, "-m", "servefleet.stage"],
                stdout=asyncio.subprocess.PIPE,
                stderr=output,
                env=env,
            )
        except OSError as error:
            return f"could not start python -m servefleet.stage: {error.strerror or error}"
        finally:
            output.close()
        assert process.stdout is not None
        message = ""
        try:
            # The command keeps its own deadline; this one only catches a stuck process.
            async with asyncio.timeout(limit + self._settings.terminate_grace):
                async for line in process.stdout:
                    message = self._staging_event(record, staging, line) or message
                returncode = await process.wait()
        except TimeoutError:
            await self._terminate(process)
            return f"model staging from {staging.source} did not end within {limit:g}s"
        except asyncio.CancelledError:
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()  # ended: it writes nothing into a directory being deleted
            raise
        if returncode == 0:
            return ""
        return message or f"model staging {_exit_reason(returncode)}; see {log_path}"

    def _staging_event(self, record: _Endpoint, staging: _Staging, line: bytes) -> str:
        """Take in one line of the stage command's output; its error message, if any."""
        try:
            event = json.loads(line)
        except ValueError:
            return ""
        if not isinstance(event, dict):
            return ""
        if event.get("event") == "progress":
            done, total = event.get("bytes_done"), event.get("bytes_total")
            # Whole percents only: each change is a status write to the global store.
            if (
                isinstance(done, int)
                and isinstance(total, int)
                and staging_percent(done, total)
                != staging_percent(staging.bytes_done, staging.bytes_total)
            ):
                staging.bytes_done, staging.bytes_total = done, total
                self._notify(record.name)
        elif event.get("event") == "error":
            return str(event.get("message", ""))
        return ""

    async def _watch(
        self, record: _Endpoint, replica: _Replica, process: asyncio.subprocess.Process
    ) -> str:
        settings = self._settings
        url = f"http://127.0.0.1:{replica.port}{replica.health_path}"
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(replica.stop.wait())
        started = time.monotonic()
        failures = 0
        probe: asyncio.Future[str] | None = None
        try:
            while True:
                probe = asyncio.ensure_future(self._probe(url))
                await asyncio.wait((probe, exited, stopping), return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    return ""
                if exited.done():
                    return _exit_reason(exited.result())
                error = probe.result()
                now = time.monotonic()
                if replica.phase is _Phase.STARTING:
                    if not error:
                        self._set_phase(record, replica, _Phase.READY)
                    elif now - started >= settings.startup_timeout:
                        return (
                            f"did not pass its startup probe within "
                            f"{settings.startup_timeout:g}s ({error})"
                        )
                    else:
                        replica.probe_error = error
                elif not error:
                    failures = 0
                    if replica.backend is not None:
                        # It answers again: the gateway may choose it after a stall.
                        replica.backend.answered()
                    if replica.phase is _Phase.UNREADY:
                        self._set_phase(record, replica, _Phase.READY)
                    elif now - replica.since >= settings.backoff_reset_after:
                        replica.backoff = settings.restart_backoff_initial
                else:
                    failures += 1
                    replica.probe_error = error
                    if failures >= settings.liveness_failures:
                        return f"failed its liveness probe {failures} times in a row ({error})"
                    if replica.phase is _Phase.READY:
                        self._set_phase(record, replica, _Phase.UNREADY)
                await asyncio.wait((exited, stopping), timeout=settings.probe_interval)
                if stopping.done():
                    return ""
                if exited.done():
                    return _exit_reason(exited.result())
        finally:
            for future in (probe, exited, stopping):
                if future is not None:
                    future.cancel()

    async def _probe(self, url: str) -> str:
        """What is wrong with the replica at `url`, in a few words; empty when it
        answers 2xx or 3xx."""
        if self._session is None:
            # One session for every probe of the region; force_close: each probe
            # is a fresh connection, so it tests that the replica still accepts.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=self._settings.probe_timeout),
            )
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                await response.read()
                return "" if response.status < 400 else f"HTTP {response.status}"
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, ConnectionRefusedError):
                return "connection refused"
            return error.os_error.strerror or str(error.os_error)
        except TimeoutError:
            return f"no answer within {self._settings.probe_timeout:g}s"
        except aiohttp.ClientError as error:
            return str(error) or type(error).__name__

    def _free_port(self) -> int:
        """A port nothing listens on now and no replica of this region was given.
        (A replica that loses a race for it fails to bind, exits, and restarts.)"""
        given = {r.port for record in self._endpoints.values() for r in record.replicas}
        while (port := _unused_port()) in given:
            pass
        return port

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period; then
        SIGKILL whatever is left of the group (children of a replica that exited)."""
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self._settings.terminate_grace)
            except TimeoutError:
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        _signal_group(process.pid, signal.SIGKILL)


def _version(workload: Workload | None, role: Role) -> Version | None:
    if workload is None:
        return None
    return workload.primary if role == "primary" else workload.canary


def _replica_count(workload: Workload | None, role: Role) -> int:
    """How many replicas of `role` to run; with autoscaling, its minimum."""
    if workload is None:
        return 0
    return workload.primary_desired if role == "primary" else workload.canary_desired


def _spec_key(workload: Workload | None, version: Version | None) -> str | None:
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


def _current_staging(record: _Endpoint) -> _Staging | None:
    workload = record.workload
    if workload is None or workload.model_source is None:
        return None
    return record.stagings.get(workload.model_source)


def _cache_name(source: str) -> str:
    """The directory of `source` in its endpoint's cache."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _cache_kept(record: _Endpoint | None, running: list[_Staging]) -> frozenset[str] | None:
    """The names of the directories in an endpoint's cache that must stay, given its
    record (None once removed) and its stagings still running; None while the
    workload's model is being staged, when nothing is deleted yet."""
    kept = {staging.directory.name for staging in running}
    if record is None:
        return frozenset(kept)
    current = _current_staging(record)
    if current is not None and not current.done.is_set():
        return None
    kept |= {staging.directory.name for staging in record.stagings.values()}
    kept |= {r.staging.directory.name for r in record.replicas if r.staging is not None}
    if record.workload is not None and record.workload.model_source is not None:
        kept.add(_cache_name(record.workload.model_source))
    return frozenset(kept)


async def _staged(staging: _Staging, replica: _Replica) -> bool:
    """Wait until `staging` is done (True) or `replica` retires (False)."""
    done = asyncio.ensure_future(staging.done.wait())
    stopping = asyncio.ensure_future(replica.stop.wait())
    try:
        await asyncio.wait((done, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        done.cancel()
        stopping.cancel()
    return staging.done.is_set() and not replica.retiring


def _serves(replica: _Replica) -> bool:
    """Whether the gateway sends the replica requests."""
    return replica.phase is _Phase.READY and not replica.retiring


def _alive(replica: _Replica) -> bool:
    return replica.process is not None and replica.process.returncode is None


def _retire_order(replicas: list[_Replica]) -> list[_Replica]:
    """Replicas that serve nothing go first, then the newest."""
    return sorted(replicas, key=lambda r: (r.phase is _Phase.READY, -r.index))


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _delete_unkept(region_cache: Path, endpoint: str, kept: frozenset[str]) -> list[str]:
    """Delete every entry of `region_cache/endpoint` not named in `kept`, and that
    directory too when `kept` is empty; the names deleted. Blocking: run in a thread.

    Neither directory may be a symbolic link (O_NOFOLLOW), and links inside are
    removed, never followed (`shutil.rmtree` works through file descriptors), so
    nothing outside the cache is touched."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        region_fd = os.open(region_cache, flags)
    except FileNotFoundError:
        return []
    try:
        try:
            endpoint_fd = os.open(endpoint, flags, dir_fd=region_fd)
        except FileNotFoundError:
            return []
        try:
            with os.scandir(endpoint_fd) as entries:
                unkept = [
                    (entry.name, entry.is_dir(follow_symlinks=False))
                    for entry in entries
                    if entry.name not in kept
                ]
            for name, is_directory in unkept:
                if is_directory:
                    shutil.rmtree(name, dir_fd=endpoint_fd)
                else:
                    os.unlink(name, dir_fd=endpoint_fd)
        finally:
            os.close(endpoint_fd)
        if not kept:
            os.rmdir(endpoint, dir_fd=region_fd)
    finally:
        os.close(region_fd)
    return sorted(name for name, _ in unkept)


def _open_log(path: Path, header: str) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    output = path.open("ab")
    output.write(header.encode())
    output.flush()
    return output


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


_PR_SET_PDEATHSIG = 1


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


async def _start_child(
    argv: list[str], *, stdout: IO[bytes] | int, stderr: IO[bytes] | int, env: dict[str, str]
) -> asyncio.subprocess.Process:
    """Start a replica or staging process: no stdin, a session of its own (so its
    whole group can be signalled) and, where the OS allows, death with this process."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent(),
    )


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has Linux SIGKILL the child when this process dies.

    Linux sends the signal when the *thread* that forked the child ends; that is
    the event loop's thread, which lives as long as the runtime does."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = _libc().prctl  # looked up here: the child must not load anything
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent
