"""The S3 client both the model store and staging use.

Credentials, region and endpoint come from the standard AWS chain that
botocore reads (environment, shared config, instance roles), including
`AWS_ENDPOINT_URL`, which is how tests reach moto. botocore's own retries are
off: callers retry whole files with their own backoff and timeouts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

__all__ = ["S3_ERRORS", "error_code", "s3_client", "split_s3_uri"]

S3_ERRORS: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
"""What a failed S3 call raises (besides timeouts and OSError)."""


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` → ("bucket", "some/prefix")."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise ValueError(f"must be s3://bucket[/prefix] (got {uri!r})")
    return bucket, prefix.strip("/")


def error_code(error: Exception) -> str:
    """The S3 error code of a ClientError ("NoSuchKey", "404", ...), else ""."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


@asynccontextmanager
async def s3_client(
    *, endpoint_url: str | None = None, read_timeout: float = 60.0
) -> AsyncIterator[Any]:
    """An S3 client; `read_timeout` bounds connecting and each read from the socket."""
    # Imported here: it takes most of a second, which every `servefleet` command and
    # every staging from a directory would otherwise pay.
    from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
    from aiobotocore.session import get_session  # type: ignore[import-untyped]

    config = AioConfig(
        connect_timeout=read_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": 1, "mode": "standard"},
    )
    session = get_session()
    async with session.create_client("s3", endpoint_url=endpoint_url, config=config) as client:
        yield client
