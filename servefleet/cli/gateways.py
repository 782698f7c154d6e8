"""Where `servefleet up` says its gateways are, for the request verbs to find.

`servefleet up` records its gateway URLs, and the local regions it leads, in a
small file per process under the user state directory, keyed by the store URL,
and removes it when it stops. A record whose process is gone is ignored, and a
process leading the region is preferred to a standby, whose gateway only refuses.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

__all__ = ["GatewayRecord", "record_gateways", "recorded_gateways"]


@dataclass(frozen=True)
class GatewayRecord:
    """The URLs one running `servefleet up` serves on."""

    pid: int
    gateway: str
    """The global entry point ("" when it runs no local region)."""
    regions: dict[str, str]
    """Each local region's own gateway."""
    leading: list[str]
    """The regions whose replicas this process runs now."""


def _records_dir(store_url: str) -> Path:
    key = hashlib.sha256(store_url.encode()).hexdigest()[:16]
    return platformdirs.user_state_path("servefleet") / "gateways" / key


def record_gateways(
    store_url: str, gateway: str, regions: dict[str, str], leading: list[str]
) -> Path:
    """Write (or rewrite) this process's gateway URLs and led regions for the CLI to
    find; returns the file to remove on the way out. Blocking: call it on a thread."""
    directory = _records_dir(store_url)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{os.getpid()}.json"
    record = {"pid": os.getpid(), "gateway": gateway, "regions": regions, "leading": leading}
    with tempfile.NamedTemporaryFile(
        "w", dir=directory, prefix=f"{os.getpid()}.", suffix=".partial", delete=False
    ) as partial:
        partial.write(json.dumps(record))
    os.replace(partial.name, path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recorded_gateways(store_url: str, serving: list[str]) -> list[GatewayRecord]:
    """The records of the running `servefleet up` processes of this store: those leading
    one of the regions `serving` first, then newest first."""
    directory = _records_dir(store_url)
    if not directory.is_dir():
        return []
    records = []
    for path in sorted(directory.glob("*.json"), key=_modified, reverse=True):
        try:
            data = json.loads(path.read_text())
            record = GatewayRecord(
                int(data["pid"]), str(data["gateway"]), dict(data["regions"]), list(data["leading"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # Removed meanwhile, or not ours to read.
        if _alive(record.pid):
            records.append(record)
    return sorted(records, key=lambda record: not set(serving) & set(record.leading))


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
