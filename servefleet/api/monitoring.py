"""`/metrics`, `/healthz` and `/readyz`: served without a token (see `auth`).

Prometheus scrapers and kubelet probes carry no bearer token, and none of the three
answers holds a record: `/metrics` carries this process's own series (the API runs
no reconciler or gateway, so its families are present and empty), `/healthz` only
that it answers, `/readyz` whether the store does (`servefleet.health`). Left out
of the OpenAPI document: they are for monitoring, not for API clients.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from servefleet.api.context import store_of
from servefleet.health import readiness
from servefleet.metrics import Metrics

__all__ = ["MONITORING_PATHS", "router"]

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
