"""The reference design's endpoint items as servefleet declarations (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from servefleet.gco import Skipped, endpoint_name, to_manifest
from servefleet.spec import InvalidInput


def item(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "endpoint_name": "llm",
        "desired_state": "deploying",
        "target_regions": ["us-east-1"],
        "spec": {"image": "vllm/vllm-openai:v0.6.3"},
    }
    return base | fields


def test_the_reference_defaults_are_written_out() -> None:
    manifest = to_manifest(item())

    spec = manifest.spec
    assert (spec.gpu_count, spec.accelerator, spec.replicas, spec.port) == (1, "nvidia", 1, 8000)
    assert spec.resources.requests == {"cpu": "1", "memory": "4Gi"}
    assert spec.resources.limits == {"cpu": "4", "memory": "16Gi"}
    assert (manifest.metadata.name, manifest.regions, manifest.state) == (
        "llm",
        ["us-east-1"],
        "running",
    )


def test_no_gpu_means_no_accelerator_and_given_resources_replace_the_defaults() -> None:
    spec = {"image": "vllm/vllm-openai:v0.6.3", "gpu_count": 0, "resources": {"limits": {"cpu": 2}}}

    manifest = to_manifest(item(spec=spec))

    assert (manifest.spec.gpu_count, manifest.spec.accelerator) == (0, "none")
    assert manifest.spec.resources.limits == {"cpu": "2"}
    assert manifest.spec.resources.requests == {"cpu": "1", "memory": "4Gi"}


def test_renamed_fields_and_item_level_settings_are_carried_over() -> None:
    source = item(
        namespace="gco-inference",
        labels={"team": "llm"},
        spec={
            "image": "vllm/vllm-openai:v0.6.3",
            "health_check_path": "/ready",
            "region_image_uris": {"us-east-1": "vllm/vllm-openai:v0.6.4"},
            "env": {"MAX_MODEL_LEN": 8192},
        },
    )

    spec = to_manifest(source).spec

    assert spec.health_path == "/ready"
    assert spec.region_images == {"us-east-1": "vllm/vllm-openai:v0.6.4"}
    assert spec.env == {"MAX_MODEL_LEN": "8192"}
    assert (spec.namespace, spec.labels) == ("gco-inference", {"team": "llm"})


def test_stopped_stays_stopped_and_deleted_is_skipped() -> None:
    assert to_manifest(item(desired_state="stopped")).state == "stopped"
    with pytest.raises(Skipped, match="deleted in the reference table"):
        to_manifest(item(desired_state="deleted"))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"desired_state": "paused"}, "desired_state: must be one of"),
        ({"spec": "vllm"}, "spec: must be a map"),
        ({"spec": {"image": "vllm/vllm-openai:v0.6.3", "gpu_type": "a100"}}, "spec.gpu_type: is"),
        ({"target_regions": []}, "regions: must have at least 1"),
        ({"spec": {"image": "x", "model_source": "s3://b/k;reboot"}}, "spec.model_source"),
    ],
)
def test_invalid_items_are_refused_naming_the_field(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        to_manifest(item(**fields))


def test_the_name_is_reported_as_written() -> None:
    assert endpoint_name({"endpoint_name": "Bad_Name"}) == "Bad_Name"
    assert endpoint_name({}) == "?"
