"""`servefleet up` over several local regions in a process of its own, for the global
entry (`global_entry.py`) and rollout (`rollout.py`) benchmarks.

The fleet is the installed command (`tests/scenarios/harness.py`'s `up_process`, which
kills its whole process group and any replica left on the way out), on a SQLite store
in the caller's directory. Its URLs are read where `servefleet invoke` reads them: the
gateway record `up` writes for the CLI (its `gateway` is the global entry, whatever
kinds of regions it fronts), kept in the directory through `XDG_STATE_HOME` so that
nothing is left in the user's state directory; the announcement `up` prints is the
fallback. The benchmark changes the fleet only as a user does, through
`EndpointService` on a store connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.progress import show
from servefleet.service import EndpointService
from servefleet.spec import RegionState
from servefleet.store import Store, open_store
from tests.scenarios.harness import UpProcess, up_process

__all__ = ["UpFleet", "replica_url", "up_fleet"]

POLL = 0.05
TELL = 30
"""Lines of `up`'s log shown when the part fails."""


@dataclass
class UpFleet:
    up: UpProcess
    store_url: str
    store: Store
    service: EndpointService
    entry_url: str
    """The global entry point: `up`'s gateway in front of every region."""
    region_urls: dict[str, str]
    """Each local region's own gateway."""
    directory: Path

    async def settled(
        self, endpoint: str, regions: tuple[str, ...], *, replicas: int, within: float
    ) -> None:
        """Every region reports the endpoint's current generation READY, routed, with
        `replicas` ready and no canary desired or ready (at most `within` seconds)."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(within):
                while not await self.without_canary(endpoint, regions, replicas=replicas):
                    waited = time.perf_counter() - started
                    show(f"waiting for {endpoint} to settle · {waited:.1f} s")
                    await asyncio.sleep(POLL)
        except TimeoutError:
            raise TimeoutError(
                f"{endpoint} not READY with {replicas} replica(s) and no canary in every region "
                f"of {', '.join(regions)} within {within:g} s"
            ) from None

    async def without_canary(
        self, endpoint: str, regions: tuple[str, ...], *, replicas: int | None = None
    ) -> bool:
        """Every region's report is of the current generation, READY and routed, with no
        canary desired or ready (and `replicas` ready, when given)."""
        record = await self.store.get_endpoint(endpoint)
        statuses = {s.region: s for s in await self.store.list_region_status(endpoint=endpoint)}
        for region in regions:
            status = statuses.get(region)
            if (
                status is None
                or status.state is not RegionState.READY
                or status.observed_generation != record.generation
                or not status.routed
                or (status.canary_desired, status.canary_ready) != (0, 0)
                or (replicas is not None and status.replicas_ready != replicas)
            ):
                return False
        return True


@asynccontextmanager
async def up_fleet(directory: Path, regions: tuple[str, ...]) -> AsyncIterator[UpFleet]:
    """`servefleet up --regions <regions> --port 0` on a new SQLite store in `directory`,
    once it has announced itself; stopped (process group and replicas) on the way out."""
    store_url = str(directory / "store.db")
    state = directory / "state"
    store = await open_store(store_url, init=True)
    try:
        async with (
            _telling(directory / "up.log"),
            up_process(
                store_url,
                *("--regions", ",".join(regions), "--port", "0"),
                stderr=directory / "up.log",
                env={"XDG_STATE_HOME": str(state)},
            ) as up,
        ):
            entry, urls = await _gateways(up, state, regions)
            yield UpFleet(
                up, store_url, store, EndpointService(store), entry, urls, directory=directory
            )
    finally:
        await store.close()


@asynccontextmanager
async def _telling(log: Path) -> AsyncIterator[None]:
    """On a failure, the end of `up`'s log on stderr: the directory holding it is
    about to be removed."""
    try:
        yield
    except Exception:
        with contextlib.suppress(OSError):
            lines = (await asyncio.to_thread(log.read_text, errors="replace")).splitlines()
            print(f"the end of servefleet up's log ({log.name}):", file=sys.stderr)
            print("\n".join(lines[-TELL:]), file=sys.stderr)
        raise


async def _gateways(
    up: UpProcess, state: Path, regions: tuple[str, ...]
) -> tuple[str, dict[str, str]]:
    """The global entry's URL and each region's gateway, from `up`'s record for the CLI
    (written before its announcement ends), else from the announcement."""
    paths = await asyncio.to_thread(
        lambda: list(state.glob(f"servefleet/gateways/*/{up.pid}.json"))
    )
    for path in paths:
        try:
            record = json.loads(await asyncio.to_thread(path.read_text))
        except (OSError, ValueError):
            continue
        urls = {region: record.get("regions", {}).get(region) for region in regions}
        if record.get("gateway") and all(urls.values()):
            return str(record["gateway"]), {region: str(url) for region, url in urls.items()}
    entry = next(
        (
            match.group(1)
            for line in up.announcement
            if (match := re.match(r"\s*gateway\b[^:]*:\s*(http\S+)", line))
        ),
        None,
    )
    if entry is None:
        raise RuntimeError(f"servefleet up named no global entry: {up.announcement}")
    return entry, {region: up.region_url(region) for region in regions}


async def replica_url(session: aiohttp.ClientSession, url: str) -> str:
    """The base URL of the demo replica that answers `url` (a GET through a gateway):
    the `--port` of the process its `x-demo-pid` names."""
    async with session.get(url) as response:
        await response.read()
        pid = response.headers.get("x-demo-pid")
    if response.status != 200 or not pid:
        raise RuntimeError(f"GET {url}: {response.status}, no demo replica answered")
    command = (await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)).split(b"\0")
    port = command[command.index(b"--port") + 1].decode()
    return f"http://127.0.0.1:{port}"
