"""`servefleet regions add|list|remove`: the regions endpoints may target."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from servefleet.cli.app import regions_app
from servefleet.cli.connect import run_on_fleet
from servefleet.cli.options import key_value_pairs
from servefleet.cli.output import check_output, fail, out, print_documents
from servefleet.spec import Region, invalid_input

__all__ = [
    "regions_add",
    "regions_drain",
    "regions_list",
    "regions_remove",
    "regions_undrain",
]


@regions_app.command(
    "add",
    epilog="Examples: `servefleet regions add local-1 --kind local`, "
    "`servefleet regions add gpu-box --kind local --pass-env HF_TOKEN`, "
    "`servefleet regions add eu-west --kind kubernetes --context eu-west --namespace llm`, "
    "`servefleet regions add eu-nginx --kind kubernetes --ingress-class nginx "
    "--canary-routing nginx --ingress-annotation nginx.ingress.kubernetes.io/proxy-body-size=8m`, "
    "`servefleet regions add eu-keda --kind kubernetes --autoscaler keda "
    "--prometheus-url http://prometheus.monitoring:9090`, "
    "`servefleet regions add eu-west --kind kubernetes "
    "--ingress-url https://llm.eu-west.example.com`, "
    "`servefleet regions add eu-canaries --kind kubernetes --canary-routing nginx "
    "--ingress-class nginx --prometheus-url http://prometheus.monitoring:9090`",
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
    concurrency_metric: Annotated[
        str | None,
        typer.Option(
            help="Pods metric a concurrency target is rendered on (default "
            "servefleet_concurrency), e.g. vllm:num_requests_running.",
            show_default=False,
        ),
    ] = None,
    rps_metric: Annotated[
        str | None,
        typer.Option(
            help="Pods metric an rps target is rendered on (default servefleet_rps).",
            show_default=False,
        ),
    ] = None,
    autoscaler: Annotated[
        str | None,
        typer.Option(
            help="hpa (a HorizontalPodAutoscaler; the default) or keda (a KEDA "
            "ScaledObject, which can scale to zero; needs --prometheus-url).",
            show_default=False,
        ),
    ] = None,
    prometheus_url: Annotated[
        str | None,
        typer.Option(
            help="The region's Prometheus, e.g. http://prometheus.monitoring:9090: what a "
            "keda region's concurrency/rps triggers query, and where a rollout reads each "
            "version's requests, 5xx answers and latency (with nginx canary routing, or "
            "with --requests-query and --latency-query).",
            show_default=False,
        ),
    ] = None,
    requests_query: Annotated[
        str | None,
        typer.Option(
            help="PromQL of one version's requests over {{window}}, a sample per `status` "
            "label; placeholders {{namespace}}, {{ingress}}, {{service}}, {{canary}}, "
            "{{window}} (default: ingress-nginx's nginx_ingress_controller_requests).",
            show_default=False,
        ),
    ] = None,
    latency_query: Annotated[
        str | None,
        typer.Option(
            help="PromQL of one version's answers per latency bucket over {{window}}, a "
            "cumulative sample per `le` label (default: ingress-nginx's "
            "nginx_ingress_controller_request_duration_seconds_bucket).",
            show_default=False,
        ),
    ] = None,
    ingress_url: Annotated[
        str | None,
        typer.Option(
            help="Where a kubernetes region's Ingress answers, e.g. "
            "https://llm.eu-west.example.com: the global entry of `servefleet up` and "
            "`invoke`/`health`/`models -r` reach the region there.",
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
                    key_value_pairs(ingress_annotation, "--ingress-annotation")
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
                "concurrency_metric": concurrency_metric,
                "rps_metric": rps_metric,
                "autoscaler": autoscaler,
                "prometheus_url": prometheus_url,
                "ingress_url": ingress_url,
                "requests_query": requests_query,
                "latency_query": latency_query,
                "pass_env": pass_env,
            }
        )
    except ValidationError as error:
        fail(*invalid_input(error, "region").problems)
    run_on_fleet(lambda fleet: fleet.add_region(region))
    out.print(f"region/{name} registered ({region.kind.value})", markup=False)


@regions_app.command("list", epilog="Example: `servefleet regions list`")
def regions_list(output: Annotated[str, typer.Option("--output", "-o")] = "table") -> None:
    """List registered regions."""
    check_output(output, ("table", "yaml", "json"))
    regions = run_on_fleet(lambda fleet: fleet.list_regions())
    if output != "table":
        print_documents([r.model_dump(mode="json") for r in regions], output, many=True)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "KIND", "CONTEXT", "NAMESPACE", "INGRESS", "DRAINED"):
        table.add_column(column)
    for region in regions:
        table.add_row(
            *(region.name, region.kind.value, region.context or "-", region.namespace),
            *(region.ingress_url or "-", "yes" if region.drained else "no"),
        )
    out.print(table)


@regions_app.command("drain", epilog="Example: `servefleet regions drain eu-west`")
def regions_drain(name: Annotated[str, typer.Argument(help="Region name.")]) -> None:
    """Send the region no new request through the global entry (those in flight finish)."""
    run_on_fleet(lambda fleet: fleet.drain_region(name, drained=True))
    out.print(f"region/{name} drained", markup=False)


@regions_app.command("undrain", epilog="Example: `servefleet regions undrain eu-west`")
def regions_undrain(name: Annotated[str, typer.Argument(help="Region name.")]) -> None:
    """Let the global entry send the region requests again."""
    run_on_fleet(lambda fleet: fleet.drain_region(name, drained=False))
    out.print(f"region/{name} undrained", markup=False)


@regions_app.command("remove", epilog="Example: `servefleet regions remove local-1`")
def regions_remove(name: Annotated[str, typer.Argument(help="Region name.")]) -> None:
    """Remove a region no endpoint targets."""
    run_on_fleet(lambda fleet: fleet.remove_region(name))
    out.print(f"region/{name} removed", markup=False)
