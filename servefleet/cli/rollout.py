"""`servefleet rollout start|status|pause|resume|abort NAME`: progressive rollouts.

Each is one call on the fleet (the store, or the API with `--api`); the decisions
are `servefleet.rollout`'s, the writes `RolloutService`'s.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from servefleet.cli.app import rollout_app
from servefleet.cli.connect import run_on_fleet
from servefleet.cli.fleet import Fleet, RolloutVerb
from servefleet.cli.options import NameArgument
from servefleet.cli.output import check_output, fail, out, print_documents
from servefleet.rollout import RegionSignals
from servefleet.rollout_signals import signals_from_reports
from servefleet.spec import Endpoint, Region, RegionStatus, RolloutState

__all__ = ["rollout_start", "rollout_status"]


def _rollout(endpoint: Endpoint) -> RolloutState:
    if endpoint.rollout is None:
        fail(f"rollout: {endpoint.name!r} has had no rollout")
    return endpoint.rollout


def _summary(endpoint: Endpoint) -> None:
    state = _rollout(endpoint)
    out.print(
        f"endpoint/{endpoint.name} rollout of {state.image}: {state.reason} "
        f"(generation {endpoint.generation})",
        markup=False,
    )


@rollout_app.command(
    "start",
    epilog="Example: `servefleet rollout start llm --image ghcr.io/org/vllm:0.7`",
)
def rollout_start(
    name: NameArgument,
    image: Annotated[str, typer.Option(help="The new version's image.")],
) -> None:
    """Start rolling a new image out: the canary in the first wave's regions only."""
    _summary(run_on_fleet(lambda fleet: fleet.rollout(name, "start", image)))


@rollout_app.command("status", epilog="Example: `servefleet rollout status llm -o yaml`")
def rollout_status(
    name: NameArgument,
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
) -> None:
    """Show the rollout's wave, step, weights and last decision."""
    check_output(output, ("table", "yaml", "json"))

    async def look(fleet: Fleet) -> tuple[Endpoint, list[RegionStatus], list[Region]]:
        endpoint, statuses = await fleet.status(name)
        return endpoint, statuses, await fleet.list_regions()

    endpoint, statuses, regions = run_on_fleet(look)
    state = _rollout(endpoint)
    if output != "table":
        document = {
            "name": name,
            "generation": endpoint.generation,
            "rollout": state.model_dump(mode="json"),
        }
        print_documents([document], output, many=False)
        return
    policy = endpoint.spec.rollout_policy
    waves = policy.waves_of(endpoint.target_regions)
    phase = state.phase.value + (", paused" if state.paused else "")
    out.print(f"endpoint/{name}: rollout of {state.image}, {phase}", markup=False)
    if state.phase.active:
        out.print(
            f"wave {state.wave + 1} of {len(waves)}, step {state.step + 1} of "
            f"{len(policy.steps)} ({policy.steps[state.step].weight} %)",
            markup=False,
        )
    decided = state.decided_at.isoformat(timespec="seconds")
    out.print(f"last decision ({decided}): {state.reason}", markup=False)
    registered = {region.name: region for region in regions}
    signals = signals_from_reports(endpoint, statuses)
    table = Table(box=None, pad_edge=False)
    for column in ("WAVE", "REGION", "NEW VERSION", "THIS STEP"):
        table.add_column(column)
    for number, wave in enumerate(waves, start=1):
        for region in wave:
            weight = state.weights.get(region)
            judged = _judged(registered.get(region), signals.get(region)) if weight else "-"
            table.add_row(str(number), region, f"{weight} %" if weight else "-", judged)
    out.print(table)


def _judged(region: Region | None, signals: RegionSignals | None) -> str:
    """What a reached region's guard rails are judged on over the current step."""
    if region is None:
        return "readiness only: the region is not registered"
    if region.request_signals_missing:
        return f"readiness only: {region.request_signals_missing}"
    if signals is None or not signals.canary_ready:
        return "new version not ready"
    line = f"{signals.canary_requests} canary requests"
    if signals.canary_requests:
        line += f", 5xx {100 * signals.canary_errors / signals.canary_requests:.1f} %"
    if signals.canary_p95 is not None and signals.primary_p95:
        line += (
            f", p95 {signals.canary_p95 * 1000:.0f} ms vs the primary's "
            f"{signals.primary_p95 * 1000:.0f} ms"
        )
    return line


def _rollout_verb(verb: RolloutVerb, help_text: str) -> None:
    def command(name: NameArgument) -> None:
        _summary(run_on_fleet(lambda fleet: fleet.rollout(name, verb)))

    command.__doc__ = help_text
    rollout_app.command(verb, epilog=f"Example: `servefleet rollout {verb} llm`")(command)


_rollout_verb("pause", "Hold the weights where they are; guard rails still roll back.")
_rollout_verb("resume", "Go on after a pause (the step holds again), or start the next wave.")
_rollout_verb("abort", "Roll back now: the old version in every region.")
