"""The probes of local replicas: startup, then readiness and liveness in one loop.

A probe is an HTTP GET of the replica's health path on a fresh connection (so it
tests that the replica still accepts one); 2xx and 3xx pass. Until the first
pass the replica is *starting*, for at most `startup_timeout` (model loads take
minutes, so there is no short fixed liveness delay to kill them), and probed
every `startup_probe_interval` (0.05 s) rather than `probe_interval`, so that a
request waiting for it (a start from zero) is not kept up to a second longer. After that, a
failed probe makes it *unready* (out of the route) and the next pass makes it
ready again; `liveness_failures` failures in a row end its process. A replica
ready for `backoff_reset_after` starts its restart backoff over, and a pass also
lets the gateway choose a replica it had given up on as stalled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from servefleet.runtime.local.processes import exit_reason
from servefleet.runtime.local.records import Phase, Replica
from servefleet.runtime.local.settings import LocalSettings

__all__ = ["Probes", "replica_failure", "replica_problem"]

CRASH_LOOP = 3
"""Restarts in a row after which a replica that is not serving is reported failed
(crash-looping) rather than on its way: its version needs outside help."""


class Probes:
    """The probing of one region's replicas, over one HTTP client session."""

    def __init__(self, settings: LocalSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def watch(
        self,
        replica: Replica,
        process: asyncio.subprocess.Process,
        set_phase: Callable[[Phase], None],
        changed: Callable[[], None],
    ) -> str:
        """Probe `replica` until its `process` fails (returns why) or the replica is
        stopped (returns ""), calling `set_phase` whenever the probes move it, and
        `changed` when a starting replica's probe fails otherwise than before (its
        report says why it is not ready yet, so the region's status must follow)."""
        settings = self._settings
        url = f"http://127.0.0.1:{replica.port}{replica.health_path}"
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(replica.stop.wait())
        started = time.monotonic()
        failures = 0
        probe: asyncio.Future[str] | None = None
        try:
            while True:
                probe = asyncio.ensure_future(self._probe(url))
                await asyncio.wait((probe, exited, stopping), return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    return ""
                if exited.done():
                    return exit_reason(exited.result())
                error = probe.result()
                now = time.monotonic()
                if replica.phase is Phase.STARTING:
                    if not error:
                        set_phase(Phase.READY)
                    elif now - started >= settings.startup_timeout:
                        return (
                            f"did not pass its startup probe within "
                            f"{settings.startup_timeout:g}s ({error})"
                        )
                    elif error != replica.probe_error:
                        replica.probe_error = error
                        changed()
                elif not error:
                    failures = 0
                    if replica.backend is not None:
                        # It answers again: the gateway may choose it after a stall.
                        replica.backend.answered()
                    if replica.phase is Phase.UNREADY:
                        set_phase(Phase.READY)
                    elif now - replica.since >= settings.backoff_reset_after:
                        replica.backoff = settings.restart_backoff_initial
                        replica.crashes = 0
                else:
                    failures += 1
                    replica.probe_error = error
                    if failures >= settings.liveness_failures:
                        return f"failed its liveness probe {failures} times in a row ({error})"
                    if replica.phase is Phase.READY:
                        set_phase(Phase.UNREADY)
                interval = (
                    settings.startup_probe_interval
                    if replica.phase is Phase.STARTING
                    else settings.probe_interval
                )
                await asyncio.wait((exited, stopping), timeout=interval)
                if stopping.done():
                    return ""
                if exited.done():
                    return exit_reason(exited.result())
        finally:
            for future in (probe, exited, stopping):
                if future is not None:
                    future.cancel()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _probe(self, url: str) -> str:
        """What is wrong with the replica at `url`, in a few words; empty when it
        answers 2xx or 3xx."""
        if self._session is None:
            # One session for every probe of the region; force_close: each probe
            # is a fresh connection, so it tests that the replica still accepts.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=self._settings.probe_timeout),
            )
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                await response.read()
                return "" if response.status < 400 else f"HTTP {response.status}"
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, ConnectionRefusedError):
                return "connection refused"
            return error.os_error.strerror or str(error.os_error)
        except TimeoutError:
            return f"no answer within {self._settings.probe_timeout:g}s"
        except aiohttp.ClientError as error:
            return str(error) or type(error).__name__


def replica_failure(replica: Replica) -> str:
    """Why `replica` cannot come up without outside help, for the region status: it
    has ended `CRASH_LOOP` times in a row and is not serving; "" otherwise."""
    if replica.crashes < CRASH_LOOP or replica.phase is Phase.READY:
        return ""
    return f"crash loop ({replica.crashes} restarts in a row): {replica.failure}"


def replica_problem(replica: Replica, settings: LocalSettings) -> str:
    """What keeps `replica` from serving, for the region status; "" when nothing."""
    if replica.phase is Phase.WAITING:
        return replica.failure
    if replica.phase is Phase.UNREADY:
        return f"replica {replica.name} is failing its readiness probe: {replica.probe_error}"
    if replica.phase is Phase.STARTING and replica.probe_error:
        # No elapsed time here: a report that changes every look is a status write each time.
        limit = settings.startup_timeout
        text = f"replica {replica.name}: starting, probe not passing yet (allowed {limit:.0f}s): "
        text += replica.probe_error
        if replica.restarts:
            text += f" (restart {replica.restarts}; before: {replica.failure})"
        return text
    return ""
