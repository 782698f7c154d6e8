"""The server's clock, in the form the API writes times (RFC 3339, whole seconds):
creationTimestamp, managedFields entries, the simulated controllers' and kubelet's
status times.

The engine reads it as `clock.now_rfc3339()`, looked up at each write, so that a
test can stand it still (the fixture replay does) by replacing it here."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime

from . import errors


def now_rfc3339() -> str:
    return _rfc3339(int(time.time()))


@functools.lru_cache(maxsize=1)
def _rfc3339(second: int) -> str:
    """Formatted once per second: most writes stamp a time, several per write."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime:
    """A time as a request writes it (RFC 3339), refused as the server refuses one
    it cannot parse."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as error:
        raise errors.bad_request(
            f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot parse'
        ) from error
