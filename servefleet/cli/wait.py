"""`--wait`: follow the regions' reports until a change is in place everywhere,
or has failed wherever it is not.

A change is in place in a region when its report carries the endpoint's current
generation and the state that generation asks for: ready (running), stopped, or
gone (deleted, once the record is purged). Progress is a live table on a terminal
and a final table otherwise.

A region that reports `failed` keeps the reconciler retrying, but a refused image,
a spec the cluster rejects or a model that cannot be staged does not get better
without outside help, so the wait ends once every region still pending has failed
on the change being waited for. A `failed` report is about that change when:

- it carries the current generation (the workload is in place and cannot come
  up: its model cannot be staged), or
- it was computed no earlier than the generation was stored (its `heartbeat`
  against the record's `updated_at`): a refused apply leaves
  `observed_generation` at the last generation that was in place, so only the
  time tells a failure of this change from one left by an earlier change.

A runtime that cannot be reached reports `failed` too, and a report computed just
before the change reached the region can look fresh when the reconciler's clock
runs ahead of the writer's; either is corrected by the reconciler's next pass. So
the wait ends only after every pending region has stayed failed for
`_FAILURE_GRACE` seconds; a region that recovers meanwhile keeps it going.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from servefleet.cli.connect import run_on_fleet
from servefleet.cli.fleet import Fleet
from servefleet.cli.output import fail, out
from servefleet.spec import DesiredState, Endpoint, RegionState, RegionStatus
from servefleet.store import EndpointNotFound

__all__ = ["Failure", "Progress", "progress", "wait_for", "wait_until_settled"]

_FAILURE_GRACE = 5.0
"""Seconds every pending region must stay failed before the wait gives up."""


@dataclass(frozen=True)
class Failure:
    endpoint: str
    region: str
    message: str


@dataclass(frozen=True)
class Progress:
    """Where a change is not in place: regions still working on it, and regions
    where it failed."""

    pending: list[str] = field(default_factory=list)
    """Each region that may still get there, as "NAME in REGION"."""
    failures: list[Failure] = field(default_factory=list)

    def __add__(self, other: Progress) -> Progress:
        return Progress(self.pending + other.pending, self.failures + other.failures)

    @property
    def failed(self) -> bool:
        """Every region not in place has failed on this change."""
        return bool(self.failures) and not self.pending


def _wanted(endpoint: Endpoint) -> RegionState:
    if endpoint.desired_state is DesiredState.STOPPED:
        return RegionState.STOPPED
    if endpoint.desired_state is DesiredState.DELETED:
        return RegionState.DELETED
    return RegionState.READY


def _failed_on_this_change(endpoint: Endpoint, status: RegionStatus) -> bool:
    if status.state is not RegionState.FAILED:
        return False
    if status.observed_generation == endpoint.generation:
        return True
    return status.heartbeat is not None and status.heartbeat >= endpoint.updated_at


def progress(endpoint: Endpoint, statuses: list[RegionStatus]) -> Progress:
    """The target regions whose report does not show the current generation in place."""
    by_region = {status.region: status for status in statuses}
    wanted = _wanted(endpoint)
    pending: list[str] = []
    failures: list[Failure] = []
    for region in endpoint.target_regions:
        status = by_region.get(region)
        if status is None:
            pending.append(f"{endpoint.name} in {region}")
        elif _failed_on_this_change(endpoint, status):
            failures.append(Failure(endpoint.name, region, status.message))
        elif status.observed_generation != endpoint.generation or status.state is not wanted:
            pending.append(f"{endpoint.name} in {region}")
    return Progress(pending, failures)


_Row = tuple[str, Endpoint | None, list[RegionStatus]]
"""An endpoint's name, its record (None once purged) and its region statuses."""


def _table(rows: list[_Row]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ENDPOINT", "REGION", "STATE", "GENERATION", "READY", "MESSAGE"):
        table.add_column(column)
    for name, endpoint, statuses in rows:
        if endpoint is None:
            table.add_row(name, "*", "purged", "-", "-", "")
            continue
        by_region = {status.region: status for status in statuses}
        for region in endpoint.target_regions:
            status = by_region.get(region)
            if status is None:
                table.add_row(name, region, "pending", f"-/{endpoint.generation}", "-", "")
                continue
            table.add_row(
                name,
                region,
                status.state.value,
                f"{status.observed_generation}/{endpoint.generation}",
                f"{status.replicas_ready}/{status.replicas_desired}",
                status.message,
            )
    return table


async def _look(fleet: Fleet, names: list[str]) -> tuple[list[_Row], Progress]:
    """Each endpoint's row, and what is not in place."""
    rows: list[_Row] = []
    outcome = Progress()
    for name in names:
        try:
            endpoint, statuses = await fleet.status(name)
        except EndpointNotFound:
            rows.append((name, None, []))
            continue
        rows.append((name, endpoint, statuses))
        outcome += progress(endpoint, statuses)
    return rows, outcome


async def wait_until_settled(
    fleet: Fleet, names: list[str], *, within: float, console: Console
) -> Progress:
    """Wait for every endpoint in `names` until its change is in place everywhere, has
    failed wherever it is not (for `_FAILURE_GRACE` seconds), or `within` seconds
    pass; returns what is not in place then."""
    deadline = time.monotonic() + within
    failed_since: float | None = None
    async with fleet.changes(names) as changes:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                rows, outcome = await _look(fleet, names)
                live.update(_table(rows), refresh=True)
                now = time.monotonic()
                if not outcome.failed:
                    failed_since = None
                elif failed_since is None:
                    failed_since = now
                gave_up = failed_since is not None and now - failed_since >= _FAILURE_GRACE
                if not (outcome.pending or outcome.failures) or gave_up or now >= deadline:
                    break
                # Until something changes, or it is time to give up.
                until = (
                    deadline
                    if failed_since is None
                    else min(deadline, failed_since + _FAILURE_GRACE)
                )
                await changes.next(until - now)
    if not console.is_terminal:
        console.line()  # the last table ends without one when not on a terminal
    return outcome


def wait_for(names: list[str], timeout: float) -> None:
    """What `--wait` does after a verb: follow `names` until settled, printing the
    progress; exit 1 naming what failed or was still pending at `timeout`."""
    outcome = run_on_fleet(
        lambda fleet: wait_until_settled(fleet, names, within=timeout, console=out)
    )
    problems = [
        f"--wait: {failure.endpoint} failed in {failure.region}: {failure.message}"
        for failure in outcome.failures
    ]
    if outcome.pending:
        problems.append(f"--wait: not in place after {timeout:g}s: {', '.join(outcome.pending)}")
    if problems:
        fail(*problems)
