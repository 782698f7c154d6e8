"""The local runtime's model cache, end to end: `servefleet up` in this process (real
store, reconciler, local runtime), the stage command as a real child process, model
directories as `file://` sources on disk, and replicas (`tests/models/model_replica.py`)
that report the directory they were given. Nothing here reads the runtime's private
state: what the cache holds is what `model-cache/<region>/<endpoint>/` lists."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from servefleet.spec import CanarySpec, EndpointSpec, RegionState
from tests.models.conftest import SlowS3, contents, slow_model, write_model
from tests.models.test_local_staging import REPLICA
from tests.scenarios.harness import SETTLE, Fleet, local_fleet, manifest
from tests.waiting import eventually

EXITS_AT_ONCE = [sys.executable, "-c", "raise SystemExit(3)"]


def model_spec(source: Path | str, *, command: list[str] | None = None, **env: str) -> EndpointSpec:
    """One replica of `command` (by default one reporting its model directory) on the
    model at `source`, a directory or a URI."""
    return EndpointSpec(
        command=command or [sys.executable, REPLICA, "--port", "{port}", "--model", "{model_dir}"],
        replicas=1,
        model_source=source.as_uri() if isinstance(source, Path) else source,
        env=env,
    )


def endpoint_cache(tmp_path: Path, endpoint: str = "llm") -> Path:
    """Where `up` with the log directory `tmp_path/logs` caches the endpoint's models."""
    return tmp_path / "model-cache" / "r1" / endpoint


def listed(directory: Path) -> set[str] | None:
    return {entry.name for entry in directory.iterdir()} if directory.exists() else None


async def cache_becomes(directory: Path, names: set[str] | None) -> None:
    async def check() -> bool:
        return listed(directory) == names

    await eventually(check, within=SETTLE)


async def model_dir(fleet: Fleet, endpoint: str = "llm") -> Path:
    """The model directory the replica that answers was started with."""
    answer = await fleet.chat(endpoint)
    assert answer.status == 200, answer.body
    return Path(answer.body["model_dir"])


def leftover(directory: Path, outside: Path) -> Path:
    """A directory like a crash leaves, with a symbolic link to `outside` in it, and a
    link to `outside` beside it: deleting them must not touch what they point to."""
    left = directory / "left-by-a-crash"
    (left / "weights").mkdir(parents=True)
    (left / "weights" / "part.bin").write_bytes(os.urandom(1000))
    (left / "elsewhere").symlink_to(outside, target_is_directory=True)
    (directory / "link-out").symlink_to(outside, target_is_directory=True)
    return left


async def test_a_new_model_version_leaves_only_its_directory(
    sqlite_url: str, tmp_path: Path
) -> None:
    first, second = tmp_path / "models" / "llm" / "1", tmp_path / "models" / "llm" / "2"
    files = write_model(first)
    write_model(second)
    outside = tmp_path / "outside"
    precious = write_model(outside)
    cache = endpoint_cache(tmp_path)
    leftover(cache, outside)

    async with local_fleet(sqlite_url, tmp_path) as fleet:
        await fleet.service.deploy("llm", model_spec(first), ["r1"])
        await fleet.settled("llm", replicas=1)
        first_dir = await model_dir(fleet)
        assert first_dir.parent == cache
        await cache_becomes(cache, {first_dir.name})
        assert contents(outside) == precious  # the links went, not what they point to
        assert contents(first_dir) == files

        await fleet.service.apply(manifest("llm", model_spec(second), ["r1"]))
        await fleet.settled("llm", replicas=1)
        second_dir = await model_dir(fleet)
        assert second_dir.parent == cache
        assert second_dir != first_dir
        await cache_becomes(cache, {second_dir.name})

    assert listed(cache) == {second_dir.name}  # shutting down keeps the models


async def test_a_linked_endpoint_directory_is_not_followed(
    fleet: Fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deletion that fails (here: it refuses to go through a link out of the cache)
    is logged and tried again, and the workload runs on regardless."""
    source = tmp_path / "models" / "llm" / "1"
    write_model(source)
    outside = tmp_path / "outside"
    precious = write_model(outside / "left-by-a-crash")
    cache = endpoint_cache(tmp_path)
    cache.parent.mkdir(parents=True)
    cache.symlink_to(outside, target_is_directory=True)
    await fleet.service.deploy("llm", model_spec(source), ["r1"])
    await fleet.settled("llm", replicas=1)

    def refusals() -> int:
        return sum("could not delete unused model cache" in r.message for r in caplog.records)

    async def refused_twice() -> bool:
        return refusals() >= 2

    await eventually(refused_twice, within=SETTLE)
    assert contents(outside / "left-by-a-crash") == precious
    assert (await model_dir(fleet)).parent == cache


async def test_nothing_is_deleted_while_the_model_stages(
    fleet: Fleet, tmp_path: Path, slow_s3: SlowS3
) -> None:
    """Until the new model is in place, older directories may be what a rollback needs."""
    data, _ = slow_model(slow_s3, "llama/1")
    cache = endpoint_cache(tmp_path)
    (cache / "left-by-a-crash").mkdir(parents=True)
    spec = model_spec("s3://models/llama/1", AWS_ENDPOINT_URL=slow_s3.url)
    await fleet.service.deploy("llm", spec, ["r1"])

    async def halfway() -> bool:
        status = await fleet.status("llm")
        return bool(status and status.staging and status.staging.bytes_done == len(data) // 2)

    await eventually(halfway, within=SETTLE)
    assert "left-by-a-crash" in (listed(cache) or set())

    slow_s3.release.set()
    await fleet.settled("llm", replicas=1)
    await cache_becomes(cache, {(await model_dir(fleet)).name})


async def test_a_directory_in_use_stays_while_its_replica_runs(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A new model whose replicas never become ready leaves the old replica serving
    from the old directory; rolling back then lets the new one go."""
    first, second = tmp_path / "models" / "llm" / "1", tmp_path / "models" / "llm" / "2"
    files = write_model(first)
    write_model(second)
    cache = endpoint_cache(tmp_path)
    await fleet.service.deploy("llm", model_spec(first), ["r1"])
    await fleet.settled("llm", replicas=1)
    first_dir = await model_dir(fleet)
    await cache_becomes(cache, {first_dir.name})
    (serving,) = fleet.pids("llm")

    # Collected only by a deletion that comes after the second model is staged.
    (cache / "left-by-a-crash").mkdir()
    broken = model_spec(second, command=EXITS_AT_ONCE)
    await fleet.service.apply(manifest("llm", broken, ["r1"]))

    async def collected_and_reported() -> bool:
        # The region's status is written after the runtime acts, so it may lag the cache.
        status = await fleet.status("llm")
        staged = status is not None and status.staging is not None and status.staging.complete
        return staged and "left-by-a-crash" not in (listed(cache) or set())

    await eventually(collected_and_reported, within=SETTLE)
    assert len(listed(cache) or set()) == 2
    assert contents(first_dir) == files
    assert fleet.pids("llm", role="primary") >= {serving}
    assert await model_dir(fleet) == first_dir

    await fleet.service.apply(manifest("llm", model_spec(first), ["r1"]))
    await fleet.settled("llm", replicas=1)
    assert fleet.pids("llm") == {serving}  # the rollback kept the old replica
    await cache_becomes(cache, {first_dir.name})
    assert contents(first_dir) == files


async def test_a_canary_left_on_the_old_model_keeps_it(fleet: Fleet, tmp_path: Path) -> None:
    """The primary moves to a new model; the canary's replacement never becomes ready,
    so the old canary goes on serving from the old model, which stays until it retires."""
    first, second = tmp_path / "models" / "llm" / "1", tmp_path / "models" / "llm" / "2"
    files = write_model(first)
    write_model(second)
    cache = endpoint_cache(tmp_path)
    canary = {"weight": 50, "replicas": 1}
    with_canary = model_spec(first).model_copy(update={"canary": CanarySpec(**canary)})
    await fleet.service.deploy("llm", with_canary, ["r1"])
    await fleet.settled("llm", replicas=1, canary=1)
    first_dir = await model_dir(fleet)
    await cache_becomes(cache, {first_dir.name})
    (old_canary,) = fleet.pids("llm", role="canary")

    (cache / "left-by-a-crash").mkdir()
    broken_canary = model_spec(second).model_copy(
        update={"canary": CanarySpec(**canary, command=EXITS_AT_ONCE)}
    )
    await fleet.service.apply(manifest("llm", broken_canary, ["r1"]))

    async def primary_moved_and_collected() -> bool:
        primaries = [r for r in fleet.replicas("llm") if r.role == "primary"]
        return (
            "left-by-a-crash" not in (listed(cache) or set())
            and len(primaries) == 1
            and primaries[0].current
            and primaries[0].state == "ready"
        )

    await eventually(primary_moved_and_collected, within=SETTLE)
    second_dir = cache / (set(listed(cache) or set()) - {first_dir.name}).pop()
    assert listed(cache) == {first_dir.name, second_dir.name}
    assert old_canary in fleet.pids("llm", role="canary")
    assert contents(first_dir) == files
    answered = {await model_dir(fleet) for _ in range(40)}
    assert answered == {first_dir, second_dir}  # 50 % each: both answer in 40 tries

    await fleet.service.apply(manifest("llm", model_spec(second), ["r1"]))
    await fleet.settled("llm", replicas=1)
    await cache_becomes(cache, {second_dir.name})


async def test_a_removed_endpoint_leaves_no_cache(fleet: Fleet, tmp_path: Path) -> None:
    source = tmp_path / "models" / "llm" / "1"
    write_model(source)
    for name in ("llm", "other"):
        await fleet.service.deploy(name, model_spec(source), ["r1"])
    await fleet.settled("llm", replicas=1)
    await fleet.settled("other", replicas=1)
    other_dir = await model_dir(fleet, "other")
    await cache_becomes(endpoint_cache(tmp_path), {(await model_dir(fleet)).name})

    await fleet.service.delete("llm")
    await eventually(lambda: fleet.purged("llm"), within=SETTLE)
    await cache_becomes(endpoint_cache(tmp_path), None)
    assert listed(endpoint_cache(tmp_path, "other")) == {other_dir.name}
    assert await model_dir(fleet, "other") == other_dir


async def test_a_stopped_endpoint_keeps_its_model_across_restarts(
    sqlite_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "models" / "llm" / "1"
    files = write_model(source)
    cache = endpoint_cache(tmp_path)
    async with local_fleet(sqlite_url, tmp_path) as fleet:
        await fleet.service.deploy("llm", model_spec(source), ["r1"])
        await fleet.settled("llm", replicas=1)
        staged = await model_dir(fleet)
        await fleet.service.stop("llm")

        async def stopped() -> bool:
            status = await fleet.status("llm")
            return status is not None and status.state is RegionState.STOPPED

        await eventually(stopped, within=SETTLE)

    (cache / "left-by-a-crash").mkdir()
    async with local_fleet(sqlite_url, tmp_path) as fleet:
        # The leftover going shows the new leader has collected this endpoint's cache.
        await cache_becomes(cache, {staged.name})
        assert contents(staged) == files
        assert fleet.replicas("llm") == []
