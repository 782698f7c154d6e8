"""`servefleet autoscale`: autoscaling switched on with new bounds, metrics or
windows, or off with a replica count, without editing the declaration.

The flags given are laid over the declared autoscaling (what is not given stays);
a metric flag replaces the declared metrics with the ones given. Refusals name the
flag (`--min: 2 must not exceed max_replicas (1)`), whether they come from the
store's service or from the API.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from servefleet.cli.app import app
from servefleet.cli.connect import run_on_fleet
from servefleet.cli.fleet import Fleet, renamed
from servefleet.cli.options import NameArgument, TimeoutOption, WaitOption
from servefleet.cli.output import out
from servefleet.service import OperationRefused
from servefleet.spec import Endpoint, InvalidInput

__all__ = ["autoscale"]

_FLAGS = {
    "min_replicas": "--min",
    "max_replicas": "--max",
    "scale_to_zero_after": "--scale-to-zero-after",
    "scale_up_window": "--scale-up-window",
    "scale_down_window": "--scale-down-window",
    "panic_window": "--panic-window",
    "panic_threshold": "--panic-threshold",
}
"""The settings' flags, by their field in `AutoscalingSpec`."""

_METRICS = ("concurrency", "rps", "cpu", "memory")


def _field_names(metrics: list[str]) -> dict[str, str]:
    """Each field a refusal may name (the service's request and spec fields, the
    API's body fields) under the flag that set it; the metric flags by their place
    in the list sent."""
    names = {"replicas": "--replicas", "spec.replicas": "--replicas"}
    for field, flag in _FLAGS.items():
        names[field] = names[f"spec.autoscaling.{field}"] = flag
    for prefix in ("metrics", "spec.autoscaling.metrics"):
        if metrics:
            names[prefix] = " ".join(f"--{metric}" for metric in metrics)
        for index, metric in enumerate(metrics):
            names[f"{prefix}.{index}.target"] = f"--{metric}"
    return names


@app.command(
    epilog="Examples:\n\n"
    "* `servefleet autoscale llm --min 0 --max 8 --concurrency 4 --scale-to-zero-after 300`\n\n"
    "* `servefleet autoscale llm --max 12` (the other settings stay as declared)\n\n"
    "* `servefleet autoscale llm --off --replicas 2`"
)
def autoscale(
    name: NameArgument,
    min_replicas: Annotated[
        int | None,
        typer.Option(
            "--min", help="Fewest replicas per region (0: scale to zero).", show_default=False
        ),
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option("--max", help="Most replicas per region.", show_default=False)
    ] = None,
    concurrency: Annotated[
        float | None,
        typer.Option(help="Target requests in flight per replica.", show_default=False),
    ] = None,
    rps: Annotated[
        float | None,
        typer.Option(help="Target requests arriving per second per replica.", show_default=False),
    ] = None,
    cpu: Annotated[
        float | None,
        typer.Option(help="Target cpu, percent of the request (Kubernetes).", show_default=False),
    ] = None,
    memory: Annotated[
        float | None,
        typer.Option(
            help="Target memory, percent of the request (Kubernetes).", show_default=False
        ),
    ] = None,
    scale_to_zero_after: Annotated[
        int | None,
        typer.Option(
            help="Idle seconds before the last replica stops (--min 0).", show_default=False
        ),
    ] = None,
    scale_up_window: Annotated[
        int | None,
        typer.Option(help="Seconds of load averaged to decide the count.", show_default=False),
    ] = None,
    scale_down_window: Annotated[
        int | None,
        typer.Option(
            help="The count never falls below the highest wanted in this many seconds.",
            show_default=False,
        ),
    ] = None,
    panic_window: Annotated[
        int | None,
        typer.Option(help="Seconds of load averaged to catch a burst.", show_default=False),
    ] = None,
    panic_threshold: Annotated[
        float | None,
        typer.Option(
            help="A burst asking for this many times the replicas running: panic (1.1-10).",
            show_default=False,
        ),
    ] = None,
    off: Annotated[
        bool, typer.Option("--off", help="Turn autoscaling off (its settings are kept).")
    ] = False,
    replicas: Annotated[
        int | None,
        typer.Option(help="With --off: replicas per region from now on.", show_default=False),
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
) -> None:
    """Turn autoscaling on with new bounds, metrics or windows, or off."""
    targets = {"concurrency": concurrency, "rps": rps, "cpu": cpu, "memory": memory}
    metrics = [metric for metric in _METRICS if targets[metric] is not None]
    settings: dict[str, Any] = {
        field: value
        for field, value in {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "scale_to_zero_after": scale_to_zero_after,
            "scale_up_window": scale_up_window,
            "scale_down_window": scale_down_window,
            "panic_window": panic_window,
            "panic_threshold": panic_threshold,
        }.items()
        if value is not None
    }
    if metrics:
        settings["metrics"] = [{"type": metric, "target": targets[metric]} for metric in metrics]

    async def change(fleet: Fleet) -> Endpoint:
        try:
            return await fleet.autoscale(
                name, enabled=not off, settings=settings, replicas=replicas
            )
        except (InvalidInput, OperationRefused) as refused:
            raise renamed(refused, _field_names(metrics)) from None

    endpoint = run_on_fleet(change)
    spec = endpoint.spec
    if spec.autoscaling.enabled:
        shown = ", ".join(f"{m.type} {m.target:g}" for m in spec.autoscaling.metrics)
        done = (
            f"autoscaled between {spec.autoscaling.min_replicas} and "
            f"{spec.autoscaling.max_replicas} replicas on {shown or 'no metric'}"
        )
    else:
        done = f"autoscaling off, {spec.replicas} replicas"
    out.print(f"endpoint/{name} {done} (generation {endpoint.generation})", markup=False)
    if wait:
        from servefleet.cli.wait import wait_for

        wait_for([name], timeout)
