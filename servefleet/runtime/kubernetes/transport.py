"""How an apply reaches the API server, and the answer `ClusterApi` reads of any request.

An apply (`ApplyTransport`) goes on servefleet's own HTTP/1.1 client
(`servefleet.http`), a connection pool the runtime keeps to its API server.
kubernetes-asyncio's aiohttp session cost about 200 µs of CPU per apply of a 3 KB
body (a request and a response object, a timer context, a connector lookup, cookie
and header bookkeeping per request, as the gateway found toward its replicas), this
client about 110, and applies are the reconciler's largest CPU item while a fleet
converges (about three per endpoint and region). It speaks to the server as the
session does: over TLS with the context kubernetes-asyncio built from the
kubeconfig (its CA, client certificate and key, verification settings) and its
`tls-server-name`, with the client's default headers (servefleet's User-Agent) and
its credentials (`update_params_for_auth`, on every attempt: a token read from a
file or an exec plugin may have been renewed). A proxy (`proxy-url`, or the
environment's, resolved by `api.make_api_client`) is the session's to speak to:
with one, applies go on the session, below its generated methods. An apply that
meets a kept connection the server closed meanwhile is sent again at once on a new
one (it is idempotent); any other failure is `ClusterApi`'s to retry.

The other requests (delete, list, a log's tail) go through the client's generated
methods on its session; `replied` reads their answer into the same `Reply`.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlencode, urlsplit

import aiohttp
from kubernetes_asyncio.client.api_client import ApiClient
from yarl import URL

from servefleet.http.fields import Fields, first
from servefleet.http.pool import Answer, UpstreamPool

__all__ = ["ApplyTransport", "Headers", "Reply", "replied"]

_APPLY: Final = "application/apply-patch+yaml"
_NO_CLIENT_TIMEOUT: Final = aiohttp.ClientTimeout()
"""As the client's REST layer sends: `ClusterApi` bounds every attempt itself."""


class Headers(Protocol):
    """An answer's header fields, looked up by name in any case."""

    def get(self, name: str, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer, read whole, from either client."""

    status: int
    headers: Headers
    body: bytes


class _RawHeaders:
    """Header fields as servefleet's client parsed them, looked up as aiohttp's are."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Fields) -> None:
        self._fields = fields

    def get(self, name: str, /) -> str | None:
        value = first(self._fields, name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")


async def replied(response: Awaitable[aiohttp.ClientResponse]) -> Reply:
    """The answer on the client's session to a generated method's request (called
    with `_preload_content=False`), read whole and its connection released."""
    answer = await response
    try:
        body = await answer.read()
    finally:
        answer.release()
    return Reply(answer.status, answer.headers, body)


@functools.lru_cache(maxsize=64)
def _query_text(query: tuple[tuple[str, str], ...]) -> str:
    """An apply's query string; there are a few (field manager, force) in a process."""
    return urlencode(query)


def _fields(headers: dict[str, str]) -> Fields:
    """`headers` as the raw client sends them. A line break in a value would end
    the field (or the head) early on the wire: refused, as aiohttp refuses it."""
    fields = [(name.encode(), str(value).encode()) for name, value in headers.items()]
    for name, value in fields:
        if b"\r" in value or b"\n" in value:
            raise ValueError(f"the header field {name.decode()} holds a line break")
    return fields


async def _body(answer: Answer) -> bytes:
    """The whole body of `answer`, which is released."""
    try:
        chunks = []
        while chunk := await answer.read():
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        answer.release()


class ApplyTransport:
    """Sends server-side applies to the API server of `api_client` (module docstring)."""

    def __init__(self, api_client: ApiClient, timeout: float) -> None:
        """`timeout`: how long a connection may take, and the server stay silent."""
        self._api_client = api_client
        self._host = api_client.configuration.host or ""
        self._prefix = urlsplit(self._host).path.rstrip("/")
        """The path the API is served under, if any (a proxy's, as Rancher's)."""
        rest = api_client.rest_client
        self._session: aiohttp.ClientSession = rest.pool_manager
        self._session_options: dict[str, Any] = {}
        """What the client's REST layer adds to each request it sends on the session."""
        self._pool: UpstreamPool | None = None
        if rest.proxy:
            self._session_options = {
                option: value
                for option, value in (
                    ("proxy", rest.proxy),
                    ("proxy_headers", rest.proxy_headers),
                    ("server_hostname", rest.server_hostname),
                )
                if value
            }
            return
        # No public accessor: the context kubernetes-asyncio built from the
        # kubeconfig for its session's connector (tests/kubernetes/test_api_tls.py).
        tls = getattr(self._session.connector, "_ssl", None)
        if not isinstance(tls, ssl.SSLContext):
            raise TypeError(
                "kubernetes-asyncio's session keeps no TLS context in connector._ssl "
                f"any more (found {type(tls).__name__})"
            )
        self._pool = UpstreamPool(
            connect_timeout=timeout,
            read_timeout=timeout,
            tls=tls,
            server_hostname=rest.server_hostname,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def apply(self, path: str, body: bytes, manager: str, *, force: bool) -> Reply:
        """Server-side apply `body` to the object at `path` as field manager `manager`."""
        api_client = self._api_client
        headers = {
            **api_client.default_headers,
            "Accept": "application/json",
            "Content-Type": _APPLY,
        }
        query = [("fieldManager", manager), *((("force", "true"),) if force else ())]
        await api_client.update_params_for_auth(headers, query, ["BearerToken"])
        query_text = _query_text(tuple(query))
        if self._pool is None:
            response = self._session.request(
                "PATCH",
                URL(f"{self._host}{path}?{query_text}", encoded=True),
                headers=headers,
                data=body,
                timeout=_NO_CLIENT_TIMEOUT,
                **self._session_options,
            )
            return await replied(response)
        answer = await self._pool.request(
            self._host,
            "PATCH",
            f"{self._prefix}{path}?{query_text}",
            _fields(headers),
            body,
            replayable=True,
        )
        return Reply(answer.status, _RawHeaders(answer.fields), await _body(answer))
