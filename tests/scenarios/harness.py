"""Everything running together, as `servefleet up` runs it, for end-to-end scenarios.

`local_fleet` starts `servefleet.cli.up.run` in this process: a real store, a
gateway per region and the global one on loopback (real ports), one leader-elected
reconciler per region driving the real `LocalRuntime`, whose replicas are real
`python -m servefleet.demo` processes. The test changes the world only as a user
does, through `EndpointService` on its own connection to the store, and looks at
it as a user would: answers through the gateways, region status in the store,
and processes in /proc.

`up_process` runs `servefleet up` itself, the installed command, in a child process.

Timings are short here (probes every 0.1 s, quick restarts); nothing asserts how
long anything took, only that it happens within a generous bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from servefleet.cli.up import Running, UpOptions, run
from servefleet.reconcile.leader import LeaseSettings
from servefleet.reconcile.settings import ControllerSettings
from servefleet.runtime.local.global_entry import EntrySettings
from servefleet.runtime.local.supervisor import LocalRuntime, LocalSettings, ReplicaInfo
from servefleet.service import EndpointService
from servefleet.spec import (
    Endpoint,
    EndpointManifest,
    EndpointSpec,
    RegionState,
    RegionStatus,
)
from servefleet.store import EndpointNotFound, Store, open_store
from tests.cli.test_cli import COMMAND, REPO
from tests.waiting import eventually

__all__ = [
    "LOCAL",
    "SETTLE",
    "Answer",
    "Fleet",
    "UpProcess",
    "demo_children",
    "demo_command",
    "demo_processes",
    "demo_processes_logging_under",
    "demo_spec",
    "environ",
    "gone",
    "ingress_stand_in",
    "local_fleet",
    "manifest",
    "reconcile_process",
    "serve_process",
    "stopped_by_signal",
    "up_process",
    "up_stopped_by_signal",
]

LOCAL = LocalSettings(
    startup_timeout=30,
    probe_interval=0.1,
    # Generous: a test process whose event loop is starved for a second on a loaded
    # machine would otherwise time out every probe at once and unroute every replica.
    probe_timeout=5,
    restart_backoff_initial=0.1,
    restart_backoff_max=0.5,
    terminate_grace=2,
    drain_timeout=5,
)
SETTLE = 30.0
"""Seconds a change may take to be in place (generous: a loaded 2-core machine)."""


def demo_command(*extra: str) -> list[str]:
    """The demo server on the port the runtime gives it, generating without pauses."""
    return [
        *(sys.executable, "-m", "servefleet.demo", "--port", "{port}", "--token-delay", "0"),
        *extra,
    ]


def demo_spec(version: str = "v1", *, replicas: int = 2, **fields: Any) -> EndpointSpec:
    """An endpoint of demo replicas answering with `x-demo-version: <version>`."""
    spec: dict[str, Any] = {
        "command": demo_command(),
        "args": ["--version", version],
        "replicas": replicas,
        "health_path": "/health",
    }
    return EndpointSpec.model_validate(spec | fields)


def manifest(name: str, spec: EndpointSpec, regions: list[str]) -> EndpointManifest:
    """What `servefleet apply -f` reads: the whole declaration of one endpoint."""
    return EndpointManifest.model_validate(
        {"metadata": {"name": name}, "regions": regions, "spec": spec}
    )


# Answers.


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: Any

    @property
    def version(self) -> str | None:
        """The demo server's `--version`, None when no replica answered."""
        return self.headers.get("x-demo-version")

    @property
    def pid(self) -> int | None:
        pid = self.headers.get("x-demo-pid")
        return int(pid) if pid else None

    @property
    def region(self) -> str | None:
        return self.headers.get("x-servefleet-region")

    @property
    def error(self) -> str:
        """The gateway's reason for a refusal."""
        message: str = self.body["error"]["message"]
        return message


async def chat(
    client: aiohttp.ClientSession,
    base_url: str,
    endpoint: str,
    content: str = "hello world",
    **fields: Any,
) -> Answer:
    """A chat completion through the gateway at `base_url`."""
    request = {"model": "demo", "messages": [{"role": "user", "content": content}], **fields}
    async with client.post(
        f"{base_url}/inference/{endpoint}/v1/chat/completions", json=request
    ) as response:
        body = await response.json(content_type=None)
        return Answer(response.status, dict(response.headers), body)


async def ingress_stand_in(
    prefix: str, version: str, *, token_delay: float = 0.0
) -> tuple[str, asyncio.subprocess.Process]:
    """A demo server on loopback standing in for a Kubernetes region's Ingress: it
    answers under the endpoint's `prefix` (an Ingress routes on it and rewrites
    nothing). Its base URL, once it answers, and the process, for the caller to end
    (inside `local_fleet`, which checks that no demo child of the test is left)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "servefleet.demo", "--port", str(port), "--version", version),
        *("--path-prefix", prefix, "--token-delay", str(token_delay)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as client,
                client.get(f"{url}{prefix}/health") as response,
            ):
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(answers, within=SETTLE)
    return url, process


# The fleet in this process.


@dataclass
class Fleet:
    store: Store
    service: EndpointService
    running: Running
    client: aiohttp.ClientSession

    @property
    def gateway_url(self) -> str:
        return self.running.gateway_url

    @property
    def metrics_url(self) -> str:
        """The base URL of `/metrics`, `/healthz` and `/readyz`."""
        return self.running.metrics_url

    def region_url(self, region: str = "r1") -> str:
        return self.running.region_urls[region]

    def runtime(self, region: str = "r1") -> LocalRuntime:
        runtime = self.running.runtimes[region]
        assert isinstance(runtime, LocalRuntime)
        return runtime

    def replicas(self, endpoint: str, region: str = "r1") -> list[ReplicaInfo]:
        return self.runtime(region).replicas(endpoint)

    def pids(self, endpoint: str, region: str = "r1", role: str | None = None) -> set[int]:
        """The replica processes the runtime holds for `endpoint` (old ones included)."""
        return {
            r.pid
            for r in self.replicas(endpoint, region)
            if r.pid is not None and role in (None, r.role)
        }

    async def chat(self, endpoint: str, *, via: str | None = None, **fields: Any) -> Answer:
        """A chat completion through the global gateway, or the one at `via`."""
        return await chat(self.client, via or self.gateway_url, endpoint, **fields)

    async def chats(
        self, endpoint: str, count: int, *, via: str | None = None, at_once: int = 50
    ) -> list[Answer]:
        answers: list[Answer] = []
        while len(answers) < count:
            batch = min(at_once, count - len(answers))
            answers += await asyncio.gather(*(self.chat(endpoint, via=via) for _ in range(batch)))
        return answers

    async def status(self, endpoint: str, region: str = "r1") -> RegionStatus | None:
        statuses = await self.store.list_region_status(endpoint=endpoint)
        return next((status for status in statuses if status.region == region), None)

    async def settled(
        self, endpoint: str, *, replicas: int, canary: int = 0, regions: tuple[str, ...] = ("r1",)
    ) -> Endpoint:
        """Wait until every region in `regions` reports the endpoint's current generation
        ready, and runs exactly `replicas` primary and `canary` canary processes, every
        one of them ready, of the current spec and not on its way out."""

        async def check() -> bool:
            record = await self.store.get_endpoint(endpoint)
            for region in regions:
                status = await self.status(endpoint, region)
                if (
                    status is None
                    or status.state is not RegionState.READY
                    or status.observed_generation != record.generation
                    or (status.replicas_ready, status.canary_ready) != (replicas, canary)
                    or not status.routed
                ):
                    return False
                held = self.replicas(endpoint, region)
                roles = sorted(r.role for r in held)
                if roles != ["canary"] * canary + ["primary"] * replicas:
                    return False
                if not all(
                    r.state == "ready" and r.current and not r.retiring and r.pid for r in held
                ):
                    return False
            return True

        await eventually(check, within=SETTLE)
        return await self.store.get_endpoint(endpoint)

    async def purged(self, endpoint: str) -> bool:
        try:
            await self.store.get_endpoint(endpoint)
        except EndpointNotFound:
            return True
        return False


@asynccontextmanager
async def local_fleet(
    store_url: str,
    tmp_path: Path,
    regions: tuple[str, ...] = ("r1",),
    *,
    watchdog_threshold: float = 300.0,
    entry: EntrySettings | None = None,
) -> AsyncIterator[Fleet]:
    """`servefleet up --regions <regions> --port 0 --metrics-port 0` in this process,
    with short timings.

    On the way out it is cancelled as Ctrl-C does, and (when the body succeeded)
    checks that no replica process of this test is left."""
    options = UpOptions(
        store_url=store_url,
        regions=list(regions),
        demo=False,
        host="127.0.0.1",
        port=0,
        log_format="text",
        log_dir=tmp_path / "logs",
        controller=ControllerSettings(
            watchdog_threshold=watchdog_threshold,
            backoff_max=1.0,
            store_retry=0.2,
            restart_initial=0.2,
            restart_max=1.0,
        ),
        # No test here hands leadership over (test_failover does, with processes): the
        # TTL only has to outlast a renewal on a saturated machine. At 5 s a leader
        # serving a thousand requests in this process, beside two other test workers,
        # once missed its renew deadline and stood down mid-test.
        lease=LeaseSettings(ttl=15, renew_interval=1, retry_interval=0.2),
        local=LOCAL,
        metrics_port=0,
        entry=entry or EntrySettings(),
    )
    started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(options, started.set_result), name="servefleet-up")

    async def shut_down() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        first: set[asyncio.Future[Any]] = {started, task}
        await asyncio.wait(first, timeout=SETTLE, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # it failed to start: raise why
        running = started.result()

        async def leading() -> bool:
            return set(running.runtimes) == set(regions)

        await eventually(leading, within=SETTLE)
        store = await open_store(store_url)
        try:
            async with aiohttp.ClientSession() as client:
                yield Fleet(store, EndpointService(store), running, client)
        finally:
            await store.close()
    except BaseException:
        await shut_down()
        raise
    await shut_down()
    left = demo_children(os.getpid())
    assert not left, f"replica processes outlived `servefleet up`: {sorted(left)}"


# Processes, as /proc shows them.


def _stat(pid: int) -> tuple[str, int] | None:
    """State letter and parent pid; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return raw.decode(errors="replace").split("\0")


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def gone(pid: int) -> bool:
    """Dead: reaped, or a zombie nobody has reaped yet."""
    stat = _stat(pid)
    return stat is None or stat[0] == "Z"


def _is_demo(pid: int) -> bool:
    command = _cmdline(pid)
    return "-m" in command and "servefleet.demo" in command and not gone(pid)


def demo_children(parent: int) -> set[int]:
    """Living demo server processes whose parent is `parent`."""
    found = set()
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None and stat[1] == parent and _is_demo(pid):
            found.add(pid)
    return found


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    pairs = (item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if item)
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def _writes_under(pid: int, directory: Path) -> bool:
    """Whether the standard output of `pid` is a file under `directory`."""
    try:
        output = Path(os.readlink(f"/proc/{pid}/fd/1"))
    except OSError:
        return False
    return output.is_relative_to(directory)


def demo_processes(store: str) -> set[int]:
    """Every living demo server on this machine started for the SQLite store at the
    path `store`, whoever its parent is now: a replica logs into the directory `up`
    keeps beside its store (it does not inherit `SERVEFLEET_STORE`)."""
    return demo_processes_logging_under(Path(store).parent / "logs")


def demo_processes_logging_under(logs: Path) -> set[int]:
    """Every living demo server on this machine whose output goes to a file under
    `logs` (an `up --log-dir`), whoever its parent is now."""
    return {pid for pid in _all_pids() if _is_demo(pid) and _writes_under(pid, logs)}


# `servefleet up` in its own process.


@dataclass
class UpProcess:
    process: asyncio.subprocess.Process
    store: str
    announcement: list[str] = field(default_factory=list)
    """What it printed on stdout when it came up."""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def gateway_url(self) -> str:
        return self._url(r"gateway \(every region\): (\S+)")

    def region_url(self, region: str) -> str:
        return self._url(rf"region {re.escape(region)}: (\S+)")

    @property
    def metrics_url(self) -> str:
        """The base URL of `/metrics`, `/healthz` and `/readyz` (with `--metrics-port`)."""
        return self._url(r"metrics: (\S+)/metrics")

    def _url(self, pattern: str) -> str:
        for line in self.announcement:
            match = re.search(pattern, line)
            if match:
                return match.group(1)
        raise AssertionError(f"no {pattern!r} in {self.announcement}")

    def replicas(self) -> set[int]:
        """Its living demo replica processes."""
        return demo_children(self.pid)


# Runs the rest of its arguments as a program that starts with SIGINT ignored, as a
# script's background job, `nohup` and some supervisors start their children.
_SIGINT_IGNORED = (
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


async def _servefleet_process(
    verb: str,
    store: str,
    *args: str,
    stderr: Path,
    stdout: int,
    sigint_ignored: bool,
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """`servefleet <verb> <args>` with `SERVEFLEET_STORE=<store>` (and `env`), in a
    process group of its own, so that a clean-up can end all of it by its id."""
    launcher = _SIGINT_IGNORED if sigint_ignored else ()
    with stderr.open("ab") as errors:
        return await asyncio.create_subprocess_exec(
            *launcher,
            *COMMAND,
            verb,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=errors,
            env={**os.environ, **(env or {}), "SERVEFLEET_STORE": store, "PYTHONUNBUFFERED": "1"},
            cwd=REPO,
            start_new_session=True,
        )


async def _end_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


@asynccontextmanager
async def up_process(
    store: str,
    *args: str,
    stderr: Path,
    sigint_ignored: bool = False,
    log_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[UpProcess]:
    """`servefleet up <args>` with `SERVEFLEET_STORE=<store>`, once it has printed
    its announcement; killed on the way out if still running (its whole process
    group), with any replica left. With `sigint_ignored`, it inherits SIGINT as
    ignored. Replica logs go to `log_dir` (`up --log-dir`), by default beside a
    SQLite store's file (a PostgreSQL store needs `log_dir` for the clean-up).
    `env`: variables added to its environment."""
    logs = ("--log-dir", str(log_dir)) if log_dir is not None else ()
    # Side by side, every `up` needs a port of its own for its API.
    api = () if "--api-port" in args or "--no-api" in args else ("--api-port", "0")
    process = await _servefleet_process(
        "up",
        store,
        *logs,
        *api,
        *args,
        stderr=stderr,
        stdout=asyncio.subprocess.PIPE,
        sigint_ignored=sigint_ignored,
        env=env,
    )
    up = UpProcess(process, store)
    try:
        await _announced(up, "up", stderr)
        yield up
    finally:
        await _end_group(process)
        left = demo_processes_logging_under(log_dir) if log_dir else demo_processes(store)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _announced(process: UpProcess, verb: str, stderr: Path) -> None:
    """Read what `servefleet <verb>` prints on stdout when it comes up, up to the
    "Ctrl-C stops everything." that ends it."""
    assert process.process.stdout is not None
    async with asyncio.timeout(SETTLE):
        while not process.announcement or "Ctrl-C" not in process.announcement[-1]:
            line = await process.process.stdout.readline()
            if not line:
                log = await asyncio.to_thread(stderr.read_text)
                raise AssertionError(f"servefleet {verb} ended early:\n{log}")
            process.announcement.append(line.decode().rstrip("\n"))


@asynccontextmanager
async def reconcile_process(
    store: str,
    *args: str,
    stderr: Path,
    sigint_ignored: bool = False,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[UpProcess]:
    """`servefleet reconcile <args>` with `SERVEFLEET_STORE=<store>`, once it has
    printed its announcement; killed on the way out if still running (its whole
    process group). With `sigint_ignored`, it inherits SIGINT as ignored; `env`:
    variables added to its environment."""
    process = await _servefleet_process(
        "reconcile",
        store,
        *args,
        stderr=stderr,
        stdout=asyncio.subprocess.PIPE,
        sigint_ignored=sigint_ignored,
        env=env,
    )
    reconciler = UpProcess(process, store)
    try:
        await _announced(reconciler, "reconcile", stderr)
        yield reconciler
    finally:
        await _end_group(process)


_LISTENING = re.compile(r"Uvicorn running on (https?://\S+)")


@asynccontextmanager
async def serve_process(
    store: str, *args: str, stderr: Path, sigint_ignored: bool = False
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`servefleet serve --port 0 <args>` with `SERVEFLEET_STORE=<store>` and its
    URL, once it listens; killed on the way out if still running (its whole process
    group). With `sigint_ignored`, it inherits SIGINT as ignored."""
    process = await _servefleet_process(
        "serve",
        store,
        *("--port", "0", *args),
        stderr=stderr,
        stdout=asyncio.subprocess.DEVNULL,
        sigint_ignored=sigint_ignored,
    )
    try:
        async with asyncio.timeout(SETTLE):
            while not (listening := _LISTENING.search(await asyncio.to_thread(stderr.read_text))):
                if process.returncode is not None:
                    log = await asyncio.to_thread(stderr.read_text)
                    raise AssertionError(f"servefleet serve ended early:\n{log}")
                await asyncio.sleep(0.05)
        yield process, listening[1].replace("0.0.0.0", "127.0.0.1")
    finally:
        await _end_group(process)


async def stopped_by_signal(
    process: asyncio.subprocess.Process, stop: signal.Signals, log: Path
) -> list[str]:
    """Send `stop` to a servefleet process and wait (at most `SETTLE` s) for it to
    end: what was not a clean stop — still running, an exit status other than 0, a
    traceback in its log. An empty list: it stopped cleanly."""
    process.send_signal(stop)
    try:
        async with asyncio.timeout(SETTLE):
            status = await process.wait()
    except TimeoutError:
        return [f"still running {SETTLE:g} s after {stop.name}"]
    problems = [] if status == 0 else [f"exit status {status} after {stop.name}"]
    text = await asyncio.to_thread(log.read_text, errors="replace")
    if "Traceback" in text:
        problems.append(f"a traceback in its log after {stop.name}")
    return problems


async def up_stopped_by_signal(
    up: UpProcess, stop: signal.Signals, log: Path, *, region: str, log_dir: Path | None = None
) -> list[str]:
    """`stopped_by_signal` for a `servefleet up` leading `region`, which must also
    say "stopped" last, end every replica it ran and release the region's lease (so
    another process can take it at once, not after its TTL)."""
    replicas = up.replicas()
    problems = await stopped_by_signal(up.process, stop, log)
    text = await asyncio.to_thread(log.read_text, errors="replace")
    if not text.rstrip().endswith("stopped"):
        problems.append(f"its log does not end with 'stopped' after {stop.name}")
    left = {pid for pid in replicas if not gone(pid)}
    left |= demo_processes_logging_under(log_dir) if log_dir else demo_processes(up.store)
    if left:
        problems.append(f"replicas left running after {stop.name}: {sorted(left)}")
    store = await open_store(up.store)
    try:
        if await store.acquire_lease(f"region/{region}", "next-leader", ttl=60) is None:
            problems.append(f"the lease of region {region} was not released on {stop.name}")
    finally:
        await store.close()
    return problems
