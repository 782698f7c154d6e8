"""A cap on request bodies. FastAPI reads a body before any dependency runs, the
token check included, so without a cap anyone who can reach the port could make
the server hold an arbitrarily large body in memory."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servefleet.api.errors import error_response
from servefleet.spec import Problem

__all__ = ["BodyLimit"]


def _too_large(limit: int) -> str:
    return f"the request body is larger than this server takes ({limit:,} bytes)"


class BodyLimit:
    """Answers 413 to a body over `max_bytes`: at once when its Content-Length says
    so, else as soon as the bytes received pass it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            refusal = error_response(413, [Problem("body", _too_large(self.max_bytes))])
            await refusal(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the body read, which FastAPI lets HTTPException leave.
                raise HTTPException(413, f"body: {_too_large(self.max_bytes)}")
            return message

        await self.app(scope, counted, send)
