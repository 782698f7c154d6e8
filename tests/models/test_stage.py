"""`python -m servefleet.stage` as the runtimes run it: a child process, the source
only in argv or the environment, JSON lines on stdout, an exit status."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from servefleet.models.manifest import MANIFEST_NAME, Manifest, ManifestFile
from servefleet.models.store import open_model_store
from tests.models.conftest import SlowS3, contents, run_stage, slow_model


@pytest.mark.slow(seconds=10)
async def test_an_interrupted_download_resumes_where_it_stopped(
    slow_s3: SlowS3, tmp_path: Path
) -> None:
    data, manifest = slow_model(slow_s3, "llama/1")
    target = tmp_path / "model"
    env = {"AWS_ENDPOINT_URL": slow_s3.url}
    outcome = tmp_path / "termination-log"

    cut = await run_stage(
        "--source",
        "s3://models/llama/1",
        "--dir",
        str(target),
        "--timeout",
        # Long enough for the process to start and reach the stall on a loaded machine
        # (three test workers on two cores): it must be cut mid-file, not before.
        "8",
        "--termination-log",
        str(outcome),
        env=env,
    )

    assert cut.code == 1
    assert cut.last["event"] == "error"
    half = len(data) // 2
    assert "timed out after 8s" in str(cut.last["message"])
    assert f"({half} of {len(data)} bytes staged)" in str(cut.last["message"])
    assert {"event": "progress", "bytes_done": half, "bytes_total": len(data)} in cut.events
    assert "timed out" in cut.stderr
    assert json.loads(outcome.read_text()) == cut.last  # Kubernetes' termination message
    assert not (target / "weights.bin").exists()  # never under its real name half-written

    slow_s3.release.set()
    resumed = await run_stage(
        env={
            **env,
            "SERVEFLEET_MODEL_SOURCE": "s3://models/llama/1",
            "SERVEFLEET_MODEL_DIR": str(target),
            "SERVEFLEET_STAGE_TERMINATION_LOG": str(outcome),
        }
    )

    assert resumed.code == 0, resumed.stderr
    assert json.loads(outcome.read_text()) == {
        "event": "done",
        "bytes_total": len(data),
        "files": 1,
    }
    assert resumed.last == {
        "event": "done",
        "bytes_total": len(data),
        "files": 1,
        "fetched": ["weights.bin"],
    }
    assert ("llama/1/weights.bin", f"bytes={half}-") in slow_s3.ranges
    assert contents(target) == {"weights.bin": data}
    assert manifest.total_bytes == len(data)


async def test_a_verified_cache_is_reused_and_a_corrupt_one_repaired(
    model: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, files = model
    async with open_model_store(str(tmp_path / "store")) as store:
        uri = (await store.upload(root, "llama")).model.uri
    target = tmp_path / "cache"
    first = await run_stage("--source", uri, "--dir", str(target))
    assert first.code == 0, first.stderr
    assert contents(target) == files

    again = await run_stage("--source", uri, "--dir", str(target))
    assert again.last["fetched"] == []

    shard = target / "weights/model-00001.bin"
    shard.write_bytes(os.urandom(shard.stat().st_size))  # same size, other bytes
    (target / "weights/model-00002.bin").write_bytes(b"truncated")
    (target / "config.json").unlink()
    repaired = await run_stage("--source", uri, "--dir", str(target))

    assert repaired.code == 0, repaired.stderr
    assert repaired.last["fetched"] == [
        "config.json",
        "weights/model-00001.bin",
        "weights/model-00002.bin",
    ]
    assert contents(target) == files


async def test_files_of_an_earlier_version_are_removed(
    model: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, files = model
    async with open_model_store(str(tmp_path / "store")) as store:
        first = (await store.upload(root, "llama")).model.uri
        (root / "weights/model-00002.bin").unlink()
        second = (await store.upload(root, "llama")).model.uri
    target = tmp_path / "cache"
    assert (await run_stage("--source", first, "--dir", str(target))).code == 0
    assert (await run_stage("--source", second, "--dir", str(target))).code == 0
    assert contents(target) == {k: v for k, v in files.items() if k != "weights/model-00002.bin"}


async def test_a_plain_directory_is_a_source_too(
    model: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, files = model
    staged = await run_stage("--source", str(root), "--dir", str(tmp_path / "cache"))
    assert staged.code == 0, staged.stderr
    assert contents(tmp_path / "cache") == files


@pytest.mark.parametrize(
    "hostile",
    [
        "file:///tmp/x; touch {marker}",
        "file:///tmp/x$(touch {marker})",
    ],
)
async def test_a_hostile_source_never_reaches_a_shell(hostile: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    source = hostile.format(marker=marker)
    staged = await run_stage(
        env={
            "SERVEFLEET_MODEL_SOURCE": source,
            "SERVEFLEET_MODEL_DIR": str(tmp_path / "cache"),
            "SERVEFLEET_STAGE_RETRIES": "0",
        }
    )
    assert staged.code == 1
    assert str(staged.last["message"]).startswith("model staging failed: ")
    assert source in str(staged.last["message"])
    assert not marker.exists()


async def test_a_manifest_cannot_write_outside_the_model_dir(
    slow_s3: SlowS3, tmp_path: Path
) -> None:
    data = b"evil"
    entry = {"path": "../outside.bin", "size": 4, "sha256": hashlib.sha256(data).hexdigest()}
    document = (
        f'{{"files": [{json.dumps(entry)}], "total_bytes": 4, "created": "2026-01-01T00:00:00Z"}}'
    )
    slow_s3.objects["m/1/" + MANIFEST_NAME] = document.encode()
    slow_s3.objects["m/1/../outside.bin"] = data
    staged = await run_stage(
        "--source",
        "s3://models/m/1",
        "--dir",
        str(tmp_path / "cache"),
        env={"AWS_ENDPOINT_URL": slow_s3.url},
    )
    assert staged.code == 1
    assert f"invalid {MANIFEST_NAME}: files.0.path" in str(staged.last["message"])
    assert not (tmp_path / "outside.bin").exists()


async def test_a_wrong_file_at_the_source_fails_after_its_retries(
    slow_s3: SlowS3, tmp_path: Path
) -> None:
    entry = ManifestFile(path="w.bin", size=4, sha256=hashlib.sha256(b"good").hexdigest())
    manifest = Manifest(files=[entry], total_bytes=4, created=datetime.now(UTC))
    slow_s3.objects["m/1/" + MANIFEST_NAME] = manifest.to_json()
    slow_s3.objects["m/1/w.bin"] = b"evil"
    staged = await run_stage(
        "--source",
        "s3://models/m/1",
        "--dir",
        str(tmp_path / "cache"),
        "--retries",
        "1",
        env={"AWS_ENDPOINT_URL": slow_s3.url},
    )
    assert staged.code == 1
    message = str(staged.last["message"])
    assert "w.bin: got 4 bytes with sha256" in message
    assert "gave up after 2 attempts" in message
    assert [key for key, _ in slow_s3.ranges].count("m/1/w.bin") == 2
    assert not (tmp_path / "cache" / "w.bin").exists()


async def test_an_s3_prefix_without_a_manifest_is_refused(slow_s3: SlowS3, tmp_path: Path) -> None:
    staged = await run_stage(
        "--source",
        "s3://models/nothing",
        "--dir",
        str(tmp_path / "cache"),
        env={"AWS_ENDPOINT_URL": slow_s3.url},
    )
    assert staged.code == 1
    assert f"no {MANIFEST_NAME} here" in str(staged.last["message"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--dir", "x"], "--source: required", id="no-source"),
        pytest.param(["--source", "/x"], "--dir: required", id="no-dir"),
        pytest.param(
            ["--source", "/x", "--dir", "y", "--timeout", "soon"],
            "--timeout: must be a positive number (got 'soon')",
            id="timeout",
        ),
        pytest.param(
            ["--source", "/x", "--dir", "y", "--retries", "-1"],
            "--retries: must be a positive number (got '-1')",
            id="retries",
        ),
        pytest.param(
            ["--source", "ftp://host/x", "--dir", "y"],
            "model source: must be file:///path, s3://bucket/prefix or a local path",
            id="scheme",
        ),
    ],
)
async def test_bad_arguments_are_named(args: list[str], message: str, tmp_path: Path) -> None:
    staged = await run_stage(*args, env={"SERVEFLEET_MODEL_SOURCE": "", "SERVEFLEET_MODEL_DIR": ""})
    assert staged.code in (1, 2)
    assert message in staged.stderr
