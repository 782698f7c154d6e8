"""One kept-alive HTTP/1.1 connection to the upstream server (a replica, an API
server; `pool`): `llhttp` (`httptools`) parses the answer inside an asyncio
`Protocol`; the body is buffered for `Answer.read`, or pushed to a `Sink` while
`Answer.relay` runs; reading pauses while the client is behind; the server's
silence is watched from the end of the request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

import httptools

__all__ = [
    "Sink",
    "UpstreamConnectError",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamTimeout",
]

_HIGH_WATER = 256 * 1024
"""Answer bytes buffered for the client at which reading from the server pauses."""
_WRITE_HIGH_WATER = 64 * 1024


class Sink(Protocol):
    """Where `Answer.relay` sends a body: the client's side of the gateway."""

    def push(self, chunk: bytes) -> None: ...

    def backed_up(self) -> bool: ...

    async def drained(self) -> None: ...


class UpstreamError(Exception):
    """The upstream server (a replica, an API server) failed the request: broke
    off, answered what is not HTTP."""


class UpstreamConnectError(UpstreamError):
    """The request may go to another replica: no connection to this one (refused,
    or not within the connect timeout), or a request that may be repeated (no body,
    GET, HEAD or OPTIONS, as nginx's `proxy_next_upstream` judges) lost its
    connection before any byte of the answer (a replica killed as it was asked)."""


class UpstreamTimeout(UpstreamError):
    """The upstream server sent nothing for the read timeout."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to the upstream server (a replica, an API server), carrying
    one request at a time."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        read_timeout: float,
        lost: Callable[[UpstreamConnection], None],
    ) -> None:
        self._loop = loop
        self._lost = lost
        self._read_timeout = read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.base = ""
        """The server's base URL, once kept in the pool."""
        self.reused = False
        self._watch: asyncio.TimerHandle | None = None
        """Checks the server's silence (`_check_silence`); kept across the requests
        of the connection rather than made and cancelled for each."""
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self._head_only = False
        self._informational = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self.sink: Sink | None = None
        """Where body bytes go from the parser's callback, while `Answer.relay` runs."""
        self._last_heard = 0.0
        self._sent = False
        """The whole request is out: the server's silence counts (`sent`)."""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport; same methods.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self._last_heard = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(UpstreamError(f"the server's answer is not valid HTTP: {error}"))

    def eof_received(self) -> bool:
        return False  # close: a server that stops writing is done with the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost(self)
        if self._watch is not None:
            self._watch.cancel()
        if self.head_done and self._until_close() and exc is None and not self.complete:
            self.complete = True  # an answer without length ends with its connection
            self._wake()
        elif not self.complete:
            cause = f": {exc}" if exc else ""
            self._fail(UpstreamError(f"the server closed the connection{cause}"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _until_close(self) -> bool:
        """Whether the answer has no length and so ends with its connection (asked
        only then: looking through the headers of every answer costs time)."""
        framing = (b"content-length", b"transfer-encoding")
        framed = any(name.lower() in framing for name, _ in self.headers)
        return not framed and self.status not in (204, 304)

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # httptools callbacks

    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (103 Early Hints): the final one follows.
            self._informational = True
            self.headers = []
            return
        self.status = status
        self.head_done = True
        if self._head_only:
            # llhttp cannot be told the answer to HEAD has no body: take it as
            # complete and never reuse the connection.
            self.complete = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.push(body)
            if sink.backed_up():
                self._wake()  # the relay holds reading until the client catches up
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER:
            self.hold()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive() and not self._head_only
        self._wake()

    # used by Answer

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    async def wait(self) -> None:
        """Until something more of the answer (or its end, or an error) is here."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> bytes:
        """The answer's body bytes buffered so far (and reading resumed)."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        self.carry_on()
        return data

    def hold(self) -> None:
        """Stop reading from the server: the client is behind."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def carry_on(self) -> None:
        """Read from the server again after `hold`."""
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_heard = self._loop.time()  # paused for the client, not silent
            self.transport.resume_reading()

    def begin(self, head_only: bool) -> None:
        self._reset()
        self._head_only = head_only

    async def send(self, data: bytes) -> None:
        assert self.transport is not None
        if self.closed:
            raise UpstreamError("the server closed the connection")
        self.transport.write(data)
        if self._drain is not None:
            await self._drain
            if self.closed:
                raise UpstreamError("the server closed the connection")

    def sent(self) -> None:
        """The whole request is out: the server's silence counts from now."""
        self._last_heard = self._loop.time()
        self._sent = True
        if not self.complete and self._watch is None:
            self._watch = self._loop.call_later(self._read_timeout, self._check_silence)

    def _check_silence(self) -> None:
        self._watch = None
        if self.complete or self.closed or not self._sent:
            return  # no answer awaited (yet): the next `sent` arms the watch again
        silent = self._loop.time() - self._last_heard
        if self._paused or silent < self._read_timeout:
            wait = self._read_timeout - silent if not self._paused else self._read_timeout
            self._watch = self._loop.call_later(max(wait, 0.001), self._check_silence)
            return
        self._fail(UpstreamTimeout(f"the server sent nothing for {self._read_timeout:g}s"))

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
