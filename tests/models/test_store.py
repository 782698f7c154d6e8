"""The model store on both backends: a directory, and S3 (moto in server mode).

Every test runs against each backend; what is stored is checked by staging it or
reading it back, never by looking at call sequences."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from servefleet.models.manifest import MANIFEST_NAME
from servefleet.models.s3 import S3_ERRORS, s3_client
from servefleet.models.staging import open_source, stage
from servefleet.models.store import (
    ModelNotFound,
    ModelStore,
    ModelStoreError,
    open_model_store,
    parse_reference,
)
from tests.models.conftest import contents

Opener = Callable[[], AbstractAsyncContextManager[ModelStore]]


@pytest.fixture(params=["directory", "s3"])
def open_store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    moto_url: str,
    aws: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Opener:
    """Opens the same store each time it is called (a new client for S3: a fresh
    bucket on moto, created on the first call)."""
    if request.param == "directory":
        url = str(tmp_path / "store")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
        bucket = f"models-{os.urandom(4).hex()}"
        url = f"s3://{bucket}/team/models"

    @asynccontextmanager
    async def opener() -> AsyncIterator[ModelStore]:
        if url.startswith("s3://"):
            async with s3_client() as client:
                with contextlib.suppress(*S3_ERRORS):  # made by an earlier call
                    await client.create_bucket(Bucket=bucket)
        async with open_model_store(url, part_size=5 << 20) as store:
            yield store

    return opener


async def staged(uri: str, into: Path) -> dict[str, bytes]:
    async with open_source(uri) as source:
        await stage(source, into)
    return contents(into)


async def test_upload_list_uri_delete(
    open_store: Opener, model: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, files = model
    async with open_store() as store:
        first = await store.upload(root, "llama-8b")
        (root / "config.json").write_bytes(b'{"hidden_size": 16}')
        second = await store.upload(root, "llama-8b")
        named = await store.upload(root, "other", "2024-06")

        assert (first.model.version, second.model.version) == ("1", "2")
        assert (first.sent, first.skipped) == (len(files), 0)
        assert first.model.total_bytes == sum(len(data) for data in files.values())
        listed = await store.list_versions()
        assert [(m.name, m.version) for m in listed] == [
            ("llama-8b", "1"),
            ("llama-8b", "2"),
            ("other", "2024-06"),
        ]
        assert (await store.resolve("llama-8b")).uri == second.model.uri
        assert (await store.resolve("llama-8b", "1")).uri == first.model.uri
        assert named.model.uri.endswith("/other/2024-06")

        assert await staged(first.model.uri, tmp_path / "v1") == files
        assert (await staged(second.model.uri, tmp_path / "v2"))["config.json"] == (
            b'{"hidden_size": 16}'
        )

        assert await store.delete("llama-8b", "2") == ["2"]
        assert (await store.resolve("llama-8b")).version == "1"
        assert await store.delete("llama-8b") == ["1"]
        assert [m.name for m in await store.list_versions()] == ["other"]
        with pytest.raises(ModelNotFound, match="llama-8b has no complete version"):
            await store.resolve("llama-8b")
        with pytest.raises(ModelNotFound, match="llama-8b:1 not found"):
            await store.delete("llama-8b", "1")


async def test_a_version_is_visible_only_once_complete_and_an_upload_resumes(
    open_store: Opener, model: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, files = model
    async with open_store() as store:
        uri = (await store.upload(root, "llama", "1")).model.uri
        # Make it an upload interrupted before its manifest: one file never arrived,
        # one arrived damaged, and one belongs to nothing.
        await _forge_interruption(store, uri, tmp_path)

        assert await store.list_versions() == []
        with pytest.raises(ModelNotFound):
            await store.resolve("llama")

        resumed = await store.upload(root, "llama")  # no version: resumes "1"
        assert resumed.model.version == "1"
        assert (resumed.sent, resumed.skipped) == (2, len(files) - 2)
        assert await staged(uri, tmp_path / "out") == files
        assert [m.version for m in await store.list_versions()] == ["1"]


async def _forge_interruption(store: ModelStore, uri: str, tmp_path: Path) -> None:
    """Remove the manifest, one file, damage another, add a stray one."""
    if uri.startswith("file://"):
        directory = Path(uri.removeprefix("file://"))
        (directory / MANIFEST_NAME).unlink()
        (directory / "config.json").unlink()
        damaged = directory / "weights/model-00002.bin"
        damaged.write_bytes(os.urandom(damaged.stat().st_size))
        (directory / "stray.bin").write_bytes(b"left over")
        return
    from servefleet.models.store import S3ModelStore

    assert isinstance(store, S3ModelStore)
    client = store._client
    key = uri.removeprefix(f"s3://{store.bucket}/")
    await client.delete_object(Bucket=store.bucket, Key=f"{key}/{MANIFEST_NAME}")
    await client.delete_object(Bucket=store.bucket, Key=f"{key}/config.json")
    await client.put_object(
        Bucket=store.bucket,
        Key=f"{key}/weights/model-00002.bin",
        Body=os.urandom(200_000),
        Metadata={"sha256": "0" * 64},
    )
    await client.put_object(Bucket=store.bucket, Key=f"{key}/stray.bin", Body=b"left over")


async def test_versions_never_change(
    open_store: Opener, model: tuple[Path, dict[str, bytes]]
) -> None:
    root, _ = model
    async with open_store() as store:
        await store.upload(root, "llama", "v1")
        with pytest.raises(ModelStoreError, match=r"version: llama:v1 already exists"):
            await store.upload(root, "llama", "v1")


async def test_big_files_go_up_in_parts(open_store: Opener, tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    data = os.urandom((5 << 20) + 1000)  # over the 5 MiB part size of these stores
    (root / "weights.bin").write_bytes(data)
    async with open_store() as store:
        uploaded = await store.upload(root, "big")
        assert await staged(uploaded.model.uri, tmp_path / "out") == {"weights.bin": data}


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        pytest.param("Llama", None, "name: must be", id="uppercase-name"),
        pytest.param("llama;rm", None, "name: must be", id="shell-name"),
        pytest.param("llama", "../1", "version: must be", id="traversal-version"),
        pytest.param("llama", "a b", "version: must be", id="space-version"),
    ],
)
async def test_bad_names_are_refused_and_nothing_is_stored(
    tmp_path: Path,
    model: tuple[Path, dict[str, bytes]],
    name: str,
    version: str | None,
    message: str,
) -> None:
    async with open_model_store(str(tmp_path / "store")) as store:
        with pytest.raises(ModelStoreError, match=message):
            await store.upload(model[0], name, version)
        assert await store.list_versions() == []
    assert not (tmp_path / "store").exists()


def test_references() -> None:
    assert parse_reference("llama-8b") == ("llama-8b", None)
    assert parse_reference("llama-8b:2024.06") == ("llama-8b", "2024.06")
    with pytest.raises(ModelStoreError, match=r"NAME\[:VERSION\]: must be"):
        parse_reference("llama:")
