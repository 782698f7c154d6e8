"""`servefleet health`: each region's readiness, and its health path probed through
its gateway. Exits 0 when every region shown is healthy, 6 when one is not."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from servefleet.cli.app import app
from servefleet.cli.options import NameArgument
from servefleet.cli.output import check_output, fail, out, print_documents
from servefleet.cli.requests import (
    DEFAULT_GATEWAY,
    Lookup,
    Target,
    check_region,
    check_url,
    described,
    fetch,
    look_up,
    region_url,
    run_http,
)
from servefleet.spec import RegionKind, RegionState, RegionStatus

if TYPE_CHECKING:
    import aiohttp

__all__ = ["health"]

EXIT_UNHEALTHY = 6


@dataclass(frozen=True)
class _Probe:
    ok: bool
    shown: str


_INGRESS_UNKNOWN = "not probed: Ingress address unknown (regions add --ingress-url, or --url)"


_AT_ZERO = "not probed: at 0 replicas by its autoscaler; the next request starts one"


def _probe_plan(
    lookup: Lookup, region: str, status: RegionStatus | None, url: str | None
) -> str | _Probe | None:
    """The base URL to probe `region` through; else what stands for the probe: a
    failure for a local region no `servefleet up` serves (nobody answers there),
    None for a cluster registered without `ingress_url` (judged by its status
    alone; one with it is probed through its Ingress), or a
    success for a region its autoscaler holds at zero (a probe would be held by the
    gateway and start a replica: checking health would end scale to zero)."""
    if status is not None and _at_zero(status):
        return _Probe(True, _AT_ZERO)
    if url:
        return url
    known = lookup.regions.get(region)
    if known is not None and known.kind is RegionKind.KUBERNETES:
        return known.ingress_url
    base = region_url(region)
    return base or _Probe(False, "not probed: no running `servefleet up` serves this region")


async def _probe(session: aiohttp.ClientSession, url: str, seconds: float) -> _Probe:
    import aiohttp

    try:
        answer = await fetch(session, "GET", url, None, seconds)
    except (aiohttp.ClientError, TimeoutError) as error:
        return _Probe(False, f"no answer: {described(error)}")
    if 200 <= answer.status < 300:
        return _Probe(True, f"{answer.status} ok")
    return _Probe(False, f"{answer.status}: {answer.reason}")


def _at_zero(status: RegionStatus) -> bool:
    return bool(status.scale_reason) and status.replicas_desired == status.canary_desired == 0


def _healthy(status: RegionStatus | None, probe: _Probe | None) -> bool:
    """Ready, routed and answering. A region whose own autoscaler chose the count is
    not judged on the replicas still starting toward it: its state already is (ready
    while it has its floor, `plan.region_status`)."""
    return (
        status is not None
        and status.state is RegionState.READY
        and status.routed
        and (bool(status.scale_reason) or status.replicas_ready >= status.replicas_desired)
        and (probe is None or probe.ok)
    )


@app.command(
    epilog="Examples: `servefleet health demo`, `servefleet health llm -r eu-west "
    "--url https://llm.eu-west.example.com`\n\n"
    "Exit status: 0 when every region shown is healthy, 6 when one is not, 1 for a user error."
)
def health(
    name: NameArgument,
    region: Annotated[str | None, typer.Option("--region", "-r", help="Only this region.")] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="SERVEFLEET_URL",
            help="Probe through this base URL (e.g. a Kubernetes region's Ingress); "
            "needs --region when the endpoint runs in several regions.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each probe may take.")] = 10.0,
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
) -> None:
    """Show each region's readiness and probe the health path through its gateway."""
    check_output(output, ("table", "yaml", "json"))
    lookup = look_up(name)
    check_region(lookup, region)
    endpoint = lookup.endpoint
    regions = [region] if region else endpoint.target_regions
    check_url(url)
    if url and len(regions) > 1:
        fail(f"--url: name the region it reaches with --region (got {url!r})")
    by_region = {status.region: status for status in lookup.statuses}
    plans = {each: _probe_plan(lookup, each, by_region.get(each), url) for each in regions}

    async def probe_all(session: aiohttp.ClientSession) -> dict[str, _Probe | None]:
        async def one(plan: str | _Probe | None) -> _Probe | None:
            if not isinstance(plan, str):
                return plan
            target = Target(endpoint, plan, None)
            return await _probe(session, target.url(endpoint.spec.health_path), timeout)

        results = await asyncio.gather(*(one(plan) for plan in plans.values()))
        return dict(zip(plans, results, strict=True))

    probes = run_http(Target(endpoint, url or DEFAULT_GATEWAY, region), probe_all)
    rows = []
    for each in regions:
        status, probe = by_region.get(each), probes[each]
        rows.append(
            {
                "region": each,
                "healthy": _healthy(status, probe),
                "state": status.state.value if status else "pending",
                "ready": f"{status.replicas_ready}/{status.replicas_desired}" if status else "-",
                "routed": bool(status and status.routed),
                "scale_reason": status.scale_reason if status else "",
                "message": status.message if status else "no report yet",
                "probe": probe.shown if probe else _INGRESS_UNKNOWN,
            }
        )
    if output == "table":
        out.print(
            f"endpoint/{name}: {endpoint.desired_state.value}, "
            f"health path {endpoint.spec.health_path}",
            markup=False,
        )
        # The autoscalers' reasons only where a region has one (a local region's own).
        scaling = any(row["scale_reason"] for row in rows)
        table = Table(box=None, pad_edge=False)
        for column in ("REGION", "HEALTHY", "STATE", "READY", "ROUTED", "MESSAGE", "PROBE"):
            table.add_column(column)
        if scaling:
            table.add_column("SCALING")
        for row in rows:
            table.add_row(
                str(row["region"]),
                "yes" if row["healthy"] else "no",
                str(row["state"]),
                str(row["ready"]),
                "routed" if row["routed"] else "unrouted",
                str(row["message"]) or "-",
                str(row["probe"]),
                *([str(row["scale_reason"]) or "-"] if scaling else []),
            )
        out.print(table)
    else:
        print_documents([{"name": name, "regions": rows}], output, many=False)
    if not all(row["healthy"] for row in rows):
        raise typer.Exit(EXIT_UNHEALTHY)
