"""The `servefleet` command: kubectl-like verbs over `EndpointService`.

Each verb parses its flags into plain data, runs one coroutine with `asyncio.run`
and prints the result. Every error a user can cause ends as one line per problem
on stderr, naming the field and the value, with exit status 1; usage errors
(an unknown flag) exit with 2, as click decides.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

import platformdirs
import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from servefleet.cli.models import models_app
from servefleet.service import (
    EndpointService,
    OperationRefused,
    RegionNotTargeted,
    UnregisteredRegion,
)
from servefleet.spec import (
    Endpoint,
    EndpointManifest,
    EndpointSpec,
    InvalidInput,
    Region,
    declared_more_than_once,
    invalid_input,
    status_section,
)
from servefleet.store import Store, StoreError, open_store

if TYPE_CHECKING:  # imported where used: the reconcilers load only for `up` and `reconcile`
    from servefleet.reconcile.controller import ControllerSettings
    from servefleet.reconcile.leader import LeaseSettings
    from servefleet.runtime.local.gateway import GatewaySettings

T = TypeVar("T")

app = typer.Typer(
    name="servefleet",
    help="Keep GPU inference endpoints running in many regions from one declaration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
regions_app = typer.Typer(help="Register, list and remove regions.", no_args_is_help=True)
store_app = typer.Typer(help="Set up the store.", no_args_is_help=True)
app.add_typer(regions_app, name="regions")
app.add_typer(store_app, name="store")
app.add_typer(models_app, name="models")

# Piped output (scripts, `| grep`) gets wide tables instead of wrapped cells. No emoji
# codes: a value like ":smile:" must print as written, or `get | apply` would change it.
out = Console(
    highlight=False, emoji=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250
)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)


def default_store_url() -> str:
    return str(platformdirs.user_data_path("servefleet") / "store.db")


class _State:
    store_url: str = ""


_state = _State()


@app.callback()
def _main(
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="SERVEFLEET_STORE",
            help="Store URL: a SQLite file path (the default lives in your data directory) "
            "or postgresql://user@host/db.",
            show_default=False,
        ),
    ] = None,
) -> None:
    _state.store_url = store or default_store_url()


def _fail(*lines: str) -> NoReturn:
    for line in lines:
        err.print(f"error: {line}", markup=False)
    raise typer.Exit(1)


def _run(operation: Callable[[EndpointService], Awaitable[T]], *, init: bool = False) -> T:
    """Open the store, run `operation` on it, close it; user errors end the command."""
    return _run_on_store(lambda store: operation(EndpointService(store)), init=init)


def _run_on_store(operation: Callable[[Store], Awaitable[T]], *, init: bool = False) -> T:
    """`_run` for a command that needs the store itself (tokens, the API server)."""

    async def main() -> T:
        store: Store = await open_store(_state.store_url, init=init)
        try:
            return await operation(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except InvalidInput as error:
        _fail(*error.problems)
    except (OperationRefused, StoreError, ValueError) as error:
        _fail(str(error))


# Parsing flags.


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values or []:
        key, separator, item = value.partition("=")
        if not separator or not key:
            _fail(f"{flag}: expected KEY=VALUE (got {value!r})")
        pairs[key] = item
    return pairs


def _spec(fields: dict[str, Any]) -> EndpointSpec:
    try:
        return EndpointSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        _fail(*invalid_input(error, "spec").problems)


OutputFormat = Literal["yaml", "json"]
ListFormat = Literal["table", "yaml", "json"]


def _print_documents(documents: list[dict[str, Any]], output: str, *, many: bool) -> None:
    if output == "json":
        out.print(json.dumps(documents if many else documents[0], indent=2), markup=False)
    else:
        text = yaml.safe_dump_all(documents, sort_keys=False) if documents else ""
        out.print(text.rstrip("\n"), markup=False)


def _summary(endpoint: Endpoint, verb: str) -> None:
    out.print(f"endpoint/{endpoint.name} {verb} (generation {endpoint.generation})", markup=False)


WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="Show per-region progress until every target region has the change in place "
        "(exit 1 as soon as it has failed in every region where it is not).",
    ),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds --wait waits before giving up.")
]


def _wait_for(names: list[str], wait: bool, timeout: float) -> None:
    if not wait:
        return
    from servefleet.cli.wait import wait_until_settled

    outcome = _run(lambda service: wait_until_settled(service, names, within=timeout, console=out))
    problems = [
        f"--wait: {failure.endpoint} failed in {failure.region}: {failure.message}"
        for failure in outcome.failures
    ]
    if outcome.pending:
        problems.append(f"--wait: not in place after {timeout:g}s: {', '.join(outcome.pending)}")
    if problems:
        _fail(*problems)


# Verbs.

NameArgument = Annotated[str, typer.Argument(help="Endpoint name.", show_default=False)]


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
            "env": _pairs(env, "--env"),
            "accelerator": accelerator,
            "gpu_count": gpu_count,
            "capacity_type": capacity_type,
            "model_source": model_source,
            "model_path": model_path,
            "namespace": namespace,
            "ingress_path": ingress_path,
            "resources": {
                "requests": _pairs(request, "--request"),
                "limits": _pairs(limit, "--limit"),
            },
            "labels": _pairs(label, "--label"),
            "node_selector": _pairs(node_selector, "--node-selector"),
        }
    )

    async def create(service: EndpointService) -> Endpoint:
        try:
            return await service.deploy(name, spec, region or None, stopped=stopped)
        except UnregisteredRegion as unregistered:
            raise unregistered.named("--region") from None

    endpoint = _run(create)
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
            _fail(f"{file}: {error}")
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
        _fail(*problems)
    if not manifests:
        _fail("no endpoint documents found")
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
    for applied in _run(lambda service: service.apply_all(manifests)):
        out.print(f"endpoint/{applied.endpoint.name} {applied.outcome.value}", markup=False)
    _wait_for([manifest.metadata.name for manifest in manifests], wait, timeout)


OutputOption = Annotated[str, typer.Option("--output", "-o", help="yaml or json.")]


def _check_output(output: str, allowed: tuple[str, ...], *, flag: str = "--output") -> None:
    if output not in allowed:
        _fail(f"{flag}: must be one of {', '.join(allowed)} (got {output!r})")


@app.command(epilog="Example: `servefleet get llm -o yaml > llm.yaml`")
def get(name: NameArgument, output: OutputOption = "yaml") -> None:
    """Print an endpoint's declaration and status, in a form `apply -f` accepts."""
    _check_output(output, ("yaml", "json"))
    endpoint, statuses = _run(lambda service: service.status(name))
    manifest = EndpointManifest.of(endpoint, status_section(endpoint, statuses))
    _print_documents([manifest.document()], output, many=False)


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
    _check_output(output, ("table", "yaml", "json"))
    endpoints = _run(lambda service: service.list_endpoints(region=region))
    if output != "table":
        documents = [EndpointManifest.of(endpoint).document() for endpoint in endpoints]
        _print_documents(documents, output, many=True)
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
    _check_output(output, ("table", "yaml", "json"))
    endpoint, statuses = _run(lambda service: service.status(name))
    section = status_section(endpoint, statuses)
    if output != "table":
        _print_documents(
            [{"name": name, "generation": endpoint.generation, **section}], output, many=False
        )
        return
    out.print(
        f"endpoint/{name}: {endpoint.desired_state.value}, generation {endpoint.generation}",
        markup=False,
    )
    table = Table(box=None, pad_edge=False)
    for column in ("REGION", "STATE", "OBSERVED", "READY", "CANARY", "ROUTED", "MESSAGE"):
        table.add_column(column)
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
    endpoint = _run(lambda service: service.scale(name, replicas))
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

    async def update(service: EndpointService) -> Endpoint:
        try:
            return await service.update_image(name, image, region)
        except (UnregisteredRegion, RegionNotTargeted) as refused:
            raise refused.named("--region") from None

    endpoint = _run(update)
    _summary(endpoint, f"image set to {image}" + (f" in {region}" if region else ""))
    _wait_for([name], wait, timeout)


def _endpoint_verb(
    verb: str,
    help_text: str,
    done: str,
    call: Callable[[EndpointService, str], Awaitable[Endpoint]],
) -> None:
    """Register a verb that takes only an endpoint name (and --wait)."""

    def command(
        name: NameArgument, wait: WaitOption = False, timeout: TimeoutOption = 300.0
    ) -> None:
        _summary(_run(lambda service: call(service, name)), done)
        _wait_for([name], wait, timeout)

    command.__doc__ = help_text
    app.command(name=verb, epilog=f"Example: `servefleet {verb} llm`")(command)


_endpoint_verb(
    "stop",
    "Stop every replica and remove the route; the declaration stays.",
    "stopped",
    EndpointService.stop,
)
_endpoint_verb("start", "Run a stopped endpoint again.", "started", EndpointService.start)


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
    endpoint = _run(
        lambda service: service.canary(
            name,
            image=image,
            weight=weight,
            replicas=replicas,
            command=command or None,
            env=_pairs(env, "--env") or None,
        )
    )
    assert endpoint.spec.canary is not None
    _summary(endpoint, f"canary at {endpoint.spec.canary.weight}%")
    _wait_for([name], wait, timeout)


_endpoint_verb(
    "promote",
    "Make the canary the primary version and remove the canary.",
    "promoted",
    EndpointService.promote,
)
_endpoint_verb(
    "rollback",
    "Remove the canary; all traffic goes to the primary version.",
    "rolled back",
    EndpointService.rollback,
)
_endpoint_verb(
    "delete",
    "Delete an endpoint from every region; the record is purged once all are clean.",
    "marked for deletion",
    EndpointService.delete,
)


@regions_app.command(
    "add",
    epilog="Examples: `servefleet regions add local-1 --kind local`, "
    "`servefleet regions add gpu-box --kind local --pass-env HF_TOKEN`, "
    "`servefleet regions add eu-west --kind kubernetes --context eu-west --namespace llm`, "
    "`servefleet regions add eu-nginx --kind kubernetes --ingress-class nginx "
    "--canary-routing nginx --ingress-annotation nginx.ingress.kubernetes.io/proxy-body-size=8m`",
)
def regions_add(
    name: Annotated[str, typer.Argument(help="Region name.")],
    kind: Annotated[str, typer.Option(help="local or kubernetes.")] = "local",
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig file.")] = None,
    context: Annotated[str | None, typer.Option(help="Kubeconfig context.")] = None,
    namespace: Annotated[str, typer.Option(help="Default namespace.")] = "default",
    ingress_class: Annotated[
        str | None, typer.Option(help="Ingress class of every Ingress (default: alb).")
    ] = None,
    ingress_annotation: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE on every Ingress (repeat); replaces the defaults, which are the "
            "AWS Load Balancer Controller's for class alb and none for other classes."
        ),
    ] = None,
    healthcheck_annotation: Annotated[
        str | None,
        typer.Option(
            help="Annotation key given each endpoint's health path "
            '("" for none; default: the AWS controller\'s for class alb).'
        ),
    ] = None,
    canary_routing: Annotated[
        str | None,
        typer.Option(help="alb (weighted forward action) or nginx (a canary Ingress)."),
    ] = None,
    service_account: Annotated[
        str | None, typer.Option(help="Service account of every endpoint pod.")
    ] = None,
    stage_image: Annotated[
        str | None, typer.Option(help="Image of the model-staging init container.")
    ] = None,
    startup_timeout: Annotated[
        float | None, typer.Option(help="Seconds a replica may take to answer its first probe.")
    ] = None,
    model_volume_size_limit: Annotated[
        str | None, typer.Option(help="sizeLimit of the model volume, e.g. 100Gi.")
    ] = None,
    pods_metrics: Annotated[
        bool | None,
        typer.Option(
            "--pods-metrics/--no-pods-metrics",
            help="Render concurrency/rps autoscaling metrics (needs a custom metrics adapter).",
            show_default=False,
        ),
    ] = None,
    pass_env: Annotated[
        list[str] | None,
        typer.Option(
            help="A variable of `servefleet up`'s environment that a local region's replicas "
            "get besides PATH, HOME, locale, TMPDIR, Python's and CUDA's (repeat)."
        ),
    ] = None,
) -> None:
    """Register a region (or replace its settings: unnamed ones return to their defaults)."""
    try:
        region = Region.model_validate(
            {
                "name": name,
                "kind": kind,
                "kubeconfig": kubeconfig,
                "context": context,
                "namespace": namespace,
                "ingress_class": ingress_class,
                "ingress_annotations": (
                    _pairs(ingress_annotation, "--ingress-annotation")
                    if ingress_annotation
                    else None
                ),
                "healthcheck_annotation": healthcheck_annotation,
                "canary_routing": canary_routing,
                "service_account": service_account,
                "stage_image": stage_image,
                "startup_timeout": startup_timeout,
                "model_volume_size_limit": model_volume_size_limit,
                "pods_metrics": pods_metrics,
                "pass_env": pass_env,
            }
        )
    except ValidationError as error:
        _fail(*invalid_input(error, "region").problems)
    _run(lambda service: service.add_region(region))
    out.print(f"region/{name} registered ({region.kind.value})", markup=False)


@regions_app.command("list", epilog="Example: `servefleet regions list`")
def regions_list(output: Annotated[str, typer.Option("--output", "-o")] = "table") -> None:
    """List registered regions."""
    _check_output(output, ("table", "yaml", "json"))
    regions = _run(lambda service: service.list_regions())
    if output != "table":
        _print_documents([r.model_dump(mode="json") for r in regions], output, many=True)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "KIND", "CONTEXT", "NAMESPACE"):
        table.add_column(column)
    for region in regions:
        table.add_row(region.name, region.kind.value, region.context or "-", region.namespace)
    out.print(table)


@regions_app.command("remove", epilog="Example: `servefleet regions remove local-1`")
def regions_remove(name: Annotated[str, typer.Argument(help="Region name.")]) -> None:
    """Remove a region no endpoint targets."""
    _run(lambda service: service.remove_region(name))
    out.print(f"region/{name} removed", markup=False)


@store_app.command(
    "init", epilog="Example: `SERVEFLEET_STORE=postgresql://... servefleet store init`"
)
def store_init(
    print_definition: Annotated[
        bool,
        typer.Option(
            "--print-definition",
            help="Print the DynamoDB table as a CloudFormation resource (JSON) instead of "
            "creating it, for infrastructure as code.",
        ),
    ] = False,
) -> None:
    """Create or migrate the store's schema (safe to run again)."""
    if print_definition:
        from servefleet.store.dynamodb import cloudformation_definition

        try:
            definition = cloudformation_definition(_state.store_url)
        except ValueError as error:
            _fail(f"--print-definition: {error}")
        out.print(json.dumps(definition, indent=2), markup=False)
        return

    async def nothing(_service: EndpointService) -> None:
        return None

    _run(nothing, init=True)
    out.print(f"store ready: {_redacted(_state.store_url)}", markup=False)


def _redacted(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if separator and at and ":" in credentials:
        return f"{scheme}://{credentials.split(':')[0]}:***@{host}"
    return url


LogFormatOption = Annotated[str, typer.Option(help="text or json.")]
WatchdogThresholdOption = Annotated[
    float, typer.Option(help="Seconds without a ready replica before traffic is withdrawn.")
]
ResyncIntervalOption = Annotated[
    float, typer.Option(help="Seconds between full resyncs (the safety net).")
]
LeaseTtlOption = Annotated[float, typer.Option(help="Seconds a region's leadership lasts.")]
MetricsHostOption = Annotated[
    str, typer.Option(help="Address of the /metrics, /healthz and /readyz listener.")
]
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        help="Serve /metrics (Prometheus), /healthz and /readyz on this port, without a "
        "token (0: any free port, shown at start). Off when not given."
    ),
]


def _check_metrics_port(port: int | None) -> None:
    if port is not None and not 0 <= port <= 65535:
        _fail(f"--metrics-port: must be between 0 and 65535 (got {port})")


@app.command(
    epilog="Examples:\n\n"
    "* `servefleet up --demo` (one local region, a demo endpoint, gateway on :8080)\n\n"
    "* `servefleet up --demo --regions r1,r2 --port 9000`"
)
def up(
    regions: Annotated[
        str,
        typer.Option(
            help="Regions to reconcile, comma-separated: registered ones as they are "
            "(local or kubernetes), new names as local regions."
        ),
    ] = "local",
    demo: Annotated[bool, typer.Option(help="Deploy the demo endpoint to every region.")] = False,
    host: Annotated[str, typer.Option(help="Address the gateways listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the gateway in front of all regions.")] = 8080,
    log_format: LogFormatOption = "text",
    log_dir: Annotated[
        Path | None, typer.Option(help="Replica logs (default: next to the store).")
    ] = None,
    watchdog_threshold: WatchdogThresholdOption = 300.0,
    startup_timeout: Annotated[
        float, typer.Option(help="Seconds a replica may take to answer its first probe.")
    ] = 600.0,
    stage_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds staging a model may take in all, in local regions "
            "(an endpoint's own SERVEFLEET_STAGE_TIMEOUT env wins)."
        ),
    ] = 3600.0,
    resync_interval: ResyncIntervalOption = 300.0,
    lease_ttl: LeaseTtlOption = 15.0,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            help="Address or network (CIDR) of a front proxy whose X-Forwarded-* and "
            "Forwarded headers the gateways believe and extend (repeat); from any other "
            "address they are dropped."
        ),
    ] = None,
    upstream_read_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a replica may stay silent, before its answer and between two "
            "chunks of it, before the client gets 504."
        ),
    ] = 600.0,
    max_connections: Annotated[
        int,
        typer.Option(help="Client connections each gateway holds open at once; more get 503."),
    ] = 1024,
    metrics_host: MetricsHostOption = "127.0.0.1",
    metrics_port: MetricsPortOption = None,
) -> None:
    """Run a reconciler per region (and a gateway per local region), in the foreground."""
    from servefleet.cli.up import UpOptions, serve
    from servefleet.runtime.local.supervisor import LocalSettings

    _check_output(log_format, ("text", "json"), flag="--log-format")
    _check_metrics_port(metrics_port)
    names = [name.strip() for name in regions.split(",") if name.strip()]
    if not names:
        _fail(f"--regions: give at least one region name (got {regions!r})")
    store_url = _state.store_url
    controller, lease = _reconciler_settings(watchdog_threshold, resync_interval, lease_ttl)
    options = UpOptions(
        store_url=store_url,
        regions=names,
        demo=demo,
        host=host,
        port=port,
        log_format=log_format,
        log_dir=log_dir or _default_log_dir(store_url),
        controller=controller,
        lease=lease,
        local=LocalSettings(startup_timeout=startup_timeout, stage_timeout=stage_timeout),
        gateway=_gateway_settings(trusted_proxy or [], upstream_read_timeout, max_connections),
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )
    try:
        serve(options)
    except (StoreError, ValueError, OSError) as error:
        _fail(str(error))


@app.command(
    epilog="Examples:\n\n"
    "* `servefleet reconcile --region eu-west --region us-east`\n\n"
    "* in a pod (see `install-manifests`): `servefleet reconcile --region eu-west --in-cluster`"
)
def reconcile(
    region: Annotated[
        list[str],
        typer.Option("--region", "-r", help="A registered kubernetes region (repeat)."),
    ],
    in_cluster: Annotated[
        bool,
        typer.Option(
            help="Reach every region with the pod's service account. Without it, inside a "
            "pod, regions registered without a kubeconfig use it too."
        ),
    ] = False,
    log_format: LogFormatOption = "text",
    watchdog_threshold: WatchdogThresholdOption = 300.0,
    resync_interval: ResyncIntervalOption = 300.0,
    lease_ttl: LeaseTtlOption = 15.0,
    metrics_host: MetricsHostOption = "127.0.0.1",
    metrics_port: MetricsPortOption = None,
) -> None:
    """Run the reconcilers of kubernetes regions, without gateways, in the foreground."""
    from servefleet.cli.reconcile import cluster_regions, in_cluster_regions
    from servefleet.cli.up import UpOptions, serve
    from servefleet.runtime.local.supervisor import LocalSettings

    _check_output(log_format, ("text", "json"), flag="--log-format")
    _check_metrics_port(metrics_port)
    try:
        regions = cluster_regions(_run(lambda service: service.list_regions()), region)
        in_cluster_names = in_cluster_regions(
            regions, forced=in_cluster, in_pod=bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        )
    except ValueError as error:
        _fail(str(error))
    store_url = _state.store_url
    controller, lease = _reconciler_settings(watchdog_threshold, resync_interval, lease_ttl)
    options = UpOptions(
        store_url=store_url,
        regions=[r.name for r in regions],
        demo=False,
        host="127.0.0.1",
        port=0,
        log_format=log_format,
        log_dir=_default_log_dir(store_url),
        controller=controller,
        lease=lease,
        local=LocalSettings(),
        in_cluster=in_cluster_names,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )
    try:
        serve(options)
    except (StoreError, ValueError, OSError) as error:
        _fail(str(error))


@app.command(
    "install-manifests",
    epilog="Example: `kubectl create secret generic servefleet-store -n llm "
    "--from-literal=url=postgresql://...; servefleet install-manifests --region eu-west "
    "| kubectl apply -f -`",
)
def install_manifests(
    region: Annotated[str, typer.Option("--region", "-r", help="A registered kubernetes region.")],
    image: Annotated[str | None, typer.Option(help="The servefleet image to run.")] = None,
    namespace: Annotated[
        str | None,
        typer.Option(help="Where the reconciler runs (default: the region's namespace)."),
    ] = None,
    store_secret: Annotated[
        str, typer.Option(help="Secret holding the store URL (read into SERVEFLEET_STORE).")
    ] = "servefleet-store",
    store_secret_key: Annotated[str, typer.Option(help="Key of the URL in that Secret.")] = "url",
    create_namespace: Annotated[
        bool, typer.Option(help="Also render the reconciler's Namespace.")
    ] = False,
) -> None:
    """Print the manifests that run a region's reconciler inside its cluster: a
    ServiceAccount, a least-privilege Role and RoleBinding, and a Deployment."""
    from servefleet.cli.reconcile import cluster_regions
    from servefleet.runtime.kubernetes import install

    try:
        (registered,) = cluster_regions(_run(lambda service: service.list_regions()), [region])
    except ValueError as error:
        _fail(str(error))
    fields = {
        "image": image,
        "namespace": namespace or registered.namespace,
        "store_secret": store_secret,
        "store_secret_key": store_secret_key,
        "create_namespace": create_namespace,
    }
    try:
        options = install.InstallOptions.model_validate(
            {key: value for key, value in fields.items() if value is not None}
        )
    except ValidationError as error:
        _fail(*invalid_input(error).problems)
    manifests = install.install_manifests(registered, options)
    out.print(yaml.safe_dump_all(manifests, sort_keys=False).rstrip("\n"), markup=False)


def _gateway_settings(
    trusted_proxies: list[str], upstream_read_timeout: float, max_connections: int
) -> GatewaySettings:
    """The gateways' settings from `up`'s flags, or exit naming the flag that is wrong."""
    import ipaddress
    import math

    from servefleet.runtime.local.gateway import GatewaySettings

    networks = []
    for proxy in trusted_proxies:
        try:
            networks.append(ipaddress.ip_network(proxy, strict=False))
        except ValueError:
            _fail(f"--trusted-proxy: not an IP address or network (got {proxy!r})")
    if not 0 < upstream_read_timeout < math.inf:
        _fail(
            "--upstream-read-timeout: must be a number of seconds more than 0 "
            f"(got {upstream_read_timeout:g})"
        )
    if max_connections < 1:
        _fail(f"--max-connections: must be at least 1 (got {max_connections})")
    return GatewaySettings(
        trusted_proxies=tuple(networks),
        upstream_read_timeout=upstream_read_timeout,
        max_connections=max_connections,
    )


def _reconciler_settings(
    watchdog_threshold: float, resync_interval: float, lease_ttl: float
) -> tuple[ControllerSettings, LeaseSettings]:
    """The controller and lease settings from the flags `up` and `reconcile` share."""
    from servefleet.reconcile.controller import ControllerSettings
    from servefleet.reconcile.leader import LeaseSettings

    if not lease_ttl > 0:
        _fail(f"--lease-ttl: must be more than 0 seconds (got {lease_ttl})")
    return (
        ControllerSettings(watchdog_threshold=watchdog_threshold, resync_interval=resync_interval),
        LeaseSettings(ttl=lease_ttl, renew_interval=lease_ttl / 3, retry_interval=lease_ttl / 10),
    )


def _default_log_dir(store_url: str) -> Path:
    if "://" not in store_url or store_url.startswith("sqlite://"):
        return Path(store_url.removeprefix("sqlite://")).expanduser().parent / "logs"
    return platformdirs.user_log_path("servefleet")


def run() -> None:
    app()


# Last: the request verbs (invoke, health), `import`, `serve` and `tokens` register
# themselves on `app` with the helpers above.
import servefleet.cli.requests  # noqa: E402
import servefleet.cli.serve_api  # noqa: E402, F401
from servefleet.cli import importing, tokens  # noqa: E402, F401
