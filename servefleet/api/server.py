"""Serving the API with uvicorn on the running event loop: on its own
(`servefleet serve`), or beside other work (`servefleet up`, `serving_api`)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from servefleet.api.app import MAX_BODY_BYTES, create_app
from servefleet.store import Store

__all__ = ["ServerSettings", "api_server", "serving_api"]


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    """0 for any free port (tests)."""
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    access_log: bool = True
    watch_status_interval: float = 1.0
    """Seconds between a watch stream's looks at the region statuses."""
    max_body_bytes: int = MAX_BODY_BYTES
    uvicorn_logging: bool = True
    """uvicorn's own log handlers and format; False hands its records to the root
    logger, as `serve --log-format json` does."""


def api_server(store: Store, settings: ServerSettings) -> uvicorn.Server:
    """A uvicorn server of the API over `store`; `await server.serve()` runs it until
    SIGINT/SIGTERM or `server.should_exit`. The store stays the caller's to close."""
    config = uvicorn.Config(
        create_app(
            store,
            watch_status_interval=settings.watch_status_interval,
            max_body_bytes=settings.max_body_bytes,
        ),
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        access_log=settings.access_log,
        log_config=uvicorn.config.LOGGING_CONFIG if settings.uvicorn_logging else None,
        # The store is opened and closed by the caller, around the server.
        lifespan="off",
        server_header=False,
        # Watch streams never end by themselves: on shutdown they get this long.
        timeout_graceful_shutdown=5,
        # Only the socket's peer is believed; a front proxy's headers are not.
        proxy_headers=False,
    )
    return uvicorn.Server(config)


@asynccontextmanager
async def serving_api(store: Store, settings: ServerSettings) -> AsyncIterator[str]:
    """The API (and dashboard) served on the running loop for the duration of the
    block; yields its base URL (the bound port, also under port 0). Unlike
    `Server.serve()` it leaves the process's signals to the caller, and a port that
    cannot be bound raises OSError rather than exiting the process."""
    server = api_server(store, settings)
    config = server.config
    config.load()
    server.lifespan = config.lifespan_class(config)
    listener = socket.create_server((settings.host, settings.port))
    sockets = [listener]
    try:
        await server.startup(sockets=sockets)
        # Ticks keep the Date header current and end the loop once told to.
        ticking = asyncio.create_task(server.main_loop())
        try:
            host, port = listener.getsockname()[:2]
            yield f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        finally:
            server.should_exit = True
            await ticking
            await server.shutdown(sockets=sockets)
    finally:
        listener.close()
