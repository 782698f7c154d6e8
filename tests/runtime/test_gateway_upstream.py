"""The gateway's own HTTP/1.1 client toward replicas (`servefleet.http`), and the HTTP
corners of the path through it: kept-alive connections, a kept connection the
replica closed, chunked uploads, Expect: 100-continue, HTTP/1.0, HEAD, answers
ended by closing, pipelined and malformed requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from yarl import URL

from servefleet.runtime.local.gateway import Backend, Router
from tests.runtime.test_gateway import (
    Handler,
    Start,
    client,
    echo,
    gateways,
    route,
    serve,
)

__all__ = ["client", "gateways", "serve"]  # fixtures, used by name

Serve = Callable[[Handler], Awaitable[str]]


def _router_to(replica: str) -> Router:
    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", replica)])
    return router


async def _gateway_to(handler: Handler, serve: Serve, gateways: Start) -> str:
    return await gateways([_router_to(await serve(handler))])


@asynccontextmanager
async def _raw_replica(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A replica that speaks HTTP by hand (what aiohttp's server never does)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def _raw(url: str, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parsed = URL(url)
    assert parsed.port is not None
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    writer.write(data)
    return reader, writer


async def _answers(reader: asyncio.StreamReader, count: int) -> list[tuple[bytes, bytes]]:
    """`count` answers (head, body) with a Content-Length, read off a raw connection."""
    answers = []
    async with asyncio.timeout(10):
        for _ in range(count):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            answers.append((head, await reader.readexactly(length)))
    return answers


async def test_requests_reuse_a_kept_alive_connection_to_the_replica(
    serve: Serve, gateways: Start, client: aiohttp.ClientSession
) -> None:
    """Verify that one replica connection carries request after request."""
    peers: list[object] = []

    async def peer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({})

    url = await _gateway_to(peer, serve, gateways)
    for _ in range(5):
        async with client.get(f"{url}/inference/llm/x") as response:
            assert response.status == 200
    assert len(peers) == 5
    assert len(set(peers)) == 1


async def test_a_kept_connection_the_replica_dropped_is_replaced_for_a_request_without_body(
    gateways: Start, client: aiohttp.ClientSession
) -> None:
    """A replica that answers the first request of a connection and drops it on the
    second without answering: the gateway asks again on a new connection."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            pass  # the gateway closed its kept connection first
        finally:
            writer.transport.abort()

    async with _raw_replica(one_per_connection) as replica:
        url = await gateways([_router_to(replica)])
        for _ in range(3):
            async with client.get(f"{url}/inference/llm/x") as response:
                assert response.status == 200
                assert await response.read() == b"ok"


async def test_a_chunked_upload_reaches_the_replica_whole(
    serve: Serve, gateways: Start, client: aiohttp.ClientSession
) -> None:
    url = await _gateway_to(echo, serve, gateways)

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part
            await asyncio.sleep(0.01)

    async with client.post(f"{url}/inference/llm/x", data=parts()) as response:
        assert response.status == 200
        seen = await response.json()
    assert seen["body"] == "one two three"
    assert seen["headers"]["transfer-encoding"] == "chunked"


async def test_a_client_expecting_100_continue_gets_it_before_sending_its_body(
    serve: Serve, gateways: Start
) -> None:
    url = await _gateway_to(echo, serve, gateways)
    reader, writer = await _raw(
        url,
        b"POST /inference/llm/x HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n",
    )
    try:
        async with asyncio.timeout(10):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        [(head, body)] = await _answers(reader, 1)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    seen = json.loads(body)
    assert seen["body"] == "hello"
    assert "expect" not in seen["headers"]


async def test_an_http_1_0_request_without_host_is_answered(serve: Serve, gateways: Start) -> None:
    url = await _gateway_to(echo, serve, gateways)
    reader, writer = await _raw(url, b"GET /inference/llm/x HTTP/1.0\r\n\r\n")
    try:
        [(head, body)] = await _answers(reader, 1)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.0 200 ")
    assert json.loads(body)["headers"]["host"].startswith("127.0.0.1:")


async def test_pipelined_requests_with_a_head_among_them_are_answered_in_order(
    serve: Serve, gateways: Start
) -> None:
    """HEAD's answer has a Content-Length but no body; the next answer must follow."""
    url = await _gateway_to(echo, serve, gateways)
    reader, writer = await _raw(
        url,
        b"GET /inference/llm/a HTTP/1.1\r\nHost: g\r\n\r\n"
        b"HEAD /inference/llm/b HTTP/1.1\r\nHost: g\r\n\r\n"
        b"GET /inference/llm/c HTTP/1.1\r\nHost: g\r\n\r\n",
    )
    try:
        [(_, first)] = await _answers(reader, 1)
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        [(_, third)] = await _answers(reader, 1)
    finally:
        writer.close()
    assert json.loads(first)["path"] == "/a"
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(third)["path"] == "/c"


async def test_an_answer_ended_by_closing_the_connection_arrives_whole(
    gateways: Start, client: aiohttp.ClientSession
) -> None:
    async def no_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst ")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"and last")
        finally:
            writer.close()

    async with _raw_replica(no_length) as replica:
        url = await gateways([_router_to(replica)])
        async with client.get(f"{url}/inference/llm/x") as response:
            assert response.status == 200
            assert await response.read() == b"first and last"


async def test_a_malformed_request_is_400_and_never_reaches_a_replica(
    serve: Serve, gateways: Start
) -> None:
    reached: list[str] = []

    async def record(request: web.Request) -> web.StreamResponse:
        reached.append(request.path)
        return await echo(request)

    url = await _gateway_to(record, serve, gateways)
    reader, writer = await _raw(
        url, b"GET /inference/llm/x HTTP/1.1\r\nHost: g\r\nContent-Length: x\r\n\r\n"
    )
    try:
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.split(b"\r\n")[0].split(b" ")[1] == b"400"
    assert reached == []


async def test_a_get_whose_replica_drops_it_unanswered_goes_to_another_replica(
    serve: Serve, gateways: Start, client: aiohttp.ClientSession
) -> None:
    """A replica killed as it is asked accepts the connection and resets it; a
    request that may be repeated (GET, no body) then goes to another replica, as
    one refused at connect would. A POST with a body does not: 502."""

    async def drops(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.transport.abort()

    async with _raw_replica(drops) as dropping:
        dead = Backend("llm/primary-0", dropping)
        alive = Backend("llm/primary-1", await serve(echo))
        alive.acquire()  # so the dropping replica, less busy, is always tried first
        router = Router("r1")
        route(router, primary=[dead, alive])
        url = await gateways([router])
        async with client.get(f"{url}/inference/llm/x") as response:
            assert response.status == 200
            assert response.headers["x-servefleet-replica"] == "llm/primary-1"
        async with client.post(f"{url}/inference/llm/x", data=b"{}") as response:
            assert response.status == 502
        alive.release()
