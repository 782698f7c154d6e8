"""The model store: named, versioned model directories with a manifest each.

Layout, the same on both backends (a local directory, or an S3 bucket/prefix):

    <root>/<name>/<version>/<the model's files>
    <root>/<name>/<version>/servefleet-manifest.json   (written last)

A version is visible (listed, resolved, staged) only once its manifest exists,
so an interrupted upload is never mistaken for a model. Uploading again resumes
it: files already stored with the size and sha256 of the manifest are skipped,
files left over from the interrupted attempt that the model no longer has are
removed, then the manifest is written. Versions are immutable: uploading to a
complete version is refused. Without `version`, an upload gets the next integer
(1, 2, ...), or resumes the highest-numbered one if it has no manifest yet.
"Latest" is the complete version created last.

On S3, files above `part_size` go up as multipart uploads (parts read from disk
on a worker thread); an interrupted multipart file is sent again whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from servefleet.models.manifest import (
    CHUNK_SIZE,
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    Manifest,
    ManifestFile,
    build_manifest,
    hash_file,
    partial_path,
)
from servefleet.models.s3 import S3_ERRORS, error_code, s3_client, split_s3_uri

__all__ = [
    "LocalModelStore",
    "ModelNotFound",
    "ModelStore",
    "ModelStoreError",
    "ModelVersion",
    "S3ModelStore",
    "Uploaded",
    "check_name",
    "check_version",
    "open_model_store",
    "parse_reference",
]

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,98}[a-z0-9])?\Z")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


class ModelStoreError(Exception):
    """A model store operation failed; the message says why, for a person."""


class ModelNotFound(ModelStoreError):
    pass


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    uri: str
    """What `deploy --model-source` takes."""
    total_bytes: int
    files: int
    created: datetime


@dataclass(frozen=True)
class Uploaded:
    model: ModelVersion
    sent: int
    """Files sent to the store."""
    skipped: int
    """Files already stored by an interrupted upload, with the right size and sha256."""


def check_name(value: str, field: str = "name") -> str:
    if not _NAME.match(value):
        raise ModelStoreError(
            f"{field}: must be 1-100 lowercase letters, digits, '.', '_' or '-', starting and "
            f"ending with a letter or digit (got {value!r})"
        )
    return value


def check_version(value: str, field: str = "version") -> str:
    if not _VERSION.match(value):
        raise ModelStoreError(
            f"{field}: must be 1-63 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit (got {value!r})"
        )
    return value


def parse_reference(text: str, field: str = "NAME[:VERSION]") -> tuple[str, str | None]:
    """ "llm:3" → ("llm", "3"); "llm" → ("llm", None)."""
    name, separator, version = text.partition(":")
    check_name(name, field)
    if separator:
        check_version(version, field)
        return name, version
    return name, None


class ModelStore(ABC):
    """The operations; backends only move bytes (the abstract methods below)."""

    url: str

    async def upload(self, source: Path, name: str, version: str | None = None) -> Uploaded:
        check_name(name)
        if version is not None:
            check_version(version)
        try:
            manifest = await build_manifest(source, datetime.now(UTC))
        except OSError as error:
            reason = f"{error.strerror} ({error.filename})" if error.strerror else str(error)
            raise ModelStoreError(f"PATH: {reason}") from error
        if not manifest.files:
            raise ModelStoreError(f"PATH: no files to upload in {source}")
        versions = await self._versions(name)
        if version is None:
            version = _next_version(versions)
        elif versions.get(version):
            raise ModelStoreError(
                f"version: {name}:{version} already exists; versions never change — "
                "delete it first or choose another version"
            )
        stored = await self._stored(name, version)
        sent = skipped = 0
        for entry in manifest.files:
            if stored.get(entry.path) == entry.size and entry.sha256 == await self._stored_sha256(
                name, version, entry.path
            ):
                skipped += 1
                continue
            await self._put_file(name, version, entry, source / entry.path)
            sent += 1
        await self._remove(name, version, set(stored) - {entry.path for entry in manifest.files})
        await self._put_manifest(name, version, manifest)
        return Uploaded(self._described(name, version, manifest), sent, skipped)

    async def list_versions(self) -> list[ModelVersion]:
        """Every complete version, by name, oldest first."""
        found: list[ModelVersion] = []
        for name in sorted(await self._names()):
            for version, complete in (await self._versions(name)).items():
                manifest = await self._read_manifest(name, version) if complete else None
                if manifest is not None:
                    found.append(self._described(name, version, manifest))
        return sorted(found, key=lambda model: (model.name, model.created, model.version))

    async def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """A complete version; the latest when `version` is None."""
        check_name(name)
        if version is not None:
            manifest = await self._read_manifest(name, check_version(version))
            if manifest is None:
                raise ModelNotFound(f"model {name}:{version} not found in {self.url}")
            return self._described(name, version, manifest)
        versions = [model for model in await self.list_versions() if model.name == name]
        if not versions:
            raise ModelNotFound(f"model {name} has no complete version in {self.url}")
        return versions[-1]

    async def delete(self, name: str, version: str | None = None) -> list[str]:
        """Remove one version, or every version of `name` (interrupted uploads
        included); returns the versions removed."""
        check_name(name)
        versions = await self._versions(name)
        doomed = sorted(versions) if version is None else [check_version(version)]
        if not doomed or doomed[0] not in versions:
            shown = name if version is None else f"{name}:{version}"
            raise ModelNotFound(f"model {shown} not found in {self.url}")
        for each in doomed:
            await self._delete_version(name, each)
        return doomed

    def _described(self, name: str, version: str, manifest: Manifest) -> ModelVersion:
        return ModelVersion(
            name=name,
            version=version,
            uri=self.uri(name, version),
            total_bytes=manifest.total_bytes,
            files=len(manifest.files),
            created=manifest.created,
        )

    @abstractmethod
    def uri(self, name: str, version: str) -> str:
        """Where staging finds this version."""

    @abstractmethod
    async def _names(self) -> list[str]: ...

    @abstractmethod
    async def _versions(self, name: str) -> dict[str, bool]:
        """Every version of `name` holding anything, and whether it is complete."""

    @abstractmethod
    async def _read_manifest(self, name: str, version: str) -> Manifest | None: ...

    @abstractmethod
    async def _stored(self, name: str, version: str) -> dict[str, int]:
        """The files an earlier attempt stored in this version, and their sizes."""

    @abstractmethod
    async def _stored_sha256(self, name: str, version: str, path: str) -> str | None: ...

    @abstractmethod
    async def _put_file(self, name: str, version: str, entry: ManifestFile, source: Path) -> None:
        """Store `source` as `entry.path`; fail if it no longer matches `entry`."""

    @abstractmethod
    async def _remove(self, name: str, version: str, paths: set[str]) -> None: ...

    @abstractmethod
    async def _put_manifest(self, name: str, version: str, manifest: Manifest) -> None: ...

    @abstractmethod
    async def _delete_version(self, name: str, version: str) -> None:
        """The manifest first (the version disappears at once), then the files."""


def _next_version(versions: dict[str, bool]) -> str:
    numbers = {
        int(version): complete for version, complete in versions.items() if version.isdigit()
    }
    if numbers:
        highest = max(numbers)
        return str(highest if not numbers[highest] else highest + 1)
    return "1"


def _changed(source: Path) -> ModelStoreError:
    return ModelStoreError(f"PATH: {source} changed during the upload; upload again")


def _copy_chunk(source: IO[bytes], target: IO[bytes], digest: Any) -> int:
    chunk = source.read(CHUNK_SIZE)
    target.write(chunk)
    digest.update(chunk)
    return len(chunk)


class LocalModelStore(ModelStore):
    """The embedded default: a directory on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.url = str(self.root)

    def uri(self, name: str, version: str) -> str:
        return (self.root / name / version).as_uri()

    async def _names(self) -> list[str]:
        def names() -> list[str]:
            if not self.root.is_dir():
                return []
            return [p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name)]

        return await asyncio.to_thread(names)

    async def _versions(self, name: str) -> dict[str, bool]:
        def versions() -> dict[str, bool]:
            directory = self.root / name
            if not directory.is_dir():
                return {}
            return {
                p.name: (p / MANIFEST_NAME).is_file()
                for p in directory.iterdir()
                if p.is_dir() and _VERSION.match(p.name)
            }

        return await asyncio.to_thread(versions)

    async def _read_manifest(self, name: str, version: str) -> Manifest | None:
        path = self.root / name / version / MANIFEST_NAME
        try:
            text = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        return Manifest.model_validate_json(text)

    async def _stored(self, name: str, version: str) -> dict[str, int]:
        def stored() -> dict[str, int]:
            directory = self.root / name / version
            found: dict[str, int] = {}
            for parent, _, names in os.walk(directory):
                for each in names:
                    path = Path(parent, each)
                    if path.name != MANIFEST_NAME and not each.endswith(PARTIAL_SUFFIX):
                        found[path.relative_to(directory).as_posix()] = path.stat().st_size
            return found

        return await asyncio.to_thread(stored)

    async def _stored_sha256(self, name: str, version: str, path: str) -> str | None:
        _, sha256 = await hash_file(self.root / name / version / path)
        return sha256

    async def _put_file(self, name: str, version: str, entry: ManifestFile, source: Path) -> None:
        target = self.root / name / version / entry.path
        temporary = partial_path(target)
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        digest = hashlib.sha256()
        reader = await asyncio.to_thread(source.open, "rb")
        try:
            writer = await asyncio.to_thread(temporary.open, "wb")
            try:
                while await asyncio.to_thread(_copy_chunk, reader, writer, digest):
                    pass
            finally:
                await asyncio.to_thread(writer.close)
        finally:
            await asyncio.to_thread(reader.close)
        if digest.hexdigest() != entry.sha256:
            await asyncio.to_thread(temporary.unlink)
            raise _changed(source)
        await asyncio.to_thread(os.replace, temporary, target)

    async def _remove(self, name: str, version: str, paths: set[str]) -> None:
        for path in paths:
            await asyncio.to_thread((self.root / name / version / path).unlink, missing_ok=True)

    async def _put_manifest(self, name: str, version: str, manifest: Manifest) -> None:
        target = self.root / name / version / MANIFEST_NAME
        temporary = partial_path(target)
        await asyncio.to_thread(temporary.write_bytes, manifest.to_json())
        await asyncio.to_thread(os.replace, temporary, target)

    async def _delete_version(self, name: str, version: str) -> None:
        directory = self.root / name / version
        await asyncio.to_thread((directory / MANIFEST_NAME).unlink, missing_ok=True)
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        if not await self._versions(name):
            await asyncio.to_thread(shutil.rmtree, self.root / name, ignore_errors=True)


class S3ModelStore(ModelStore):
    """`s3://bucket/prefix`: one object per file, sha256 kept in its metadata."""

    def __init__(self, url: str, client: Any, *, part_size: int = 64 << 20) -> None:
        self.url = url
        self.bucket, self.prefix = split_s3_uri(url)
        self._client = client
        self._part_size = max(part_size, 5 << 20)  # S3's smallest part but the last

    def uri(self, name: str, version: str) -> str:
        return f"s3://{self.bucket}/{self._key(name, version)}"

    def _key(self, *parts: str) -> str:
        return "/".join(part for part in (self.prefix, *parts) if part)

    async def _keys(self, *parts: str) -> dict[str, int]:
        """Every key under `parts` (relative to it) with its size."""
        base = self._key(*parts) + "/" if parts or self.prefix else ""
        found: dict[str, int] = {}
        try:
            async for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            ):
                for item in page.get("Contents", []):
                    found[item["Key"][len(base) :]] = int(item["Size"])
        except S3_ERRORS as error:
            raise ModelStoreError(f"{self.url}: {error}") from error
        return found

    async def _names(self) -> list[str]:
        names = {key.split("/", 1)[0] for key in await self._keys()}
        return [name for name in names if _NAME.match(name)]

    async def _versions(self, name: str) -> dict[str, bool]:
        versions: dict[str, bool] = {}
        for key in await self._keys(name):
            version, _, rest = key.partition("/")
            if _VERSION.match(version):
                versions[version] = versions.get(version, False) or rest == MANIFEST_NAME
        return versions

    async def _read_manifest(self, name: str, version: str) -> Manifest | None:
        try:
            response = await self._client.get_object(
                Bucket=self.bucket, Key=self._key(name, version, MANIFEST_NAME)
            )
            async with response["Body"] as body:
                text = await body.read()
        except S3_ERRORS as error:
            if error_code(error) in ("NoSuchKey", "404"):
                return None
            raise ModelStoreError(f"{self.url}: {error}") from error
        return Manifest.model_validate_json(text)

    async def _stored(self, name: str, version: str) -> dict[str, int]:
        keys = await self._keys(name, version)
        return {key: size for key, size in keys.items() if key != MANIFEST_NAME}

    async def _stored_sha256(self, name: str, version: str, path: str) -> str | None:
        try:
            head = await self._client.head_object(
                Bucket=self.bucket, Key=self._key(name, version, path)
            )
        except S3_ERRORS as error:
            raise ModelStoreError(f"{self.url}: {error}") from error
        value: str | None = head.get("Metadata", {}).get("sha256")
        return value

    async def _put_file(self, name: str, version: str, entry: ManifestFile, source: Path) -> None:
        key = self._key(name, version, entry.path)
        metadata = {"sha256": entry.sha256}
        digest = hashlib.sha256()
        reader = await asyncio.to_thread(source.open, "rb")
        upload_id = None
        try:
            if entry.size <= self._part_size:
                body = await asyncio.to_thread(reader.read)
                digest.update(body)
                if digest.hexdigest() != entry.sha256:
                    raise _changed(source)
                await self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, Metadata=metadata
                )
                return
            started = await self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, Metadata=metadata
            )
            upload_id = started["UploadId"]
            parts: list[dict[str, Any]] = []
            while body := await asyncio.to_thread(reader.read, self._part_size):
                await asyncio.to_thread(digest.update, body)
                part = await self._client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=len(parts) + 1,
                    Body=body,
                )
                parts.append({"PartNumber": len(parts) + 1, "ETag": part["ETag"]})
            if digest.hexdigest() != entry.sha256:
                raise _changed(source)
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            upload_id = None
        except S3_ERRORS as error:
            raise ModelStoreError(f"{self.url}: uploading {entry.path}: {error}") from error
        finally:
            await asyncio.to_thread(reader.close)
            if upload_id is not None:
                with contextlib.suppress(*S3_ERRORS):
                    await self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )

    async def _remove(self, name: str, version: str, paths: set[str]) -> None:
        await self._delete_keys([self._key(name, version, path) for path in sorted(paths)])

    async def _delete_keys(self, keys: list[str]) -> None:
        try:
            for start in range(0, len(keys), 1000):  # S3's limit per request
                batch = [{"Key": key} for key in keys[start : start + 1000]]
                await self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
        except S3_ERRORS as error:
            raise ModelStoreError(f"{self.url}: {error}") from error

    async def _put_manifest(self, name: str, version: str, manifest: Manifest) -> None:
        try:
            await self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(name, version, MANIFEST_NAME),
                Body=manifest.to_json(),
                ContentType="application/json",
            )
        except S3_ERRORS as error:
            raise ModelStoreError(f"{self.url}: {error}") from error

    async def _delete_version(self, name: str, version: str) -> None:
        await self._delete_keys([self._key(name, version, MANIFEST_NAME)])
        keys = await self._keys(name, version)
        await self._delete_keys([self._key(name, version, key) for key in sorted(keys)])


@asynccontextmanager
async def open_model_store(
    url: str, *, endpoint_url: str | None = None, part_size: int = 64 << 20
) -> AsyncIterator[ModelStore]:
    """The store at `url`: `s3://bucket[/prefix]`, `file:///path` or a directory path."""
    if url.startswith("s3://"):
        try:
            split_s3_uri(url)
        except ValueError as error:
            raise ModelStoreError(f"models: {error}") from error
        async with s3_client(endpoint_url=endpoint_url) as client:
            yield S3ModelStore(url, client, part_size=part_size)
        return
    if url.startswith("file://"):
        yield LocalModelStore(Path(unquote(urlsplit(url).path)))
        return
    if "://" in url:
        raise ModelStoreError(
            f"models: must be a directory, file:///path or s3://bucket[/prefix] (got {url!r})"
        )
    yield LocalModelStore(Path(url))
