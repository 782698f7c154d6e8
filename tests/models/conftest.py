"""Real parts for the model tests: moto's S3 in server mode over HTTP, a small
model directory on disk, and `SlowS3`, an S3 look-alike on loopback that sends
part of a file and then waits (for ever, or until the test releases it)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from moto.server import ThreadedMotoServer

from servefleet.models.manifest import MANIFEST_NAME, Manifest, ManifestFile
from servefleet.models.s3 import s3_client

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BUCKET = "models"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials for moto and the fake; child processes inherit them."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return AWS_ENV


@pytest.fixture
async def bucket(moto_url: str, aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on moto; `AWS_ENDPOINT_URL` points every client (children too) at it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    name = f"{BUCKET}-{os.urandom(4).hex()}"
    async with s3_client() as client:
        await client.create_bucket(Bucket=name)
    return name


def write_model(root: Path) -> dict[str, bytes]:
    """A small model: a few files, one in a subdirectory, one empty."""
    files = {
        "config.json": json.dumps({"hidden_size": 8}).encode(),
        "weights/model-00001.bin": os.urandom(300_000),
        "weights/model-00002.bin": os.urandom(200_000),
        "empty.txt": b"",
    }
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return files


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "model"
    return root, write_model(root)


def contents(root: Path) -> dict[str, bytes]:
    """Every file under `root` but servefleet's own (manifest, stamp, partial files)."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.startswith(".") and path.name != MANIFEST_NAME
    }


@dataclass(frozen=True)
class Staging:
    code: int
    events: list[dict[str, object]]
    stderr: str

    @property
    def last(self) -> dict[str, object]:
        return self.events[-1]


async def run_stage(*args: str, env: dict[str, str] | None = None) -> Staging:
    """`python -m servefleet.stage` as a child process, as the runtimes run it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "servefleet.stage",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    assert process.returncode is not None
    return Staging(process.returncode, events, stderr.decode())


@dataclass
class SlowS3:
    """Answers GETs of `objects` (path-style, ranges honoured) like S3; for a key in
    `stall_at`, sends the object up to that offset, then waits for `release` (a range
    request from beyond it too, when `stall_resumed`)."""

    objects: dict[str, bytes]
    stall_at: dict[str, int] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    stall_resumed: bool = False
    ranges: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        self.ranges.append((key, request.headers.get("Range")))
        data = self.objects.get(key)
        if data is None:
            body = "<Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>"
            return web.Response(status=404, text=body, content_type="application/xml")
        start = 0
        headers = {"Content-Type": "application/octet-stream", "ETag": '"0"'}
        if range_header := request.headers.get("Range"):
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        response.content_length = len(data) - start
        await response.prepare(request)
        stall = self.stall_at.get(key)
        try:
            if stall is not None and (start < stall or self.stall_resumed):
                await response.write(data[start:stall])
                await self.release.wait()
                start = stall
            await response.write(data[start:])
            await response.write_eof()
        except ConnectionResetError:
            pass  # the stage gave up on this request
        return response


@asynccontextmanager
async def serving_slow_s3() -> AsyncIterator[SlowS3]:
    """A `SlowS3` on a free loopback port, until the block ends (stalls released)."""
    fake = SlowS3(objects={})
    app = web.Application()
    app.router.add_get("/{bucket}/{key:.*}", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest.fixture
async def slow_s3(aws: dict[str, str]) -> AsyncIterator[SlowS3]:
    async with serving_slow_s3() as fake:
        yield fake


def slow_model(fake: SlowS3, prefix: str, size: int = 400_000) -> tuple[bytes, Manifest]:
    """One file of `size` random bytes under `prefix`, stalling halfway, with its manifest."""
    data = os.urandom(size)
    entry = ManifestFile(path="weights.bin", size=size, sha256=hashlib.sha256(data).hexdigest())
    manifest = Manifest(files=[entry], total_bytes=size, created=datetime.now(UTC))
    fake.objects[f"{prefix}/{MANIFEST_NAME}"] = manifest.to_json()
    fake.objects[f"{prefix}/weights.bin"] = data
    fake.stall_at[f"{prefix}/weights.bin"] = size // 2
    return data, manifest
