"""Staging: copy a model into a directory, verified against its manifest.

`stage(source, directory, ...)` makes `directory` hold exactly the files of the
source's manifest, each with the manifest's size and sha256, and nothing
half-written under a real name:

- A file is fetched into `.<name>.servefleet-partial` and renamed only once its
  size and sha256 match. A partial file left by an interrupted run is resumed
  from where it stopped (an S3 range request, or a seek), its bytes re-hashed
  first; if the result does not match, it is fetched again from the start.
- A complete, verified directory is reused. After every successful run a stamp
  (`.servefleet-staged.json`) records the manifest's digest and each file's size,
  modification time and inode. A file whose stat still matches the stamp is
  trusted without reading it; any other file already present is re-hashed, and
  fetched again when its size or sha256 is wrong. So a corrupted or truncated
  file is repaired, while restarting a replica does not read a large model from
  disk again. (Corruption that keeps the size, the mtime and the inode, such as
  bit rot, goes unseen until the stamp is deleted.)
- Files that an earlier staged version had and this one has not are removed.
- Each file attempt fails after `idle_timeout` seconds without a byte and is
  retried with exponential backoff, `retries` times; the caller bounds the
  whole run (`python -m servefleet.stage --timeout`).

Sources: a directory (`file:///path` or a plain path; without a manifest one is
computed from its files) or `s3://bucket/prefix`, which must hold a manifest
(`servefleet models upload` writes one). The model store's URIs are of these
two kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from servefleet.models.manifest import (
    CHUNK_SIZE,
    MANIFEST_NAME,
    STAMP_NAME,
    Manifest,
    ManifestFile,
    build_manifest,
    hash_file,
    partial_path,
    read_into,
    relative_path,
)
from servefleet.models.s3 import S3_ERRORS, error_code, s3_client, split_s3_uri

__all__ = [
    "DirectorySource",
    "S3Source",
    "Source",
    "Staged",
    "StagingError",
    "open_source",
    "stage",
]

_PERMANENT_S3_CODES = {"NoSuchKey", "NoSuchBucket", "AccessDenied", "403", "404"}
_TRANSIENT: tuple[type[Exception], ...] = (OSError, TimeoutError, *S3_ERRORS)
_MAX_BACKOFF = 30.0
_PARALLEL_FILES = 4
T = TypeVar("T")


class StagingError(Exception):
    """Staging failed for good; the message says why, for a person."""


class _Retry(Exception):
    """This attempt failed in a way another attempt may not."""


@dataclass(frozen=True)
class Staged:
    bytes_total: int
    files: int
    fetched: list[str]
    """Files that were missing, partial or wrong, and were fetched."""


class Source(ABC):
    uri: str

    @abstractmethod
    async def manifest(self) -> Manifest: ...

    @abstractmethod
    def read(self, entry: ManifestFile, offset: int) -> AsyncGenerator[bytes, None]:
        """The bytes of `entry` from `offset` on, in chunks."""


class DirectorySource(Source):
    def __init__(self, uri: str, root: Path) -> None:
        self.uri = uri
        self.root = root

    async def manifest(self) -> Manifest:
        try:
            text = await asyncio.to_thread((self.root / MANIFEST_NAME).read_bytes)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise StagingError(f"{self.uri}: {error.strerror or error}") from error
        else:
            return _parsed(self.uri, text)
        if not await asyncio.to_thread(self.root.is_dir):
            raise StagingError(f"{self.uri}: no such directory")
        try:
            return await build_manifest(self.root, datetime.now(UTC))
        except (OSError, ValueError) as error:
            raise StagingError(f"{self.uri}: {error}") from error

    async def read(self, entry: ManifestFile, offset: int) -> AsyncGenerator[bytes, None]:
        path = self.root / entry.path
        try:
            mode = (await asyncio.to_thread(path.stat)).st_mode
        except FileNotFoundError as error:
            raise StagingError(f"{self.uri}: {entry.path} is missing") from error
        if not stat.S_ISREG(mode):  # a FIFO or device would block a thread forever
            raise StagingError(f"{self.uri}: {entry.path} is not a regular file")
        stream = await asyncio.to_thread(path.open, "rb")
        try:
            await asyncio.to_thread(stream.seek, offset)
            while chunk := await asyncio.to_thread(stream.read, CHUNK_SIZE):
                yield chunk
        finally:
            await asyncio.to_thread(stream.close)


class S3Source(Source):
    def __init__(self, uri: str, client: Any) -> None:
        self.uri = uri
        self.bucket, self.prefix = split_s3_uri(uri)
        self._client = client

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    async def manifest(self) -> Manifest:
        try:
            response = await self._client.get_object(
                Bucket=self.bucket, Key=self._key(MANIFEST_NAME)
            )
            async with response["Body"] as body:
                text = await body.read()
        except S3_ERRORS as error:
            if error_code(error) in ("NoSuchKey", "404"):
                raise StagingError(
                    f"{self.uri}: no {MANIFEST_NAME} here; S3 sources must be model store "
                    "versions (`servefleet models upload` writes the manifest)"
                ) from error
            _raise_if_permanent(self.uri, error)
            raise
        return _parsed(self.uri, text)

    async def read(self, entry: ManifestFile, offset: int) -> AsyncGenerator[bytes, None]:
        ranged = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = await self._client.get_object(
                Bucket=self.bucket, Key=self._key(entry.path), **ranged
            )
        except S3_ERRORS as error:
            _raise_if_permanent(f"{self.uri}: {entry.path}", error)
            raise
        if offset and not response.get("ContentRange"):
            response["Body"].close()
            raise _Retry(f"{entry.path}: the source ignored a range request")
        from aiohttp import ClientError  # loaded with the S3 client already

        try:
            async with response["Body"] as body:
                while chunk := await body.read(CHUNK_SIZE):
                    yield chunk
        except ClientError as error:
            raise _Retry(f"{entry.path}: {type(error).__name__}: {error}") from error


def _raise_if_permanent(what: str, error: Exception) -> None:
    code = error_code(error)
    if code in _PERMANENT_S3_CODES:
        raise StagingError(f"{what}: {code} ({error})") from error


def _parsed(uri: str, text: bytes) -> Manifest:
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise StagingError(f"{uri}: invalid {MANIFEST_NAME}: {where}: {problem['msg']}") from error


@contextlib.asynccontextmanager
async def open_source(uri: str, *, idle_timeout: float = 60.0) -> AsyncIterator[Source]:
    """The source at `uri`: `s3://bucket/prefix`, `file:///path` or a local path."""
    if uri.startswith("s3://"):
        try:
            split_s3_uri(uri)
        except ValueError as error:
            raise StagingError(f"model source: {error}") from error
        async with s3_client(read_timeout=idle_timeout) as client:
            yield S3Source(uri, client)
        return
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise StagingError(f"model source: file:// URIs name no host (got {uri!r})")
        yield DirectorySource(uri, Path(unquote(parts.path)))
        return
    if "://" in uri or not uri:
        raise StagingError(
            f"model source: must be file:///path, s3://bucket/prefix or a local path (got {uri!r})"
        )
    yield DirectorySource(uri, Path(uri))


@dataclass
class _Progress:
    total: int
    report: Callable[[int, int], None]
    by_file: dict[str, int] = field(default_factory=dict)

    def set(self, path: str, size: int) -> None:
        self.by_file[path] = size
        self.report(self.done, self.total)

    @property
    def done(self) -> int:
        return sum(self.by_file.values())


async def stage(
    source: Source,
    directory: Path,
    *,
    idle_timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 0.5,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> Staged:
    """Make `directory` hold the model at `source`, verified (see the module doc)."""
    manifest = await _retrying(
        f"{source.uri}: reading the manifest", source.manifest, retries, backoff
    )
    try:
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    except OSError as error:
        raise StagingError(f"model dir: {error.strerror or error} ({directory})") from error
    stamp = await asyncio.to_thread(_read_stamp, directory)
    digest = manifest.digest()
    trusted = stamp.get("files", {}) if stamp.get("manifest") == digest else {}
    wanted = {entry.path for entry in manifest.files}
    for leftover in set(stamp.get("files", {})) - wanted:
        with contextlib.suppress(ValueError):  # the stamp is ours, but never trust a path
            await asyncio.to_thread(_remove_file, directory / relative_path(leftover))
    progress = _Progress(manifest.total_bytes, on_progress)
    progress.report(0, manifest.total_bytes)
    fetched: list[str] = []
    limit = asyncio.Semaphore(_PARALLEL_FILES)

    async def one(entry: ManifestFile) -> None:
        async with limit:
            settings = (idle_timeout, retries, backoff)
            if await _stage_file(source, directory, entry, trusted, progress, settings):
                fetched.append(entry.path)

    try:
        async with asyncio.TaskGroup() as group:
            for entry in manifest.files:
                group.create_task(one(entry))
    except* StagingError as failures:
        raise failures.exceptions[0] from None
    await asyncio.to_thread(_write_stamp, directory, digest, manifest)
    return Staged(manifest.total_bytes, len(manifest.files), sorted(fetched))


async def _stage_file(
    source: Source,
    directory: Path,
    entry: ManifestFile,
    trusted: dict[str, list[int]],
    progress: _Progress,
    settings: tuple[float, int, float],
) -> bool:
    """Put `entry` in place; whether it had to be fetched."""
    idle_timeout, retries, backoff = settings
    target = directory / entry.path
    present = await asyncio.to_thread(_stat, target)
    if present is not None and trusted.get(entry.path) == present:
        progress.set(entry.path, entry.size)
        return False
    if (
        present is not None
        and present[0] == entry.size
        and (await hash_file(target))[1] == entry.sha256
    ):
        progress.set(entry.path, entry.size)
        return False
    try:
        if present is not None or await asyncio.to_thread(target.is_symlink):
            await asyncio.to_thread(target.unlink)
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    except OSError as error:
        raise StagingError(f"model dir: {error.strerror or error} ({target})") from error

    async def attempt() -> None:
        await _fetch(source, entry, target, progress, idle_timeout)

    await _retrying(entry.path, attempt, retries, backoff)
    return True


async def _fetch(
    source: Source, entry: ManifestFile, target: Path, progress: _Progress, idle_timeout: float
) -> None:
    partial = partial_path(target)
    digest = hashlib.sha256()
    size = 0
    if await asyncio.to_thread(partial.exists):
        size = await read_into(partial, digest)
        if size > entry.size:
            digest, size = hashlib.sha256(), 0
            await asyncio.to_thread(partial.unlink)
    progress.set(entry.path, size)
    writer = await asyncio.to_thread(partial.open, "ab")
    try:
        async with contextlib.aclosing(source.read(entry, size)) as chunks:
            while size < entry.size:
                async with asyncio.timeout(idle_timeout):
                    chunk = await anext(chunks, b"")
                if not chunk:
                    break
                await asyncio.to_thread(_append, writer, digest, chunk)
                size += len(chunk)
                progress.set(entry.path, min(size, entry.size))
        await asyncio.to_thread(_flush, writer)
    except TimeoutError:
        raise _Retry(f"{entry.path}: no data for {idle_timeout:g}s") from None
    finally:
        await asyncio.to_thread(writer.close)
    if size != entry.size or digest.hexdigest() != entry.sha256:
        await asyncio.to_thread(partial.unlink)
        progress.set(entry.path, 0)
        raise _Retry(
            f"{entry.path}: got {size} bytes with sha256 {digest.hexdigest()[:12]}…, "
            f"the manifest says {entry.size} bytes with sha256 {entry.sha256[:12]}…"
        )
    await asyncio.to_thread(os.replace, partial, target)


async def _retrying(
    what: str, attempt: Callable[[], Awaitable[T]], retries: int, backoff: float
) -> T:
    last = ""
    for number in range(retries + 1):
        if number:
            await asyncio.sleep(min(backoff * 2 ** (number - 1), _MAX_BACKOFF))
        try:
            return await attempt()
        except _Retry as error:
            last = str(error)
        except _TRANSIENT as error:
            last = f"{what}: {type(error).__name__}: {error}".rstrip(": ")
    raise StagingError(f"{last} (gave up after {retries + 1} attempts)")


def _append(writer: IO[bytes], digest: Any, chunk: bytes) -> None:
    writer.write(chunk)
    digest.update(chunk)


def _flush(writer: IO[bytes]) -> None:
    writer.flush()
    os.fsync(writer.fileno())


def _stat(path: Path) -> list[int] | None:
    """What the stamp records of a file: size, mtime (ns), inode; None if no regular file."""
    try:
        info = path.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _read_stamp(directory: Path) -> dict[str, Any]:
    try:
        stamp = json.loads((directory / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _write_stamp(directory: Path, digest: str, manifest: Manifest) -> None:
    files = {entry.path: _stat(directory / entry.path) for entry in manifest.files}
    temporary = partial_path(directory / STAMP_NAME)
    temporary.write_text(json.dumps({"manifest": digest, "files": files}))
    os.replace(temporary, directory / STAMP_NAME)


def _remove_file(path: Path) -> None:
    for each in (path, partial_path(path)):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            each.unlink()
