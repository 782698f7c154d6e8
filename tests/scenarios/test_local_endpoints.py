"""An endpoint's life on local regions, with every real part running together.

Each test runs `servefleet up` (in this process, see `harness.local_fleet`): a real
store, the reconciler with leader election, the local runtime with real demo
replica processes, and the gateways over HTTP on 127.0.0.1. The test acts as a
user does (`EndpointService`) and asserts the state of the world: answers through
the gateways, region status in the store, and the replica processes that exist.
Most run on SQLite; deploy and rollout on PostgreSQL too. The last test runs
`servefleet up --demo` itself, as the README's first steps do.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shlex
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from servefleet.spec import DesiredState, RegionState
from tests.scenarios.harness import (
    SETTLE,
    Answer,
    Fleet,
    demo_children,
    demo_command,
    demo_processes,
    demo_spec,
    environ,
    gone,
    local_fleet,
    manifest,
    up_process,
)
from tests.waiting import eventually


@asynccontextmanager
async def traffic(
    fleet: Fleet, endpoint: str, *, via: str | None = None
) -> AsyncIterator[list[Answer]]:
    """Requests one after another while the body runs; the list fills with the answers."""
    answers: list[Answer] = []
    stopping = asyncio.Event()

    async def send() -> None:
        while not stopping.is_set():
            answers.append(await fleet.chat(endpoint, via=via))

    task = asyncio.create_task(send())
    try:
        yield answers
    finally:
        stopping.set()
        await task


def statuses(answers: list[Answer]) -> Counter[int]:
    return Counter(answer.status for answer in answers)


async def all_gone(pids: set[int]) -> bool:
    return all(gone(pid) for pid in pids)


# 1. Deploy.


async def test_deploy_answers_through_both_gateways_and_reports_ready(
    store_url: str, tmp_path: Path
) -> None:
    async with local_fleet(store_url, tmp_path) as fleet:
        created = await fleet.service.deploy("llm", demo_spec("v1", replicas=2), ["r1"])
        assert created.desired_state is DesiredState.DEPLOYING
        await fleet.settled("llm", replicas=2)
        pids = fleet.pids("llm")
        assert len(pids) == 2
        assert demo_children(os.getpid()) == pids  # the processes themselves, per /proc

        for via in (fleet.gateway_url, fleet.region_url("r1")):
            answer = await fleet.chat("llm", via=via, content="hello world")
            assert answer.status == 200
            assert answer.body["object"] == "chat.completion"
            assert answer.body["choices"][0]["message"]["content"].startswith("hello world")
            assert answer.version == "v1"
            assert answer.pid in pids
            assert answer.region == "r1"

        endpoint, reports = await fleet.service.status("llm")
        assert [report.region for report in reports] == ["r1"]
        (report,) = reports
        assert report.state is RegionState.READY
        assert report.observed_generation == endpoint.generation
        assert (report.replicas_ready, report.replicas_desired) == (2, 2)
        assert report.routed

        async def running() -> bool:
            record = await fleet.service.get("llm")
            return record.desired_state is DesiredState.RUNNING

        await eventually(running, within=SETTLE)


# 2. Scale.


async def test_scale_up_then_down_runs_that_many_processes(fleet: Fleet) -> None:
    await fleet.service.deploy("llm", demo_spec(replicas=1), ["r1"])
    await fleet.settled("llm", replicas=1)
    first = fleet.pids("llm")

    async with traffic(fleet, "llm") as answers:
        await fleet.service.scale("llm", 3)
        await fleet.settled("llm", replicas=3)
        grown = fleet.pids("llm")
        assert len(grown) == 3
        assert first <= grown  # scaling up starts new replicas, keeps the one there was
        assert demo_children(os.getpid()) == grown

        await fleet.service.scale("llm", 1)
        await fleet.settled("llm", replicas=1)
        await eventually(lambda: all_gone(grown - fleet.pids("llm")), within=SETTLE)
    kept = fleet.pids("llm")
    assert len(kept) == 1
    assert kept <= grown  # scaling down stops replicas, it does not replace them
    assert demo_children(os.getpid()) == kept
    assert statuses(answers) == {200: len(answers)}
    assert len(answers) > 0
    answered = await fleet.chats("llm", 20)
    assert {answer.pid for answer in answered} == kept


# 3. Roll out a changed spec.


async def test_every_spec_change_rolls_out_to_every_replica(store_url: str, tmp_path: Path) -> None:
    async with local_fleet(store_url, tmp_path) as fleet:
        spec = demo_spec("v1", replicas=2)
        await fleet.service.apply(manifest("llm", spec, ["r1"]))
        await fleet.settled("llm", replicas=2)

        async def roll_out(**changes: object) -> tuple[set[int], list[Answer]]:
            """Apply the spec with `changes`; wait until every old replica is gone."""
            nonlocal spec
            old = fleet.pids("llm")
            spec = spec.model_validate(spec.model_dump() | changes)
            applied = await fleet.service.apply(manifest("llm", spec, ["r1"]))
            assert applied.outcome.value == "configured"
            await fleet.settled("llm", replicas=2)
            await eventually(lambda: all_gone(old), within=SETTLE)
            new = fleet.pids("llm")
            assert len(new) == 2
            assert new.isdisjoint(old)  # every replica was replaced
            assert demo_children(os.getpid()) == new
            answers = await fleet.chats("llm", 20)
            assert {answer.status for answer in answers} == {200}
            assert {answer.pid for answer in answers} <= new
            return new, answers

        async with traffic(fleet, "llm") as during:
            _, answers = await roll_out(args=["--version", "v2"])
            assert {answer.version for answer in answers} == {"v2"}

            pids, answers = await roll_out(env={"DEMO_TAG": "blue"})
            assert {environ(pid).get("DEMO_TAG") for pid in pids} == {"blue"}
            assert {answer.version for answer in answers} == {"v2"}

            _, answers = await roll_out(command=demo_command("--model", "m3"))
            assert {answer.body["model"] for answer in answers} == {"m3"}
            assert {answer.version for answer in answers} == {"v2"}
        # Old replicas left the route before they stopped: no request failed.
        assert statuses(during) == {200: len(during)}
        assert {answer.version for answer in during} == {"v1", "v2"}


# 4. Stop and start.


async def test_stop_refuses_with_the_reason_and_start_answers_again(fleet: Fleet) -> None:
    await fleet.service.deploy("llm", demo_spec(replicas=2), ["r1"])
    await fleet.settled("llm", replicas=2)
    pids = fleet.pids("llm")

    stopped = await fleet.service.stop("llm")

    async def reported_stopped() -> bool:
        report = await fleet.status("llm")
        return (
            report is not None
            and report.state is RegionState.STOPPED
            and report.observed_generation == stopped.generation
        )

    await eventually(reported_stopped, within=SETTLE)
    await eventually(lambda: all_gone(pids), within=SETTLE)
    assert fleet.replicas("llm") == []
    assert demo_children(os.getpid()) == set()
    report = await fleet.status("llm")
    assert report is not None
    assert (report.replicas_ready, report.replicas_desired, report.routed) == (0, 0, False)
    for via in (fleet.gateway_url, fleet.region_url("r1")):
        answer = await fleet.chat("llm", via=via)
        assert answer.status == 503
        assert answer.body == {
            "error": {"code": 503, "message": "endpoint 'llm': endpoint is stopped"}
        }

    await fleet.service.start("llm")
    await fleet.settled("llm", replicas=2)
    started = fleet.pids("llm")
    assert started.isdisjoint(pids)
    answers = await fleet.chats("llm", 20)
    assert {answer.status for answer in answers} == {200}


# 5. Canary, promote, rollback.


async def test_canary_gets_its_share_then_promote_and_rollback(fleet: Fleet) -> None:
    await fleet.service.deploy("llm", demo_spec("v1", replicas=2), ["r1"])
    await fleet.settled("llm", replicas=2)
    primaries = fleet.pids("llm")

    await fleet.service.canary("llm", args=["--version", "v2"], weight=20, replicas=1)
    await fleet.settled("llm", replicas=2, canary=1)
    assert fleet.pids("llm", role="primary") == primaries  # a canary leaves the primary be
    answers = await fleet.chats("llm", 1000)
    assert {answer.status for answer in answers} == {200}
    versions = Counter(answer.version for answer in answers)
    for answer in answers:
        expected = "v2" if answer.headers["x-servefleet-version"] == "canary" else "v1"
        assert answer.version == expected
    sigma = math.sqrt(1000 * 0.2 * 0.8)
    assert abs(versions["v2"] - 200) <= 4 * sigma, versions

    promoted = await fleet.service.promote("llm")
    assert promoted.spec.canary is None
    assert promoted.spec.args == ["--version", "v2"]
    await fleet.settled("llm", replicas=2)
    await eventually(lambda: all_gone(primaries), within=SETTLE)
    answers = await fleet.chats("llm", 200)
    assert {(answer.status, answer.version) for answer in answers} == {(200, "v2")}
    assert {answer.headers["x-servefleet-version"] for answer in answers} == {"primary"}

    await fleet.service.canary("llm", args=["--version", "v3"], weight=50)
    await fleet.settled("llm", replicas=2, canary=1)
    canaries = fleet.pids("llm", role="canary")
    answers = await fleet.chats("llm", 100)
    assert {answer.version for answer in answers} == {"v2", "v3"}

    rolled_back = await fleet.service.rollback("llm")
    assert rolled_back.spec.canary is None
    await fleet.settled("llm", replicas=2)
    await eventually(lambda: all_gone(canaries), within=SETTLE)
    answers = await fleet.chats("llm", 200)
    assert {(answer.status, answer.version) for answer in answers} == {(200, "v2")}


# 6. A replica dies.


async def test_a_killed_replica_is_replaced_while_the_endpoint_answers(fleet: Fleet) -> None:
    await fleet.service.deploy("llm", demo_spec(replicas=2), ["r1"])
    await fleet.settled("llm", replicas=2)
    victim, survivor = fleet.replicas("llm")
    assert victim.pid is not None
    assert survivor.pid is not None

    async def healed() -> bool:
        again = {r.name: r for r in fleet.replicas("llm")}[victim.name]
        return again.pid not in (None, victim.pid) and again.state == "ready"

    async with traffic(fleet, "llm") as during:
        await eventually(lambda: _answered(during, 5), within=SETTLE)
        os.kill(victim.pid, signal.SIGKILL)
        await eventually(healed, within=SETTLE)
        healed_at = len(during)
        await eventually(lambda: _answered(during, healed_at + 5), within=SETTLE)
    await fleet.settled("llm", replicas=2)
    assert gone(victim.pid)
    replacement = {r.name: r for r in fleet.replicas("llm")}[victim.name]
    assert replacement.restarts == 1
    assert fleet.pids("llm") == {survivor.pid, replacement.pid}
    assert demo_children(os.getpid()) == fleet.pids("llm")

    # The request that was in flight on the victim may fail; the rest are answered,
    # by the survivor or (once ready) the replacement.
    answered = [answer for answer in during if answer.status == 200]
    assert len(answered) >= 0.9 * len(during), statuses(during)
    assert {answer.pid for answer in answered} <= {victim.pid, survivor.pid, replacement.pid}
    after = await fleet.chats("llm", 50)
    assert {answer.status for answer in after} == {200}
    assert {answer.pid for answer in after} == {survivor.pid, replacement.pid}


async def _answered(answers: list[Answer], count: int) -> bool:
    return len(answers) >= count


# 7. The watchdog.


async def test_the_watchdog_withdraws_traffic_and_restores_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    flag = tmp_path / "unhealthy"
    flag.touch()
    async with local_fleet(sqlite_url, tmp_path, watchdog_threshold=1.0) as fleet:
        spec = demo_spec(replicas=1, args=["--unhealthy-file", str(flag)])
        await fleet.service.deploy("llm", spec, ["r1"])

        async def withdrawn() -> bool:
            report = await fleet.status("llm")
            return report is not None and not report.routed and report.unready_since is not None

        await eventually(withdrawn, within=SETTLE)
        report = await fleet.status("llm")
        assert report is not None
        assert "traffic withdrawn until one is ready" in report.message
        assert report.replicas_ready == 0
        (replica,) = fleet.replicas("llm")
        assert replica.pid is not None  # the replica keeps running, only unrouted
        assert replica.state == "starting"
        answer = await fleet.chat("llm")
        assert answer.status == 503
        assert answer.error == "endpoint 'llm': traffic withdrawn by the health watchdog"

        flag.unlink()
        await fleet.settled("llm", replicas=1)
        report = await fleet.status("llm")
        assert report is not None
        assert report.routed
        assert "withdrawn" not in report.message
        assert fleet.pids("llm") == {replica.pid}  # the same process, now ready
        answers = await fleet.chats("llm", 20)
        assert {answer.status for answer in answers} == {200}


# 8. Delete.


async def test_the_watchdog_leaves_a_rollout_alone_while_the_old_version_serves(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A new version that stays unready for longer than the threshold (a model still
    staging, a slow start) is not an unready endpoint: the old replica still serves."""
    flag = tmp_path / "unhealthy"
    flag.touch()
    async with local_fleet(sqlite_url, tmp_path, watchdog_threshold=1.0) as fleet:
        await fleet.service.deploy("llm", demo_spec(replicas=1), ["r1"])
        await fleet.settled("llm", replicas=1)
        (old,) = fleet.pids("llm")

        stuck = demo_spec(replicas=1, args=["--unhealthy-file", str(flag)])
        await fleet.service.apply(manifest("llm", stuck, ["r1"]))

        async def rolling() -> bool:
            return len(fleet.pids("llm")) == 2  # the new replica, never ready

        await eventually(rolling, within=SETTLE)
        await asyncio.sleep(3.0)  # three thresholds
        report = await fleet.status("llm")
        assert report is not None
        assert report.routed
        assert report.unready_since is None
        assert report.replicas_ready == 0  # of the new version
        answers = await fleet.chats("llm", 5)
        assert {answer.status for answer in answers} == {200}
        assert {answer.pid for answer in answers} == {old}


async def test_delete_removes_processes_and_routes_and_purges_the_record(fleet: Fleet) -> None:
    await fleet.service.deploy("llm", demo_spec(replicas=2), ["r1"])
    await fleet.settled("llm", replicas=2)
    pids = fleet.pids("llm")

    await fleet.service.delete("llm")
    await eventually(lambda: fleet.purged("llm"), within=SETTLE)
    assert await fleet.store.list_region_status(endpoint="llm") == []
    await eventually(lambda: all_gone(pids), within=SETTLE)
    assert await fleet.runtime("r1").held() == set()
    assert demo_children(os.getpid()) == set()
    for via in (fleet.gateway_url, fleet.region_url("r1")):
        answer = await fleet.chat("llm", via=via)
        assert answer.status == 404
        assert answer.body == {
            "error": {
                "code": 404,
                "message": "no endpoint serves the path '/inference/llm/v1/chat/completions'",
            }
        }


# 9. Streaming.


async def test_a_streamed_completion_arrives_event_by_event(fleet: Fleet) -> None:
    spec = demo_spec(replicas=1, args=["--version", "v1", "--token-delay", "0.2"])
    await fleet.service.deploy("llm", spec, ["r1"])
    await fleet.settled("llm", replicas=1)
    request = {
        "model": "demo",
        "messages": [{"role": "user", "content": "one two three four five"}],
        "max_tokens": 5,
        "stream": True,
    }
    async with fleet.client.post(
        f"{fleet.gateway_url}/inference/llm/v1/chat/completions", json=request
    ) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-demo-version"] == "v1"
        chunks = [chunk async for chunk in response.content.iter_any()]
    # The first token came on its own, long before the stream ended.
    assert chunks[0].count(b"data: ") == 1
    assert b"[DONE]" not in chunks[0]
    assert len(chunks) >= 3
    events = [
        line.removeprefix("data: ")
        for line in b"".join(chunks).decode().split("\n\n")
        if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    tokens = [json.loads(event)["choices"][0]["delta"]["content"] for event in events[:-1]]
    assert "".join(tokens) == "one two three four five"


# 10. Two regions.


async def test_an_endpoint_leaving_a_region_keeps_answering_from_the_other(
    sqlite_url: str, tmp_path: Path
) -> None:
    regions = ("r1", "r2")
    async with local_fleet(sqlite_url, tmp_path, regions) as fleet:
        spec = demo_spec(replicas=1)
        await fleet.service.apply(manifest("llm", spec, ["r1", "r2"]))
        await fleet.settled("llm", replicas=1, regions=regions)
        answers = await fleet.chats("llm", 40, at_once=1)
        assert {answer.status for answer in answers} == {200}
        assert {answer.region for answer in answers} == {"r1", "r2"}
        leaving = fleet.pids("llm", "r2")

        async with traffic(fleet, "llm") as during:
            await fleet.service.apply(manifest("llm", spec, ["r1"]))
            await fleet.settled("llm", replicas=1, regions=("r1",))

            async def removed() -> bool:
                report = await fleet.status("llm", "r2")
                return report is not None and report.state is RegionState.DELETED

            await eventually(removed, within=SETTLE)
            await eventually(lambda: all_gone(leaving), within=SETTLE)
        assert statuses(during) == {200: len(during)}
        assert await fleet.runtime("r2").held() == set()
        answers = await fleet.chats("llm", 20, at_once=1)
        assert {(answer.status, answer.region) for answer in answers} == {(200, "r1")}
        assert (await fleet.chat("llm", via=fleet.region_url("r2"))).status == 404


# 12. The README's first steps, as a user types them.


async def test_servefleet_up_demo_answers_and_stops_cleanly(tmp_path: Path) -> None:
    store = str(tmp_path / "store.db")
    async with up_process(store, "--demo", "--port", "0", stderr=tmp_path / "up.log") as up:
        (line,) = [line for line in up.announcement if line.strip().startswith("curl ")]
        curl = shlex.split(line)
        url = next(arg for arg in curl if arg.startswith("http://"))
        assert url.startswith(up.gateway_url + "/")
        headers = dict([curl[curl.index("-H") + 1].split(": ", 1)])
        data = curl[curl.index("-d") + 1]

        async with aiohttp.ClientSession() as client:

            async def post() -> Answer:
                async with client.post(url, headers=headers, data=data) as response:
                    body = await response.json(content_type=None)
                    return Answer(response.status, dict(response.headers), body)

            async def answering() -> bool:
                return (await post()).status == 200

            await eventually(answering, within=SETTLE)
            answers = await asyncio.gather(*(post() for _ in range(50)))
        assert {answer.status for answer in answers} == {200}
        assert {answer.body["object"] for answer in answers} == {"chat.completion"}
        replicas = up.replicas()
        assert len(replicas) == 2
        assert {answer.pid for answer in answers} <= replicas

        if shutil.which("curl"):  # the printed command itself
            process = await asyncio.create_subprocess_exec(*curl, stdout=asyncio.subprocess.PIPE)
            output, _ = await process.communicate()
            assert process.returncode == 0
            assert json.loads(output)["choices"][0]["message"]["content"].startswith("hello")

        up.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(SETTLE):
            assert await up.process.wait() == 0
        assert all(gone(pid) for pid in replicas)
        assert demo_processes(store) == set()
        assert "Traceback" not in await asyncio.to_thread((tmp_path / "up.log").read_text)
