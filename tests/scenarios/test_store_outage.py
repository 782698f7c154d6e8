"""A store outage longer than the lease's renew deadline leaves a local region as it is.

`servefleet up` (the installed command, `--lease-ttl 2`: a renew deadline of about
1.3 s) reaches PostgreSQL through a TCP proxy that the test cuts. Past its deadline
the leader stops acting — nothing applied, no status written — but keeps its
runtime, so its replicas go on answering through the gateway. When the store
answers again it acts again under the same lease, or, when another process has
taken the lease meanwhile, stands down and ends its replicas.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from servefleet.service import EndpointService
from servefleet.spec import RegionState
from servefleet.store import Store
from tests.scenarios.harness import SETTLE, UpProcess, chat, demo_spec, gone, manifest, up_process
from tests.scenarios.proxy import proxy_to
from tests.waiting import eventually

pytestmark = pytest.mark.parametrize("store_url", ["postgres"], indirect=True)

UP = ("--regions", "r1", "--port", "0", "--lease-ttl", "2")
HOLDING_ON = "acting no more, keeping what runs"


async def serving(store: Store, up: UpProcess, replicas: int) -> bool:
    """`up` runs `replicas` replicas, reported ready at the endpoint's generation."""
    record = await store.get_endpoint("llm")
    statuses = await store.list_region_status(endpoint="llm", region="r1")
    return (
        len(up.replicas()) == replicas
        and bool(statuses)
        and statuses[0].state is RegionState.READY
        and statuses[0].observed_generation == record.generation
        and statuses[0].replicas_ready == replicas
    )


async def said(log: Path, text: str) -> bool:
    return text in await asyncio.to_thread(log.read_text, errors="replace")


async def answered_by(client: aiohttp.ClientSession, up: UpProcess, pids: set[int]) -> None:
    """Twenty chats through `up`'s gateway, every one answered by one of `pids`."""
    answers = [await chat(client, up.gateway_url, "llm") for _ in range(20)]
    assert {answer.status for answer in answers} == {200}
    assert {answer.pid for answer in answers} <= pids


@pytest.mark.slow(seconds=15)
async def test_a_leader_cut_off_from_the_store_keeps_serving_and_acts_again_after(
    store_url: str, store: Store, tmp_path: Path
) -> None:
    log = tmp_path / "up.log"
    async with AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(proxy_to(store_url))
        client = await stack.enter_async_context(aiohttp.ClientSession())
        up = await stack.enter_async_context(
            up_process(proxy.url(store_url), *UP, stderr=log, log_dir=tmp_path / "logs")
        )
        service = EndpointService(store)
        await service.apply(manifest("llm", demo_spec(replicas=2), ["r1"]))
        await eventually(lambda: serving(store, up, 2), within=SETTLE)
        replicas = up.replicas()

        await proxy.cut()
        await eventually(lambda: said(log, HOLDING_ON), within=SETTLE)
        await answered_by(client, up, replicas)
        assert up.replicas() == replicas  # the same processes: nothing stopped
        await service.scale("llm", 3)  # the store takes it; the cut-off leader cannot see it

        await proxy.restore()
        await eventually(lambda: said(log, "renewed the lease; acting again"), within=SETTLE)
        await eventually(lambda: serving(store, up, 3), within=SETTLE)
        assert replicas < up.replicas()  # scaled up beside the ones that never stopped


@pytest.mark.slow(seconds=20)
async def test_a_leader_cut_off_while_another_takes_the_lease_stands_down_once_it_sees(
    store_url: str, store: Store, tmp_path: Path
) -> None:
    cut_off_log, other_log = tmp_path / "cut-off.log", tmp_path / "other.log"
    async with AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(proxy_to(store_url))
        client = await stack.enter_async_context(aiohttp.ClientSession())
        cut_off = await stack.enter_async_context(
            up_process(proxy.url(store_url), *UP, stderr=cut_off_log, log_dir=tmp_path / "a")
        )
        service = EndpointService(store)
        await service.apply(manifest("llm", demo_spec(replicas=1), ["r1"]))
        await eventually(lambda: serving(store, cut_off, 1), within=SETTLE)
        other = await stack.enter_async_context(
            up_process(store_url, *UP, stderr=other_log, log_dir=tmp_path / "b")
        )
        replicas = cut_off.replicas()

        await proxy.cut()
        # The other process takes the lease once it has run out, and runs the
        # endpoint; the cut-off one, not knowing, keeps serving what it had.
        await eventually(lambda: serving(store, other, 1), within=SETTLE)
        assert await said(cut_off_log, HOLDING_ON)
        await answered_by(client, cut_off, replicas)

        await proxy.restore()
        await eventually(lambda: said(cut_off_log, "lost the lease; standing by"), within=SETTLE)

        async def stood_down() -> bool:
            return all(gone(pid) for pid in replicas) and not cut_off.replicas()

        await eventually(stood_down, within=SETTLE)
        await eventually(lambda: serving(store, other, 1), within=SETTLE)
        await answered_by(client, other, other.replicas())
