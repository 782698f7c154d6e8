"""A TCP proxy on loopback that a test (or `python -m chaos`) cuts to make a server
unreachable without stopping it: the machine's PostgreSQL stays up for everyone
else, and only the connections through the proxy see the outage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy", "proxy_to"]


@contextlib.asynccontextmanager
async def proxy_to(url: str, default_port: int = 5432) -> AsyncIterator[TcpProxy]:
    """A started proxy to the server of `url` (a PostgreSQL URL by default), closed
    on the way out; `proxy.url(url)` reaches the server through it."""
    server = urlsplit(url)
    proxy = TcpProxy(server.hostname or "127.0.0.1", server.port or default_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


class TcpProxy:
    """Forwards connections from a loopback port to `target`, until cut.

    `cut()` stops listening (new connections are refused) and aborts every
    connection it carries (both sides see a reset); `restore()` listens again on
    the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._port = 0
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by this proxy's (once started)."""
        parts = urlsplit(url)
        user, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{self._port}"))

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._carry, "127.0.0.1", self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _carry(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server = await asyncio.open_connection(*self._target)
        except OSError:
            client.transport.abort()
            return
        self._writers |= {client, server}
        pipes = {
            asyncio.create_task(_pipe(client_reader, server)),
            asyncio.create_task(_pipe(server_reader, client)),
        }
        self._pipes |= pipes
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            self._pipes -= pipes
            self._writers -= {client, server}
            for writer in (client, server):
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
