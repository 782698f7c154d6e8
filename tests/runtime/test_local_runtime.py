"""The local runtime with real replica processes, probed and proxied over loopback.

Workloads come from `plan.desired_workload`, as the reconciler makes them. Most
replicas are `tests/runtime/replica.py` (starts fast, dies at once on SIGTERM);
the streaming test runs `python -m servefleet.demo`. Probes are fast here
(`SETTINGS`); nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from servefleet.plan import Observed, Workload, desired_workload, workload_hash
from servefleet.runtime.base import ApplyConflict, Runtime, WorkloadUnsupported
from servefleet.runtime.local.gateway import Gateway, GatewaySettings, Pick, Refusal, Router
from servefleet.runtime.local.supervisor import LocalRuntime, LocalSettings
from servefleet.spec import DesiredState
from tests.factories import make_endpoint
from tests.models.conftest import contents, write_model

ROOT = Path(__file__).parents[2]
REPLICA = str(Path(__file__).with_name("replica.py"))
SETTINGS = LocalSettings(
    startup_timeout=30,
    probe_interval=0.05,
    # Generous: a test process whose event loop is starved for a second on a loaded
    # machine would otherwise time out every probe at once and unroute every replica.
    probe_timeout=5,
    restart_backoff_initial=0.1,
    restart_backoff_max=0.5,
    terminate_grace=2,
    drain_timeout=15,
)
T = TypeVar("T")


def replica(*args: str) -> list[str]:
    """A command running the test replica; `python` is found on the PATH the
    runtime gives its replicas (this environment's interpreter first)."""
    return ["python", REPLICA, "--port", "{port}", *args]


def workload(
    name: str = "llm",
    region: str = "r1",
    *,
    state: DesiredState = DesiredState.RUNNING,
    unrouted: bool = False,
    **spec: Any,
) -> Workload:
    spec.setdefault("image", None)
    spec.setdefault("replicas", 1)
    spec.setdefault("command", replica())
    endpoint = make_endpoint(name, [region], **spec).model_copy(update={"desired_state": state})
    planned = desired_workload(endpoint, region, unrouted=unrouted)
    assert planned is not None
    return planned


async def until(check: Callable[[], Awaitable[T | None]], within: float = 20.0) -> T:
    """Poll `check` until it returns something truthy; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {result!r})")
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Region:
    name: str
    router: Router
    runtime: LocalRuntime
    url: str
    client: aiohttp.ClientSession

    async def observed(self, endpoint: str = "llm") -> Observed:
        observed = await self.runtime.observe(endpoint)
        assert observed is not None
        return observed

    async def ready(self, endpoint: str = "llm", primary: int = 1, canary: int = 0) -> Observed:
        """Wait until exactly these replicas of the current spec run and are ready."""

        async def check() -> Observed | None:
            seen = await self.runtime.observe(endpoint)
            counts = (primary, primary, canary, canary)
            if (
                seen
                and (
                    seen.primary.ready,
                    seen.primary.running,
                    seen.canary.ready,
                    seen.canary.running,
                )
                == counts
            ):
                return seen
            return None

        return await until(check)

    def pids(self, endpoint: str = "llm") -> set[int]:
        return {r.pid for r in self.runtime.replicas(endpoint) if r.pid is not None}

    async def get(self, path: str = "/inference/llm/") -> tuple[int, dict[str, str], Any]:
        async with self.client.get(self.url + path) as response:
            return response.status, dict(response.headers), await response.json()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def regions(
    tmp_path: Path, client: aiohttp.ClientSession
) -> AsyncIterator[Callable[..., Awaitable[Region]]]:
    """Start a region: router, runtime and its own gateway."""
    started: list[tuple[LocalRuntime, Gateway]] = []

    async def start(name: str = "r1", settings: LocalSettings = SETTINGS) -> Region:
        router = Router(name)
        runtime = LocalRuntime(name, router, log_dir=tmp_path / "logs", settings=settings)
        runtime.synced()  # as a reconciler says once it has looked at every endpoint
        gateway = Gateway([router], GatewaySettings(shutdown_timeout=1))
        started.append((runtime, gateway))
        return Region(name, router, runtime, await gateway.start("127.0.0.1", 0), client)

    yield start
    for runtime, gateway in started:
        await runtime.close()
        await gateway.close()


@pytest.fixture
async def region(regions: Callable[..., Awaitable[Region]]) -> Region:
    return await regions()


def test_local_runtime_is_a_runtime() -> None:
    """The assignment is the check: mypy --strict compares it with the protocol."""
    runtime: Runtime = LocalRuntime("r1", Router("r1"), log_dir=Path("/nonexistent"))
    assert runtime is not None


async def test_apply_serves_through_the_gateway(region: Region, tmp_path: Path) -> None:
    applied = workload(replicas=2, command=replica("--version", "v1"), env={"REPLICA_X": "1"})
    await region.runtime.apply(applied)
    observed = await region.ready(primary=2)
    assert observed.workload_hash == workload_hash(applied)
    assert observed.routed
    assert await region.runtime.held() == {"llm"}

    status, headers, body = await region.get("/inference/llm/v1/models?limit=2")
    assert status == 200
    assert body["path"] == "/v1/models?limit=2"
    assert body["env"] == {"REPLICA_X": "1"}
    assert headers["x-servefleet-region"] == "r1"
    assert headers["x-servefleet-version"] == "primary"
    assert headers["x-servefleet-replica"] in {"llm/primary-0", "llm/primary-1"}
    ports = {r.port for r in region.runtime.replicas("llm")}
    assert body["port"] in ports  # "{port}" was replaced by the port the replica got
    assert (tmp_path / "logs" / "r1" / "llm" / "primary-0.log").exists()


async def test_scale_up_then_down(region: Region) -> None:
    await region.runtime.apply(workload(replicas=1))
    await region.ready(primary=1)
    await region.runtime.apply(workload(replicas=3))
    await region.ready(primary=3)
    before = region.pids()
    assert len(before) == 3

    await region.runtime.apply(workload(replicas=1))
    await region.ready(primary=1)
    kept = region.pids()
    assert len(kept) == 1
    await until(lambda: _none_alive(before - kept))

    async def only_the_first_held() -> bool:
        # A replica leaves the list once its keeper has reaped it, just after it dies.
        return [r.name for r in region.runtime.replicas("llm")] == ["primary-0"]

    await until(only_the_first_held)


async def _none_alive(pids: set[int]) -> bool:
    return not any(alive(pid) for pid in pids)


async def _replaced(region: Region, old: set[int]) -> bool:
    # A dead replica stays listed until its keeper has reaped it, so both are waited for.
    return await _none_alive(old) and region.pids().isdisjoint(old)


@pytest.mark.parametrize(
    ("before", "after", "shows"),
    [
        pytest.param(
            {"args": ["--version", "v1"]}, {"args": ["--version", "v2"]}, "version", id="args"
        ),
        pytest.param(
            {"env": {"REPLICA_TAG": "v1"}}, {"env": {"REPLICA_TAG": "v2"}}, "env", id="env"
        ),
        pytest.param(
            {"command": replica("--version", "v1")},
            {"command": ["python", "-u", REPLICA, "--port", "{port}", "--version", "v2"]},
            "version",
            id="command",
        ),
    ],
)
async def test_spec_change_rolls_out_without_a_failed_request(
    region: Region, before: dict[str, Any], after: dict[str, Any], shows: str
) -> None:
    def shown(body: Any) -> str:
        return str(body["version"] if shows == "version" else body["env"]["REPLICA_TAG"])

    await region.runtime.apply(workload(replicas=2, **before))
    await region.ready(primary=2)
    old = region.pids()
    failures: list[int] = []
    seen: list[str] = []
    rolling = True

    async def traffic() -> None:
        while rolling:
            status, _, body = await region.get()
            if status != 200:
                failures.append(status)
            else:
                seen.append(shown(body))

    load = asyncio.create_task(traffic())
    await region.runtime.apply(workload(replicas=2, **after))
    await region.ready(primary=2)
    await until(lambda: _replaced(region, old))
    rolling = False
    await load
    assert failures == []
    assert seen[0] == "v1"
    assert seen[-1] == "v2"
    for _ in range(10):
        assert shown((await region.get())[2]) == "v2"


async def test_autoscaled_workload_runs_its_minimum(region: Region) -> None:
    autoscaled = workload(autoscaling={"enabled": True, "min_replicas": 2, "max_replicas": 5})
    assert autoscaled.primary.replicas is None
    await region.runtime.apply(autoscaled)
    await region.ready(primary=2)


async def test_stop_refuses_with_the_reason_and_ends_processes(region: Region) -> None:
    await region.runtime.apply(workload(replicas=2))
    await region.ready(primary=2)
    pids = region.pids()
    stopped = workload(replicas=2, state=DesiredState.STOPPED)
    assert stopped.primary.replicas == 0
    assert not stopped.routed

    await region.runtime.apply(stopped)
    status, _, body = await region.get()
    assert status == 503
    assert body == {"error": {"code": 503, "message": "endpoint 'llm': endpoint is stopped"}}
    await until(lambda: _none_alive(pids))
    observed = await region.ready(primary=0)
    assert observed.workload_hash == workload_hash(stopped)
    assert not observed.routed
    assert await region.runtime.held() == {"llm"}


async def test_watchdog_unroute_keeps_replicas_but_refuses(region: Region) -> None:
    await region.runtime.apply(workload(replicas=1, unrouted=True))
    observed = await region.ready(primary=1)
    assert not observed.routed
    status, _, body = await region.get()
    assert status == 503
    assert body["error"]["message"] == "endpoint 'llm': traffic withdrawn by the health watchdog"


async def test_canary_gets_its_weight_of_requests(region: Region) -> None:
    await region.runtime.apply(
        workload(
            replicas=2,
            command=replica("--version", "stable"),
            canary={"command": replica("--version", "canary"), "weight": 20, "replicas": 1},
        )
    )
    await region.ready(primary=2, canary=1)
    versions: collections.Counter[str] = collections.Counter()

    async def one() -> None:
        status, headers, body = await region.get()
        assert status == 200
        version = headers["x-servefleet-version"]
        assert body["version"] == {"primary": "stable", "canary": "canary"}[version]
        versions[version] += 1

    for _ in range(20):
        await asyncio.gather(*(one() for _ in range(50)))
    assert sum(versions.values()) == 1000
    sigma = math.sqrt(1000 * 0.2 * 0.8)
    assert abs(versions["canary"] - 200) <= 4 * sigma


async def test_removing_the_canary_retires_it(region: Region) -> None:
    with_canary = workload(canary={"args": ["--version", "canary"], "weight": 50})
    await region.runtime.apply(with_canary)
    await region.ready(primary=1, canary=1)
    await region.runtime.apply(workload())
    await region.ready(primary=1, canary=0)
    await until(lambda: _only_primary_left(region))
    for _ in range(20):
        assert (await region.get())[1]["x-servefleet-version"] == "primary"


async def _only_primary_left(region: Region) -> bool:
    return [r.role for r in region.runtime.replicas("llm")] == ["primary"]


async def test_killed_replica_is_replaced_while_the_endpoint_answers(region: Region) -> None:
    await region.runtime.apply(workload(replicas=2))
    await region.ready(primary=2)
    victim = region.runtime.replicas("llm")[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    for _ in range(30):
        assert (await region.get())[0] == 200

    async def replaced() -> bool:
        now = {r.name: r for r in region.runtime.replicas("llm")}
        again = now[victim.name]
        return again.restarts == 1 and again.state == "ready" and again.pid != victim.pid

    await until(replaced)
    await region.ready(primary=2)
    log = victim.log.read_text()
    assert log.count(f"--- servefleet: starting llm/{victim.name}") == 2


async def test_crash_loop_is_reported_with_the_log(region: Region) -> None:
    crashing = ["python", "-c", "import sys; print('model file missing'); sys.exit(3)"]
    await region.runtime.apply(workload(replicas=1, command=crashing))

    async def reported() -> Observed | None:
        observed = await region.observed()
        return observed if "exited with status 3" in observed.problem else None

    observed = await until(reported)
    assert observed.problem.startswith("replica primary-0 exited with status 3, restarting in ")
    log = Path(observed.problem.rsplit("see ", 1)[1])
    assert "model file missing" in await asyncio.to_thread(log.read_text)
    assert observed.primary.ready == 0
    await until(lambda: _restarted(region, 3))
    status, _, body = await region.get()
    assert (status, body["error"]["message"]) == (503, "endpoint 'llm' has no ready replica")


async def test_a_missing_program_is_reported(region: Region) -> None:
    await region.runtime.apply(workload(command=["servefleet-no-such-program", "{port}"]))

    async def reported() -> Observed | None:
        observed = await region.observed()
        return observed if observed.problem else None

    observed = await until(reported)
    assert observed.problem.startswith(
        "replica primary-0 could not start 'servefleet-no-such-program': No such file or directory"
    )


async def _restarted(region: Region, times: int) -> bool:
    return any(r.restarts >= times for r in region.runtime.replicas("llm"))


async def test_readiness_and_liveness(
    regions: Callable[..., Awaitable[Region]], tmp_path: Path
) -> None:
    flag = tmp_path / "unhealthy"
    # Readiness only: liveness would need a thousand failures.
    patient = await regions("r1", LocalSettings(**{**SETTINGS.__dict__, "liveness_failures": 1000}))
    await patient.runtime.apply(workload(command=replica("--unhealthy-file", str(flag))))
    await patient.ready(primary=1)
    pid = patient.pids()
    flag.touch()
    observed = await until(lambda: _unready(patient))
    assert "failing its readiness probe: HTTP 503" in observed.problem
    assert (await patient.get())[0] == 503
    flag.unlink()
    await patient.ready(primary=1)
    assert patient.pids() == pid
    assert (await patient.get())[0] == 200

    strict = await regions("r2")  # three failures in a row: restarted
    await strict.runtime.apply(workload(command=replica("--unhealthy-file", str(flag))))
    await strict.ready(primary=1)
    pid = strict.pids()
    flag.touch()
    await until(lambda: _restarted(strict, 1))
    flag.unlink()
    await strict.ready(primary=1)
    assert strict.pids().isdisjoint(pid)


async def _unready(region: Region) -> Observed | None:
    observed = await region.observed()
    return observed if observed.primary.ready == 0 and observed.primary.running == 1 else None


async def test_slow_start_is_waited_for_and_startup_timeout_restarts(
    regions: Callable[..., Awaitable[Region]],
) -> None:
    slow = await regions("r1")
    await slow.runtime.apply(workload(command=replica("--startup-delay", "1")))

    async def starting() -> Observed | None:
        observed = await slow.observed()
        return observed if "probe not passing yet" in observed.problem else None

    observed = await until(starting)
    assert observed.problem.startswith("replica primary-0: starting, probe not passing yet")
    assert observed.problem.endswith(": connection refused")
    await slow.ready(primary=1)
    assert slow.runtime.replicas("llm")[0].restarts == 0

    hasty = await regions("r2", LocalSettings(**{**SETTINGS.__dict__, "startup_timeout": 0.3}))
    await hasty.runtime.apply(workload(command=replica("--startup-delay", "60")))

    async def gave_up() -> Observed | None:
        observed = await hasty.observed()
        return observed if "did not pass its startup probe" in observed.problem else None

    observed = await until(gave_up)
    assert "within 0.3s (connection refused), restarting in" in observed.problem


async def test_image_only_workload_is_unsupported(region: Region) -> None:
    image_only = workload(image="ghcr.io/example/server:1.0", command=None)
    with pytest.raises(WorkloadUnsupported, match="declares only an image"):
        await region.runtime.apply(image_only)
    assert await region.runtime.held() == set()
    assert await region.runtime.observe("llm") is None
    assert (await region.get())[0] == 404


async def test_ingress_path_of_another_endpoint_is_a_conflict(region: Region) -> None:
    await region.runtime.apply(workload("a", ingress_path="/shared"))
    with pytest.raises(ApplyConflict, match="ingress_path: path '/shared' is already routed"):
        await region.runtime.apply(workload("b", ingress_path="/shared"))
    assert await region.runtime.held() == {"a"}


async def test_streamed_chat_completion_arrives_in_chunks(region: Region) -> None:
    pytest.importorskip("servefleet.demo.server")
    demo = [sys.executable, "-m", "servefleet.demo", "--port", "{port}", "--token-delay", "0.2"]
    await region.runtime.apply(workload(command=demo))
    await region.ready(primary=1)
    request = {
        "model": "demo",
        "messages": [{"role": "user", "content": "one two three four"}],
        "max_tokens": 4,
        "stream": True,
    }
    async with region.client.post(
        f"{region.url}/inference/llm/v1/chat/completions", json=request
    ) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = [chunk async for chunk in response.content.iter_any()]
    assert b"[DONE]" not in chunks[0]  # the first token came alone, before the rest
    assert len(chunks) >= 3
    text = b"".join(chunks).decode()
    assert text.count("data: ") == 5
    assert text.endswith("data: [DONE]\n\n")


async def test_requests_in_flight_survive_scale_down(region: Region, tmp_path: Path) -> None:
    arrived, release = tmp_path / "arrived", tmp_path / "release"
    arrived.mkdir()
    await region.runtime.apply(workload(replicas=2))
    await region.ready(primary=2)
    pids = region.pids()
    held = [
        asyncio.create_task(region.get(f"/inference/llm/hold?arrived={arrived}&release={release}"))
        for _ in range(4)
    ]
    await until(lambda: _count(arrived, 4))

    await region.runtime.apply(workload(replicas=1))
    draining = await region.observed()
    # One replica is out of the route, but still runs: its requests are in flight.
    assert (draining.primary.ready, draining.primary.running) == (1, 2)
    retiring = [r for r in region.runtime.replicas("llm") if r.retiring]
    assert len(retiring) == 1
    retiring_pid = retiring[0].pid
    assert retiring_pid in pids
    for _ in range(10):
        _, headers, _ = await region.get()
        assert headers["x-servefleet-replica"] != f"llm/{retiring[0].name}"
    release.touch()
    answers = await asyncio.gather(*held)
    assert [status for status, _, _ in answers] == [200] * 4
    assert {headers["x-servefleet-replica"] for _, headers, _ in answers} == {
        "llm/primary-0",
        "llm/primary-1",
    }
    await until(lambda: _none_alive({retiring_pid}))
    await region.ready(primary=1)


async def _count(directory: Path, expected: int) -> bool:
    return len(await asyncio.to_thread(os.listdir, directory)) >= expected


async def test_a_draining_replica_keeps_its_model(
    regions: Callable[..., Awaitable[Region]], tmp_path: Path
) -> None:
    """A replica retired by a rollout keeps its model directory while it finishes the
    requests it has in flight, through further model changes collecting the cache."""
    region = await regions("r1", LocalSettings(**{**SETTINGS.__dict__, "drain_timeout": 120}))
    sources = [tmp_path / "models" / version for version in ("1", "2", "3")]
    files = [write_model(source) for source in sources]
    cache = region.runtime.model_cache_dir / "r1" / "llm"
    arrived, release = tmp_path / "arrived", tmp_path / "release"
    arrived.mkdir()

    def version(number: int) -> Workload:
        return workload(
            command=replica("--version", str(number)), model_source=sources[number].as_uri()
        )

    def cache_holds(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return cache.exists() and len(await asyncio.to_thread(os.listdir, cache)) == count

        return check

    await region.runtime.apply(version(0))
    await region.ready()
    await until(cache_holds(1))
    (first,) = cache.iterdir()
    held = asyncio.create_task(
        region.get(f"/inference/llm/hold?arrived={arrived}&release={release}")
    )
    await until(lambda: _count(arrived, 1))

    await region.runtime.apply(version(1))

    async def old_one_draining() -> bool:
        return any(r.retiring and r.pid for r in region.runtime.replicas("llm"))

    await until(old_one_draining)
    (cache / "left-by-a-crash").mkdir()
    await region.runtime.apply(version(2))

    async def collected() -> bool:
        return not (cache / "left-by-a-crash").exists()

    await until(collected)  # by a deletion after the third model was staged
    assert await old_one_draining()
    assert contents(first) == files[0]
    release.touch()
    status, _, body = await held
    assert (status, body["version"]) == (200, "0")
    await region.ready()
    await until(cache_holds(1))
    (last,) = cache.iterdir()
    assert contents(last) == files[2]


async def test_remove_withdraws_the_route_then_the_replicas(region: Region) -> None:
    await region.runtime.apply(workload(replicas=2))
    await region.ready(primary=2)
    pids = region.pids()
    await region.runtime.remove("llm")
    assert (await region.get())[0] == 404
    await until(lambda: _none_alive(pids))
    await until(lambda: _not_held(region))
    assert await region.runtime.observe("llm") is None
    await region.runtime.remove("llm")  # removing what is not there is not an error


async def _not_held(region: Region) -> bool:
    return await region.runtime.held() == set()


async def test_events_announce_changes(region: Region) -> None:
    events = region.runtime.events()
    await region.runtime.apply(workload(replicas=1))
    assert await asyncio.wait_for(anext(events), 10) == "llm"
    while (await region.observed()).primary.ready < 1:
        assert await asyncio.wait_for(anext(events), 10) == "llm"
    victim = region.pids().pop()
    os.kill(victim, signal.SIGKILL)
    while (await region.observed()).primary.ready == 1:
        assert await asyncio.wait_for(anext(events), 10) == "llm"


async def test_global_gateway_fails_over_between_regions(
    regions: Callable[..., Awaitable[Region]], tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    flag = tmp_path / "unhealthy"
    flag.touch()
    east, west = await regions("east"), await regions("west")
    await east.runtime.apply(workload(region="east"))
    await west.runtime.apply(
        workload(region="west", command=replica("--unhealthy-file", str(flag)))
    )
    await east.ready(primary=1)
    entry = Gateway([east.router, west.router], GatewaySettings(shutdown_timeout=1))
    url = await entry.start("127.0.0.1", 0)
    try:
        for _ in range(20):
            async with client.get(f"{url}/inference/llm/") as response:
                assert response.status == 200
                assert response.headers["x-servefleet-region"] == "east"

        await east.runtime.apply(workload(region="east", state=DesiredState.STOPPED))
        async with client.get(f"{url}/inference/llm/") as response:
            assert response.status == 503
            message = (await response.json())["error"]["message"]
            assert message == "endpoint 'llm': endpoint is stopped"

        flag.unlink()
        await west.ready(primary=1)
        for _ in range(20):
            async with client.get(f"{url}/inference/llm/") as response:
                assert response.status == 200
                assert response.headers["x-servefleet-region"] == "west"
    finally:
        await entry.close()


async def test_a_passing_health_probe_makes_a_stalled_replica_eligible_again(
    region: Region,
) -> None:
    """The gateway stops choosing a replica that went silent past its upstream read
    timeout; the supervisor's next passing probe is the answer that lifts that."""
    await region.runtime.apply(workload(replicas=1))
    await region.ready(primary=1)
    pick = region.router.pick("/inference/llm/")
    assert isinstance(pick, Pick)
    pick.backend.stall()
    assert isinstance(region.router.pick("/inference/llm/"), Refusal)

    async def eligible() -> bool:
        return not pick.backend.stalled

    await until(eligible)
    status, headers, _ = await region.get()
    assert status == 200
    assert headers["x-servefleet-replica"] == pick.backend.name


async def test_close_leaves_no_child_process(tmp_path: Path) -> None:
    router = Router("r1")
    runtime = LocalRuntime("r1", router, log_dir=tmp_path, settings=SETTINGS)
    await runtime.apply(workload("a", replicas=2))
    await runtime.apply(workload("b", replicas=1, command=replica("--startup-delay", "60")))
    await until(lambda: _all_started(runtime))
    pids = {r.pid for name in ("a", "b") for r in runtime.replicas(name) if r.pid}
    assert len(pids) == 3
    events = runtime.events()
    await runtime.close()
    assert not any(alive(pid) for pid in pids)
    assert await runtime.held() == set()
    assert {name async for name in events} <= {"a", "b"}  # and the stream ends


async def _all_started(runtime: LocalRuntime) -> bool:
    replicas = runtime.replicas("a") + runtime.replicas("b")
    ready = sum(r.state == "ready" for r in replicas)
    return ready == 2 and all(r.pid for r in replicas)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_replicas_die_with_a_killed_servefleet(tmp_path: Path) -> None:
    script = f"""
import asyncio
from pathlib import Path
from servefleet.runtime.local.gateway import Router
from servefleet.runtime.local.supervisor import LocalRuntime
from tests.runtime.test_local_runtime import SETTINGS, workload

async def main():
    runtime = LocalRuntime("r1", Router("r1"), log_dir=Path({str(tmp_path)!r}), settings=SETTINGS)
    await runtime.apply(workload(replicas=1))
    while not runtime.replicas("llm")[0].pid:
        await asyncio.sleep(0.01)
    print(runtime.replicas("llm")[0].pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 20)
    child = int(line)
    assert alive(child)
    parent.kill()
    await parent.wait()
    try:
        await until(lambda: _reaped_or_zombie(child), within=5)
    finally:
        if alive(child):  # do not leave it behind when the test fails
            os.kill(child, signal.SIGKILL)


async def _reaped_or_zombie(pid: int) -> bool:
    """Dead: the orphan's new parent may be slow to reap it, which is not our concern."""
    try:
        stat = await asyncio.to_thread(Path(f"/proc/{pid}/stat").read_text)
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
