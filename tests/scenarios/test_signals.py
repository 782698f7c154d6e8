"""`servefleet up` stops cleanly on SIGINT and SIGTERM however it was started: its
replicas ended, its region's lease released, exit status 0 — also when it inherited
SIGINT as ignored (a script's background job, `nohup`), where Python installs no
Ctrl-C handler of its own."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.scenarios.harness import SETTLE, up_process, up_stopped_by_signal
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
    log = tmp_path / "up.log"
    async with up_process(
        store_path,
        *("--demo", "--port", "0", "--lease-ttl", "60"),
        stderr=log,
        sigint_ignored=sigint_ignored,
    ) as up:

        async def serving() -> bool:
            return len(up.replicas()) == 2

        await eventually(serving, within=SETTLE)
        # Replicas ended, exit status 0, no traceback, and the lease released, not
        # left to run out its 60 s: another process takes it at once.
        assert await up_stopped_by_signal(up, stop, log, region="local") == []
