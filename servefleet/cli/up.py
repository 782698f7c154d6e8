"""`servefleet up`: everything one machine needs, in the foreground.

The composition root of the local product: the store, one gateway and one
leader-elected reconciler per local region, a global entry point in front of all
regions, the HTTP API and its dashboard on loopback (`--api-port`), and with
`--demo` a demo endpoint deployed to every region. Ctrl-C (or
SIGTERM) cancels the reconcilers, whose runtimes stop every replica on the way out.

One `Metrics` per process, shared by its gateways and reconcilers, is what the
monitoring listener (`--metrics-port`, `cli/monitoring.py`) exposes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from servefleet.api.server import ServerSettings, serving_api
from servefleet.cli.gateways import record_gateways
from servefleet.cli.logs import configure_logging
from servefleet.cli.monitoring import MonitoringServer
from servefleet.cli.output import err, out
from servefleet.cli.region_table import EndpointRoutes, read_region_table, refresh_region_table
from servefleet.collector import pace_for_a_server
from servefleet.metrics import Metrics
from servefleet.reconcile.leader import LeaderElection, LeaseSettings, StoreLeases
from servefleet.reconcile.region import run_region
from servefleet.reconcile.settings import Clock, ControllerSettings
from servefleet.rollout_driver import ROLLOUT_LEASE, drive_rollouts
from servefleet.runtime.base import Runtime
from servefleet.runtime.local.gateway import Gateway, GatewaySettings, Router, event_loop_factory
from servefleet.runtime.local.global_entry import EntrySettings, GlobalEntry
from servefleet.runtime.local.supervisor import LocalRuntime, LocalSettings
from servefleet.service import EndpointService, utc_now
from servefleet.spec import EndpointManifest, EndpointSpec, Region, RegionKind
from servefleet.store import RegionNotFound, Store, open_store

if TYPE_CHECKING:
    from servefleet.runtime.kubernetes.lease import KubernetesLease

__all__ = ["Running", "UpOptions", "run", "serve"]

log = logging.getLogger("servefleet")

DEMO_ENDPOINT = "demo"


@dataclass(frozen=True)
class UpOptions:
    store_url: str
    regions: list[str]
    demo: bool
    host: str
    port: int
    log_format: str
    log_dir: Path
    controller: ControllerSettings
    lease: LeaseSettings
    local: LocalSettings
    in_cluster: frozenset[str] = frozenset()
    """Kubernetes regions reached with the pod's service account, not a kubeconfig."""
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    """Limits, timeouts and trusted proxies of every gateway (`up --max-connections`,
    `--upstream-read-timeout`, `--trusted-proxy`)."""
    entry: EntrySettings = field(default_factory=EntrySettings)
    """How the global entry learns of the other regions (refresh and probe periods)."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    """Where `/metrics`, `/healthz` and `/readyz` are served (0: any free port);
    None: not served."""
    api_port: int | None = None
    """The loopback port of the HTTP API and dashboard (0: any free port); None: not
    served."""


@dataclass
class Running:
    """What `run` has started, for a caller that embeds it (the scenario tests):
    the bound URLs (real ports, also under port 0), and the runtime of each region
    while this process leads it."""

    gateway_url: str
    region_urls: dict[str, str]
    runtimes: dict[str, Runtime] = field(default_factory=dict)
    metrics_url: str = ""
    """The monitoring listener's base URL; empty when it is off."""
    api_url: str = ""
    """The API's base URL (the dashboard is its `/`); empty when it is off."""


def demo_manifest(regions: list[str]) -> EndpointManifest:
    """The demo endpoint: two replicas of the bundled demo server in every region."""
    return EndpointManifest.model_validate(
        {
            "metadata": {"name": DEMO_ENDPOINT},
            "regions": regions,
            "spec": EndpointSpec(
                command=[sys.executable, "-m", "servefleet.demo", "--port", "{port}"],
                replicas=2,
                health_path="/health",
            ),
        }
    )


async def _regions(service: EndpointService, store: Store, names: list[str]) -> list[Region]:
    """The regions to run: registered ones as they are, new names as local regions."""
    regions = []
    for name in names:
        try:
            regions.append(await store.get_region(name))
        except RegionNotFound:
            region = Region(name=name, kind=RegionKind.LOCAL)
            await service.add_region(region)
            log.info("registered local region %s", name)
            regions.append(region)
    return regions


@asynccontextmanager
async def _cluster_runtime(
    region: Region, *, in_cluster: bool, metrics: Metrics
) -> AsyncIterator[Runtime]:
    # Imported only for a kubernetes region: the client's models take about 1 s of
    # CPU to import, which every `up` of local regions alone would pay at start.
    from servefleet.runtime.kubernetes.cluster import KubernetesRuntime
    from servefleet.runtime.kubernetes.install import region_settings
    from servefleet.runtime.kubernetes.traffic_queries import traffic_queries

    settings = region_settings(region)
    traffic = traffic_queries(region)
    if in_cluster:
        runtime = KubernetesRuntime.in_cluster(
            region.name, settings, metrics=metrics, traffic=traffic
        )
    else:
        runtime = await KubernetesRuntime.from_kubeconfig(
            region.name,
            settings,
            region.kubeconfig,
            context=region.context,
            metrics=metrics,
            traffic=traffic,
        )
    try:
        await runtime.start()
        yield runtime
    finally:
        await runtime.close()


async def _cluster_lease(region: Region, *, in_cluster: bool, clock: Clock) -> KubernetesLease:
    """The Lease through which a kubernetes region's reconcilers elect a leader."""
    from servefleet.runtime.kubernetes.lease import KubernetesLease  # as in _cluster_runtime

    if in_cluster:
        return KubernetesLease.in_cluster(region.namespace, region.name, clock=clock)
    return await KubernetesLease.from_kubeconfig(
        region.namespace, region.name, region.kubeconfig, context=region.context, clock=clock
    )


CLOCK_OFFSET_VARIABLE = "SERVEFLEET_TEST_CLOCK_OFFSET"
"""A test hook, not a setting: seconds added to this process's wall clock (`python
-m chaos`'s clock-skew scenarios run a reconciler 30 s ahead through it)."""


def _clock() -> Clock:
    """The wall clock of the reconcilers and the Lease timestamps: `utc_now`, shifted
    by `SERVEFLEET_TEST_CLOCK_OFFSET` seconds when that is set, as on a host whose
    clock is off. The leases do not depend on it: PostgreSQL's and SQLite's expire
    by the database's clock, a Kubernetes Lease by this process's monotonic clock.
    (DynamoDB's expire by this host's real clock, which the hook leaves alone: that
    store needs synchronised clocks.)"""
    offset = float(os.environ.get(CLOCK_OFFSET_VARIABLE) or 0)
    if not offset:
        return utc_now
    log.warning("%s=%g: this process's clock is shifted", CLOCK_OFFSET_VARIABLE, offset)
    shift = timedelta(seconds=offset)
    return lambda: utc_now() + shift


async def run(options: UpOptions, started: Callable[[Running], None] | None = None) -> None:
    """Run everything until cancelled; `started` is called once the gateways listen
    and every region's reconciler is on its way."""
    _check_local_settings(options.local)
    store = await open_store(options.store_url)
    metrics = Metrics()
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    clock = _clock()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        service = EndpointService(store)
        # Before anything is registered: a port it cannot have changes nothing.
        api_url = await _serve_api(stack, store, options)
        regions = await _regions(service, store, options.regions)
        local = [region.name for region in regions if region.kind is RegionKind.LOCAL]
        if options.demo and not local:
            raise ValueError("--demo: the demo endpoint runs in local regions; name one")
        # Gateways serve local regions; a cluster's traffic goes through its Ingress.
        routers = {name: Router(name, leading=False) for name in local}
        urls: dict[str, str] = {}
        for name, router in routers.items():
            gateway = Gateway([router], options.gateway, metrics=metrics)
            urls[name] = await gateway.start(options.host, 0)
            stack.push_async_callback(gateway.close)
        # The global entry: every local region, and every Kubernetes region the store
        # gives an Ingress address (`global_entry`); without either there is nothing
        # for it to serve.
        entry_url = ""
        entry: GlobalEntry | None = None
        endpoint_routes = EndpointRoutes(store)
        stack.push_async_callback(endpoint_routes.close)
        table = await read_region_table(store, endpoint_routes)
        if routers or table.ingress:
            entry = GlobalEntry(
                list(routers.values()), options.gateway, options.entry, metrics=metrics
            )
            entry.update(table)
            entry_url = await entry.start(options.host, options.port)
            stack.push_async_callback(entry.close)
        running = Running(entry_url, urls, api_url=api_url)
        if options.metrics_port is not None:
            monitoring = MonitoringServer(metrics, store, [region.name for region in regions])
            running.metrics_url = await monitoring.start(options.metrics_host, options.metrics_port)
            stack.push_async_callback(monitoring.close)

        publishing = asyncio.Lock()
        published: set[Path] = set()

        async def publish_gateways() -> None:
            """Tell `servefleet invoke`/`health` of this store where the gateways are and
            which regions this process leads (a standby's gateway only refuses). One at
            a time, so that the last leadership change is the one on disk."""
            async with publishing:
                leading = sorted(running.runtimes)
                try:
                    record = await asyncio.to_thread(
                        record_gateways, options.store_url, entry_url, urls, leading
                    )
                except OSError as error:
                    log.warning("cannot record the gateway URLs for the CLI: %s", error)
                    return
                if record not in published:
                    published.add(record)
                    stack.push_async_callback(asyncio.to_thread, record.unlink, missing_ok=True)

        if urls:
            await publish_gateways()

        if options.demo:
            applied = await service.apply(demo_manifest(local))
            log.info("demo endpoint %s", applied.outcome.value)

        @asynccontextmanager
        async def open_runtime(region: Region) -> AsyncIterator[Runtime]:
            opened: AbstractAsyncContextManager[Runtime]
            if region.kind is RegionKind.LOCAL:
                opened = _local_runtime(region, routers[region.name], options, metrics)
            else:
                opened = _cluster_runtime(
                    region, in_cluster=region.name in options.in_cluster, metrics=metrics
                )
            async with opened as runtime:
                running.runtimes[region.name] = runtime
                if region.kind is RegionKind.LOCAL:
                    await publish_gateways()
                try:
                    yield runtime
                finally:
                    if running.runtimes.get(region.name) is runtime:
                        del running.runtimes[region.name]
                    if region.kind is RegionKind.LOCAL:
                        await publish_gateways()

        # A kubernetes region's reconcilers elect their leader through a Lease in its
        # namespace; a local region's through the store's leases.
        leases: dict[str, KubernetesLease] = {}
        for region in regions:
            if region.kind is not RegionKind.LOCAL:
                in_cluster = region.name in options.in_cluster
                leases[region.name] = await _cluster_lease(
                    region, in_cluster=in_cluster, clock=clock
                )
                stack.push_async_callback(leases[region.name].close)

        _announce(running, regions, options)
        async with asyncio.TaskGroup() as tasks:
            for region in regions:
                tasks.create_task(
                    run_region(
                        store,
                        region.name,
                        functools.partial(open_runtime, region),
                        holder=holder,
                        settings=options.controller,
                        lease=options.lease,
                        clock=clock,
                        leases=leases.get(region.name),
                        metrics=metrics,
                    ),
                    name=f"region-{region.name}",
                )
            # One `up` process at a time moves every rollout on (`rollout_driver`).
            rollouts = LeaderElection(StoreLeases(store, ROLLOUT_LEASE), holder, options.lease)
            tasks.create_task(
                rollouts.run(functools.partial(drive_rollouts, store, clock=clock)),
                name="rollouts",
            )
            if entry is not None:
                tasks.create_task(
                    refresh_region_table(
                        store, entry, endpoint_routes, options.entry.refresh_interval
                    ),
                    name="global-entry-regions",
                )
            if started is not None:
                started(running)


async def _serve_api(stack: AsyncExitStack, store: Store, options: UpOptions) -> str:
    """The API and dashboard beside the reconcilers, until `stack` closes; its URL, or
    "" when off. Loopback only: `servefleet serve` is how a team reaches it over the
    network, with TLS. Its requests are not logged one by one."""
    if options.api_port is None:
        return ""
    settings = ServerSettings(
        host="127.0.0.1", port=options.api_port, access_log=False, uvicorn_logging=False
    )
    try:
        return await stack.enter_async_context(serving_api(store, settings))
    except OSError as error:
        raise OSError(
            f"--api-port: cannot listen on {settings.host}:{settings.port}: "
            f"{error.strerror or error}"
        ) from error


def _check_local_settings(settings: LocalSettings) -> None:
    """A ValueError naming the `up` flag of a setting no local region can run with."""
    timeouts = {
        "--startup-timeout": settings.startup_timeout,
        "--stage-timeout": settings.stage_timeout,
    }
    for flag, seconds in timeouts.items():
        if not 0 < seconds < math.inf:
            raise ValueError(f"{flag}: must be a number of seconds more than 0 (got {seconds:g})")


@asynccontextmanager
async def _local_runtime(
    region: Region, router: Router, options: UpOptions, metrics: Metrics
) -> AsyncIterator[Runtime]:
    runtime = LocalRuntime(
        region.name,
        router,
        log_dir=options.log_dir,
        settings=options.local,
        pass_env=region.pass_env or (),
        metrics=metrics,
    )
    try:
        yield runtime
    finally:
        await runtime.close()


def _announce(running: Running, regions: list[Region], options: UpOptions) -> None:
    entry_url, urls = running.gateway_url, running.region_urls
    out.print(f"servefleet is up: store {options.store_url}", markup=False)
    if entry_url:
        out.print(f"  gateway (every region): {entry_url}", markup=False)
    for region in regions:
        where = urls.get(region.name) or (
            f"kubernetes, namespace {region.namespace}"
            + (f", context {region.context}" if region.context else "")
        )
        out.print(f"  region {region.name}: {where}", markup=False)
    if urls:
        out.print(f"  replica logs: {options.log_dir}", markup=False)
    if running.api_url:
        out.print(
            f"  API and dashboard: {running.api_url}/ (a token: servefleet tokens create "
            "--name NAME --role admin)",
            markup=False,
        )
    if running.metrics_url:
        out.print(f"  metrics: {running.metrics_url}/metrics (and /healthz, /readyz)", markup=False)
    if options.demo:
        out.print("try:", markup=False)
        out.print(
            f"  curl -s {entry_url}/inference/{DEMO_ENDPOINT}/v1/chat/completions "
            "-H 'content-type: application/json' "
            '-d \'{"model": "demo", "messages": [{"role": "user", "content": "hello"}]}\'',
            markup=False,
        )
    out.print("Ctrl-C stops everything.", markup=False)


def serve(options: UpOptions) -> None:
    """Run until SIGINT (Ctrl-C) or SIGTERM, then shut down cleanly and exit 0.

    Both signals get a handler of ours, whatever the process inherited: Python
    installs its Ctrl-C handler only when SIGINT is not ignored at start, and it is
    ignored in a script's background job, under `nohup` and under some supervisors,
    where `kill -INT` would otherwise do nothing."""
    configure_logging(options.log_format)
    pace_for_a_server()

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for stop in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(stop, task.cancel)
        try:
            await run(options)
        except asyncio.CancelledError:
            log.info("shutting down")
        err.print("stopped", markup=False)

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())
