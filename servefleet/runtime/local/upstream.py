"""The gateway's HTTP/1.1 client toward its replicas: kept-alive connections, raw.

aiohttp's client spent about half of the gateway's CPU on every proxied request
(a ClientRequest, a ClientResponse, a timer context, a connector lookup, cookie
and header bookkeeping per request), which is what kept the gateway under half of
a replica's throughput on two cores (issue 18). This client does only what the
gateway needs: it writes the request head as one buffer, `llhttp` (`httptools`)
parses the answer inside an asyncio `Protocol`, and idle connections are kept per
replica and reused, newest first.

What it keeps of aiohttp's client as the gateway used it:
- a connect timeout, after which (or on a refusal) `UpstreamConnectError` says
  nothing reached the replica, so the gateway may try another one;
- a read timeout counted from the end of the request and reset by every byte of
  the answer (`UpstreamTimeout`: the replica stayed silent that long);
- the answer streamed as it arrives, reading from the replica paused while more
  than `_HIGH_WATER` bytes wait for the client, so a slow client never makes the
  gateway buffer a whole answer; once its head is relayed, the rest goes to the
  client straight from the parser's callback (`Answer.relay`), with reading held
  while the client is backed up;
- the request body forwarded as the client sends it: with the client's
  Content-Length as is, otherwise in chunked encoding;
- no decompression, no cookies, no headers of its own but Host when the client
  sent none (HTTP/1.0) and the body framing.

A connection goes back to the pool only when its answer was read to the end and
both sides allow keep-alive; an answer abandoned midway (the client went away, a
timeout) closes it, which is how the replica learns the client is gone. A kept
connection the replica closed meanwhile fails before any byte of the answer; a
request without a body is then sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from servefleet.runtime.local.forwarding import Fields, first, format_fields

__all__ = ["Answer", "UpstreamConnectError", "UpstreamError", "UpstreamPool", "UpstreamTimeout"]

_HIGH_WATER = 256 * 1024
"""Answer bytes buffered for the client at which reading from the replica pauses."""
_WRITE_HIGH_WATER = 64 * 1024


class Sink(Protocol):
    """Where `Answer.relay` sends a body: the client's side of the gateway."""

    def push(self, chunk: bytes) -> None: ...

    def backed_up(self) -> bool: ...

    async def drained(self) -> None: ...


class UpstreamError(Exception):
    """The replica failed the request: broke off, answered what is not HTTP."""


class UpstreamConnectError(UpstreamError):
    """The request may go to another replica: no connection to this one (refused,
    or not within the connect timeout), or a request that may be repeated (no body,
    GET, HEAD or OPTIONS, as nginx's `proxy_next_upstream` judges) lost its
    connection before any byte of the answer (a replica killed as it was asked)."""


_REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS"})


class UpstreamTimeout(UpstreamError):
    """The replica sent nothing for the read timeout."""


class _Connection(asyncio.Protocol):
    """One connection to a replica, carrying one request at a time."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        read_timeout: float,
        lost: Callable[[_Connection], None],
    ) -> None:
        self._loop = loop
        self._lost = lost
        self._read_timeout = read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.base = ""
        """The replica's base URL, once kept in the pool."""
        self.reused = False
        self._watch: asyncio.TimerHandle | None = None
        """Checks the replica's silence (`_check_silence`); kept across the requests
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
        """The whole request is out: the replica's silence counts (`sent`)."""

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
            self._fail(UpstreamError(f"the replica's answer is not valid HTTP: {error}"))

    def eof_received(self) -> bool:
        return False  # close: a replica that stops writing is done with the connection

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
            self._fail(UpstreamError(f"the replica closed the connection{cause}"))
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
        """Stop reading from the replica: the client is behind."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def carry_on(self) -> None:
        """Read from the replica again after `hold`."""
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
            raise UpstreamError("the replica closed the connection")
        self.transport.write(data)
        if self._drain is not None:
            await self._drain
            if self.closed:
                raise UpstreamError("the replica closed the connection")

    def sent(self) -> None:
        """The whole request is out: the replica's silence counts from now."""
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
        self._fail(UpstreamTimeout(f"the replica sent nothing for {self._read_timeout:g}s"))

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True


class Answer:
    """A replica's answer: status and headers at once, the body as it arrives."""

    def __init__(self, pool: UpstreamPool, key: str, connection: _Connection) -> None:
        self._pool = pool
        self._key = key
        self._connection = connection
        self.status = connection.status
        self.reason = connection.reason
        self.fields: Fields = connection.headers
        """The answer's header fields as they came (see `forwarding`)."""
        self._released = False

    @property
    def done(self) -> bool:
        """Whether the whole body has been read (or was here with the headers)."""
        connection = self._connection
        return connection.complete and not connection.chunks

    def complete(self) -> bool:
        """Whether the whole answer is already here (its rest need not be awaited)."""
        return self._connection.complete

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some;
        b"" once the body is over. Raises `UpstreamError` if the replica fails."""
        connection = self._connection
        while not connection.chunks and not connection.complete:
            if connection.error is not None:
                raise connection.error
            await connection.wait()
        return connection.take()

    async def relay(self, sink: Sink) -> None:
        """Send the rest of the body to `sink` as it arrives, straight from the
        parser's callback (no task switch per piece: a token stream's events cost
        a write each), holding reading from the replica while the client is backed
        up; returns at the body's end. Raises `UpstreamError` if the replica fails."""
        connection = self._connection
        connection.sink = sink
        try:
            sink.push(connection.take())
            while not connection.complete:
                if connection.error is not None:
                    raise connection.error
                if sink.backed_up():
                    connection.hold()
                    await sink.drained()
                    connection.carry_on()
                else:
                    await connection.wait()
        finally:
            connection.sink = None

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool if the answer
        was read to its end and both sides keep it alive; otherwise it is closed."""
        if self._released:
            return
        self._released = True
        connection = self._connection
        if self.done and connection.keep_alive and not connection.closed:
            self._pool._keep(self._key, connection)
        else:
            connection.close()
            self._pool._open.discard(connection)


class UpstreamPool:
    """Connections to replicas, the idle ones kept per replica base URL."""

    def __init__(
        self, *, connect_timeout: float, read_timeout: float, idle_timeout: float = 15.0
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle_timeout = idle_timeout
        """Idle connections older than this are closed rather than reused: shorter
        than a replica's own keep-alive (aiohttp: 75 s, uvicorn: 5 s... whichever
        comes first is caught by the one retry)."""
        self._idle: dict[str, list[_Connection]] = {}
        self._addresses: dict[str, tuple[str, int, bytes]] = {}
        self._tls: set[str] = set()
        self._tls_context: ssl.SSLContext | None = None
        self._open: set[_Connection] = set()

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    def _address(self, base: str) -> tuple[str, int, bytes]:
        address = self._addresses.get(base)
        if address is None:
            url = urlsplit(base)
            secure = url.scheme == "https"
            host, port = url.hostname or "127.0.0.1", url.port or (443 if secure else 80)
            address = self._addresses[base] = (host, port, url.netloc.encode("latin-1"))
            if secure:
                # An https base: a Kubernetes region's Ingress, for the global entry.
                self._tls.add(base)
        return address

    def _kept(self, base: str) -> _Connection | None:
        idle = self._idle.get(base)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._idle_timeout:
                connection.reused = True
                return connection
            connection.close()
            self._open.discard(connection)
        return None

    async def _connect(self, base: str) -> _Connection:
        host, port, _ = self._address(base)
        loop = asyncio.get_running_loop()
        context = None
        if base in self._tls:
            if self._tls_context is None:
                self._tls_context = ssl.create_default_context()
            context = self._tls_context
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(loop, self._read_timeout, self._lost),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError as error:
            raise UpstreamConnectError(
                f"no connection to {host}:{port} within {self._connect_timeout:g}s"
            ) from error
        except OSError as error:
            raise UpstreamConnectError(f"cannot connect to {host}:{port}: {error}") from error
        self._open.add(protocol)
        return protocol

    def _lost(self, connection: _Connection) -> None:
        """A connection closed (by either side): forget it, kept or not, so that
        the pool holds nothing of replicas long gone."""
        self._open.discard(connection)
        idle = self._idle.get(connection.base)
        if idle is not None and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.base]

    def _keep(self, base: str, connection: _Connection) -> None:
        connection.idle_since = asyncio.get_running_loop().time()
        connection.base = base
        self._idle.setdefault(base, []).append(connection)

    def _forget(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def request(
        self,
        base: str,
        method: str,
        target: str,
        fields: Fields,
        body: AsyncIterator[bytes] | None,
    ) -> Answer:
        """Send the request (streaming `body` if given) and give the answer once its
        head is here; the caller calls `Answer.release()` when done with it.

        A coroutine and a `release`, not an async context manager: that was one
        more object and two more coroutines on every proxied request."""
        kept = self._kept(base)
        if kept is not None:
            try:
                return await self._exchange(kept, base, method, target, fields, body)
            except UpstreamError as error:
                self._forget(kept)
                # A kept connection the replica closed meanwhile; without a body
                # nothing is lost by asking again on a new one.
                if body is not None or kept.head_done or isinstance(error, UpstreamTimeout):
                    raise
            except BaseException:
                self._forget(kept)
                raise
        connection = await self._connect(base)
        try:
            return await self._exchange(connection, base, method, target, fields, body)
        except UpstreamError as error:
            self._forget(connection)
            if (
                body is None
                and method in _REPEATABLE
                and not connection.head_done
                and not isinstance(error, UpstreamTimeout)
            ):
                raise UpstreamConnectError(str(error)) from error
            raise
        except BaseException:
            self._forget(connection)
            raise

    def _head(self, base: str, method: str, target: str, fields: Fields, chunked: bool) -> bytes:
        _, _, netloc = self._address(base)
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
        if first(fields, b"host") is None:
            lines.append(b"Host: %s\r\n" % netloc)
        lines.append(format_fields(fields))
        if chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _exchange(
        self,
        connection: _Connection,
        base: str,
        method: str,
        target: str,
        fields: Fields,
        body: AsyncIterator[bytes] | None,
    ) -> Answer:
        connection.begin(head_only=method == "HEAD")
        chunked = body is not None and first(fields, b"content-length") is None
        await connection.send(self._head(base, method, target, fields, chunked))
        if body is not None:
            async for chunk in body:
                if chunk:
                    await connection.send(
                        b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                    )
            if chunked:
                await connection.send(b"0\r\n\r\n")
        connection.sent()
        while not connection.head_done:
            if connection.error is not None:
                raise connection.error
            await connection.wait()
        return Answer(self, base, connection)
