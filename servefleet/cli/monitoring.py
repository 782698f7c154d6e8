"""The monitoring listener of `up` and `reconcile` (`--metrics-port`): `/metrics`
in Prometheus's text format (prometheus_client's own exposition), `/healthz` and
`/readyz` (`servefleet.health`).

Off unless `--metrics-port` is given: several `up` processes on one machine (one
per store, the tests) would otherwise fight over a fixed port. It listens on
loopback unless `--metrics-host` says otherwise, and asks for no token, as
Prometheus scrapers and kubelet probes carry none: put it on an address only the
scraper reaches, since its labels name the endpoints and regions.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from servefleet.health import readiness
from servefleet.metrics import Metrics
from servefleet.store import Store

__all__ = ["MonitoringServer"]


class MonitoringServer:
    def __init__(self, metrics: Metrics, store: Store, regions: Sequence[str]) -> None:
        self._metrics = metrics
        self._store = store
        self._regions = tuple(regions)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> str:
        """Listen on `host:port` (0: any free port) and return the base URL."""
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self._metrics.registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await self.close()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"http://{shown}:{bound_port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, document = await readiness(self._store, self._regions, self._metrics.leadership)
        return web.json_response(document, status=200 if ready else 503)
