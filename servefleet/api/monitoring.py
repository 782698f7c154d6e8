"""`/metrics`, `/healthz` and `/readyz`: served without a token (see `auth`).

Prometheus scrapers and kubelet probes carry no bearer token, and none of the three
answers holds a record: `/metrics` carries this process's own series (the API runs
no reconciler or gateway, so its families are present and empty), `/healthz` only
that it answers, `/readyz` whether the store does (`servefleet.health`). Left out
of the OpenAPI document: they are for monitoring, not for API clients.

`RequestMetrics` counts every request by route template (never its path) and
method (one of `METHODS`, else "other": the method is the client's to choose).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servefleet.api.context import store_of
from servefleet.health import readiness
from servefleet.metrics import NO_ROUTE, Metrics, status_class

__all__ = ["MONITORING_PATHS", "RequestMetrics", "router"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registered: Metrics = request.app.state.metrics
    return Response(generate_latest(registered.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"alive": True}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    ready, document = await readiness(store_of(request))
    return JSONResponse(document, status_code=200 if ready else 503)


MONITORING_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


class RequestMetrics:
    """Counts each HTTP request in `metrics` once its answer is complete."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers for an exception escaping the app

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            # FastAPI puts the matched route in the scope while routing.
            matched = scope.get("route")
            route = getattr(matched, "path", NO_ROUTE)
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.api_requests.labels(route, method, status_class(status)).inc()
            self.metrics.api_latency.labels(route).observe(time.perf_counter() - started)
