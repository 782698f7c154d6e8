"""The HTTP API: every operation of `servefleet.service` under `/v1`, behind tokens."""

from __future__ import annotations

from servefleet.api.app import PUBLIC_PATHS, create_app

__all__ = ["PUBLIC_PATHS", "create_app"]
