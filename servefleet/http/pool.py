"""servefleet's HTTP/1.1 client: kept-alive connections to upstream servers (a
replica, an API server), raw.

It was the gateway's client toward its replicas first. aiohttp's client spent
about half of the gateway's CPU on every proxied request (a ClientRequest, a
ClientResponse, a timer context, a connector lookup, cookie and header
bookkeeping per request), which is what kept the gateway under half of a
replica's throughput on two cores (issue 18). This client does only what the
gateway needs: it writes the request head as one buffer, `llhttp` (`httptools`)
parses the answer inside an asyncio `Protocol`, and idle connections are kept per
server and reused, newest first.

What it keeps of aiohttp's client as the gateway used it:
- a connect timeout, after which (or on a refusal) `UpstreamConnectError` says
  nothing reached the replica, so the gateway may try another one;
- a read timeout counted from the end of the request and reset by every byte of
  the answer (`UpstreamTimeout`: the replica stayed silent that long);
- the answer streamed as it arrives, reading from the replica paused while the
  client is behind (`connection`), so a slow client never makes the
  gateway buffer a whole answer; once its head is relayed, the rest goes to the
  client straight from the parser's callback (`Answer.relay`);
- the request body forwarded as the client sends it: with the client's
  Content-Length as is, otherwise in chunked encoding; a body given whole (bytes,
  an apply's) goes out with the head in one write, framed by its Content-Length;
- https with a given `ssl.SSLContext` and certificate name (an API server's, from
  its kubeconfig), else the system's trust store;
- no decompression, no cookies, no headers of its own but Host when the client
  sent none (HTTP/1.0) and the body framing.

A connection goes back to the pool only when its answer was read to the end and
both sides allow keep-alive; an answer abandoned midway (the client went away, a
timeout) closes it, which is how the replica learns the client is gone. A kept
connection the server closed meanwhile fails before any byte of the answer; a
request without a body, or with a bytes body its caller declared `replayable`
(idempotent), is then sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from servefleet.http.connection import (
    Sink,
    UpstreamConnectError,
    UpstreamConnection,
    UpstreamError,
    UpstreamTimeout,
)
from servefleet.http.fields import Fields, first, format_fields

__all__ = ["Answer", "UpstreamConnectError", "UpstreamError", "UpstreamPool", "UpstreamTimeout"]

_REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS"})
_CHUNKED = b"Transfer-Encoding: chunked\r\n"


class Answer:
    """The upstream server's answer: status and headers at once, the body as it
    arrives."""

    def __init__(self, pool: UpstreamPool, key: str, connection: UpstreamConnection) -> None:
        self._pool = pool
        self._key = key
        self._connection = connection
        self.status = connection.status
        self.reason = connection.reason
        self.fields: Fields = connection.headers
        """The answer's header fields as they came (see `fields`)."""
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
        b"" once the body is over. Raises `UpstreamError` if the server fails."""
        connection = self._connection
        while not connection.chunks and not connection.complete:
            if connection.error is not None:
                raise connection.error
            await connection.wait()
        return connection.take()

    async def relay(self, sink: Sink) -> None:
        """Send the rest of the body to `sink` as it arrives, straight from the
        parser's callback (no task switch per piece: a token stream's events cost
        a write each), holding reading from the server while the client is backed
        up; returns at the body's end. Raises `UpstreamError` if the server fails."""
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
    """Connections to upstream servers, the idle ones kept per server base URL."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        idle_timeout: float = 15.0,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        """`tls`: how https bases are spoken to (None: the system's trust store);
        `server_hostname`: the name their certificates must carry, if not the
        base's host (a kubeconfig's `tls-server-name`)."""
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle_timeout = idle_timeout
        """Idle connections older than this are closed rather than reused: shorter
        than a server's own keep-alive (aiohttp: 75 s, uvicorn: 5 s... whichever
        comes first is caught by the one retry)."""
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._addresses: dict[str, tuple[str, int, bytes]] = {}
        self._tls: set[str] = set()
        self._tls_context = tls
        self._server_hostname = server_hostname
        self._open: set[UpstreamConnection] = set()

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
                # An https base: a Kubernetes region's Ingress, for the global
                # entry; an API server.
                self._tls.add(base)
        return address

    def _kept(self, base: str) -> UpstreamConnection | None:
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

    async def _connect(self, base: str) -> UpstreamConnection:
        host, port, _ = self._address(base)
        loop = asyncio.get_running_loop()
        context = name = None
        if base in self._tls:
            if self._tls_context is None:
                self._tls_context = ssl.create_default_context()
            context = self._tls_context
            name = self._server_hostname or host
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: UpstreamConnection(loop, self._read_timeout, self._lost),
                    host,
                    port,
                    ssl=context,
                    server_hostname=name,
                )
        except TimeoutError as error:
            raise UpstreamConnectError(
                f"no connection to {host}:{port} within {self._connect_timeout:g}s"
            ) from error
        except OSError as error:
            raise UpstreamConnectError(f"cannot connect to {host}:{port}: {error}") from error
        self._open.add(protocol)
        return protocol

    def _lost(self, connection: UpstreamConnection) -> None:
        """A connection closed (by either side): forget it, kept or not, so that
        the pool holds nothing of servers long gone."""
        self._open.discard(connection)
        idle = self._idle.get(connection.base)
        if idle is not None and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.base]

    def _keep(self, base: str, connection: UpstreamConnection) -> None:
        connection.idle_since = asyncio.get_running_loop().time()
        connection.base = base
        self._idle.setdefault(base, []).append(connection)

    def _forget(self, connection: UpstreamConnection) -> None:
        connection.close()
        self._open.discard(connection)

    async def request(
        self,
        base: str,
        method: str,
        target: str,
        fields: Fields,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        replayable: bool = False,
    ) -> Answer:
        """Send the request (streaming `body` if an iterator, in one write with the
        head if bytes) and give the answer once its head is here; the caller calls
        `Answer.release()` when done with it. `replayable`: the caller declares
        the request idempotent (a server-side apply), so a bytes body may be sent
        twice, as a request without one may.

        A coroutine and a `release`, not an async context manager: that was one
        more object and two more coroutines on every proxied request."""
        kept = self._kept(base)
        if kept is not None:
            try:
                return await self._exchange(kept, base, method, target, fields, body)
            except UpstreamError as error:
                self._forget(kept)
                # A kept connection the server closed meanwhile; without a body, or
                # with one that may be sent again, nothing is lost by asking again on
                # a new one.
                again = body is None or (replayable and isinstance(body, bytes))
                if not again or kept.head_done or isinstance(error, UpstreamTimeout):
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

    def _head(self, base: str, method: str, target: str, fields: Fields, framing: bytes) -> bytes:
        """The request head; `framing` is the body's field line the pool adds, if any."""
        _, _, netloc = self._address(base)
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
        if first(fields, b"host") is None:
            lines.append(b"Host: %s\r\n" % netloc)
        lines.append(format_fields(fields))
        lines.append(framing)
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _exchange(
        self,
        connection: UpstreamConnection,
        base: str,
        method: str,
        target: str,
        fields: Fields,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> Answer:
        connection.begin(head_only=method == "HEAD")
        if isinstance(body, bytes):
            length = first(fields, b"content-length")
            framing = b"" if length is not None else b"Content-Length: %d\r\n" % len(body)
            await connection.send(self._head(base, method, target, fields, framing) + body)
        else:
            chunked = body is not None and first(fields, b"content-length") is None
            framing = _CHUNKED if chunked else b""
            await connection.send(self._head(base, method, target, fields, framing))
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
