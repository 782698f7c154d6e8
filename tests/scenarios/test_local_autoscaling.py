"""Autoscaling on requests in a local region, with every real part running together.

`servefleet up` runs in this process (`harness.local_fleet`): the reconciler, the
local runtime with real demo replica processes and the gateways over loopback.
The load is real streamed chat completions through the global gateway; the
windows are short (seconds) so that a test sees a whole cycle. Nothing asserts
how long anything took: the tests record the sequence of replica counts the
runtime runs and the reports it writes, and assert on those.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from servefleet.spec import RegionState, RegionStatus
from servefleet.store import open_store
from tests.cli.test_cli import servefleet
from tests.scenarios.harness import SETTLE, Fleet, demo_command, demo_spec, local_fleet, manifest
from tests.waiting import eventually

PACE = {
    "enabled": True,
    "metrics": [{"type": "concurrency", "target": 1}],
    "scale_up_window": 2,
    "panic_window": 1,
    "scale_down_window": 2,
    "scale_to_zero_after": 2,
}
"""Short windows: each test sees the count rise and fall within seconds."""


@dataclass(frozen=True)
class Streamed:
    """One streamed chat completion as the client received it."""

    status: int
    version: str | None
    ids: frozenset[str]
    """The completion ids in its chunks: one, for one answer."""
    done: bool
    """It ended with `data: [DONE]`."""
    error: str = ""


async def streamed_chat(client: aiohttp.ClientSession, base_url: str, tokens: int) -> Streamed:
    request = {
        "model": "demo",
        "messages": [{"role": "user", "content": "hello world"}],
        "stream": True,
        "max_tokens": tokens,
    }
    url = f"{base_url}/inference/llm/v1/chat/completions"
    async with client.post(url, json=request) as response:
        text = await response.text()
        version = response.headers.get("x-servefleet-version")
        if response.status != 200:
            return Streamed(response.status, version, frozenset(), False, text)
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(event) for event in events if event != "[DONE]"]
    ids = frozenset(chunk["id"] for chunk in chunks)
    return Streamed(200, version, ids, bool(events) and events[-1] == "[DONE]")


def complete(answer: Streamed) -> bool:
    return answer.status == 200 and answer.done and len(answer.ids) == 1


@asynccontextmanager
async def streams(fleet: Fleet, workers: int, tokens: int = 20) -> AsyncIterator[list[Streamed]]:
    """`workers` clients, each sending streamed requests one after another while the
    body runs (the requests in flight stay close to `workers`); the list fills
    with the answers."""
    answers: list[Streamed] = []
    stopping = asyncio.Event()

    async def send() -> None:
        while not stopping.is_set():
            answers.append(await streamed_chat(fleet.client, fleet.gateway_url, tokens))

    tasks = [asyncio.create_task(send()) for _ in range(workers)]
    try:
        yield answers
    finally:
        stopping.set()
        await asyncio.gather(*tasks)


@asynccontextmanager
async def counts(fleet: Fleet, role: str = "primary") -> AsyncIterator[list[int]]:
    """The sequence of replica counts the runtime runs for the version, each count
    recorded once when it changes (replicas of the current spec not retiring)."""
    seen: list[int] = []

    async def watch() -> None:
        while True:
            running = sum(
                r.role == role and r.current and not r.retiring for r in fleet.replicas("llm")
            )
            if not seen or seen[-1] != running:
                seen.append(running)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def reported(fleet: Fleet, desired: int, *, ready: int | None = None) -> RegionStatus:
    """Wait until r1 reports `desired` primary replicas wanted (and `ready` ready)."""
    found: list[RegionStatus] = []

    async def check() -> bool:
        status = await fleet.status("llm")
        if status is None or status.replicas_desired != desired:
            return False
        if ready is not None and status.replicas_ready != ready:
            return False
        found.append(status)
        return True

    await eventually(check, within=SETTLE)
    return found[-1]


def steps(sequence: list[int]) -> list[int]:
    """The differences between consecutive counts."""
    return [b - a for a, b in itertools.pairwise(sequence)]


@pytest.mark.slow(seconds=25)
async def test_concurrency_grows_the_count_and_it_shrinks_after_the_load(fleet: Fleet) -> None:
    pace = PACE | {"min_replicas": 1, "max_replicas": 4}
    slow_tokens = demo_command("--token-delay", "0.05")  # a stream of 20 tokens: about 1 s
    await fleet.service.apply(
        manifest("llm", demo_spec(command=slow_tokens, autoscaling=pace), ["r1"])
    )
    before = await fleet.settled("llm", replicas=1)

    async with counts(fleet) as running:
        async with streams(fleet, 1) as steady:
            async with streams(fleet, 2) as burst:
                peak = await reported(fleet, 3, ready=3)
            # Down to the one stream still flowing: replicas retire while it is
            # served, each drained first.
            calm = await reported(fleet, 1)
            await eventually(lambda: _settled_at(running, 1), within=SETTLE)
        await fleet.settled("llm", replicas=1)

    # Up toward 3 streams / 1 per replica, then down to the one stream's count, a
    # replica at a time each way.
    assert running[0] == 1
    assert max(running) == 3
    assert running[-1] == 1
    assert set(steps(running)) <= {1, -1}
    top = running.index(3)
    assert all(step == 1 for step in steps(running[: top + 1]))
    assert all(step == -1 for step in steps(running[top:]))
    assert peak.scale_reason.endswith("→ 3")
    assert "→ 1" in calm.scale_reason
    assert peak.state is RegionState.READY
    # Every request answered once, whole, while replicas came and went.
    answers = steady + burst
    assert answers
    assert [a for a in answers if not complete(a)] == []
    # The count is the region's, never the declaration's.
    after = await fleet.store.get_endpoint("llm")
    assert after.spec == before.spec
    assert after.generation == before.generation


async def _settled_at(running: list[int], count: int) -> bool:
    return running[-1] == count


@pytest.mark.slow(seconds=25)
async def test_scale_to_zero_then_a_burst_is_answered_whole(
    sqlite_url: str, tmp_path: Path
) -> None:
    pace = PACE | {
        "min_replicas": 0,
        "max_replicas": 2,
        "metrics": [{"type": "concurrency", "target": 10}],
    }
    # A replica that takes half a second to load; primary and canary start at zero.
    command = demo_command("--startup-delay", "0.5", "--token-delay", "0.02")
    spec = demo_spec(command=command, autoscaling=pace, canary={"weight": 50})
    # A watchdog that pulls the route of an endpoint with no ready replica for 5 s.
    async with local_fleet(sqlite_url, tmp_path, watchdog_threshold=5) as fleet:
        await fleet.service.apply(manifest("llm", spec, ["r1"]))
        idle = await reported(fleet, 0)
        assert idle.scale_reason == "min_replicas → 0; canary: min_replicas → 0"
        assert fleet.replicas("llm") == []

        async with counts(fleet) as primary, counts(fleet, "canary") as canary:
            first = await streamed_chat(fleet.client, fleet.gateway_url, 5)
            assert complete(first)
            # Idle for scale_to_zero_after: back to zero, every process gone.
            await eventually(lambda: _no_replicas(fleet), within=SETTLE)
            asleep = await reported(fleet, 0)
            # Longer than the watchdog's threshold at zero: the route must stay.
            await asyncio.sleep(6)
            status = await fleet.status("llm")
            assert status is not None
            assert status.routed
            assert status.state is RegionState.READY

            burst = await asyncio.gather(
                *(streamed_chat(fleet.client, fleet.gateway_url, 10) for _ in range(20))
            )

        assert [a for a in burst if not complete(a)] == []
        assert len(frozenset().union(*(a.ids for a in burst))) == 20
        assert {a.version for a in burst} == {"primary", "canary"}  # 2^-19 to fail
        assert "idle" in asleep.scale_reason
        # Woken from zero three times: one version by the first request, both by
        # the burst.
        assert wakes(primary) + wakes(canary) == 3
        assert wakes(primary) >= 1
        assert wakes(canary) >= 1


@pytest.mark.slow(seconds=25)
async def test_at_zero_health_does_not_wake_it_and_a_long_cold_start_keeps_the_route(
    sqlite_url: str, tmp_path: Path
) -> None:
    pace = PACE | {"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after": 600}
    # A replica that loads for longer than the watchdog's threshold; the canary's
    # declared replica makes the watchdog judge the endpoint (it wants replicas).
    command = demo_command("--startup-delay", "3")
    spec = demo_spec(command=command, autoscaling=pace, canary={"weight": 50})
    async with local_fleet(sqlite_url, tmp_path, watchdog_threshold=1) as fleet:
        await fleet.service.apply(manifest("llm", spec, ["r1"]))
        await reported(fleet, 0)

        health, table = await asyncio.gather(
            servefleet(sqlite_url, "health", "llm", "-o", "json"),
            servefleet(sqlite_url, "status", "llm"),
        )
        assert fleet.replicas("llm") == []  # neither woke it
        [row] = health.json()["regions"]
        assert row == row | {
            "healthy": True,
            "ready": "0/0",
            "routed": True,
            "scale_reason": "min_replicas → 0; canary: min_replicas → 0",
            "probe": "not probed: at 0 replicas by its autoscaler; the next request starts one",
        }
        header, report = table.ok().stdout.splitlines()[1:3]
        assert header.split()[-1] == "SCALING"
        assert report.endswith("canary: min_replicas → 0")

        routed: list[bool] = []

        async def watch() -> None:
            while True:
                status = await fleet.status("llm")
                assert status is not None
                routed.append(status.routed)
                await asyncio.sleep(0.1)

        watching = asyncio.create_task(watch())
        try:
            answer = await streamed_chat(fleet.client, fleet.gateway_url, 5)
            await eventually(lambda: _one_ready(fleet), within=SETTLE)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    assert complete(answer), answer
    assert routed
    assert all(routed), routed


async def _one_ready(fleet: Fleet) -> bool:
    status = await fleet.status("llm")
    return status is not None and status.replicas_ready + status.canary_ready == 1


def wakes(sequence: list[int]) -> int:
    return list(itertools.pairwise(sequence)).count((0, 1))


async def _no_replicas(fleet: Fleet) -> bool:
    return fleet.replicas("llm") == []


@pytest.mark.slow(seconds=20)
async def test_canary_and_primary_scale_on_their_own_share(fleet: Fleet) -> None:
    pace = PACE | {"min_replicas": 1, "max_replicas": 4}
    slow_tokens = demo_command("--token-delay", "0.05")
    # 99 % of the requests go to the canary: it alone carries the load.
    spec = demo_spec(command=slow_tokens, autoscaling=pace, canary={"weight": 99})
    await fleet.service.apply(manifest("llm", spec, ["r1"]))
    await fleet.settled("llm", replicas=1, canary=1)

    async def canary_scaled() -> bool:
        status = await fleet.status("llm")
        return status is not None and status.canary_desired == 3 and canary[-1] == 3

    async with (
        counts(fleet) as primary,
        counts(fleet, "canary") as canary,
        streams(fleet, 3) as answers,
    ):
        await eventually(canary_scaled, within=SETTLE)
        status = await fleet.status("llm")

    assert max(canary) == 3
    assert primary == [1]
    assert status is not None
    assert status.replicas_desired == 1
    assert "canary: " in status.scale_reason
    assert [a for a in answers if not complete(a)] == []


@pytest.mark.slow(seconds=30)
async def test_a_new_leader_resumes_the_count_not_the_minimum(
    sqlite_url: str, tmp_path: Path
) -> None:
    # A scale-down window long enough that the count stays where the load put it.
    pace = PACE | {"min_replicas": 1, "max_replicas": 4, "scale_down_window": 600}
    slow_tokens = demo_command("--token-delay", "0.05")
    async with local_fleet(sqlite_url, tmp_path / "first") as first:
        await first.service.apply(
            manifest("llm", demo_spec(command=slow_tokens, autoscaling=pace), ["r1"])
        )
        await first.settled("llm", replicas=1)
        async with streams(first, 3):
            await reported(first, 3, ready=3)

    # The first process is gone with its replicas; the next one leads r1. The first's
    # last report (3 ready) stays until the next leader writes its own.
    last_of_the_first = await _report_in_store(sqlite_url)
    async with local_fleet(sqlite_url, tmp_path / "second") as second:
        seen: list[int] = []

        async def three_ready() -> bool:
            status = await second.status("llm")
            assert status is not None
            if status.heartbeat == last_of_the_first.heartbeat:
                return False
            seen.append(status.replicas_desired)
            return status.replicas_ready == 3

        await eventually(three_ready, within=SETTLE)
        status = await second.status("llm")
        running = [r for r in second.replicas("llm") if not r.retiring]

    assert set(seen) == {3}
    assert len(running) == 3
    assert status is not None
    assert status.scale_reason.startswith("3 as last reported")


async def _report_in_store(store_url: str) -> RegionStatus:
    store = await open_store(store_url)
    try:
        (status,) = await store.list_region_status(endpoint="llm")
    finally:
        await store.close()
    return status
