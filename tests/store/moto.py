"""moto's DynamoDB in server mode, over real HTTP on loopback, for the store tests."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache
from typing import Any

import pytest

from servefleet.store.dynamodb import parse_url

REGION = "us-east-1"


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto on a free port with throwaway credentials; yield its endpoint URL."""
    # Imported here: moto takes a second to import, which only DynamoDB tests need pay.
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            patch.setenv(variable, "testing")
        patch.delenv("AWS_PROFILE", raising=False)
        # One access-log line per request drowns every failure report.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def fresh_table_url(endpoint: str) -> str:
    """The store URL of a table no test has used (it exists only after `store init`)."""
    return f"dynamodb://t-{uuid.uuid4().hex[:12]}?region={REGION}&endpoint_url={endpoint}"


@cache
def session() -> Any:
    """One botocore session for the tests' own clients (it parses DynamoDB's model once)."""
    from aiobotocore.session import get_session

    return get_session()


async def drop_table(url: str) -> None:
    location = parse_url(url)
    async with session().create_client(
        "dynamodb", region_name=location.region, endpoint_url=location.endpoint_url
    ) as client:
        with suppress(client.exceptions.ResourceNotFoundException):  # never initialised
            await client.delete_table(TableName=location.table)
