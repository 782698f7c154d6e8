"""How a region reports model staging (`plan.region_status`, pure)."""

from __future__ import annotations

from servefleet.plan import Observed, desired_workload, region_status, workload_hash
from servefleet.spec import ModelStaging, RegionState
from tests.factories import T0, make_endpoint

ENDPOINT = make_endpoint("llm", ["r1"], model_source="s3://models/llama/1")


def report(observed: Observed) -> tuple[RegionState, str, ModelStaging | None]:
    workload = desired_workload(ENDPOINT, "r1")
    status = region_status(ENDPOINT, "r1", workload, observed, previous=None, decision=None, now=T0)
    return status.state, status.message, status.staging


def observed(**fields: object) -> Observed:
    workload = desired_workload(ENDPOINT, "r1")
    assert workload is not None
    return Observed.model_validate({"workload_hash": workload_hash(workload), **fields})


def test_staging_progress_is_reported_while_replicas_wait() -> None:
    staging = ModelStaging(bytes_done=10, bytes_total=40)
    assert report(observed(staging=staging, problem="staging the model")) == (
        RegionState.PROGRESSING,
        "staging the model",
        staging,
    )


def test_a_failed_staging_fails_the_region_with_its_reason() -> None:
    staging = ModelStaging(bytes_done=10, bytes_total=40)
    state, message, reported = report(
        observed(staging=staging, failure="model staging failed: no such directory")
    )
    assert (state, message, reported) == (
        RegionState.FAILED,
        "model staging failed: no such directory",
        staging,
    )


def test_a_failure_of_a_workload_no_longer_wanted_is_not_reported() -> None:
    stale = Observed(workload_hash="something else", failure="model staging failed")
    state, _, _ = report(stale)
    assert state is RegionState.PROGRESSING
