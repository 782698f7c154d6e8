"""`python -m servefleet.stage`: stage a model into a directory, verified.

Run by Kubernetes init containers and by the local runtime before replicas
start; both give the source only as an argv element or an environment variable,
never through a shell. Options (argv wins over the environment):

    --source   SERVEFLEET_MODEL_SOURCE        file:///path, s3://bucket/prefix or a path
    --dir      SERVEFLEET_MODEL_DIR           where the model goes
    --timeout  SERVEFLEET_STAGE_TIMEOUT       seconds for the whole run (default 3600)
    --idle-timeout SERVEFLEET_STAGE_IDLE_TIMEOUT  seconds without a byte before a
                                              file is retried (default 60)
    --retries  SERVEFLEET_STAGE_RETRIES       attempts per file after the first (default 5)
    --termination-log SERVEFLEET_STAGE_TERMINATION_LOG  a file that receives the
                                              outcome, {"event": "done", "bytes_total",
                                              "files"} or {"event": "error", "message"}:
                                              Kubernetes reports it as the init
                                              container's termination message

S3 credentials, region and endpoint come from the standard AWS chain
(`AWS_ENDPOINT_URL` included). Standard output carries one JSON object per
line, for supervisors to parse:

    {"event": "progress", "bytes_done": 1048576, "bytes_total": 4194304}   (at most 4 a second)
    {"event": "done", "bytes_total": 4194304, "files": 3, "fetched": ["a.bin"]}
    {"event": "error", "message": "..."}

Exit status: 0 staged, 1 staging failed (the message also goes to stderr),
2 bad arguments. See `servefleet.models.staging` for what "verified" means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from servefleet.models.staging import StagingError, open_source, stage

__all__ = ["main"]

_PROGRESS_INTERVAL = 0.25
_MESSAGE_LIMIT = 2048
"""Characters of an error message in the termination log (Kubernetes keeps 4096 bytes)."""


def _emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _record_outcome(path: str | None, event: str, **fields: object) -> None:
    """Leave the outcome where the container runtime reads termination messages."""
    if not path:
        return
    try:
        Path(path).write_text(json.dumps({"event": event, **fields}))
    except OSError as error:
        print(f"warning: cannot write the termination log {path}: {error}", file=sys.stderr)


class _Reporter:
    """Progress lines: at most one per interval, and none lost (`flush`)."""

    def __init__(self) -> None:
        self.done = self.total = 0
        self._shown: tuple[int, int] | None = None
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if time.monotonic() - self._last >= _PROGRESS_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self._shown != (self.done, self.total):
            self._shown = (self.done, self.total)
            self._last = time.monotonic()
            _emit("progress", bytes_done=self.done, bytes_total=self.total)

    async def keep_flushing(self) -> None:
        while True:
            await asyncio.sleep(_PROGRESS_INTERVAL)
            self.flush()


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m servefleet.stage",
        description="Copy a model into a directory, verified against its manifest.",
    )
    parser.add_argument("--source", default=env.get("SERVEFLEET_MODEL_SOURCE"))
    parser.add_argument("--dir", default=env.get("SERVEFLEET_MODEL_DIR"))
    parser.add_argument("--timeout", default=env.get("SERVEFLEET_STAGE_TIMEOUT", "3600"))
    parser.add_argument("--idle-timeout", default=env.get("SERVEFLEET_STAGE_IDLE_TIMEOUT", "60"))
    parser.add_argument("--retries", default=env.get("SERVEFLEET_STAGE_RETRIES", "5"))
    parser.add_argument("--termination-log", default=env.get("SERVEFLEET_STAGE_TERMINATION_LOG"))
    return parser


def _number(parser: argparse.ArgumentParser, flag: str, text: str, kind: type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if value < 0 or (kind is float and value == 0):
        parser.error(f"{flag}: must be a positive number (got {text!r})")
    return value


async def _run(
    source_uri: str,
    directory: Path,
    limit: float,
    idle: float,
    retries: int,
    termination_log: str | None,
) -> int:
    reporter = _Reporter()
    ticker = asyncio.create_task(reporter.keep_flushing())
    try:
        async with asyncio.timeout(limit):
            async with open_source(source_uri, idle_timeout=idle) as source:
                staged = await stage(
                    source, directory, idle_timeout=idle, retries=retries, on_progress=reporter
                )
    except TimeoutError:
        reporter.flush()
        message = (
            f"model staging from {source_uri} timed out after {limit:g}s "
            f"({reporter.done} of {reporter.total} bytes staged)"
        )
    except StagingError as error:
        message = f"model staging failed: {error}"
    else:
        reporter.flush()
        _emit("done", bytes_total=staged.bytes_total, files=staged.files, fetched=staged.fetched)
        _record_outcome(termination_log, "done", bytes_total=staged.bytes_total, files=staged.files)
        return 0
    finally:
        ticker.cancel()
    _emit("error", message=message)
    _record_outcome(termination_log, "error", message=message[:_MESSAGE_LIMIT])
    print(f"error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    if not options.source:
        parser.error("--source: required (or SERVEFLEET_MODEL_SOURCE)")
    if not options.dir:
        parser.error("--dir: required (or SERVEFLEET_MODEL_DIR)")
    limit = _number(parser, "--timeout", options.timeout, float)
    idle = _number(parser, "--idle-timeout", options.idle_timeout, float)
    retries = int(_number(parser, "--retries", options.retries, int))
    return asyncio.run(
        _run(options.source, Path(options.dir), limit, idle, retries, options.termination_log)
    )


if __name__ == "__main__":
    sys.exit(main())
