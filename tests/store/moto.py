"""moto's DynamoDB in server mode, over real HTTP on loopback, for the store tests."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache
from typing import Any

import pytest

from servefleet.store.dynamodb_table import parse_url

REGION = "us-east-1"


class _OneAtATime:
    """A WSGI app answering one request at a time.

    moto checks a ConditionExpression and then writes, with no lock between: two
    conditional writes at once can both pass (a lost update real DynamoDB never
    makes; seen in the contract suite's twenty racing writers under load)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        with self._lock:
            return list(self._app(environ, start_response))


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto on a free port with throwaway credentials; yield its endpoint URL."""
    # Imported here: moto takes a second to import, which only DynamoDB tests need pay.
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    with pytest.MonkeyPatch.context() as patch:
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            patch.setenv(variable, "testing")
        patch.delenv("AWS_PROFILE", raising=False)
        # One access-log line per request drowns every failure report.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app = _OneAtATime(DomainDispatcherApplication(create_backend_app))
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
        thread = threading.Thread(target=server.serve_forever, name="moto", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join()


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
