"""The API server's answers mapped once onto the runtime's error family
(`servefleet.runtime.base`), so no other module looks at an HTTP status:

    answer                                     meaning
    2xx                                        success
    404 to a DELETE                            success: already gone (`api.py` asks)
    409                                        ApplyConflict
    400, 422                                   WorkloadUnsupported: the cluster refuses
                                               the spec (the API's message says why)
    429, 5xx, timeouts, connection errors      retried by `api.py` (Retry-After honoured),
                                               then RuntimeUnavailable
    anything else (401, 403, another 404)      RuntimeUnavailable at once

A watch stream fails in its own two ways, which `watches.py` handles: `WatchFailed`
(open it again after a backoff, or its `retry_after` when longer) and
`WatchExpired` (410 Gone: list again).
"""

from __future__ import annotations

import json
from typing import Any

from servefleet.runtime.base import (
    ApplyConflict,
    RuntimeFailure,
    RuntimeUnavailable,
    WorkloadUnsupported,
)

__all__ = ["WatchExpired", "WatchFailed", "refusal", "retry_after", "status_message"]


class WatchFailed(Exception):
    """A watch request or stream answered with an error other than 410."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after
        """Seconds the server asked to wait before the watch is opened again."""


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def refusal(what: str, status: int, message: str) -> RuntimeFailure | None:
    """The error a non-2xx answer to `what` raises, or None when it is worth
    retrying (429 and 5xx: the server is busy or failing for now)."""
    if status == 409:
        return ApplyConflict(f"{what}: {message}")
    if status in (400, 422):
        return WorkloadUnsupported(f"{what}: {message}")
    if status != 429 and status < 500:
        return RuntimeUnavailable(f"{what}: HTTP {status}: {message}")
    return None


def status_message(body: bytes, status: int) -> str:
    """The message of a Kubernetes `Status` body, or the body itself (cut to 500
    characters) when it is not one."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500] or f"HTTP {status}"
    if isinstance(decoded, dict) and decoded.get("message"):
        return str(decoded["message"])
    return f"HTTP {status}"


def retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait (`Retry-After`), if it said."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
