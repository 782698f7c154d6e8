"""Model staging for local replicas: runs of the stage command and their progress.

A workload with a `model_source` first has the model copied into its endpoint's
directory of the model cache (`model_cache`), named by a digest of the source,
by `python -m servefleet.stage`, the command Kubernetes init containers run, as a
child process given the source only in its environment (never a shell). Its
JSON progress lines become the region status (`staging`: bytes done / total);
replicas of that workload are started only once it exits 0 (`staged`), which
means every file is in place and verified. A failed stage (bad source, retries
exhausted, `stage_timeout` passed) is reported as a failure and tried again
after a backoff (as replica restarts are); no replica starts meanwhile. A
directory staged before is verified and reused, not copied again. Replicas find
the model in `SERVEFLEET_MODEL_DIR` and in "{model_dir}" in their arguments.
(`model_path` places the model in a container; local replicas use the cache.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from servefleet.plan import staging_percent
from servefleet.runtime.local.environment import child_environment
from servefleet.runtime.local.model_cache import ModelCache, cache_name
from servefleet.runtime.local.processes import (
    exit_reason,
    open_log,
    signal_group,
    start_child,
    terminate,
)
from servefleet.runtime.local.records import EndpointRecord, Replica, Staging, current_staging
from servefleet.runtime.local.settings import LocalSettings
from servefleet.spec import ModelStaging

__all__ = ["Stager", "observed_progress", "staged"]

log = logging.getLogger(__name__)

# Seconds a stage command may take to import and start its own deadline on a loaded host.
STAGE_START_ALLOWANCE = 15.0


class Stager:
    """Starts and stops the stagings of one region's endpoints and runs them."""

    def __init__(
        self,
        region: str,
        cache: ModelCache,
        log_dir: Path,
        settings: LocalSettings,
        pass_env: Sequence[str],
        notify: Callable[[str], None],
    ) -> None:
        """`notify(endpoint)` is called whenever what `observe` reports of a staging
        changes."""
        self._region = region
        self._cache = cache
        self._log_dir = log_dir
        self._settings = settings
        self._pass_env = pass_env
        self._notify = notify

    def stage_model(self, record: EndpointRecord) -> None:
        """Start staging the workload's model, unless that is under way or done."""
        workload = record.workload
        # An autoscaled endpoint stages at zero replicas too, so that a request
        # waking it waits for a replica's start, not for the model's copy.
        wanted = workload and (workload.replicas_desired or workload.autoscaling)
        source = workload.model_source if workload and wanted else None
        if source is None or source in record.stagings:
            return
        staging = Staging(
            source=source,
            directory=self._cache.directory(record.name) / cache_name(source),
            env=workload.primary.env if workload else {},
        )
        record.stagings[source] = staging
        staging.task = asyncio.create_task(
            self._stage(record.name, staging), name=f"{record.name}/stage-model"
        )
        self._cache.keep_while_running(record.name, staging)

    def drop_unwanted_stagings(self, record: EndpointRecord) -> None:
        """Stop staging what neither the workload nor a replica waits for any more."""
        wanted = {r.staging for r in record.replicas if r.staging and not r.retiring}
        current = current_staging(record)
        for source, staging in list(record.stagings.items()):
            if staging is not current and staging not in wanted:
                del record.stagings[source]
                if staging.task is not None:
                    staging.task.cancel()

    async def _stage(self, endpoint: str, staging: Staging) -> None:
        """Run the stage command until it succeeds, backing off between failures."""
        settings = self._settings
        await self._cache.deletion_finished(endpoint)  # it may be deleting this directory
        delay = settings.restart_backoff_initial
        attempt = 1
        while failure := await self._stage_once(endpoint, staging):
            staging.failure = f"{failure} (attempt {attempt}; next in {delay:g}s)"
            log.warning("%s/%s: %s", self._region, endpoint, staging.failure)
            self._notify(endpoint)
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.restart_backoff_max)
            attempt += 1
        staging.failure = ""
        staging.done.set()
        log.info("%s/%s: model staged in %s", self._region, endpoint, staging.directory)
        self._notify(endpoint)

    async def _stage_once(self, endpoint: str, staging: Staging) -> str:
        """One run of `python -m servefleet.stage`; why it failed, or ""."""
        own = {
            "SERVEFLEET_STAGE_TIMEOUT": f"{self._settings.stage_timeout:g}",
            **staging.env,
            "SERVEFLEET_MODEL_SOURCE": staging.source,
            "SERVEFLEET_MODEL_DIR": str(staging.directory),
        }
        env = child_environment(
            os.environ, own, pass_env=self._pass_env, model_source=staging.source
        )
        try:
            limit = float(env["SERVEFLEET_STAGE_TIMEOUT"])
        except ValueError:
            limit = self._settings.stage_timeout  # the stage command says what is wrong
        log_path = self._log_dir / self._region / endpoint / "stage-model.log"
        header = f"--- servefleet: staging {staging.source} into {staging.directory}\n"
        try:
            output = await asyncio.to_thread(open_log, log_path, header)
        except OSError as error:
            return f"model staging could not open its log file: {error}"
        try:
            process = await start_child(
                [sys.executable, "-m", "servefleet.stage"],
                stdout=asyncio.subprocess.PIPE,
                stderr=output,
                env=env,
            )
        except OSError as error:
            return f"could not start python -m servefleet.stage: {error.strerror or error}"
        finally:
            output.close()
        assert process.stdout is not None
        message = ""
        try:
            # The command keeps its own deadline, which starts once its imports are done;
            # this one only catches a stuck process, so it allows for a slow start.
            deadline = limit + self._settings.terminate_grace + STAGE_START_ALLOWANCE
            async with asyncio.timeout(deadline):
                async for line in process.stdout:
                    message = self._take_event(endpoint, staging, line) or message
                returncode = await process.wait()
        except TimeoutError:
            await terminate(process, self._settings.terminate_grace)
            return f"model staging from {staging.source} did not end within {limit:g}s"
        except asyncio.CancelledError:
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()  # ended: it writes nothing into a directory being deleted
            raise
        if returncode == 0:
            return ""
        return message or f"model staging {exit_reason(returncode)}; see {log_path}"

    def _take_event(self, endpoint: str, staging: Staging, line: bytes) -> str:
        """Take in one line of the stage command's output; its error message, if any."""
        try:
            event = json.loads(line)
        except ValueError:
            return ""
        if not isinstance(event, dict):
            return ""
        if event.get("event") == "progress":
            done, total = event.get("bytes_done"), event.get("bytes_total")
            # Whole percents only: each change is a status write to the global store.
            if (
                isinstance(done, int)
                and isinstance(total, int)
                and staging_percent(done, total)
                != staging_percent(staging.bytes_done, staging.bytes_total)
            ):
                staging.bytes_done, staging.bytes_total = done, total
                self._notify(endpoint)
        elif event.get("event") == "error":
            return str(event.get("message", ""))
        return ""


async def staged(staging: Staging, replica: Replica) -> bool:
    """Wait until `staging` is done (True) or `replica` retires (False)."""
    done = asyncio.ensure_future(staging.done.wait())
    stopping = asyncio.ensure_future(replica.stop.wait())
    try:
        await asyncio.wait((done, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        done.cancel()
        stopping.cancel()
    return staging.done.is_set() and not replica.retiring


def observed_progress(staging: Staging) -> ModelStaging:
    """How far `staging` got, as `observe` reports it."""
    return ModelStaging(
        bytes_done=staging.bytes_done,
        bytes_total=staging.bytes_total,
        complete=staging.done.is_set(),
    )
