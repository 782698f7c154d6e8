"""Two `servefleet up` processes for one region on one store: one leads, one stands by.

Both are the installed command in processes of their own, as an operator would run
a standby. The leader holds the region's lease and runs its replicas; killing it
(SIGKILL: no clean shutdown, no lease released) takes its replicas with it
(PR_SET_PDEATHSIG), and the standby takes the lease once it has run out and brings
the endpoint back. Which process leads at first is whichever got the lease; the
test finds out from /proc, as it counts every replica.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp

from servefleet.store import open_store
from tests.scenarios.harness import (
    SETTLE,
    UpProcess,
    chat,
    demo_processes,
    gone,
    up_process,
)
from tests.waiting import eventually

TTL = 2.0


async def serving(client: aiohttp.ClientSession, leader: UpProcess) -> bool:
    """The leader runs both replicas, and its gateway answers from one of them."""
    replicas = leader.replicas()
    if len(replicas) != 2:
        return False
    answer = await chat(client, leader.gateway_url, "demo")
    return answer.status == 200 and answer.pid in replicas


async def test_the_standby_takes_over_from_a_killed_leader(tmp_path: Path) -> None:
    store = str(tmp_path / "store.db")
    initialised = await open_store(store, init=True)
    await initialised.close()
    args = ("--regions", "r1", "--demo", "--port", "0", "--lease-ttl", str(TTL))
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(aiohttp.ClientSession())
        first = await stack.enter_async_context(
            up_process(store, *args, stderr=tmp_path / "first.log")
        )
        second = await stack.enter_async_context(
            up_process(store, *args, stderr=tmp_path / "second.log")
        )
        both = (first, second)

        async def one_leads() -> bool:
            leaders = [up for up in both if up.replicas()]
            return len(leaders) == 1 and await serving(client, leaders[0])

        await eventually(one_leads, within=SETTLE)
        leader, standby = both if first.replicas() else (second, first)
        assert standby.replicas() == set()  # a standby holds nothing
        replicas = leader.replicas()
        assert demo_processes(store) == replicas  # exactly two demo replicas on the machine

        leader.process.send_signal(signal.SIGKILL)
        await leader.process.wait()

        async def taken_over() -> bool:
            return (
                all(gone(pid) for pid in replicas)
                and await serving(client, standby)
                and demo_processes(store) == standby.replicas()
            )

        await eventually(taken_over, within=TTL * 5)
        survivors = standby.replicas()
        assert len(survivors) == 2
        assert survivors.isdisjoint(replicas)
        answers = await asyncio.gather(
            *(chat(client, standby.gateway_url, "demo") for _ in range(20))
        )
        assert {answer.status for answer in answers} == {200}
        assert {answer.pid for answer in answers} <= survivors

        standby.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(SETTLE):
            assert await standby.process.wait() == 0
        assert demo_processes(store) == set()
