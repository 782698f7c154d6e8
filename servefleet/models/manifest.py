"""What a model version holds: its files, their sizes and sha256 digests.

A manifest is written beside the files of every version in the model store,
last, so a version exists exactly when its manifest does. Staging checks every
file it copies against it. Paths are relative, use '/', and never leave the
model's directory, so a hostile manifest cannot make staging write elsewhere.

Hashing and directory walks run on worker threads, one chunk per call, so a
multi-gigabyte model never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CHUNK_SIZE",
    "MANIFEST_NAME",
    "PARTIAL_SUFFIX",
    "STAMP_NAME",
    "Manifest",
    "ManifestFile",
    "build_manifest",
    "hash_file",
    "partial_path",
    "read_into",
    "relative_path",
]

MANIFEST_NAME = "servefleet-manifest.json"
STAMP_NAME = ".servefleet-staged.json"
"""Written into a staged model directory; see `servefleet.models.staging`."""
PARTIAL_SUFFIX = ".servefleet-partial"
"""A file being written is named `.<name>.servefleet-partial` until it is complete."""
CHUNK_SIZE = 8 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_RESERVED = {MANIFEST_NAME, STAMP_NAME}


def relative_path(value: str) -> str:
    """`value` if it is a clean relative path inside a model directory."""
    parts = PurePosixPath(value).parts
    if (
        not value
        or value.startswith("/")
        or "\\" in value
        or "\0" in value
        or any(part in ("", ".", "..") for part in value.split("/"))
        or "/".join(parts) != value
    ):
        raise ValueError(f"must be a relative path inside the model, without '..' (got {value!r})")
    if value in _RESERVED:
        raise ValueError(f"is a name servefleet keeps for itself (got {value!r})")
    return value


def _sha256(value: str) -> str:
    if not _SHA256.match(value):
        raise ValueError(f"must be 64 lowercase hex digits (got {value!r})")
    return value


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, AfterValidator(relative_path)]
    size: int = Field(ge=0)
    sha256: Annotated[str, AfterValidator(_sha256)]


class Manifest(BaseModel):
    """One model version: every file, and the total of their sizes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    files: list[ManifestFile]
    total_bytes: int = Field(ge=0)
    created: datetime

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        paths = [entry.path for entry in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("files: a path is listed twice")
        # A file and a directory of the same name cannot both be staged.
        directories = {str(parent) for path in paths for parent in PurePosixPath(path).parents}
        if clash := directories.intersection(paths):
            raise ValueError(f"files: {sorted(clash)[0]!r} is both a file and a directory")
        if self.total_bytes != sum(entry.size for entry in self.files):
            raise ValueError("total_bytes: is not the sum of the file sizes")
        return self

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()

    def digest(self) -> str:
        """Identifies the content: the files, not when the manifest was written."""
        files = [entry.model_dump() for entry in self.files]
        canonical = json.dumps(files, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def _read_chunk(stream: IO[bytes], digest: hashlib._Hash) -> int:
    chunk = stream.read(CHUNK_SIZE)
    digest.update(chunk)
    return len(chunk)


async def read_into(path: Path, digest: hashlib._Hash) -> int:
    """Feed the whole file at `path` to `digest`; returns its size."""
    stream = await asyncio.to_thread(path.open, "rb")
    try:
        total = 0
        while read := await asyncio.to_thread(_read_chunk, stream, digest):
            total += read
        return total
    finally:
        await asyncio.to_thread(stream.close)


async def hash_file(path: Path) -> tuple[int, str]:
    """Size and sha256 of the file at `path`."""
    digest = hashlib.sha256()
    size = await read_into(path, digest)
    return size, digest.hexdigest()


def _walk(root: Path) -> list[tuple[str, Path]]:
    if not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(root))
    found: list[tuple[str, Path]] = []
    for directory, subdirectories, names in os.walk(root, followlinks=True):
        subdirectories.sort()
        for name in sorted(names):
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            if relative in _RESERVED or name.endswith(PARTIAL_SUFFIX):
                continue
            if not path.is_file():
                raise OSError(f"{path}: not a regular file")
            found.append((relative_path(relative), path))
    return found


async def build_manifest(root: Path, created: datetime) -> Manifest:
    """The manifest of every regular file under `root` (symbolic links followed;
    servefleet's own manifest, stamp and partial files left out)."""
    files = []
    for relative, path in await asyncio.to_thread(_walk, root):
        size, sha256 = await hash_file(path)
        files.append(ManifestFile(path=relative, size=size, sha256=sha256))
    return Manifest(files=files, total_bytes=sum(f.size for f in files), created=created)
