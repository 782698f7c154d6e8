"""The `servefleet` command: kubectl-like verbs over `EndpointService`.

The entry point (`run`). Every command module registers its verbs on the apps of
`app.py` when imported; this module imports them all, and nothing imports it.
"""

from __future__ import annotations

from servefleet.cli import (  # noqa: F401 - imported for the verbs they register
    autoscale,
    endpoints,
    health,
    importing,
    install,
    invoke,
    login,
    models,
    reconcilers,
    regions,
    rollout,
    serve_api,
    served,
    store,
    tokens,
)
from servefleet.cli.app import app

__all__ = ["app", "run"]


def run() -> None:
    app()
