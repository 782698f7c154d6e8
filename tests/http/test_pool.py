"""servefleet's HTTP/1.1 client as the Kubernetes runtime's applies use it: a body
given whole, a request declared replayable, https with a given trust and
certificate name; against servers that speak HTTP by hand, over real sockets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from servefleet.http.pool import Answer, UpstreamConnectError, UpstreamError, UpstreamPool
from tests.tls import Authority

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@asynccontextmanager
async def _server(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, int]]:
    """A server on loopback that speaks HTTP by hand; its host and port. Its
    connections are closed with it."""
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        await handler(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    try:
        yield "127.0.0.1", server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()


@asynccontextmanager
async def _pool(
    tls: ssl.SSLContext | None = None, server_hostname: str | None = None
) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(connect_timeout=2, read_timeout=2, tls=tls, server_hostname=server_hostname)
    try:
        yield pool
    finally:
        await pool.close()


async def _request_of(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and its body (framed by Content-Length) off a connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lengths = [
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    return head, await reader.readexactly(sum(lengths))


async def _whole(answer: Answer) -> bytes:
    try:
        body = b""
        while chunk := await answer.read():
            body += chunk
        return body
    finally:
        answer.release()


async def test_a_body_given_whole_goes_out_framed_by_its_length() -> None:
    """Verify that the pool adds the Content-Length of a bytes body, and keeps the
    caller's when it gave one (never two)."""
    seen: list[tuple[bytes, bytes]] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                seen.append(await _request_of(reader))
                writer.write(OK)
        except asyncio.IncompleteReadError:
            writer.close()

    body = b'{"kind": "Service"}'
    async with _server(record) as (host, port), _pool() as pool:
        base = f"http://{host}:{port}"
        for fields in ([], [(b"Content-Length", str(len(body)).encode())]):
            answer = await pool.request(base, "PATCH", "/object", fields, body)
            assert answer.status == 200
            assert await _whole(answer) == b"ok"

    assert [request for _, request in seen] == [body, body]
    for head, _ in seen:
        assert head.lower().count(b"content-length:") == 1
        assert head.startswith(b"PATCH /object HTTP/1.1\r\n")
        assert f"\r\nHost: {host}:{port}\r\n".encode() in head


@pytest.mark.parametrize("replayable", [True, False])
async def test_a_replayable_request_is_sent_again_when_its_kept_connection_was_dropped(
    replayable: bool,
) -> None:
    """A server that answers the first request of each connection and drops the
    connection on the second, unanswered (as one closes an idle connection while a
    request is on its way): a replayable request goes once more on a new
    connection; one that is not fails, since the server may have acted on it."""
    requests = 0

    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal requests
        try:
            await _request_of(reader)
            requests += 1
            writer.write(OK)
            await _request_of(reader)
            requests += 1
        except asyncio.IncompleteReadError:
            pass  # the client closed its kept connection first
        finally:
            writer.transport.abort()

    async with _server(one_per_connection) as (host, port), _pool() as pool:
        base = f"http://{host}:{port}"

        async def apply() -> bytes:
            answer = await pool.request(base, "PATCH", "/o", [], b"{}", replayable=replayable)
            return await _whole(answer)

        assert await apply() == b"ok"
        if replayable:
            assert await apply() == b"ok"
            assert requests == 3  # the dropped one, and the same again on a new connection
        else:
            with pytest.raises(UpstreamError, match="closed the connection"):
                await apply()
            assert requests == 2


async def test_https_with_the_given_trust_and_certificate_name(tmp_path: Path) -> None:
    """A server whose certificate names only `api.internal` (not the address the
    client dials), signed by a CA of its own, as a kubeconfig's
    certificate-authority-data and tls-server-name describe it."""
    authority = Authority.make(tmp_path)
    certificate = authority.issue("api", names=("DNS:api.internal",))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _request_of(reader)
            writer.write(OK)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # a client that refused the certificate
        finally:
            writer.close()

    async with _server(answer, authority.server_context(certificate)) as (host, port):
        base = f"https://{host}:{port}"
        trusted = authority.trusting_context()
        async with _pool(tls=trusted, server_hostname="api.internal") as pool:
            assert await _whole(await pool.request(base, "GET", "/", [], None)) == b"ok"
        async with _pool(tls=trusted) as pool:
            with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await pool.request(base, "GET", "/", [], None)
        async with _pool(server_hostname="api.internal") as pool:  # the system's trust
            with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await pool.request(base, "GET", "/", [], None)
