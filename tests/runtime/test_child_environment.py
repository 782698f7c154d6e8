"""What a replica and a staging child see of `servefleet up`'s environment: the
allowlist, the region's `pass_env` and their own variables; never the store's
URL, an API token or cloud credentials. The scenario runs `up` in this process
with a real replica process (`tests/runtime/replica.py`) that answers with its
whole environment; the rest checks `child_environment`, a pure function."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from servefleet.runtime.local.environment import INHERITED, child_environment
from servefleet.service import EndpointService
from servefleet.spec import EndpointSpec, Region, RegionKind
from servefleet.store import open_store
from tests.runtime.test_local_runtime import REPLICA
from tests.scenarios.harness import local_fleet

SECRETS = {
    "SERVEFLEET_STORE": "postgresql://servefleet:hunter2@db.internal/servefleet",
    "SERVEFLEET_TOKEN": "sf-admin-0123456789",
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "HF_TOKEN": "hf_0123456789",
    "HTTPS_PROXY": "http://operator:hunter2@proxy.internal:3128",
}
INTERPRETER = os.path.dirname(sys.executable)


async def test_a_replica_sees_the_allowlist_pass_env_and_its_own_env_only(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OPERATOR_SETTING", "passed on")
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    store = await open_store(sqlite_url)
    try:
        region = Region(
            name="r1", kind=RegionKind.LOCAL, pass_env=["OPERATOR_SETTING", "SET_NOWHERE"]
        )
        await EndpointService(store).add_region(region)
    finally:
        await store.close()
    spec = EndpointSpec(
        command=["python", REPLICA, "--port", "{port}"],
        replicas=1,
        health_path="/health",
        env={"REPLICA_COLOR": "blue"},
    )

    async with local_fleet(sqlite_url, tmp_path) as fleet:
        await fleet.service.deploy("llm", spec, ["r1"])
        await fleet.settled("llm", replicas=1)
        (replica,) = fleet.replicas("llm")
        async with fleet.client.get(f"{fleet.gateway_url}/inference/llm/environ") as response:
            assert response.status == 200
            environment = await response.json()

    assert not environment.keys() & SECRETS.keys()
    own = {"REPLICA_COLOR": "blue", "PORT": str(replica.port), "OPERATOR_SETTING": "passed on"}
    assert {name: environment.get(name) for name in own} == own
    assert environment["HOME"] == os.environ["HOME"]
    assert environment["LC_TIME"] == "C.UTF-8"
    assert environment["PATH"].split(os.pathsep)[0] == INTERPRETER
    unexpected = {
        name for name in environment.keys() - own.keys() - INHERITED if not name.startswith("LC_")
    }
    assert unexpected == set()


PARENT = {
    **SECRETS,
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/operator",
    "LANG": "en_US.UTF-8",
    "LC_ALL": "en_US.UTF-8",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "AWS_REGION": "eu-west-1",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
    "TERM": "xterm-256color",
    "OPERATOR_SETTING": "passed on",
}
ALLOWED = {
    "PATH": INTERPRETER + os.pathsep + "/usr/bin:/bin",
    "HOME": "/home/operator",
    "LANG": "en_US.UTF-8",
    "LC_ALL": "en_US.UTF-8",
    "CUDA_VISIBLE_DEVICES": "0,1",
}
AWS = {name: value for name, value in PARENT.items() if name.startswith("AWS_")}


def test_a_replica_gets_the_allowlist_then_pass_env_then_its_own_variables() -> None:
    own = {"PORT": "8000", "HOME": "/srv/model", "SERVEFLEET_MODEL_DIR": "/cache/llm"}

    environment = child_environment(PARENT, own, pass_env=["OPERATOR_SETTING", "SET_NOWHERE"])

    assert environment == {**ALLOWED, "OPERATOR_SETTING": "passed on", **own}


def test_only_an_s3_staging_child_gets_the_aws_settings_and_the_proxy() -> None:
    own = {"SERVEFLEET_MODEL_SOURCE": "s3://models/llama/1"}

    s3 = child_environment(PARENT, own, model_source="s3://models/llama/1")
    on_disk = child_environment(PARENT, own, model_source="file:///models/llama/1")

    proxy = {"HTTPS_PROXY": SECRETS["HTTPS_PROXY"]}
    assert s3 == {**ALLOWED, **AWS, **proxy, **own}
    assert on_disk == {**ALLOWED, **own}


def test_pass_env_never_passes_servefleets_own_variables() -> None:
    names = ["SERVEFLEET_STORE", "SERVEFLEET_TOKEN"]

    environment = child_environment(PARENT, {}, pass_env=names, model_source="s3://models/a")

    assert not environment.keys() & set(names)


def test_the_endpoints_path_still_finds_servefleets_python_first() -> None:
    environment = child_environment(PARENT, {"PATH": "/opt/model/bin"})

    assert environment["PATH"] == INTERPRETER + os.pathsep + "/opt/model/bin"
