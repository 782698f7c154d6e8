"""The endpoint verbs: deploy, apply, get, list, status, scale, update-image, stop,
start, canary, promote, rollback and delete, each one call on the fleet
(`connect.py`: the store, or the API with `--api`).

Each verb parses its flags into plain data, runs one coroutine and prints the
result; `--wait` then follows the regions' reports (`wait.py`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.table import Table

from servefleet.cli.app import app
from servefleet.cli.connect import run_on_fleet
from servefleet.cli.fleet import Fleet, renamed
from servefleet.cli.options import NameArgument, TimeoutOption, WaitOption, key_value_pairs
from servefleet.cli.output import OutputOption, check_output, fail, out, print_documents
from servefleet.service import OperationRefused
from servefleet.spec import (
    Endpoint,
    EndpointManifest,
    EndpointSpec,
    InvalidInput,
    declared_more_than_once,
    invalid_input,
    status_section,
)

__all__ = ["apply", "canary", "deploy", "get", "list_endpoints", "scale", "status"]


def _spec(fields: dict[str, Any]) -> EndpointSpec:
    try:
        return EndpointSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        fail(*invalid_input(error, "spec").problems)


def _summary(endpoint: Endpoint, verb: str) -> None:
    out.print(f"endpoint/{endpoint.name} {verb} (generation {endpoint.generation})", markup=False)


def _wait_for(names: list[str], wait: bool, timeout: float) -> None:
    if wait:
        from servefleet.cli.wait import wait_for

        wait_for(names, timeout)


@app.command(
    epilog="Examples:\n\n"
    "* `servefleet deploy llm --image ghcr.io/org/vllm:0.6 --gpu-count 1 --accelerator nvidia "
    "--region us-east --region eu-west`\n\n"
    "* `servefleet deploy demo --replicas 2 -- python -m servefleet.demo --port {port}`"
)
def deploy(
    name: NameArgument,
    command: Annotated[
        list[str] | None,
        typer.Argument(help="Command and arguments to run, after `--`.", show_default=False),
    ] = None,
    image: Annotated[str | None, typer.Option(help="Container image.")] = None,
    replicas: Annotated[int | None, typer.Option(help="Number of replicas per region.")] = None,
    region: Annotated[
        list[str] | None,
        typer.Option("--region", "-r", help="Target region (repeat; default: all registered)."),
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="Environment variable KEY=VALUE.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port the server listens on.")] = None,
    health_path: Annotated[str | None, typer.Option(help="Health check path.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="nvidia, neuron or none.")] = None,
    gpu_count: Annotated[int | None, typer.Option(help="Accelerators per replica.")] = None,
    capacity_type: Annotated[str | None, typer.Option(help="spot or on-demand.")] = None,
    model_source: Annotated[
        str | None, typer.Option(help="s3://, gs://, hf:// or file:/// model location.")
    ] = None,
    model_path: Annotated[str | None, typer.Option(help="Where replicas find the model.")] = None,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace.")] = None,
    ingress_path: Annotated[
        str | None, typer.Option(help="Route prefix (default /inference/NAME).")
    ] = None,
    request: Annotated[
        list[str] | None, typer.Option(help="Resource request, e.g. cpu=2 or memory=8Gi.")
    ] = None,
    limit: Annotated[
        list[str] | None, typer.Option(help="Resource limit, e.g. memory=16Gi.")
    ] = None,
    label: Annotated[list[str] | None, typer.Option(help="Label KEY=VALUE.")] = None,
    node_selector: Annotated[
        list[str] | None, typer.Option(help="Node selector KEY=VALUE.")
    ] = None,
    args: Annotated[
        list[str] | None, typer.Option("--args", help="Argument for the image's entrypoint.")
    ] = None,
    stopped: Annotated[bool, typer.Option(help="Declare it without running it.")] = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
) -> None:
    """Create an endpoint."""
    spec = _spec(
        {
            "image": image,
            "command": command or None,
            "args": args or None,
            "replicas": replicas,
            "port": port,
            "health_path": health_path,
            "env": key_value_pairs(env, "--env"),
            "accelerator": accelerator,
            "gpu_count": gpu_count,
            "capacity_type": capacity_type,
            "model_source": model_source,
            "model_path": model_path,
            "namespace": namespace,
            "ingress_path": ingress_path,
            "resources": {
                "requests": key_value_pairs(request, "--request"),
                "limits": key_value_pairs(limit, "--limit"),
            },
            "labels": key_value_pairs(label, "--label"),
            "node_selector": key_value_pairs(node_selector, "--node-selector"),
        }
    )

    async def create(fleet: Fleet) -> Endpoint:
        try:
            return await fleet.deploy(name, spec, region or None, stopped=stopped)
        except InvalidInput as refused:
            raise renamed(refused, {"target_regions": "--region"}) from None

    endpoint = run_on_fleet(create)
    _summary(endpoint, f"created in {', '.join(endpoint.target_regions)}")
    _wait_for([name], wait, timeout)


def _load(text: str) -> list[Any]:
    """JSON (`get -o json`) as JSON: YAML reads an escaped surrogate pair as two characters."""
    try:
        return [json.loads(text)]
    except ValueError:
        return list(yaml.safe_load_all(text))


def _read_manifests(files: list[str]) -> list[EndpointManifest]:
    """Every document of every file, all checked before anything is written."""
    manifests: list[EndpointManifest] = []
    problems: list[str] = []
    for file in files:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
            loaded = [doc for doc in _load(text) if doc is not None]
        except (OSError, yaml.YAMLError) as error:
            fail(f"{file}: {error}")
        documents = [item for doc in loaded for item in (doc if isinstance(doc, list) else [doc])]
        for index, document in enumerate(documents, start=1):
            where = f"{file} document {index}"
            if isinstance(document, dict) and isinstance(document.get("metadata"), dict):
                where += f" ({document['metadata'].get('name')})"
            try:
                manifests.append(EndpointManifest.model_validate(document))
            except ValidationError as error:
                problems.extend(f"{where}: {p}" for p in invalid_input(error).problems)
    problems.extend(declared_more_than_once(manifests))
    if problems:
        fail(*problems)
    if not manifests:
        fail("no endpoint documents found")
    return manifests


@app.command(
    epilog="Examples:\n\n"
    "* `servefleet apply -f endpoints.yaml`\n\n"
    "* `servefleet get llm -o yaml | sed 's/replicas: 2/replicas: 4/' | servefleet apply -f -`"
)
def apply(
    file: Annotated[
        list[str],
        typer.Option("--filename", "-f", help="YAML file with one or more endpoints, or -."),
    ],
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
) -> None:
    """Create or update endpoints from declarations; unchanged ones are left alone."""
    manifests = _read_manifests(file)
    for applied in run_on_fleet(lambda fleet: fleet.apply_all(manifests)):
        out.print(f"endpoint/{applied.name} {applied.outcome.value}", markup=False)
    _wait_for([manifest.metadata.name for manifest in manifests], wait, timeout)


@app.command(epilog="Example: `servefleet get llm -o yaml > llm.yaml`")
def get(name: NameArgument, output: OutputOption = "yaml") -> None:
    """Print an endpoint's declaration and status, in a form `apply -f` accepts."""
    check_output(output, ("yaml", "json"))
    endpoint, statuses = run_on_fleet(lambda fleet: fleet.status(name))
    manifest = EndpointManifest.of(endpoint, status_section(endpoint, statuses))
    print_documents([manifest.document()], output, many=False)


@app.command(
    name="list",
    epilog="Examples: `servefleet list`, `servefleet list -o json`, `servefleet list -r eu-west`",
)
def list_endpoints(
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
    region: Annotated[
        str | None, typer.Option("--region", "-r", help="Only endpoints in this region.")
    ] = None,
) -> None:
    """List endpoints."""
    check_output(output, ("table", "yaml", "json"))
    endpoints = run_on_fleet(lambda fleet: fleet.list_endpoints(region=region))
    if output != "table":
        documents = [EndpointManifest.of(endpoint).document() for endpoint in endpoints]
        print_documents(documents, output, many=True)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "STATE", "REGIONS", "REPLICAS", "IMAGE", "CANARY", "GENERATION"):
        table.add_column(column)
    for endpoint in endpoints:
        spec = endpoint.spec
        canary = spec.canary
        replicas = (
            f"{spec.autoscaling.min_replicas}-{spec.autoscaling.max_replicas} (auto)"
            if spec.autoscaling.enabled
            else str(spec.replicas)
        )
        table.add_row(
            endpoint.name,
            endpoint.desired_state.value,
            ",".join(endpoint.target_regions),
            replicas,
            spec.image or " ".join(spec.command or []),
            f"{canary.image or 'custom'} @{canary.weight}%" if canary else "-",
            str(endpoint.generation),
        )
    out.print(table)


@app.command(epilog="Example: `servefleet status llm`")
def status(
    name: NameArgument,
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
) -> None:
    """Show how each region is doing with an endpoint."""
    check_output(output, ("table", "yaml", "json"))
    endpoint, statuses = run_on_fleet(lambda fleet: fleet.status(name))
    section = status_section(endpoint, statuses)
    if output != "table":
        print_documents(
            [{"name": name, "generation": endpoint.generation, **section}], output, many=False
        )
        return
    out.print(
        f"endpoint/{name}: {endpoint.desired_state.value}, generation {endpoint.generation}",
        markup=False,
    )
    rollout = endpoint.rollout
    if rollout is not None:  # the details: `servefleet rollout status NAME`
        weights = ", ".join(f"{region} {weight} %" for region, weight in rollout.weights.items())
        paused = ", paused" if rollout.paused else ""
        out.print(
            f"rollout of {rollout.image}: {rollout.phase.value}{paused}"
            + (f" ({weights})" if weights else "")
            + f"; {rollout.reason}",
            markup=False,
        )
    # READY is ready/desired: the count the region's autoscaler chose, where it has
    # one, whose reason then has a column.
    scaling = any(status.scale_reason for status in statuses)
    table = Table(box=None, pad_edge=False)
    for column in ("REGION", "STATE", "OBSERVED", "READY", "CANARY", "ROUTED", "MESSAGE"):
        table.add_column(column)
    if scaling:
        table.add_column("SCALING")
    by_region = {status.region: status for status in statuses}
    for region in endpoint.target_regions:
        report = by_region.get(region)
        if report is None:
            table.add_row(region, "pending", "-", "-", "-", "-", "no report yet")
            continue
        table.add_row(
            region,
            report.state.value,
            str(report.observed_generation),
            f"{report.replicas_ready}/{report.replicas_desired}",
            f"{report.canary_ready}/{report.canary_desired}" if report.canary_desired else "-",
            "yes" if report.routed else "no",
            report.message,
            *([report.scale_reason or "-"] if scaling else []),
        )
    out.print(table)


@app.command(epilog="Example: `servefleet scale llm 4`")
def scale(
    name: NameArgument,
    replicas: Annotated[int, typer.Argument(help="Replicas per region.")],
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
) -> None:
    """Set the number of replicas."""
    endpoint = run_on_fleet(lambda fleet: fleet.scale(name, replicas))
    _summary(endpoint, f"scaled to {endpoint.spec.replicas}")
    _wait_for([name], wait, timeout)


@app.command(
    name="update-image",
    epilog="Examples: `servefleet update-image llm ghcr.io/org/vllm:0.7`, "
    "`servefleet update-image llm 123.dkr.ecr.eu-west-1.amazonaws.com/vllm:0.7 -r eu-west`",
)
def update_image(
    name: NameArgument,
    image: Annotated[str, typer.Argument(help="The new image.")],
    region: Annotated[
        str | None, typer.Option("--region", "-r", help="Only in this region.")
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
) -> None:
    """Roll out a new image, everywhere or in one region."""

    async def update(fleet: Fleet) -> Endpoint:
        try:
            return await fleet.update_image(name, image, region)
        except (InvalidInput, OperationRefused) as refused:
            raise renamed(refused, {"region": "--region"}) from None

    endpoint = run_on_fleet(update)
    _summary(endpoint, f"image set to {image}" + (f" in {region}" if region else ""))
    _wait_for([name], wait, timeout)


def _endpoint_verb(
    verb: str,
    help_text: str,
    done: str,
    call: Callable[[Fleet, str], Awaitable[Endpoint]],
) -> None:
    """Register a verb that takes only an endpoint name (and --wait)."""

    def command(
        name: NameArgument, wait: WaitOption = False, timeout: TimeoutOption = 300.0
    ) -> None:
        _summary(run_on_fleet(lambda fleet: call(fleet, name)), done)
        _wait_for([name], wait, timeout)

    command.__doc__ = help_text
    app.command(name=verb, epilog=f"Example: `servefleet {verb} llm`")(command)


_endpoint_verb(
    "stop",
    "Stop every replica and remove the route; the declaration stays.",
    "stopped",
    lambda fleet, name: fleet.stop(name),
)
_endpoint_verb(
    "start", "Run a stopped endpoint again.", "started", lambda fleet, name: fleet.start(name)
)


@app.command(
    epilog="Examples: `servefleet canary llm --image ghcr.io/org/vllm:0.7 --weight 20`, "
    "`servefleet canary llm --weight 50`, `servefleet canary llm --env MAX_MODEL_LEN=16384`"
)
def canary(
    name: NameArgument,
    image: Annotated[str | None, typer.Option(help="The canary's image.")] = None,
    weight: Annotated[int | None, typer.Option(help="Percent of traffic, 1-99.")] = None,
    replicas: Annotated[int | None, typer.Option(help="Canary replicas per region.")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            "-e",
            help="Environment variable KEY=VALUE for the canary, over the primary's env "
            "(repeat; keys set before are kept).",
        ),
    ] = None,
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The canary's command and arguments, after `--`.", show_default=False),
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
) -> None:
    """Add a canary version, or change its image, weight, replicas, env or command."""
    endpoint = run_on_fleet(
        lambda fleet: fleet.canary(
            name,
            image=image,
            weight=weight,
            replicas=replicas,
            command=command or None,
            env=key_value_pairs(env, "--env") or None,
        )
    )
    assert endpoint.spec.canary is not None
    _summary(endpoint, f"canary at {endpoint.spec.canary.weight}%")
    _wait_for([name], wait, timeout)


_endpoint_verb(
    "promote",
    "Make the canary the primary version and remove the canary.",
    "promoted",
    lambda fleet, name: fleet.promote(name),
)
_endpoint_verb(
    "rollback",
    "Remove the canary; all traffic goes to the primary version.",
    "rolled back",
    lambda fleet, name: fleet.rollback(name),
)
_endpoint_verb(
    "delete",
    "Delete an endpoint from every region; the record is purged once all are clean.",
    "marked for deletion",
    lambda fleet, name: fleet.delete(name),
)
