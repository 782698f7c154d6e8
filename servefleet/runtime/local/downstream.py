"""The gateway's HTTP/1.1 server toward its clients: an asyncio `Protocol`, raw.

aiohttp's server cost the gateway more CPU per proxied request than anything else
once its client side was raw (`servefleet.http`, issue 18): a request object, a response
object, header dictionaries built and serialised twice, a payload stream, a task
context per request. Here `llhttp` (`httptools`) parses each connection's bytes
inside the protocol, a request is one small object (`client_request`), and its
answer is written straight to the transport: a complete answer in one write with
its head, a streamed one chunk by chunk.

What it keeps of aiohttp's server as the gateway used it:
- keep-alive (HTTP/1.1 by default, HTTP/1.0 when asked) and pipelining: requests
  of one connection are answered one at a time, in order; reading pauses while one
  is waiting behind another, or while more than `_HIGH_WATER` bytes of a body wait
  for the handler;
- request bodies with a Content-Length or chunked, handed over as they arrive, and
  `Expect: 100-continue` answered when the handler first asks for the body;
- the answer framed for the client: a Content-Length, else chunked (HTTP/1.1) or
  ended by closing the connection (HTTP/1.0); no body for HEAD, 204 and 304;
- a client that goes away (or stops sending: a half close) cancels its request's
  handler, so the request to the replica is abandoned too;
- limits (see `GatewaySettings`): `max_connections` open at once (one more gets a
  503 and is closed), a request head complete within `header_timeout` of the
  connection opening or of its previous answer (so idle keep-alive connections
  close after it too), request lines up to `max_request_line` bytes (else 414) and
  heads up to `max_head_size` (else 431); what does not parse is answered 400.

An answer that ends before its request's body was read to the end closes the
connection (aiohttp read and dropped the rest first, for up to 10 s). Closing
lingers (`_close`) while the client may still be sending, so that its unread bytes
do not turn the close into a reset that could cost it its answer. An upgrade
(`Connection: upgrade`) is not done: the request is answered over HTTP/1.1 and the
connection closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import httptools

from servefleet.http.fields import Fields
from servefleet.runtime.local.client_request import (
    ClientRequest,
    error_body,
    http_date,
    status_line,
)

__all__ = ["ClientRequest", "DownstreamServer"]

log = logging.getLogger(__name__)

_HIGH_WATER = 256 * 1024
"""Request body bytes buffered for the handler at which reading pauses."""
_WRITE_HIGH_WATER = 64 * 1024
_LINGER = 5.0
"""How long a connection the gateway closed may go on sending before it is cut."""

_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"expect"})
"""Request fields the server itself reads."""

Handler = Callable[["ClientRequest"], Awaitable[None]]


class _Refused(Exception):
    """A request the server answers itself, before any handler sees it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _ClientConnection(asyncio.Protocol):
    """One client's connection: parses its requests and answers them in order."""

    def __init__(self, server: DownstreamServer) -> None:
        self._server = server
        self.loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self._pending: deque[ClientRequest] = deque()
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._closing = False
        """No more requests: the connection closes once the current answer is out."""
        self._input_over = False
        """What the client sends is ignored from now on (after an upgrade or an error)."""
        self._last_words: bytes | None = None
        """An error answer for a bad request that came behind one being answered."""
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        """Ends a connection that waits too long: for a request head, or for the
        client to close after the gateway did."""
        self._deadline = 0.0
        """When the awaited request head is late (loop time)."""
        # The request being parsed.
        self._url = b""
        self._fields: Fields = []
        self._has_body = False
        """The head so far says a body follows (Transfer-Encoding, Content-Length)."""
        self._length_seen = False
        self._head_size = 0
        """Bytes of the head so far: its fields as parsed, and every packet received
        while it is incomplete (llhttp keeps a half-received field to itself)."""
        self._in_head = False
        self._expects_continue = False
        self._parsing: ClientRequest | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport; same methods.
        self.transport = cast(asyncio.Transport, transport)
        if not self._server._admit(self):
            self.transport.write(self._server._full)
            self.transport.close()
            self._closing = self._input_over = True
            return
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self._input_over:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Not done: the request is answered over HTTP/1.1 and the connection
            # closed, since what follows its head is another protocol.
            self._input_over = True
            for request in self._pending:
                request.keep_alive = False
            return
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if not isinstance(cause, _Refused):
                raise
            self._refuse(cause.status, str(cause))
            return
        except httptools.HttpParserError as error:
            self._refuse(400, f"the request is not valid HTTP/1.1: {error}")
            return
        if self._in_head:
            self._head_size += len(data)
            if self._head_size > self._server.max_head_size:
                self._refuse(431, self._head_too_large())

    def eof_received(self) -> bool:
        # A client that stops sending is taken as gone, as aiohttp did: a client
        # that goes away mostly closes both ways at once, and its request to the
        # replica is to end now, not when writing to it fails.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server._gone(self)
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()  # the client is gone: so is its request's handler
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self._parsing is not None:
            self._parsing.wake()

    def pause_writing(self) -> None:
        self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_size = 0
        self._url = b""
        self._fields = []
        self._has_body = self._length_seen = False
        self._expects_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._server.max_request_line:
            raise _Refused(
                414, f"the request target is longer than {self._server.max_request_line} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._server.max_head_size:
            raise _Refused(431, self._head_too_large())
        self._fields.append((name, value))
        key = name.lower()
        if key in _FRAMING:
            if key == b"expect":
                self._expects_continue |= value.lower() == b"100-continue"
            elif key == b"transfer-encoding":
                self._has_body = True
            elif not self._length_seen:  # the first Content-Length counts
                self._length_seen = True
                self._has_body |= value != b"0"

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._in_head = False
        # The head timer is left running: it does nothing while a request is being
        # answered (`_head_late`).
        version = parser.get_http_version().encode()
        has_body = self._has_body
        request = ClientRequest(
            self,
            parser.get_method().decode("ascii"),
            self._url,
            version,
            self._fields,
            keep_alive=parser.should_keep_alive(),
            has_body=has_body,
            expects_continue=self._expects_continue and version == b"1.1" and has_body,
        )
        self._parsing = request
        self._pending.append(request)
        if self._task is None:
            self._task = self.loop.create_task(self._serve())
        self.flow()

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.body_arrived(body)
            if self._parsing.buffered > _HIGH_WATER:
                self.flow()

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.body_ended()
            self._parsing = None

    # Serving

    async def _serve(self) -> None:
        """Answer the requests parsed so far, one after another, then wait for the
        next head (or close)."""
        try:
            while self._pending:
                request = self._pending.popleft()
                self._busy = True
                self.flow()
                try:
                    await self._server.handler(request)
                except Exception:
                    self._failed(request)
                self._busy = False
                if not (request.keep_alive and request.body_done) or self._server.closing:
                    self._close()
                    return
        finally:
            self._task = None
            self._busy = False
        if self._closing:
            self._close()
        else:
            self._arm_timer()
            self.flow()

    def _failed(self, request: ClientRequest) -> None:
        """The handler raised (logged here): cut an answer under way, else a 500."""
        log.exception("gateway: the handler of %s %s failed", request.method, request.path)
        if request.head_sent:
            self.abort()
        else:
            request.keep_alive = False
            request.refuse(500, "the gateway failed to answer; see its log")

    def flow(self) -> None:
        """Pause reading while a request waits behind the one being answered or a
        body piles up for the handler; resume once neither holds."""
        parsing = self._parsing
        pause = (self._busy and bool(self._pending)) or (
            parsing is not None and parsing.buffered > _HIGH_WATER
        )
        transport = self.transport
        if transport is None or pause == self._paused or self._closing:
            return
        self._paused = pause
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def send(self, data: bytes) -> None:
        """Write, then wait while the client has more than it takes buffered."""
        self.write(data)
        if self._drain is not None:
            await self._drain

    def backed_up(self) -> bool:
        # A client that is gone takes nothing more: its handler is being cancelled.
        return self._drain is not None and not self._closing

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def _refuse(self, status: int, message: str) -> None:
        """Answer what could not be parsed or is too large, after the answers to
        the requests before it, and close."""
        self._input_over = True
        self._closing = True
        parsing = self._parsing
        if parsing is not None:
            # Its head was fine, its body not.
            if parsing not in self._pending:
                self.abort()  # being answered: its answer cannot be trusted to end
                return
            self._pending.remove(parsing)
        body = error_body(status, message)
        self._last_words = (
            status_line(b"1.1", status, "")
            + b"Content-Type: application/json; charset=utf-8\r\nDate: %s\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (http_date().encode(), len(body), body)
        )
        if self._task is None:
            self._close()

    def _close(self) -> None:
        """Close once what is written is out, with the last words if any.

        Where the client may still be sending (a request or body not read to its
        end, input refused or paused), only the sending half closes at first: what
        the client still sends is read and dropped until it closes too (at most
        `_LINGER` seconds). Closing both with its bytes unread would make the kernel
        reset the connection, and the client could lose the answer it was sent
        (nginx's lingering close). Otherwise nothing is left to read, and lingering
        would only hold a closing gateway up to `_LINGER` for every idle client
        that keeps its connection open."""
        may_still_send = (
            self._input_over
            or self._in_head
            or self._paused
            or self._parsing is not None
            or bool(self._pending)
        )
        self._closing = self._input_over = True
        if self._last_words is not None:
            self.write(self._last_words)
            self._last_words = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not may_still_send or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(_LINGER, self._lingered)

    def _head_too_large(self) -> str:
        return f"the request head is larger than {self._server.max_head_size} bytes"

    def _arm_timer(self) -> None:
        """The next request head is due within `header_timeout` from now.

        A timer already pending is kept and finds the later deadline when it fires:
        on a busy keep-alive connection a timer is made about once per
        `header_timeout`, not made and cancelled for every request."""
        self._deadline = self.loop.time() + self._server.header_timeout
        if self._timer is None:
            self._timer = self.loop.call_later(self._server.header_timeout, self._head_late)

    def _lingered(self) -> None:
        self._timer = None
        self.abort()

    def _head_late(self) -> None:
        self._timer = None
        if self._task is not None:
            return  # a request is being answered; its end sets the next deadline
        left = self._deadline - self.loop.time()
        if left > 0:
            self._timer = self.loop.call_later(left, self._head_late)
            return
        self.abort()

    def shut(self) -> None:
        """The server closes: an idle connection closes now, a busy one after its
        answer."""
        if self._task is None:
            self._close()


class DownstreamServer:
    """Listens for clients and hands each request to `handler`."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_connections: int,
        header_timeout: float,
        max_request_line: int,
        max_head_size: int,
        shutdown_timeout: float,
    ) -> None:
        self.handler = handler
        self._shutdown_timeout = shutdown_timeout
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.max_request_line = max_request_line
        self.max_head_size = max_head_size
        self.loop = asyncio.get_running_loop()
        self.closing = False
        self._connections: set[_ClientConnection] = set()
        self._all_closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        body = error_body(
            503, f"the gateway holds its maximum of {max_connections} connections; retry later"
        )
        self._full = (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8"
            b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Listen on `host:port` (0: any free port); the address bound."""
        # A listen backlog as deep as the connections it may hold: a burst of new
        # clients (thousands of streams opening at once) then waits in the kernel's
        # queue for the accept, not for a SYN retried 1, 3, 7 s later (the default
        # backlog of 128 dropped the rest).
        self._server = await self.loop.create_server(
            lambda: _ClientConnection(self),
            host,
            port,
            backlog=self.max_connections,
            reuse_address=True,
        )
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    def _admit(self, connection: _ClientConnection) -> bool:
        if len(self._connections) >= self.max_connections or self.closing:
            return False
        self._connections.add(connection)
        return True

    def _gone(self, connection: _ClientConnection) -> None:
        self._connections.discard(connection)
        if self.closing and not self._connections:
            self._all_closed.set()

    async def close(self) -> None:
        """Stop listening, close idle connections, give answers under way
        `shutdown_timeout` seconds to finish, then cut what is left."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.shut()
        if not self._connections:
            self._all_closed.set()
        try:
            async with asyncio.timeout(self._shutdown_timeout):
                await self._all_closed.wait()
        except TimeoutError:
            for connection in list(self._connections):
                connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
