"""The invariants read from the log of status writes (`chaos.postgres`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chaos.postgres import StatusWrite


def holder_pid(holder: str) -> int | None:
    """The process id in a lease holder id (`host:pid:random`, `cli/up.py`)."""
    parts = holder.split(":")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


def foreign_writes(writes: Sequence[StatusWrite], pids: Mapping[str, int]) -> list[str]:
    """Writes made by a process that was not the region's lease holder at that moment,
    and writes under a fencing token older than one already written (a deposed leader
    writing after its successor): each would mean two writers to one region at once.
    `pids` maps each writer's name to its process id."""
    problems = []
    newest: dict[str, tuple[int, str]] = {}
    for write in writes:
        region = write.status.region
        pid = pids.get(write.writer)
        if write.lease_holder is None or pid is None or holder_pid(write.lease_holder) != pid:
            problems.append(
                f"status write #{write.seq} by {write.writer} (pid {pid}) while "
                f"{write.lease_holder} held region/{region}"
            )
            continue
        token = write.lease_token or 0
        seen = newest.get(region)
        if seen is not None and (token < seen[0] or (token == seen[0] and write.writer != seen[1])):
            problems.append(
                f"status write #{write.seq} by {write.writer} under token {token} after "
                f"{seen[1]} wrote under token {seen[0]}"
            )
            continue
        newest[region] = (token, write.writer)
    return problems


def reverted_statuses(writes: Sequence[StatusWrite]) -> list[str]:
    """Status writes that report an older generation than one already reported for
    the same endpoint and region."""
    problems = []
    highest: dict[tuple[str, str], int] = {}
    for write in writes:
        key = (write.status.endpoint, write.status.region)
        generation = write.status.observed_generation
        if generation < highest.get(key, 0):
            problems.append(
                f"status write #{write.seq} by {write.writer}: {key[0]} in {key[1]} went back "
                f"from generation {highest[key]} to {generation}"
            )
        highest[key] = max(generation, highest.get(key, 0))
    return problems


def heartbeat_lead(writes: Sequence[StatusWrite], writers: set[str]) -> float | None:
    """How far ahead of the database's clock `writers` dated their statuses at most
    (the proof that their clocks ran ahead); None if they wrote none."""
    leads = [
        write.status.heartbeat.timestamp() - write.at
        for write in writes
        if write.writer in writers and write.status.heartbeat is not None
    ]
    return round(max(leads), 1) if leads else None
