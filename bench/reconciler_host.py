"""The reconciler under measurement, in a process of its own:

    python -m bench.reconciler_host STORE_URL REGION...

What `servefleet up` runs for Kubernetes regions: one store connection and, per
region, `run_region` (leader election through a Lease in the region's namespace,
then a `KubernetesRuntime`
from the region's registered kubeconfig under a `Controller` with the default
settings, the client-side rate included). The store is wrapped in a counting proxy.

Says `{"started_s": ...}` once every region leads and its runtime has listed, then
answers `snapshot`: store calls so far, the controllers' passes, runtime and status writes,
whether every queue is idle, and its own CPU time and memory (see `bench.child`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from bench.child import count_collections, die_with_parent, own_usage, serve_commands
from bench.counting import CountingStore
from servefleet.collector import pace_for_a_server
from servefleet.reconcile.controller import Controller
from servefleet.reconcile.leader import LeaseSettings
from servefleet.reconcile.region import run_region
from servefleet.reconcile.settings import ControllerSettings
from servefleet.runtime.base import Runtime
from servefleet.runtime.kubernetes.cluster import ClusterSettings, KubernetesRuntime
from servefleet.runtime.kubernetes.lease import KubernetesLease
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from servefleet.runtime.local.gateway import event_loop_factory
from servefleet.service import utc_now
from servefleet.spec import Region
from servefleet.store import open_store

SETTINGS = ControllerSettings()
LEASE = LeaseSettings()


async def main(options: argparse.Namespace) -> None:
    began = time.perf_counter()
    cluster = ClusterSettings()
    store = CountingStore(await open_store(options.store))
    controllers: dict[str, Controller] = {}
    everyone_leads = asyncio.Event()
    holder = f"{socket.gethostname()}:{os.getpid()}:bench"

    @asynccontextmanager
    async def open_runtime(region: Region) -> AsyncIterator[Runtime]:
        runtime = await KubernetesRuntime.from_kubeconfig(
            region.name,
            RegionSettings(namespace=region.namespace),
            region.kubeconfig,
            context=region.context,
            cluster=cluster,
        )
        try:
            await runtime.start()
            yield runtime
        finally:
            await runtime.close()

    def on_controller(region: str, controller: Controller) -> None:
        controllers[region] = controller
        if len(controllers) == len(options.regions):
            everyone_leads.set()

    async def handle(command: str) -> dict[str, Any]:
        if command != "snapshot":
            raise ValueError(f"unknown command {command!r}")
        return {
            "store_calls": dict(store.snapshot()),
            "runtime_writes": sum(c.runtime_writes for c in controllers.values()),
            "status_writes": sum(c.status_writes for c in controllers.values()),
            "passes": sum(sum(c.outcomes.values()) for c in controllers.values()),
            "idle": all(c.queue.idle for c in controllers.values()),
            **own_usage(),
        }

    regions: list[asyncio.Task[None]] = []
    async with AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        async with asyncio.TaskGroup() as tasks:
            for name in options.regions:
                region = await store.get_region(name)
                # As `servefleet up`: a kubernetes region elects through a Lease there.
                lease = await KubernetesLease.from_kubeconfig(
                    region.namespace, region.name, region.kubeconfig, context=region.context
                )
                stack.push_async_callback(lease.close)
                task = tasks.create_task(
                    run_region(
                        store,
                        name,
                        functools.partial(open_runtime, region),
                        holder=holder,
                        settings=SETTINGS,
                        lease=LEASE,
                        clock=utc_now,
                        on_controller=functools.partial(on_controller, name),
                        leases=lease,
                    ),
                    name=f"region-{name}",
                )
                regions.append(task)
            await everyone_leads.wait()
            hello = {"started_s": round(time.perf_counter() - began, 3), **own_usage()}
            await serve_commands(hello, handle)
            for task in regions:  # stdin closed or SIGTERM: stop every region
                task.cancel()


if __name__ == "__main__":
    die_with_parent()
    count_collections()
    pace_for_a_server()  # as servefleet's own servers
    parser = argparse.ArgumentParser(prog="python -m bench.reconciler_host")
    parser.add_argument("store")
    parser.add_argument("regions", nargs="+")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main(parser.parse_args()))
