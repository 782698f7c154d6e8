"""The local model cache: which of an endpoint's model directories stay, and the
deletion of the rest.

Each endpoint has a directory in the cache, `<model_cache_dir>/<region>/<endpoint>/`,
with one directory per model source (`cache_name`). It keeps only what is in use,
decided by `_kept`: the directory of every replica still held (retiring ones, of
either role, included), of every staging the endpoint waits for or whose process
has not ended yet, and of the workload's own source (a stopped endpoint starts
again without staging again). Everything else in it is deleted, in a thread,
whenever that set changes, but not while the workload's model is still staging:
should the new model fail, the old one is still there to roll back to. A removed
endpoint's directory goes once its last replica has. Deletion opens each
directory with O_NOFOLLOW and removes symbolic links without following them; a
failure is logged and tried again at the next change or after
`restart_backoff_max`, and never fails the workload.

A staging waits for a deletion under way in its endpoint's directory
(`deletion_finished`), which may be removing the very model it is about to stage.
Nothing is deleted once the runtime closes (a restart must find its models). Only
endpoints the runtime runs are collected (what an earlier run left in their
directories goes at their first collection); there is no sweep of the whole
region at start: the runtime then holds nothing yet, so every model would be
staged again, and another `servefleet up` may still run replicas of this region
on this machine (a leader handing over). So the directory of an endpoint that
left the region while no leader ran stays until someone deletes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from servefleet.runtime.local.records import EndpointRecord, Staging, current_staging

__all__ = ["ModelCache", "cache_name"]

log = logging.getLogger(__name__)


def cache_name(source: str) -> str:
    """The directory of `source` in its endpoint's cache."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class ModelCache:
    """The model cache of one region: `collect` deletes what no endpoint uses."""

    def __init__(
        self,
        region: str,
        root: Path,
        endpoints: Mapping[str, EndpointRecord],
        *,
        retry_after: float,
    ) -> None:
        """`endpoints` is the runtime's own map of what it holds, read at every
        collection; a failed deletion is tried again after `retry_after` seconds."""
        self._region = region
        self._root = root
        self._endpoints = endpoints
        self._retry_after = retry_after
        self._stagings_running: set[Staging] = set()
        """Every staging whose task has not ended, dropped ones included."""
        self._sweeps: dict[str, asyncio.Task[None]] = {}
        """By endpoint: the deletion of its unused cache directories under way."""
        self._swept: dict[str, frozenset[str]] = {}
        """By endpoint: the cache directories kept by its last successful deletion."""
        self._stopped = False

    def directory(self, endpoint: str) -> Path:
        """The endpoint's directory in the cache."""
        return self._root / self._region / endpoint

    def keep_while_running(self, endpoint: str, staging: Staging) -> None:
        """Keep the directory `staging` writes into until its task ends, even once the
        endpoint no longer wants it; collect again then."""
        assert staging.task is not None
        self._stagings_running.add(staging)

        def ended(_task: asyncio.Task[None]) -> None:
            self._stagings_running.discard(staging)
            self.collect(endpoint)

        staging.task.add_done_callback(ended)

    async def deletion_finished(self, endpoint: str) -> None:
        """Wait for the deletion under way in the endpoint's directory, if any."""
        sweep = self._sweeps.get(endpoint)
        if sweep is not None:
            await asyncio.wait([sweep])

    def stop_deleting(self) -> None:
        """Delete nothing from now on: the runtime closes, and a restart must find
        its models."""
        self._stopped = True

    def tasks(self) -> list[asyncio.Task[None]]:
        """The stagings still writing into the cache and the deletions under way."""
        stagings = [staging.task for staging in self._stagings_running if staging.task]
        return [*stagings, *self._sweeps.values()]

    def collect(self, endpoint: str) -> None:
        """Start deleting the endpoint's cache directories that nothing uses any more,
        if that set changed since the last deletion (see the module doc)."""
        if self._stopped or endpoint in self._sweeps:
            return  # the deletion under way looks again when it ends
        directory = self.directory(endpoint)
        running = [s for s in self._stagings_running if s.directory.parent == directory]
        kept = _kept(self._endpoints.get(endpoint), running)
        if kept is None or kept == self._swept.get(endpoint):
            return
        self._sweeps[endpoint] = asyncio.create_task(
            self._sweep(endpoint, kept), name=f"{endpoint}/collect-model-cache"
        )

    async def _sweep(self, endpoint: str, kept: frozenset[str]) -> None:
        directory = self.directory(endpoint)
        try:
            deleted = await asyncio.to_thread(_delete_unkept, directory.parent, endpoint, kept)
        except OSError as error:
            retry = self._retry_after
            log.warning(
                "%s/%s: could not delete unused model cache in %s (trying again in %gs "
                "or at the next change): %s",
                *(self._region, endpoint, directory, retry, error),
            )
            asyncio.get_running_loop().call_later(retry, self.collect, endpoint)
            return
        finally:
            del self._sweeps[endpoint]
        self._swept[endpoint] = kept
        if deleted:
            log.info(
                "%s/%s: deleted unused model cache %s",
                *(self._region, endpoint, ", ".join(str(directory / name) for name in deleted)),
            )
        self.collect(endpoint)  # what changed while this one ran


def _kept(record: EndpointRecord | None, running: list[Staging]) -> frozenset[str] | None:
    """The names of the directories in an endpoint's cache that must stay, given its
    record (None once removed) and its stagings still running; None while the
    workload's model is being staged, when nothing is deleted yet."""
    kept = {staging.directory.name for staging in running}
    if record is None:
        return frozenset(kept)
    current = current_staging(record)
    if current is not None and not current.done.is_set():
        return None
    kept |= {staging.directory.name for staging in record.stagings.values()}
    kept |= {r.staging.directory.name for r in record.replicas if r.staging is not None}
    if record.workload is not None and record.workload.model_source is not None:
        kept.add(cache_name(record.workload.model_source))
    return frozenset(kept)


def _delete_unkept(region_cache: Path, endpoint: str, kept: frozenset[str]) -> list[str]:
    """Delete every entry of `region_cache/endpoint` not named in `kept`, and that
    directory too when `kept` is empty; the names deleted. Blocking: run in a thread.

    Neither directory may be a symbolic link (O_NOFOLLOW), and links inside are
    removed, never followed (`shutil.rmtree` works through file descriptors), so
    nothing outside the cache is touched."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        region_fd = os.open(region_cache, flags)
    except FileNotFoundError:
        return []
    try:
        try:
            endpoint_fd = os.open(endpoint, flags, dir_fd=region_fd)
        except FileNotFoundError:
            return []
        try:
            with os.scandir(endpoint_fd) as entries:
                unkept = [
                    (entry.name, entry.is_dir(follow_symlinks=False))
                    for entry in entries
                    if entry.name not in kept
                ]
            for name, is_directory in unkept:
                if is_directory:
                    shutil.rmtree(name, dir_fd=endpoint_fd)
                else:
                    os.unlink(name, dir_fd=endpoint_fd)
        finally:
            os.close(endpoint_fd)
        if not kept:
            os.rmdir(endpoint, dir_fd=region_fd)
    finally:
        os.close(region_fd)
    return sorted(name for name, _ in unkept)
