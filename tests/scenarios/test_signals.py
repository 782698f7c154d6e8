"""`servefleet up` stops cleanly on SIGINT and SIGTERM however it was started: its
replicas ended, its region's lease released, exit status 0 — also when it inherited
SIGINT as ignored (a script's background job, `nohup`), where Python installs no
Ctrl-C handler of its own."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from servefleet.store import open_store
from tests.scenarios.harness import SETTLE, demo_processes, gone, up_process
from tests.waiting import eventually


@pytest.mark.parametrize(
    ("stop", "sigint_ignored"),
    [
        pytest.param(signal.SIGINT, False, id="SIGINT"),
        pytest.param(signal.SIGINT, True, id="SIGINT-inherited-ignored"),
        pytest.param(signal.SIGTERM, True, id="SIGTERM-SIGINT-inherited-ignored"),
    ],
)
async def test_up_stops_cleanly_on_a_signal(
    tmp_path: Path, stop: signal.Signals, sigint_ignored: bool
) -> None:
    store_path = str(tmp_path / "store.db")
    async with up_process(
        store_path,
        *("--demo", "--port", "0", "--lease-ttl", "60"),
        stderr=tmp_path / "up.log",
        sigint_ignored=sigint_ignored,
    ) as up:

        async def serving() -> bool:
            return len(up.replicas()) == 2

        await eventually(serving, within=SETTLE)
        replicas = up.replicas()

        up.process.send_signal(stop)
        async with asyncio.timeout(SETTLE):
            assert await up.process.wait() == 0

    assert all(gone(pid) for pid in replicas)
    assert demo_processes(store_path) == set()
    log = await asyncio.to_thread((tmp_path / "up.log").read_text)
    assert "Traceback" not in log
    assert log.rstrip().endswith("stopped")
    store = await open_store(store_path)
    try:
        # Released, not left to run out its 60 s: another process takes it at once.
        assert await store.acquire_lease("region/local", "next-leader", ttl=60) is not None
    finally:
        await store.close()
