"""One region's store failure stops that region alone: `servefleet up` in this
process with two local regions on one SQLite store, real demo replicas, and a
damaged row in the store that only one region reads (its lease). The other
region, and the gateway in front of both, keep answering; the damaged region
steps down, keeps standing for election, and serves again once the row is mended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest

from tests.scenarios.harness import SETTLE, Fleet, demo_spec, gone, local_fleet, manifest
from tests.waiting import eventually

REGIONS = ("r1", "r2")


def _change_store(sqlite_url: str, statement: str) -> None:
    """One statement on the store's file, as another program (or a bad disk) would."""
    path = sqlite_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path, timeout=SETTLE)) as db:
        db.execute(statement)
        db.commit()


async def _answers_from(
    fleet: Fleet, count: int, *, via: str | None = None
) -> set[tuple[int, str | None]]:
    answers = [await fleet.chat("llm", via=via) for _ in range(count)]
    return {(answer.status, answer.region) for answer in answers}


async def test_a_region_whose_store_row_is_damaged_stops_alone_and_comes_back(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="servefleet.reconcile.region")
    async with local_fleet(sqlite_url, tmp_path, REGIONS) as fleet:
        await fleet.service.apply(manifest("llm", demo_spec(replicas=1), list(REGIONS)))
        await fleet.settled("llm", replicas=1, regions=REGIONS)
        r2_replicas = fleet.pids("llm", "r2")

        # A lease token that is not a number: every read of r2's lease now fails.
        damage = "UPDATE leases SET token = 'damaged' WHERE name = 'region/r2'"
        await asyncio.to_thread(_change_store, sqlite_url, damage)

        def failures() -> int:
            return sum("region r2: stopped by" in record.getMessage() for record in caplog.records)

        async def r2_stepped_down_and_retried() -> bool:
            return (
                "r2" not in fleet.running.runtimes
                and all(gone(pid) for pid in r2_replicas)
                and failures() >= 2
            )

        await eventually(r2_stepped_down_and_retried, within=SETTLE)
        assert await _answers_from(fleet, 20) == {(200, "r1")}
        assert await _answers_from(fleet, 10, via=fleet.region_url("r1")) == {(200, "r1")}
        assert (await fleet.chat("llm", via=fleet.region_url("r2"))).status == 503
        assert "r1" in fleet.running.runtimes
        assert not any("region r1" in record.getMessage() for record in caplog.records)

        await asyncio.to_thread(
            _change_store, sqlite_url, "DELETE FROM leases WHERE name = 'region/r2'"
        )

        async def r2_leads() -> bool:
            return "r2" in fleet.running.runtimes

        await eventually(r2_leads, within=SETTLE)
        await fleet.settled("llm", replicas=1, regions=REGIONS)
        answer = await fleet.chat("llm", via=fleet.region_url("r2"))
        assert (answer.status, answer.region) == (200, "r2")
