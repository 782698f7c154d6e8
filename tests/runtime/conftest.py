"""Fixtures of the local runtime's tests that run `servefleet up`: an initialised
SQLite store, and the model tests' `slow_s3`, an S3 look-alike on loopback that
can hang a stage (with `aws`, the credentials it needs)."""

from pathlib import Path

import pytest

from servefleet.store import open_store
from tests.models.conftest import aws, slow_s3

__all__ = ["aws", "slow_s3", "store_url"]


@pytest.fixture
async def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = await open_store(url, init=True)
    await store.close()
    return url
