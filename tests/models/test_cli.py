"""`servefleet models ...` as users run it: the installed command in a child process,
against a model store directory and S3 (moto in server mode)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tests.cli.test_cli import COMMAND, REPO


async def models(store: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        "models",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SERVEFLEET_MODELS": store},
        cwd=REPO,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_upload_list_uri_delete(model: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = model
    store = str(tmp_path / "store")

    code, out, err = await models(store, "upload", str(root), "--name", "llama-8b")
    assert (code, err) == (0, "")
    uri = (tmp_path / "store/llama-8b/1").as_uri()
    assert out.splitlines() == [
        f"model/llama-8b:1 uploaded: 4 files, {sum(map(len, files.values()))} bytes "
        "(4 sent, 0 already stored)",
        uri,
    ]
    assert (await models(store, "upload", str(root), "--name", "llama-8b", "--version", "b"))[
        0
    ] == 0

    code, out, _ = await models(store, "list", "-o", "json")
    assert [(m["name"], m["version"], m["files"]) for m in json.loads(out)] == [
        ("llama-8b", "1", 4),
        ("llama-8b", "b", 4),
    ]
    assert (await models(store, "uri", "llama-8b"))[1] == (
        tmp_path / "store/llama-8b/b"
    ).as_uri() + "\n"
    assert await models(store, "delete", "llama-8b:b") == (0, "model/llama-8b:b deleted\n", "")
    assert (await models(store, "uri", "llama-8b"))[1] == uri + "\n"


async def test_errors_name_the_field_and_store_nothing(
    model: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    store = str(tmp_path / "store")
    code, out, err = await models(store, "upload", str(model[0]), "--name", "Llama 8B")
    assert (code, out) == (1, "")
    assert err.startswith("error: --name: must be 1-100 lowercase letters")
    assert "(got 'Llama 8B')" in err
    assert await models(store, "uri", "llama:9") == (
        1,
        "",
        f"error: model llama:9 not found in {store}\n",
    )
    assert not (tmp_path / "store").exists()


async def test_an_s3_store(
    model: tuple[Path, dict[str, bytes]], bucket: str, tmp_path: Path
) -> None:
    root, files = model
    store = f"s3://{bucket}/models"
    code, out, err = await models(store, "upload", str(root), "--name", "llama")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == f"s3://{bucket}/models/llama/1"
    listed = json.loads((await models(store, "list", "-o", "json"))[1])
    assert [(m["name"], m["version"], m["files"]) for m in listed] == [("llama", "1", len(files))]
