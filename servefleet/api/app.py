"""The app factory: one FastAPI app over one open store."""

from __future__ import annotations

from fastapi import FastAPI

from servefleet.api import dashboard, endpoints, monitoring, regions, tokens, watch
from servefleet.api.errors import install_error_handlers
from servefleet.api.limits import BodyLimit
from servefleet.metrics import Metrics
from servefleet.store import Store

__all__ = ["PUBLIC_PATHS", "create_app"]

PUBLIC_PATHS = (
    frozenset({"/openapi.json"}) | monitoring.MONITORING_PATHS | dashboard.DASHBOARD_PATHS
)
"""The only paths served without a token: the API's description, the monitoring
routes (`monitoring`) and the dashboard's files (`dashboard`), none of which holds a
record."""


MAX_BODY_BYTES = 16 * 1024 * 1024
"""Room for `apply` of thousands of declarations; DynamoDB holds 400 KB a record."""


def create_app(
    store: Store,
    *,
    watch_status_interval: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    metrics: Metrics | None = None,
) -> FastAPI:
    """The API over `store`, which the caller opens before and closes after serving.
    `watch_status_interval`: seconds between a watch stream's looks at the statuses;
    `max_body_bytes`: larger request bodies are answered 413; `metrics`: what
    `/metrics` shows (by default families of the app's own)."""
    # The routes themselves, not the routers (`include_router`): so `app.routes` lists
    # every route with the role it needs, which `tests/api/test_auth.py` walks.
    routes = [
        *endpoints.router.routes,
        *regions.router.routes,
        *tokens.router.routes,
        *watch.router.routes,
        *monitoring.router.routes,
        *dashboard.router.routes,
    ]
    app = FastAPI(
        routes=routes,
        title="servefleet",
        summary="Keep inference endpoints running in many regions from one declaration.",
        version="1",
        openapi_url="/openapi.json",
        # The interactive pages load their scripts from a CDN; the document is enough.
        docs_url=None,
        redoc_url=None,
    )
    app.state.store = store
    app.state.status_interval = watch_status_interval
    metrics = metrics or Metrics()
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    # Outermost, so that refusals before routing (413) are counted too.
    app.add_middleware(monitoring.RequestMetrics, metrics=metrics)
    return app
