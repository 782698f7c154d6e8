"""`servefleet up` and `servefleet reconcile`: the long-running commands, their flags
and the settings made of them; the work itself is `cli/up.py`'s (imported when
one of them runs, so the other commands do not load the reconcilers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import platformdirs
import typer

from servefleet.cli.app import app, state
from servefleet.cli.connect import require_store, run_on_store
from servefleet.cli.output import LogFormatOption, check_output, fail
from servefleet.service import EndpointService
from servefleet.store import StoreError

if TYPE_CHECKING:
    from servefleet.reconcile.leader import LeaseSettings
    from servefleet.reconcile.settings import ControllerSettings
    from servefleet.runtime.local.gateway import GatewaySettings

__all__ = ["reconcile", "up"]

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
        fail(f"--metrics-port: must be between 0 and 65535 (got {port})")


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
    hold_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a request may wait for an endpoint starting from zero replicas "
            "before a 503 saying it is starting."
        ),
    ] = 60.0,
    max_held: Annotated[
        int,
        typer.Option(
            help="Requests each gateway holds at once per endpoint starting from zero; "
            "more get that 503 at once."
        ),
    ] = 100,
    metrics_host: MetricsHostOption = "127.0.0.1",
    metrics_port: MetricsPortOption = None,
    api_port: Annotated[
        int,
        typer.Option(
            help="Loopback port of the HTTP API and its dashboard, as `servefleet serve` "
            "gives them (0: any free port, shown at start; tokens as for serve)."
        ),
    ] = 8000,
    api: Annotated[bool, typer.Option(help="Serve the API and dashboard (see --api-port).")] = True,
) -> None:
    """Run a reconciler per region (and a gateway per local region), in the foreground."""
    require_store("servefleet up")
    from servefleet.cli.up import UpOptions, serve
    from servefleet.runtime.local.supervisor import LocalSettings

    check_output(log_format, ("text", "json"), flag="--log-format")
    _check_metrics_port(metrics_port)
    if not 0 <= api_port <= 65535:
        fail(f"--api-port: must be between 0 and 65535 (got {api_port})")
    names = [name.strip() for name in regions.split(",") if name.strip()]
    if not names:
        fail(f"--regions: give at least one region name (got {regions!r})")
    store_url = state.store_url
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
        gateway=_gateway_settings(
            trusted_proxy or [], upstream_read_timeout, max_connections, hold_timeout, max_held
        ),
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        api_port=api_port if api else None,
    )
    try:
        serve(options)
    except (StoreError, ValueError, OSError) as error:
        fail(str(error))


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
    require_store("servefleet reconcile")
    from servefleet.cli.reconcile import cluster_regions, in_cluster_regions
    from servefleet.cli.up import UpOptions, serve
    from servefleet.runtime.local.supervisor import LocalSettings

    check_output(log_format, ("text", "json"), flag="--log-format")
    _check_metrics_port(metrics_port)
    try:
        regions = cluster_regions(
            run_on_store(lambda store: EndpointService(store).list_regions()), region
        )
        in_cluster_names = in_cluster_regions(
            regions, forced=in_cluster, in_pod=bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        )
    except ValueError as error:
        fail(str(error))
    store_url = state.store_url
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
        fail(str(error))


def _gateway_settings(
    trusted_proxies: list[str],
    upstream_read_timeout: float,
    max_connections: int,
    hold_timeout: float,
    max_held: int,
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
            fail(f"--trusted-proxy: not an IP address or network (got {proxy!r})")
    if not 0 < upstream_read_timeout < math.inf:
        fail(
            "--upstream-read-timeout: must be a number of seconds more than 0 "
            f"(got {upstream_read_timeout:g})"
        )
    if max_connections < 1:
        fail(f"--max-connections: must be at least 1 (got {max_connections})")
    if not 0 < hold_timeout < math.inf:
        fail(f"--hold-timeout: must be a number of seconds more than 0 (got {hold_timeout:g})")
    if max_held < 1:
        fail(f"--max-held: must be at least 1 (got {max_held})")
    return GatewaySettings(
        trusted_proxies=tuple(networks),
        upstream_read_timeout=upstream_read_timeout,
        max_connections=max_connections,
        hold_timeout=hold_timeout,
        max_held=max_held,
    )


def _reconciler_settings(
    watchdog_threshold: float, resync_interval: float, lease_ttl: float
) -> tuple[ControllerSettings, LeaseSettings]:
    """The controller and lease settings from the flags `up` and `reconcile` share."""
    from servefleet.reconcile.leader import LeaseSettings
    from servefleet.reconcile.settings import ControllerSettings

    if not lease_ttl > 0:
        fail(f"--lease-ttl: must be more than 0 seconds (got {lease_ttl})")
    return (
        ControllerSettings(watchdog_threshold=watchdog_threshold, resync_interval=resync_interval),
        LeaseSettings(ttl=lease_ttl, renew_interval=lease_ttl / 3, retry_interval=lease_ttl / 10),
    )


def _default_log_dir(store_url: str) -> Path:
    if "://" not in store_url or store_url.startswith("sqlite://"):
        return Path(store_url.removeprefix("sqlite://")).expanduser().parent / "logs"
    return platformdirs.user_log_path("servefleet")
