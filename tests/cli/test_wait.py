"""`--wait` ends when a change is in place, and as soon as it has failed wherever it
is not: the decision on records, then the command against a running fleet."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from servefleet.cli.wait import Failure, progress
from servefleet.spec import RegionState
from tests.cli.test_cli import IMAGE_1, Cli
from tests.factories import T0, make_endpoint, make_status
from tests.scenarios.harness import Fleet, demo_command

# Which reports count as a failure of the change waited for.

REFUSED = "Deployment llm: image refused"


def test_a_failure_reported_after_the_generation_was_stored_is_a_failure_of_it() -> None:
    endpoint = make_endpoint(regions=["r1"]).model_copy(update={"generation": 2})
    failed = make_status(
        state=RegionState.FAILED,
        observed_generation=1,
        message=REFUSED,
        heartbeat=T0 + timedelta(seconds=1),
    )

    assert progress(endpoint, [failed]).failures == [Failure("llm", "r1", REFUSED)]


def test_a_failure_reported_before_the_generation_was_stored_is_stale() -> None:
    endpoint = make_endpoint(regions=["r1"]).model_copy(update={"generation": 2})
    stale = make_status(
        state=RegionState.FAILED,
        observed_generation=1,
        message=REFUSED,
        heartbeat=T0 - timedelta(seconds=1),
    )

    waiting = progress(endpoint, [stale])

    assert (waiting.pending, waiting.failures, waiting.failed) == (["llm in r1"], [], False)


def test_a_failure_of_the_generation_in_place_is_a_failure_of_it() -> None:
    endpoint = make_endpoint(regions=["r1"])
    staging = make_status(
        state=RegionState.FAILED,
        observed_generation=1,
        message="model staging failed",
        heartbeat=T0 - timedelta(seconds=1),
    )

    assert progress(endpoint, [staging]).failures == [Failure("llm", "r1", "model staging failed")]


def test_one_failed_region_ends_the_wait_once_the_others_are_ready() -> None:
    endpoint = make_endpoint(regions=["r1", "r2"])
    ready = make_status(region="r1", state=RegionState.READY, observed_generation=1)
    failed = make_status(region="r2", state=RegionState.FAILED, message=REFUSED, heartbeat=T0)
    progressing = make_status(region="r1", state=RegionState.PROGRESSING)

    assert progress(endpoint, [ready, failed]).failed
    assert not progress(endpoint, [progressing, failed]).failed
    assert not progress(endpoint, [failed]).failed  # r1 has not reported yet


# The command against `servefleet up`.


NEVER_RUNS_HERE = {
    # A local region runs commands: an image-only endpoint is refused by the runtime.
    "refused": ["--image", IMAGE_1],
    # The model is staged before any replica starts, and this one does not exist.
    "unstageable": ["--model-source", "file:///nonexistent/model", "--", *demo_command()],
}


@pytest.mark.parametrize("case", sorted(NEVER_RUNS_HERE))
async def test_wait_ends_with_the_region_s_reason_when_the_change_fails_there(
    fleet: Fleet, sqlite_url: str, case: str
) -> None:
    cli = Cli(sqlite_url)

    result = await cli("deploy", "llm", "--wait", "--timeout", "50", *NEVER_RUNS_HERE[case])

    (status,) = await fleet.store.list_region_status(endpoint="llm")
    assert (status.state, result.code) == (RegionState.FAILED, 1), result
    assert status.message
    (line,) = result.stderr.splitlines()
    # The region keeps retrying: its message may have moved on to a later attempt.
    reason = status.message.partition(" (attempt ")[0]
    assert line.startswith(f"error: --wait: llm failed in r1: {reason}"), result
    assert "failed" in result.stdout.splitlines()[-1], result


async def test_wait_follows_a_fix_past_the_failure_it_replaces(
    fleet: Fleet, sqlite_url: str
) -> None:
    cli = Cli(sqlite_url)
    await cli("deploy", "llm", "--image", IMAGE_1, "--wait", "--timeout", "50")
    fixed = {"metadata": {"name": "llm"}, "spec": {"command": demo_command()}}

    result = await cli("apply", "-f", "-", "--wait", "--timeout", "50", stdin=json.dumps(fixed))

    assert result.code == 0, result
    (status,) = await fleet.store.list_region_status(endpoint="llm")
    assert (status.state, status.observed_generation) == (RegionState.READY, 2)
