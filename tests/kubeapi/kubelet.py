"""A simulated kubelet for the test server: it really runs each Pod's init containers.

`KubeApiServer(kubelet=Kubelet())` turns it on, together with the Deployment
controller (`controller.py`) that gives it Pods. It runs every Pod bound to its node
(`spec.nodeName == kubelet.node_name`; the controller binds its Pods there):

- Init containers run in order, each as a subprocess on this machine, never through
  a shell: argv = `command` + `args` (a leading `python` is this interpreter,
  `sys.executable`; the image is ignored; without `command` the image's entrypoint
  would run, which cannot happen here: StartError). The environment is the
  container's `env` entries with a `value` (`valueFrom` is ignored), over `HOSTNAME`
  (the pod's name) and the few variables of this process listed in `INHERITED_ENV` /
  `INHERITED_PREFIXES` (PATH, HOME, locale, TMPDIR, PYTHON*, VIRTUAL_ENV, AWS_*): what
  `python -m servefleet.stage` needs to import and to reach S3. `$(VAR)` references
  are not expanded.
- Volumes: each `emptyDir` volume is a fresh directory per Pod (others are not
  mounted). An argument, an env value or `workingDir` that equals a volumeMount's
  `mountPath`, or lies under it, is rewritten onto that directory: the stand-in for a
  mount namespace. `terminationMessagePath` (default /dev/termination-log) is mapped
  the same way onto a fresh, empty file per run.
- stdout and stderr lines become the container's log as they arrive (served by
  `pods/log`, one log per container instance, so `previous=true` works).
- Statuses as the kubelet writes them, through `pods/status` (manager `kubelet`), so
  watchers see every step: each init container `waiting PodInitializing` → `running
  {startedAt}` → `terminated {exitCode, reason Completed|Error, message, startedAt,
  finishedAt, containerID}`. The message is the termination file's last 4096 bytes;
  with `terminationMessagePolicy: FallbackToLogsOnError`, a failed run that left it
  empty gets the log's last 80 lines, at most 2048 bytes (kubelet's constants).
- Restarts (restartPolicy Always or OnFailure): like the kubelet, the first restart
  is immediate (`restartCount` 1, `lastState.terminated` = the failed run); after a
  later failure the container waits in `waiting CrashLoopBackOff` ("back-off 400ms
  restarting failed container=NAME pod=POD_NS(UID)") for `backoff` seconds, doubling
  up to `backoff_cap`, then runs again with `restartCount` + 1. With restartPolicy
  Never a failed init container fails the Pod (phase Failed).
- Main containers are not run (their images cannot run here): once every init
  container succeeded they are `running` and `started`, Ready after `ready_delay`
  seconds; phase Running, conditions PodReadyToStartContainers, Initialized, Ready,
  ContainersReady, PodScheduled.
- A deleted Pod's processes are killed (SIGKILL to their process group) and its
  directory and logs removed; `stop()` does that for every Pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clock import now_rfc3339
from .engine import Engine
from .errors import ApiError
from .podlog import ContainerLogs
from .resources import PODS
from .selectors import FieldSelector, LabelSelector
from .store import Event, Watcher

NODE_NAME = "kubeapi-test-node"
MANAGER = "kubelet"
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
INHERITED_PREFIXES = ("PYTHON", "AWS_")
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
#: kubelet's MaxContainerTerminationMessageLength and ...LogLength / ...LogLines
TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_BYTES = 2048
FALLBACK_LOG_LINES = 80
_CHUNK = 64 * 1024

_log = logging.getLogger(__name__)


def go_duration(seconds: float) -> str:
    """A duration as Go's time.Duration prints it (400ms, 1.6s, 2m0s)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def rewrite(value: str, mounts: list[tuple[str, str]]) -> str:
    """`value` with a leading mount path (at a path boundary) replaced by its host
    directory; `mounts` are (path in the container, path here), longest first."""
    for inside, here in mounts:
        if value == inside:
            return here
        if value.startswith(inside.rstrip("/") + "/"):
            return here + value[len(inside.rstrip("/")) :]
    return value


def _waiting(reason: str, message: str = "") -> dict[str, Any]:
    body = {"reason": reason}
    if message:
        body["message"] = message
    return {"waiting": body}


@dataclass
class _Container:
    """One container's status, in the order of the API's ContainerStatus fields."""

    name: str
    image: str
    state: dict[str, Any] = field(default_factory=lambda: _waiting("PodInitializing"))
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    restart_count: int = 0
    container_id: str = ""
    started: bool = False

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": "",
        }
        if self.container_id:
            out["containerID"] = self.container_id
        out["started"] = self.started
        return out

    @property
    def completed(self) -> bool:
        return (self.state.get("terminated") or {}).get("exitCode") == 0


@dataclass(frozen=True)
class _Exit:
    code: int
    terminated: dict[str, Any]


class _PodGone(Exception):
    """The Pod this run belongs to was deleted (or replaced by another of that name)."""


class Kubelet:
    """Settings of the simulated kubelet; the server starts and stops it.

    `node_name`: the node whose Pods it runs. `backoff`, `backoff_cap`: seconds of
    the CrashLoopBackOff waits (doubling). `ready_delay`: seconds between the main
    containers starting and the Pod becoming Ready.
    """

    def __init__(
        self,
        *,
        node_name: str = NODE_NAME,
        backoff: float = 0.2,
        backoff_cap: float = 2.0,
        ready_delay: float = 0.0,
    ) -> None:
        if backoff <= 0 or backoff_cap < backoff:
            raise ValueError(
                f"backoff must be > 0 and backoff_cap >= backoff (got {backoff}, {backoff_cap})"
            )
        if ready_delay < 0:
            raise ValueError(f"ready_delay must be >= 0 (got {ready_delay})")
        self.node_name = node_name
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.ready_delay = ready_delay
        self._engine: Engine | None = None
        self._logs = ContainerLogs()
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._watcher: Watcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._pods: dict[str, _PodRun] = {}  # by uid
        self._addresses = itertools.count(2)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the kubelet runs only inside a started KubeApiServer")
        return self._engine

    @property
    def logs(self) -> ContainerLogs:
        return self._logs

    def start(self, engine: Engine, logs: ContainerLogs) -> None:
        if self._engine is not None:
            raise RuntimeError("this Kubelet is already running in a server")
        self._engine, self._logs = engine, logs
        self._queue = asyncio.Queue()
        self._watcher = Watcher(PODS, None, LabelSelector(), FieldSelector(), self._queue)
        engine.store.watchers.add(self._watcher)
        for stored in engine.store.items(PODS, None):
            self._queue.put_nowait(Event(0, "ADDED", stored.obj))
        self._task = asyncio.create_task(self._watch(), name="kubeapi kubelet")

    async def stop(self) -> None:
        if self._watcher is not None:
            self.engine.store.watchers.discard(self._watcher)
            self._watcher = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        runs, self._pods = list(self._pods.values()), {}
        for run in runs:
            await run.close()
        self._engine = None

    async def _watch(self) -> None:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            pod = event.obj
            uid = str(pod["metadata"].get("uid", ""))
            if event.type == "DELETED":
                run = self._pods.pop(uid, None)
                if run is not None:
                    await run.close()
            elif (
                uid not in self._pods and (pod.get("spec") or {}).get("nodeName") == self.node_name
            ):
                self._pods[uid] = _PodRun(self, pod, f"10.244.0.{next(self._addresses)}")


class _PodRun:
    """One Pod on the node: its directory, its init processes and its status."""

    def __init__(self, kubelet: Kubelet, pod: dict[str, Any], pod_ip: str) -> None:
        self.kubelet = kubelet
        metadata = pod["metadata"]
        self.namespace, self.name, self.uid = (
            metadata["namespace"],
            metadata["name"],
            metadata["uid"],
        )
        self.spec: dict[str, Any] = pod.get("spec") or {}
        self.init = [
            _Container(c["name"], c.get("image", "")) for c in self.spec.get("initContainers") or []
        ]
        self.main = [
            _Container(c["name"], c.get("image", "")) for c in self.spec.get("containers") or []
        ]
        self.phase = "Pending"
        self.pod_ip = pod_ip
        self.start_time = now_rfc3339()
        self.qos_class = (pod.get("status") or {}).get("qosClass")
        self.transitions: dict[str, tuple[str, str]] = {}
        self.container_ids: list[str] = []
        self.directory: Path | None = None
        self.task = asyncio.create_task(self._run(), name=f"kubelet {self.namespace}/{self.name}")

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.directory is not None:
            await asyncio.to_thread(shutil.rmtree, self.directory, True)
        self.kubelet.logs.forget(self.container_ids)

    # ---------------------------------------------------------------- status

    def _condition(self, kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        state = "True" if ok else "False"
        before = self.transitions.get(kind)
        if before is None or before[0] != state:
            self.transitions[kind] = (state, now_rfc3339())
        body: dict[str, Any] = {
            "type": kind,
            "status": state,
            "lastTransitionTime": self.transitions[kind][1],
        }
        if not ok:
            body["reason"], body["message"] = reason, message
        return body

    def status(self, generation: int) -> dict[str, Any]:
        incomplete = [c.name for c in self.init if not c.completed]
        unready = [c.name for c in self.main if not c.ready]
        conditions = [
            self._condition("PodReadyToStartContainers", True, "", ""),
            self._condition(
                "Initialized",
                not incomplete,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(incomplete)}]",
            ),
            self._condition(
                "Ready",
                not unready,
                "ContainersNotReady",
                f"containers with unready status: [{' '.join(unready)}]",
            ),
            self._condition(
                "ContainersReady",
                not unready,
                "ContainersNotReady",
                f"containers with unready status: [{' '.join(unready)}]",
            ),
            self._condition("PodScheduled", True, "", ""),
        ]
        for condition in conditions:
            condition["observedGeneration"] = generation
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "phase": self.phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
        }
        if self.init:
            status["initContainerStatuses"] = [c.body() for c in self.init]
        status["containerStatuses"] = [c.body() for c in self.main]
        if self.qos_class:
            status["qosClass"] = self.qos_class
        return status

    def publish(self) -> None:
        """Write the status, unless the Pod is gone (then end this run)."""
        engine = self.kubelet.engine
        stored = engine.store.get(PODS, self.namespace, self.name)
        if stored is None or stored.obj["metadata"].get("uid") != self.uid:
            raise _PodGone(self.name)
        generation = int(stored.obj["metadata"].get("generation", 1))
        try:
            engine.set_status(PODS, self.namespace, self.name, self.status(generation), MANAGER)
        except ApiError as error:
            if error.code == 404:
                raise _PodGone(self.name) from error
            raise

    # ------------------------------------------------------------------- run

    async def _run(self) -> None:
        try:
            await self._work()
        except _PodGone:
            pass  # the DELETED event closes this run
        except Exception:
            _log.exception("kubelet: pod %s/%s", self.namespace, self.name)
            raise

    async def _work(self) -> None:
        self.directory = Path(
            await asyncio.to_thread(tempfile.mkdtemp, prefix=f"kubelet-{self.name}-")
        )
        volumes: dict[str, Path] = {}
        for volume in self.spec.get("volumes") or []:
            if "emptyDir" in volume:
                volumes[volume["name"]] = self.directory / "volumes" / volume["name"]
        await asyncio.to_thread(_make_directories, [*volumes.values(), self.directory / "runs"])
        self.publish()
        for index, container in enumerate(self.spec.get("initContainers") or []):
            if not await self._run_init(self.init[index], container, volumes):
                self.phase = "Failed"
                self.publish()
                return
        for status in self.main:
            status.container_id = _container_id()
            self.container_ids.append(status.container_id)
            self.kubelet.logs.start(status.container_id)  # silent, until the pod goes
            status.state = {"running": {"startedAt": now_rfc3339()}}
            status.started = True
            status.ready = self.kubelet.ready_delay == 0
        self.phase = "Running"
        self.publish()
        if self.kubelet.ready_delay:
            await asyncio.sleep(self.kubelet.ready_delay)
            for status in self.main:
                status.ready = True
            self.publish()

    async def _run_init(
        self, status: _Container, container: dict[str, Any], volumes: dict[str, Path]
    ) -> bool:
        """Run an init container until it succeeds (True) or, with restartPolicy
        Never, fails (False)."""
        delay: float | None = None  # the first restart is immediate
        while True:
            ended = await self._execute(status, container, volumes)
            status.state = {"terminated": ended.terminated}
            status.started = False
            status.ready = ended.code == 0
            self.publish()
            if ended.code == 0:
                return True
            if self.spec.get("restartPolicy", "Always") == "Never":
                return False
            status.last_state = {"terminated": ended.terminated}
            if delay is None:
                delay = self.kubelet.backoff
            else:
                message = (
                    f"back-off {go_duration(delay)} restarting failed container="
                    f"{status.name} pod={self.name}_{self.namespace}({self.uid})"
                )
                status.state = _waiting("CrashLoopBackOff", message)
                self.publish()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.kubelet.backoff_cap)
            status.restart_count += 1

    async def _execute(
        self, status: _Container, container: dict[str, Any], volumes: dict[str, Path]
    ) -> _Exit:
        assert self.directory is not None
        run = f"{status.name}-{status.restart_count}"
        termination = self.directory / "runs" / run
        await asyncio.to_thread(termination.write_bytes, b"")
        mounts = [
            (str(mount["mountPath"]), volumes[mount["name"]] / mount.get("subPath", ""))
            for mount in container.get("volumeMounts") or []
            if mount.get("name") in volumes
        ]
        await asyncio.to_thread(_make_directories, [here for _, here in mounts])
        mounts = [(inside, str(here)) for inside, here in mounts]
        mounts.append(
            (container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH, str(termination))
        )
        mounts.sort(key=lambda pair: len(pair[0]), reverse=True)
        argv = [rewrite(str(part), mounts) for part in (container.get("command") or [])]
        argv += [rewrite(str(part), mounts) for part in (container.get("args") or [])]
        if container.get("command") and argv[0] == "python":
            argv[0] = sys.executable
        env = _inherited_env()
        env["HOSTNAME"] = self.name
        for item in container.get("env") or []:
            if "value" in item:
                env[str(item["name"])] = rewrite(str(item["value"]), mounts)
        working_dir = rewrite(str(container.get("workingDir") or ""), mounts)
        cwd = working_dir if working_dir and Path(working_dir).is_absolute() else self.directory

        status.container_id = _container_id()
        self.container_ids.append(status.container_id)
        started = now_rfc3339()
        if not container.get("command"):
            return _start_error(
                status, started, "the test kubelet cannot run an image's entrypoint: set command"
            )
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as error:
            return _start_error(status, started, f'exec: "{argv[0]}": {error.strerror or error}')
        self.kubelet.logs.start(status.container_id)
        try:
            status.state = {"running": {"startedAt": started}}
            status.started = True
            self.publish()
            assert process.stdout is not None
            assert process.stderr is not None
            await asyncio.gather(
                self._pump(process.stdout, status.container_id),
                self._pump(process.stderr, status.container_id),
            )
            returncode = await process.wait()
        except BaseException:  # cancelled, or the pod is gone: the process goes too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise
        finally:
            self.kubelet.logs.finish(status.container_id)
        code = returncode if returncode >= 0 else 128 - returncode
        message = await asyncio.to_thread(_read_tail, termination, TERMINATION_MESSAGE_BYTES)
        policy = container.get("terminationMessagePolicy", "File")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            lines = self.kubelet.logs.lines(status.container_id)[-FALLBACK_LOG_LINES:]
            message = b"".join(line.data for line in lines)[-FALLBACK_LOG_BYTES:]
        return _Exit(
            code,
            _terminated(
                code, "Completed" if code == 0 else "Error", message, started, status.container_id
            ),
        )

    async def _pump(self, stream: asyncio.StreamReader, container_id: str) -> None:
        pending = b""
        while chunk := await stream.read(_CHUNK):
            *complete, pending = (pending + chunk).split(b"\n")
            for line in complete:
                self.kubelet.logs.append(container_id, line + b"\n")
        if pending:
            self.kubelet.logs.append(container_id, pending)


def _terminated(
    code: int, reason: str, message: bytes, started: str, container_id: str
) -> dict[str, Any]:
    body: dict[str, Any] = {"exitCode": code, "reason": reason}
    if message:
        body["message"] = message.decode(errors="replace")
    body.update(startedAt=started, finishedAt=now_rfc3339(), containerID=container_id)
    return body


def _start_error(status: _Container, started: str, why: str) -> _Exit:
    """A container whose process could not start, as containerd reports it."""
    message = (
        "failed to create containerd task: failed to create shim task: OCI runtime create"
        f" failed: runc create failed: unable to start container process: {why}: unknown"
    )
    terminated = _terminated(128, "StartError", message.encode(), started, status.container_id)
    return _Exit(128, terminated)


def _container_id() -> str:
    return f"containerd://{secrets.token_hex(32)}"


def _inherited_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name in INHERITED_ENV or name.startswith(INHERITED_PREFIXES)
    }


def _make_directories(paths: list[Path]) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)


def _read_tail(path: Path, limit: int) -> bytes:
    """The last `limit` bytes of a file (kubelet's tail.ReadAtMost); b"" if missing."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - limit, 0))
            return handle.read()
    except FileNotFoundError:
        return b""


__all__ = ["INHERITED_ENV", "INHERITED_PREFIXES", "NODE_NAME", "Kubelet", "go_duration", "rewrite"]
