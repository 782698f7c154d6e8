"""`--log-format` of the long-running commands (`up`, `reconcile`, `serve`): text
for people, or one JSON object per line for a log pipeline.

A log call about one endpoint passes its `endpoint`, `region` and, where known,
`generation` with `extra=` (see `reconcile.settings.log_fields`); a JSON line
carries those given, so they can be filtered on without parsing the message.
"""

from __future__ import annotations

import json
import logging
import sys

__all__ = ["LOG_FIELDS", "JsonFormatter", "configure_logging"]


LOG_FIELDS = ("endpoint", "region", "generation")
"""Structured fields a log call may pass with `extra=`; a JSON line carries those given."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the `LOG_FIELDS` the
    call passed, and the traceback as `error`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in LOG_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
