"""One request to the gateway as its client sent it, and its answer on the wire.

`downstream` parses a client connection and makes a `ClientRequest` per request
head; the gateway reads the body from it as it arrives and writes the answer
through it. The answer is framed here: the status line in the request's HTTP
version, a Content-Length when the whole body is known (or the replica's, when it
streams one), else chunked for HTTP/1.1 and ended by closing for HTTP/1.0; no body
for HEAD, 204 and 304; `Connection: close` when the connection ends with it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol, cast

import httptools

from servefleet.http.fields import Fields

__all__ = ["ClientRequest", "Wire", "error_body", "http_date", "status_line"]


class Wire(Protocol):
    """The client connection a request came on (`downstream`)."""

    loop: asyncio.AbstractEventLoop
    peer: str | None

    def write(self, data: bytes) -> None: ...

    async def send(self, data: bytes) -> None:
        """Write, then wait while the client has more than it takes buffered."""

    def backed_up(self) -> bool:
        """Whether the client has more than it takes buffered."""

    def flow(self) -> None:
        """Reading may resume: the handler took what was buffered."""

    def abort(self) -> None: ...


def error_body(status: int, message: str) -> bytes:
    """The JSON every answer of the gateway's own carries."""
    return json.dumps({"error": {"code": status, "message": message}}).encode()


def status_line(version: bytes, status: int, reason: str) -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    return b"HTTP/%s %d %s\r\n" % (version, status, reason.encode("latin-1", "replace"))


_STATUS_LINES: dict[tuple[bytes, int], bytes] = {}
"""Status lines without a reason of their own, built once each."""
_BODILESS = frozenset({204, 304})


def http_date() -> str:
    """The Date header of the gateway's own answers, made again once a second."""
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True)
    return cast(str, _date_cache[1])


_date_cache: list[int | str] = [0, ""]


class ClientRequest:
    """One request as the client sent it, and its answer.

    The head is all here (`method`, `path`, `query`, `fields`...); the body
    arrives as it is sent (`read`). The answer is written either whole (`respond`)
    or streamed (`start`, then `write`, then `finish`)."""

    __slots__ = (
        "_body",
        "_connection",
        "_continue",
        "_waiter",
        "body_done",
        "buffered",
        "chunked",
        "fields",
        "has_body",
        "head_sent",
        "keep_alive",
        "method",
        "path",
        "query",
        "status",
        "version",
    )

    def __init__(
        self,
        connection: Wire,
        method: str,
        target: bytes,
        version: bytes,
        fields: Fields,
        *,
        keep_alive: bool,
        has_body: bool,
        expects_continue: bool,
    ) -> None:
        self._connection = connection
        self.method = method
        if target.startswith(b"/"):
            path, _, query = target.partition(b"?")
        else:  # absolute form ("http://host/path"), or "*" (OPTIONS)
            try:
                parsed = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                path, query = target, b""
            else:
                path, query = parsed.path or b"/", parsed.query or b""
        self.path = path.decode("latin-1")
        """The raw path, still percent-encoded, as routes are matched."""
        self.query = query.decode("latin-1")
        """The raw query string without its "?", "" when there is none."""
        self.version = version
        """b"1.1" or b"1.0"; the answer's status line says the same."""
        self.fields = fields
        """The header fields as they came, bytes (see `servefleet.http.fields`)."""
        self.keep_alive = keep_alive
        self.has_body = has_body
        self._continue = expects_continue
        self._body: deque[bytes] = deque()
        self.buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self.body_done = not has_body
        self.head_sent = False
        self.chunked = False
        self.status = 0
        """The status of the answer, once its head is written."""

    @property
    def peer(self) -> str | None:
        """The address of the client (or front proxy) that connected."""
        return self._connection.peer

    # The body, as `downstream` parses it

    def body_arrived(self, chunk: bytes) -> None:
        self._body.append(chunk)
        self.buffered += len(chunk)
        self.wake()

    def body_ended(self) -> None:
        self.body_done = True
        self.wake()

    def wake(self) -> None:
        """Whoever waits in `read` looks again (more body, its end, or a client gone)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some; b""
        once the body is over. The first call answers `Expect: 100-continue`."""
        connection = self._connection
        if self._continue:
            self._continue = False
            connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self._body:
            if self.body_done:
                return b""
            self._waiter = connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        body = self._body
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        connection.flow()
        return data

    # The answer

    def _head(self, status: int, reason: str, fields: bytes) -> list[bytes]:
        self.status = status
        self.head_sent = True
        if reason:
            line = status_line(self.version, status, reason)
        else:
            key = (self.version, status)
            line = _STATUS_LINES.get(key) or _STATUS_LINES.setdefault(
                key, status_line(self.version, status, "")
            )
        return [line, fields]

    def _end_of_head(self) -> bytes:
        if not self.keep_alive:
            return b"Connection: close\r\n\r\n"
        if self.version == b"1.0":
            return b"Connection: keep-alive\r\n\r\n"
        return b"\r\n"

    def _bodiless(self) -> bool:
        return self.method == "HEAD" or self.status in _BODILESS or self.status < 200

    def respond(
        self,
        status: int,
        fields: bytes,
        body: bytes,
        *,
        reason: str = "",
        length: bytes | None = None,
    ) -> None:
        """Write the whole answer in one go, `fields` its header lines as they are
        written (`servefleet.http.fields.format_fields`). Its Content-Length is the
        body's, except for HEAD, 204 and 304, which have none: `length` (what the
        replica said, if anything) is written for them as it is."""
        if not self.body_done:
            self.keep_alive = False  # the rest of the body is not read: close
        parts = self._head(status, reason, fields)
        if not self._bodiless():
            parts.append(b"Content-Length: %d\r\n" % len(body))
            parts.append(self._end_of_head())
            parts.append(body)
        else:
            if length is not None:
                parts.append(b"Content-Length: %s\r\n" % length)
            parts.append(self._end_of_head())
        self._connection.write(b"".join(parts))

    def refuse(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        """Answer with the gateway's own JSON error."""
        fields = b"Content-Type: application/json; charset=utf-8\r\nDate: %s\r\n" % (
            http_date().encode()
        )
        if retry_after is not None:
            fields += b"Retry-After: %d\r\n" % retry_after
        self.respond(status, fields, error_body(status, message))

    async def start(
        self,
        status: int,
        fields: bytes,
        *,
        reason: str = "",
        length: bytes | None = None,
    ) -> None:
        """Write the head of a streamed answer: with `length` (the replica's
        Content-Length) if it has one, else chunked, or ended by closing for an
        HTTP/1.0 client."""
        if not self.body_done:
            self.keep_alive = False
        parts = self._head(status, reason, fields)
        if length is not None:
            parts.append(b"Content-Length: %s\r\n" % length)
        elif not self._bodiless():
            if self.version == b"1.1":
                self.chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # its end is the connection's
        parts.append(self._end_of_head())
        await self._connection.send(b"".join(parts))

    def push(self, chunk: bytes) -> None:
        """One more piece of a streamed answer, written at once (the relay waits
        for `drained` while the client is `backed_up`)."""
        if not chunk or self._bodiless():
            return
        if self.chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self._connection.write(chunk)

    def backed_up(self) -> bool:
        """Whether the client has more of the answer buffered than it takes."""
        return self._connection.backed_up()

    async def drained(self) -> None:
        """Until the client has taken what was buffered for it (or is gone)."""
        await self._connection.send(b"")  # nothing more to write: only the wait

    def finish(self) -> None:
        """The end of a streamed answer (the last chunk of a chunked one)."""
        if self.chunked and not self._bodiless():
            self._connection.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Cut the client's connection: all that is left to say of an answer whose
        head is sent and whose rest cannot come."""
        self._connection.abort()
