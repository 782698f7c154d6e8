"""The DynamoDB store through the `servefleet` command, as users run it, against moto in
server mode: the CEO's check (1,500 endpoints of about 1 KB in one `apply -f`, all
listed back), an `apply -f` refused whole for one record too large for an item, and
the import from the reference design's table."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from servefleet.store import open_store
from servefleet.store.dynamodb_table import cloudformation_definition, parse_url
from tests.cli.test_cli import servefleet
from tests.store.moto import REGION, drop_table, fresh_table_url, session

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
async def store_url(moto_endpoint: str) -> AsyncIterator[str]:
    url = fresh_table_url(moto_endpoint)
    yield url
    await drop_table(url)


@pytest.mark.slow(seconds=80)
async def test_fifteen_hundred_endpoints_of_a_kilobyte_are_applied_and_listed(
    store_url: str, tmp_path: Path
) -> None:
    assert (await servefleet(store_url, "store", "init")).ok().stdout.startswith("store ready")
    (await servefleet(store_url, "regions", "add", "us-east")).ok()
    documents = [
        {
            "apiVersion": "servefleet/v1",
            "kind": "Endpoint",
            "metadata": {"name": f"ep-{index:04d}"},
            "spec": {
                "image": "ghcr.io/example/server:1.0",
                "replicas": 2,
                "env": {"PADDING": "p" * 850, "INDEX": str(index)},
            },
        }
        for index in range(1500)
    ]
    declarations = tmp_path / "endpoints.yaml"
    declarations.write_text(yaml.safe_dump_all(documents))

    applied = await servefleet(store_url, "apply", "-f", str(declarations), within=500)
    listed = await servefleet(store_url, "list", "-o", "json", within=120)

    assert applied.ok().stdout.count(" created\n") == 1500
    assert len(listed.stdout) > 1_500_000
    names = [document["metadata"]["name"] for document in listed.json()]
    assert names == [document["metadata"]["name"] for document in documents]


async def test_an_apply_with_one_document_too_large_for_an_item_writes_none(
    store_url: str, tmp_path: Path
) -> None:
    (await servefleet(store_url, "store", "init")).ok()
    (await servefleet(store_url, "regions", "add", "us-east")).ok()
    documents = [
        {"metadata": {"name": name}, "spec": {"image": "ghcr.io/example/server:1.0", "env": env}}
        for name, env in [("first", {}), ("second", {}), ("huge", {"PADDING": "p" * 410_000})]
    ]
    declarations = tmp_path / "endpoints.yaml"
    declarations.write_text(yaml.safe_dump_all(documents))

    refused = await servefleet(store_url, "apply", "-f", str(declarations))

    assert (refused.code, refused.stdout) == (1, ""), refused
    (line,) = refused.stderr.splitlines()
    assert re.fullmatch(
        r"error: spec: endpoint 'huge' takes 410,\d{3} bytes stored, more than a DynamoDB "
        r"item holds \(409,600\); make env, args, labels or resources smaller",
        line,
    ), line
    assert (await servefleet(store_url, "list", "-o", "json")).json() == []


async def test_init_can_print_the_table_instead_of_creating_it(store_url: str) -> None:
    printed = await servefleet(store_url, "store", "init", "--print-definition")
    refused = await servefleet(
        "postgresql://nobody@127.0.0.1/none", "store", "init", "--print-definition"
    )

    assert json.loads(printed.ok().stdout) == cloudformation_definition(store_url)
    assert refused.code == 1
    assert "--print-definition: store: not a dynamodb:// URL" in refused.stderr


async def _seed_reference_table(moto_endpoint: str, table: str, items: list[Any]) -> None:
    async with session().create_client(
        "dynamodb", region_name=REGION, endpoint_url=moto_endpoint
    ) as client:
        await client.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "endpoint_name", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "endpoint_name", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for item in items:
            await client.put_item(TableName=table, Item=item)


def _typed(value: object) -> dict[str, Any]:
    """Plain data as DynamoDB attribute values, as boto3's resource API stores it."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, list):
        return {"L": [_typed(item) for item in value]}
    assert isinstance(value, dict)
    return {"M": {key: _typed(item) for key, item in value.items()}}


def _reference_item(name: str, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "endpoint_name": name,
        "desired_state": "running",
        "target_regions": ["us-east-1"],
        "namespace": "gco-inference",
        "ingress_path": f"/inference/{name}",
        "created_at": "2026-01-01T00:00:00+00:00",
        "region_status": {"us-east-1": {"state": "running", "replicas_ready": 2}},
        "spec": {
            "image": "vllm/vllm-openai:v0.6.3",
            "replicas": 2,
            "gpu_count": 1,
            "port": 8000,
            "health_check_path": "/health",
            "env": {"MAX_MODEL_LEN": 8192},
            "model_path": "/models/llama",
            "model_source": "s3://models/llama-3.1-8b",
            "capacity_type": "spot",
            "node_selector": {"team": "llm"},
            "region_image_uris": {"us-east-1": "123.dkr.ecr.us-east-1.amazonaws.com/vllm:0.6.3"},
            "canary": {"image": "vllm/vllm-openai:v0.6.4", "weight": 20, "replicas": 1},
            "autoscaling": {"enabled": True, "min_replicas": 1, "max_replicas": 4},
        },
    }
    item.update(fields)
    return {key: _typed(value) for key, value in item.items()}


@pytest.mark.slow(seconds=13)
async def test_import_from_the_reference_table_reports_every_item(
    store_url: str, moto_endpoint: str
) -> None:
    (await servefleet(store_url, "store", "init")).ok()
    (await servefleet(store_url, "regions", "add", "us-east-1")).ok()
    (await servefleet(store_url, "deploy", "taken", "--image", "ghcr.io/example/server:1.0")).ok()
    valid = _reference_item("llama")
    stopped = _reference_item("paused", desired_state="stopped")
    quoted = _reference_item("evil")
    quoted["spec"]["M"]["model_source"] = {"S": "s3://models/x'; rm -rf /"}
    elsewhere = _reference_item("far", target_regions=["ap-south-9"])
    deleted = _reference_item("gone", desired_state="deleted")
    taken = _reference_item("taken")
    bad_name = _reference_item("Bad_Name")
    source = f"gco-{parse_url(store_url).table}"
    await _seed_reference_table(
        moto_endpoint, source, [valid, stopped, quoted, elsewhere, deleted, taken, bad_name]
    )

    result = await servefleet(store_url, "import", "--from-gco-table", source)

    assert result.code == 1, result
    report = dict(line.split(" ", 1) for line in result.stdout.splitlines()[:-1])
    assert report["endpoint/llama"] == "created: us-east-1"
    assert report["endpoint/paused"] == "created: us-east-1"
    assert report["endpoint/gone"] == "skipped: deleted in the reference table"
    assert report["endpoint/taken"] == "skipped: already exists"
    assert report["endpoint/evil"].startswith("rejected: spec.model_source: must be s3://")
    assert report["endpoint/far"].startswith(
        "rejected: target_regions: region 'ap-south-9' is not registered"
    )
    assert report["endpoint/Bad_Name"].startswith("rejected: metadata.name: must be lowercase")
    assert result.stdout.splitlines()[-1] == "2 created, 2 skipped, 3 rejected"

    store = await open_store(store_url)
    try:
        llama = await store.get_endpoint("llama")
        paused = await store.get_endpoint("paused")
        names = [endpoint.name for endpoint in await store.list_endpoints()]
    finally:
        await store.close()
    assert names == ["llama", "paused", "taken"]
    assert paused.desired_state.value == "stopped"
    spec = llama.spec
    assert (spec.image, spec.replicas, spec.gpu_count, spec.accelerator) == (
        "vllm/vllm-openai:v0.6.3",
        2,
        1,
        "nvidia",
    )
    assert (spec.port, spec.health_path, spec.env) == (8000, "/health", {"MAX_MODEL_LEN": "8192"})
    assert (spec.model_path, spec.model_source) == ("/models/llama", "s3://models/llama-3.1-8b")
    assert (spec.capacity_type, spec.node_selector) == ("spot", {"team": "llm"})
    assert spec.region_images == {"us-east-1": "123.dkr.ecr.us-east-1.amazonaws.com/vllm:0.6.3"}
    assert spec.canary is not None
    assert (spec.canary.image, spec.canary.weight) == ("vllm/vllm-openai:v0.6.4", 20)
    assert spec.autoscaling.enabled
    assert (spec.autoscaling.min_replicas, spec.autoscaling.max_replicas) == (1, 4)
    assert (spec.namespace, spec.ingress_path) == ("gco-inference", "/inference/llama")
    assert spec.resources.requests == {"cpu": "1", "memory": "4Gi"}
    assert llama.target_regions == ["us-east-1"]


async def test_import_into_another_store_names_the_source_by_flags(
    moto_endpoint: str, tmp_path: Path
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'store.db'}"
    source = f"gco-{parse_url(fresh_table_url(moto_endpoint)).table}"
    await _seed_reference_table(moto_endpoint, source, [_reference_item("llama")])
    (await servefleet(sqlite_url, "regions", "add", "us-east-1")).ok()

    unplaced = await servefleet(sqlite_url, "import", "--from-gco-table", source)
    imported = await servefleet(
        sqlite_url,
        "import",
        "--from-gco-table",
        source,
        "--gco-region",
        REGION,
        "--endpoint-url",
        moto_endpoint,
    )

    assert unplaced.code == 1
    assert "--gco-region: the region of the table is required" in unplaced.stderr
    assert imported.ok().stdout.splitlines() == [
        "endpoint/llama created: us-east-1",
        "1 created, 0 skipped, 0 rejected",
    ]
