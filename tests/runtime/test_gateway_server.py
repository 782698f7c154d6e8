"""The gateway's own HTTP server toward its clients (`downstream`), over raw sockets
on loopback: request bodies both ways of framing, pipelining, answers framed for
HTTP/1.0 and HEAD, keep-alive and its idle close, Expect: 100-continue, upgrades,
the limits on request heads, unparsable requests, a client gone mid-stream and a
closing gateway."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from yarl import URL

from servefleet.metrics import Metrics
from servefleet.runtime.local.gateway import Backend, Gateway, GatewaySettings, Router
from tests.runtime.test_gateway import Start, client, echo, gateways, route, serve
from tests.runtime.test_gateway_upstream import Serve, _answers, _gateway_to, _raw
from tests.waiting import eventually

__all__ = ["client", "gateways", "serve"]  # fixtures, used by name


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    async with asyncio.timeout(10):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


async def test_pipelined_posts_with_both_framings_are_answered_in_order(
    serve: Serve, gateways: Start
) -> None:
    """Verify that bodies with a Content-Length and chunked, sent back to back on one
    connection before any answer, each reach the replica whole and in order."""
    url = await _gateway_to(echo, serve, gateways)
    reader, writer = await _raw(
        url,
        b"POST /inference/llm/one HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /inference/llm/two HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        b"GET /inference/llm/three HTTP/1.1\r\nHost: g\r\n\r\n",
    )
    try:
        answers = await _answers(reader, 3)
    finally:
        writer.close()
    seen = [json.loads(body) for _, body in answers]
    assert [answer["path"] for answer in seen] == ["/one", "/two", "/three"]
    assert [answer["body"] for answer in seen] == ["hello", "abcdefg", ""]
    assert seen[0]["headers"]["content-length"] == "5"
    assert seen[1]["headers"]["transfer-encoding"] == "chunked"
    assert all(_status(head) == 200 for head, _ in answers)


async def test_a_body_sent_in_pieces_is_forwarded_as_it_arrives(
    serve: Serve, gateways: Start
) -> None:
    """Verify that the replica gets the first part of a body before the client has
    sent the rest (streamed, not buffered until complete)."""
    first_part = asyncio.Event()

    async def reads_in_parts(request: web.Request) -> web.StreamResponse:
        first = await request.content.readexactly(4)
        first_part.set()
        rest = await request.content.read()
        return web.json_response({"body": (first + rest).decode()})

    url = await _gateway_to(reads_in_parts, serve, gateways)
    reader, writer = await _raw(
        url, b"POST /inference/llm/x HTTP/1.1\r\nHost: g\r\nContent-Length: 8\r\n\r\nfirs"
    )
    try:
        await asyncio.wait_for(first_part.wait(), 10)
        writer.write(b"t...")
        [(head, body)] = await _answers(reader, 1)
    finally:
        writer.close()
    assert _status(head) == 200
    assert json.loads(body) == {"body": "first..."}


async def test_head_gets_the_replicas_length_and_no_body_streamed_or_not(
    serve: Serve, gateways: Start
) -> None:
    """Verify that HEAD's answer carries the replica's Content-Length but no body,
    and that one with no length is not framed chunked either: the next answer on the
    connection follows straight after."""

    async def sized_or_streamed(request: web.Request) -> web.StreamResponse:
        if request.path == "/sized":
            return web.Response(body=b"0123456789")
        response = web.StreamResponse()
        await response.prepare(request)
        return response

    url = await _gateway_to(sized_or_streamed, serve, gateways)
    reader, writer = await _raw(
        url,
        b"HEAD /inference/llm/sized HTTP/1.1\r\nHost: g\r\n\r\n"
        b"HEAD /inference/llm/streamed HTTP/1.1\r\nHost: g\r\n\r\n"
        b"GET /inference/llm/sized HTTP/1.1\r\nHost: g\r\n\r\n",
    )
    try:
        async with asyncio.timeout(10):
            sized = await reader.readuntil(b"\r\n\r\n")
            streamed = await reader.readuntil(b"\r\n\r\n")
        [(third, body)] = await _answers(reader, 1)
    finally:
        writer.close()
    assert _status(sized) == 200
    assert b"\r\nContent-Length: 10\r\n" in sized
    assert _status(streamed) == 200
    assert b"chunked" not in streamed.lower()
    assert _status(third) == 200
    assert body == b"0123456789"


async def test_a_streamed_answer_to_http_1_0_ends_with_the_connection(
    serve: Serve, gateways: Start
) -> None:
    """Verify that an answer without a length reaches an HTTP/1.0 client unchunked
    (it cannot read chunks), ended by closing the connection."""

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await asyncio.sleep(0.1)  # so that the answer is not whole when its head arrives
        await response.write(b"data: two\n\n")
        return response

    url = await _gateway_to(streamed, serve, gateways)
    reader, writer = await _raw(
        url, b"GET /inference/llm/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    )
    try:
        answer = await _until_closed(reader)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ")
    assert b"Connection: close" in head
    assert body == b"data: one\n\ndata: two\n\n"


async def test_keep_alive_connections_close_after_idling_header_timeout(
    serve: Serve, gateways: Start
) -> None:
    """Verify that a kept-alive connection serves request after request, and is
    closed by the gateway once it has sent nothing for `header_timeout`."""
    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", await serve(echo))])
    url = await gateways([router], GatewaySettings(header_timeout=0.5))
    reader, writer = await _raw(url, b"GET /inference/llm/a HTTP/1.1\r\nHost: g\r\n\r\n")
    try:
        [(first, _)] = await _answers(reader, 1)
        await asyncio.sleep(0.2)
        writer.write(b"GET /inference/llm/b HTTP/1.1\r\nHost: g\r\n\r\n")
        [(second, _)] = await _answers(reader, 1)
        assert b"connection: close" not in (first + second).lower()
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        assert await _until_closed(reader) == b""
        assert loop.time() - idle_since >= 0.4
    finally:
        writer.close()


async def test_connection_close_from_the_client_is_honoured(serve: Serve, gateways: Start) -> None:
    url = await _gateway_to(echo, serve, gateways)
    reader, writer = await _raw(
        url, b"GET /inference/llm/x HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"
    )
    try:
        answer = await _until_closed(reader)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in answer


async def test_a_refused_request_expecting_100_continue_gets_no_100_and_is_closed(
    gateways: Start,
) -> None:
    """Verify that a request the gateway refuses before taking its body is answered
    without an interim 100, and its connection closed (the body is never read)."""
    url = await gateways([Router("r1")])
    reader, writer = await _raw(
        url,
        b"POST /nowhere HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    try:
        answer = await _until_closed(reader)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert b"\r\nConnection: close" in head
    assert json.loads(body)["error"]["code"] == 404


async def test_an_upgrade_is_answered_over_http_1_1_and_the_connection_closed(
    serve: Serve, gateways: Start
) -> None:
    url = await _gateway_to(echo, serve, gateways)
    reader, writer = await _raw(
        url,
        b"GET /inference/llm/x HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\n"
        b"Upgrade: h2c\r\n\r\nnot http at all",
    )
    try:
        answer = await _until_closed(reader)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert "upgrade" not in json.loads(body)["headers"]


async def test_a_head_over_max_head_size_is_431_whole_or_in_pieces(
    serve: Serve, gateways: Start
) -> None:
    """Verify both ways past the limit: many small fields, and one field too long
    that llhttp holds unfinished across packets."""
    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", await serve(echo))])
    url = await gateways([router], GatewaySettings(max_head_size=4096))
    many = b"".join(b"X-Field-%d: %s\r\n" % (n, b"v" * 100) for n in range(60))
    reader, writer = await _raw(url, b"GET /inference/llm/x HTTP/1.1\r\nHost: g\r\n" + many)
    try:
        answer = await _until_closed(reader)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert _status(head) == 431
    assert json.loads(body)["error"]["message"] == "the request head is larger than 4096 bytes"

    reader, writer = await _raw(url, b"GET /inference/llm/x HTTP/1.1\r\nX-Long: ")
    try:
        for _ in range(10):
            writer.write(b"v" * 1000)
            await asyncio.sleep(0.01)
        answer = await _until_closed(reader)
    finally:
        writer.close()
    assert _status(answer) == 431

    # Under the limit, the same gateway serves.
    fewer = many[: many.index(b"X-Field-20:")]
    reader, writer = await _raw(url, b"GET /inference/llm/x HTTP/1.1\r\nHost: g\r\n%s\r\n" % fewer)
    try:
        [(head, _)] = await _answers(reader, 1)
    finally:
        writer.close()
    assert _status(head) == 200


async def test_a_request_target_over_max_request_line_is_414(serve: Serve, gateways: Start) -> None:
    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", await serve(echo))])
    url = await gateways([router], GatewaySettings(max_request_line=100))
    reader, writer = await _raw(url, b"GET /inference/llm/" + b"x" * 200 + b" HTTP/1.1\r\n\r\n")
    try:
        answer = await _until_closed(reader)
    finally:
        writer.close()
    assert _status(answer) == 414


async def test_garbage_is_400_and_closed_after_the_answers_before_it(
    serve: Serve, gateways: Start
) -> None:
    """Verify that a request that does not parse, pipelined behind a good one, is
    answered 400 after the good one's answer, and the connection closed."""
    url = await _gateway_to(echo, serve, gateways)
    reader, writer = await _raw(
        url, b"GET /inference/llm/good HTTP/1.1\r\nHost: g\r\n\r\nNOT HTTP AT ALL\r\n\r\n"
    )
    try:
        [(first, body)] = await _answers(reader, 1)
        rest = await _until_closed(reader)
    finally:
        writer.close()
    assert _status(first) == 200
    assert json.loads(body)["path"] == "/good"
    head, _, error = rest.partition(b"\r\n\r\n")
    assert _status(head) == 400
    assert json.loads(error)["error"]["code"] == 400


async def test_a_client_gone_mid_stream_ends_the_replicas_request(
    serve: Serve, gateways: Start
) -> None:
    """Verify over a raw socket that closing the connection mid-stream reaches the
    replica (its request is cancelled), frees the replica's slot and counts 4xx."""
    upstream_gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            upstream_gone.set()
            raise
        return response

    replica = Backend("llm/primary-0", await serve(endless))
    router = Router("r1")
    route(router, primary=[replica])
    metrics = Metrics()
    url = await gateways([router], metrics=metrics)
    reader, writer = await _raw(url, b"POST /inference/llm/x HTTP/1.1\r\nHost: g\r\n\r\n")
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head
        assert await reader.readuntil(b"data: first\n\n\r\n")
    writer.transport.abort()
    await asyncio.wait_for(upstream_gone.wait(), 5)
    await asyncio.wait_for(replica.idle(), 5)

    async def counted_as_client_gone() -> bool:
        labels = {"endpoint": "llm", "region": "r1", "version": "primary", "status_class": "4xx"}
        return metrics.registry.get_sample_value("servefleet_gateway_requests_total", labels) == 1

    await eventually(counted_as_client_gone)


async def test_a_client_that_reads_nothing_holds_the_replica_back_then_gets_it_all(
    serve: Serve, gateways: Start
) -> None:
    """Verify that a streamed answer the client does not read stops the replica's
    writes once the buffers on the way are full (the gateway holds no more than
    they do), and that the whole body arrives once the client reads again."""
    piece, pieces = b"x" * 65_536, 1_024  # 64 MiB
    sent = 0

    async def firehose(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(pieces):
            await response.write(piece)  # waits while its connection is backed up
            sent += len(piece)
        await response.write_eof()
        return response

    url = await _gateway_to(firehose, serve, gateways)
    reader, writer = await _raw(url, b"GET /inference/llm/x HTTP/1.1\r\nHost: g\r\n\r\n")
    try:
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"Transfer-Encoding: chunked" in head

            async def held() -> bool:
                before = sent
                await asyncio.sleep(0.3)
                return sent == before

            await eventually(held)
            # Kernel buffers on both loopback hops and a few transport buffers: far
            # less than the body, which an unheld gateway would have read whole.
            assert sent < len(piece) * pieces // 2
            body = bytearray()
            while not body.endswith(b"\r\n0\r\n\r\n"):
                more = await reader.read(1 << 20)
                assert more, "the gateway closed before the end of the answer"
                body += more
    finally:
        writer.close()
    assert sent == len(piece) * pieces
    assert body.count(b"x") == len(piece) * pieces


async def test_closing_lets_an_answer_under_way_finish_and_drops_idle_connections(
    serve: Serve,
) -> None:
    """Verify that `close` stops at once a kept-alive idle connection, and lets a
    request in flight get its whole answer within `shutdown_timeout`; with nothing
    left to read from either client, it does not linger for them to close first."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"done": True})

    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", await serve(slow))])
    gateway = Gateway([router], GatewaySettings(upstream_connect_timeout=1, shutdown_timeout=30))
    url = URL(await gateway.start("127.0.0.1", 0))
    idle_reader, idle_writer = await _raw(str(url), b"")
    busy_reader, busy_writer = await _raw(
        str(url), b"GET /inference/llm/x HTTP/1.1\r\nHost: g\r\n\r\n"
    )
    await asyncio.sleep(0.1)  # the request reaches the replica
    closing = asyncio.create_task(gateway.close())
    try:
        assert await _until_closed(idle_reader) == b""
        assert not closing.done()
        release.set()
        answer = await _until_closed(busy_reader)
        # Both clients keep their sockets open: a lingering close would hold on
        # for 5 s (downstream._LINGER).
        await asyncio.wait_for(closing, 2.5)
    finally:
        idle_writer.close()
        busy_writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert _status(head) == 200
    assert json.loads(body) == {"done": True}
