"""The `servefleet` command as users run it: real processes of the installed console
script, against a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from servefleet.cli.main import app
from servefleet.service import EndpointService
from servefleet.spec import EndpointSpec, Region, RegionKind
from servefleet.store import open_store
from tests.cli_runner import CliRunner

REPO = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("servefleet")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "servefleet"]
TIMEOUT = 60

IMAGE_1 = "ghcr.io/example/server:1.0"
IMAGE_2 = "ghcr.io/example/server:2.0"
IMAGE_3 = "ghcr.io/example/server:3.0"


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def ok(self) -> Result:
        assert self.code == 0, f"servefleet {shlex.join(self.args)} exited {self.code}:\n{self}"
        assert self.stderr == "", self.stderr
        return self

    def json(self) -> Any:
        return json.loads(self.ok().stdout)


async def servefleet(
    store_url: str,
    *args: str,
    stdin: str | None = None,
    cwd: Path = REPO,
    within: float = TIMEOUT,
) -> Result:
    """`servefleet *args` on `store_url`, killed after `within` seconds."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SERVEFLEET_STORE": store_url},
        cwd=cwd,
    )
    try:
        async with asyncio.timeout(within):
            stdout, stderr = await process.communicate(None if stdin is None else stdin.encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(args, process.returncode, stdout.decode(), stderr.decode())


class Cli:
    """`servefleet` bound to one store."""

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url

    async def __call__(self, *args: str, stdin: str | None = None) -> Result:
        return await servefleet(self.store_url, *args, stdin=stdin)

    async def ok(self, *args: str, stdin: str | None = None) -> str:
        return (await self(*args, stdin=stdin)).ok().stdout

    async def endpoints(self) -> Any:
        return (await self("list", "-o", "json")).json()

    async def endpoint(self, name: str = "llm") -> Any:
        return (await self("get", name, "-o", "json")).json()


@pytest.fixture
def cli(store_url: str) -> Cli:
    return Cli(store_url)


async def prepare(store_url: str, regions: list[str], **spec: Any) -> None:
    """Regions and an endpoint `llm` in them, set up directly (faster than processes)."""
    store = await open_store(store_url)
    try:
        service = EndpointService(store)
        for name in regions:
            await service.add_region(Region(name=name, kind=RegionKind.LOCAL))
        await service.deploy("llm", EndpointSpec.model_validate({"image": IMAGE_1, **spec}))
    finally:
        await store.close()


# The main job, verb by verb.


@pytest.mark.slow(seconds=15)
async def test_an_endpoint_s_whole_life_through_the_command_line(cli: Cli) -> None:
    assert (await cli.ok("store", "init")).startswith("store ready: ")

    assert await cli.ok("regions", "add", "r1") == "region/r1 registered (local)\n"
    assert await cli.ok("regions", "add", "r2", "--kind", "local") == (
        "region/r2 registered (local)\n"
    )

    deployed = await cli.ok("deploy", "llm", "--image", IMAGE_1, "--replicas", "2", "-e", "M=a")
    assert deployed == "endpoint/llm created in r1, r2 (generation 1)\n"
    (listed,) = await cli.endpoints()
    assert listed["metadata"]["name"] == "llm"
    assert (listed["metadata"]["generation"], listed["metadata"]["revision"]) == (1, 1)
    assert listed["regions"] == ["r1", "r2"]
    assert listed["state"] == "running"
    assert listed["spec"]["image"] == IMAGE_1
    assert listed["spec"]["replicas"] == 2
    assert listed["spec"]["env"] == {"M": "a"}

    assert await cli.ok("scale", "llm", "4") == "endpoint/llm scaled to 4 (generation 2)\n"
    canary = await cli.ok("canary", "llm", "--image", IMAGE_2, "--weight", "20")
    assert canary == "endpoint/llm canary at 20% (generation 3)\n"

    table = (await cli.ok("status", "llm")).splitlines()
    assert table[0] == "endpoint/llm: deploying, generation 3"
    assert table[1].split() == [
        "REGION",
        "STATE",
        "OBSERVED",
        "READY",
        "CANARY",
        "ROUTED",
        "MESSAGE",
    ]
    assert [row.split()[:2] for row in table[2:]] == [["r1", "pending"], ["r2", "pending"]]
    assert (await cli("status", "llm", "-o", "json")).json() == {
        "name": "llm",
        "generation": 3,
        "desiredState": "deploying",
        "regions": {"r1": {"state": "pending"}, "r2": {"state": "pending"}},
    }

    shown = await cli.ok("get", "llm", "-o", "yaml")
    declared = yaml.safe_load(shown)
    assert declared["spec"]["replicas"] == 4
    assert declared["spec"]["canary"]["image"] == IMAGE_2
    assert declared["spec"]["canary"]["weight"] == 20
    assert (declared["metadata"]["generation"], declared["metadata"]["revision"]) == (3, 3)
    assert await cli.ok("apply", "-f", "-", stdin=shown) == "endpoint/llm unchanged\n"
    assert await cli.endpoint() == declared

    assert await cli.ok("stop", "llm") == "endpoint/llm stopped (generation 4)\n"
    assert [e["state"] for e in await cli.endpoints()] == ["stopped"]
    assert await cli.ok("start", "llm") == "endpoint/llm started (generation 5)\n"

    assert await cli.ok("promote", "llm") == "endpoint/llm promoted (generation 6)\n"
    promoted = await cli.endpoint()
    assert promoted["state"] == "running"
    assert promoted["spec"]["image"] == IMAGE_2
    assert "canary" not in promoted["spec"]
    assert promoted["spec"]["replicas"] == 4

    await cli.ok("canary", "llm", "--image", IMAGE_3)
    assert await cli.ok("rollback", "llm") == "endpoint/llm rolled back (generation 8)\n"
    rolled_back = await cli.endpoint()
    assert rolled_back["spec"]["image"] == IMAGE_2
    assert "canary" not in rolled_back["spec"]

    deleted = "endpoint/llm marked for deletion (generation 9)\n"
    assert await cli.ok("delete", "llm") == deleted
    assert await cli.ok("delete", "llm") == deleted
    assert (await cli("status", "llm", "-o", "json")).json()["desiredState"] == "deleted"
    refused = await cli("scale", "llm", "3")
    assert (refused.code, refused.stderr) == (1, "error: endpoint 'llm' is being deleted\n")

    # Initialising again is harmless and keeps everything.
    assert (await cli.ok("store", "init")).startswith("store ready: ")
    (kept,) = await cli.endpoints()
    assert (kept["metadata"]["generation"], kept["spec"]["image"]) == (9, IMAGE_2)


async def test_canary_env_adds_and_overrides_keys_and_keeps_the_ones_set_before(
    cli: Cli,
) -> None:
    await prepare(cli.store_url, ["r1"], env={"A": "primary", "B": "primary"})

    await cli.ok("canary", "llm", "--image", IMAGE_2, "-e", "B=canary-1", "-e", "C=canary-1")
    await cli.ok("canary", "llm", "--env", "C=canary-2", "--env", "D=canary-2")

    spec = (await cli.endpoint())["spec"]
    assert spec["env"] == {"A": "primary", "B": "primary"}
    assert spec["canary"]["env"] == {"B": "canary-1", "C": "canary-2", "D": "canary-2"}
    assert spec["canary"]["image"] == IMAGE_2


# Bad input: one line naming the field, exit 1, nothing written.

MULTI_DOCUMENT_BAD_SECOND = f"""\
metadata: {{name: first}}
spec: {{image: {IMAGE_1}}}
---
metadata: {{name: second}}
spec: {{image: {IMAGE_1}, env: {{1BAD: x}}}}
"""
MULTI_DOCUMENT_UNKNOWN_REGION_SECOND = f"""\
metadata: {{name: first}}
spec: {{image: {IMAGE_1}}}
---
metadata: {{name: second}}
regions: [nowhere]
spec: {{image: {IMAGE_1}}}
"""
BAD_INPUTS: list[tuple[list[str], str | None, list[str]]] = [
    # (arguments, stdin, what the one error line must contain)
    (["up", "--regions", "r1", "--lease-ttl", "0"], None, ["--lease-ttl: ", "(got 0.0)"]),
    (
        ["deploy", "m1", "--image", IMAGE_1, "--model-source", "s3://b/x;rm -rf /"],
        None,
        ["spec.model_source: ", "'s3://b/x;rm -rf /'"],
    ),
    (
        ["deploy", "m1", "--image", IMAGE_1, "--model-source", "s3://b/x`id`"],
        None,
        ["spec.model_source: ", "x`id`"],
    ),
    (
        ["deploy", "m1", "--image", IMAGE_1, "--model-source", "s3://b/$(id)"],
        None,
        ["spec.model_source: ", "$(id)"],
    ),
    (["deploy", "m2", "--image", IMAGE_1, "--env", "1BAD=x"], None, ["spec.env: ", "'1BAD'"]),
    (["deploy", "Upper", "--image", IMAGE_1], None, ["name: ", "'Upper'"]),
    (["deploy", "under_score", "--image", IMAGE_1], None, ["name: ", "'under_score'"]),
    (["canary", "llm", "--image", IMAGE_2, "--weight", "150"], None, ["canary.weight: ", "150"]),
    # The regions under the name the user gave them: the flag, the declaration's field.
    (
        ["deploy", "m3", "--image", IMAGE_1, "-r", "r1", "-r", "nowhere"],
        None,
        ["error: --region: region 'nowhere' is not registered (registered: r1)"],
    ),
    (
        ["apply", "-f", "-"],
        MULTI_DOCUMENT_BAD_SECOND,
        ["document 2 (second): spec.env: ", "'1BAD'"],
    ),
    (
        ["apply", "-f", "-"],
        MULTI_DOCUMENT_UNKNOWN_REGION_SECOND,
        ["error: regions: region 'nowhere' is not registered (registered: r1)"],
    ),
    (
        ["apply", "-f", "-"],
        f"metadata: {{name: idle}}\nspec: {{image: {IMAGE_1}, autoscaling: {{min_replicas: 0}}}}\n",
        ["document 1 (idle): spec.autoscaling.min_replicas: 0 needs a concurrency or rps metric"],
    ),
    (
        ["apply", "-f", "-"],
        f"metadata: {{name: calm}}\nspec: {{image: {IMAGE_1}, autoscaling: {{panic_window: 0}}}}\n",
        ["document 1 (calm): spec.autoscaling.panic_window: ", "(got 0)"],
    ),
    (["list", "-o", "xml"], None, ["--output: ", "'xml'"]),
    (["get", "llm", "-o", "xml"], None, ["--output: ", "'xml'"]),
    (["status", "llm", "-o", "xml"], None, ["--output: ", "'xml'"]),
]


async def test_bad_input_is_one_line_naming_the_field_and_changes_nothing(cli: Cli) -> None:
    await prepare(cli.store_url, ["r1"])
    endpoints_before = await cli.endpoints()
    regions_before = (await cli("regions", "list", "-o", "json")).json()

    results = await asyncio.gather(*(cli(*args, stdin=stdin) for args, stdin, _ in BAD_INPUTS))

    for result, (_, _, expected) in zip(results, BAD_INPUTS, strict=True):
        lines = result.stderr.splitlines()
        assert (result.code, len(lines)) == (1, 1), result
        assert lines[0].startswith("error: "), result
        for part in expected:
            assert part in lines[0], result
        assert result.stdout == "", result
    assert await cli.endpoints() == endpoints_before
    assert (await cli("regions", "list", "-o", "json")).json() == regions_before


async def test_update_image_in_a_region_it_cannot_use_names_the_flag(cli: Cli) -> None:
    await prepare(cli.store_url, ["r1"])
    await cli.ok("regions", "add", "r2")
    before = await cli.endpoint()

    unregistered, untargeted = await asyncio.gather(
        cli("update-image", "llm", IMAGE_2, "--region", "nope"),
        cli("update-image", "llm", IMAGE_2, "-r", "r2"),
    )

    assert (unregistered.code, unregistered.stdout, unregistered.stderr) == (
        1,
        "",
        "error: --region: region 'nope' is not registered (registered: r1, r2)\n",
    )
    assert (untargeted.code, untargeted.stdout, untargeted.stderr) == (
        1,
        "",
        "error: --region: region 'r2' is not a target of 'llm' (targets: r1)\n",
    )
    assert await cli.endpoint() == before


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
async def test_up_refuses_a_startup_timeout_that_is_not_positive(cli: Cli, value: str) -> None:
    refused = await cli("up", "--regions", "r1", "--port", "0", "--startup-timeout", value)

    assert (refused.code, refused.stderr) == (
        1,
        f"error: --startup-timeout: must be a number of seconds more than 0 "
        f"(got {float(value):g})\n",
    )
    # Refused before the store was opened: `up` would have registered r1.
    assert (await cli("regions", "list", "-o", "json")).json() == []


# Racing writers.


async def test_twenty_racing_processes_lose_no_change(cli: Cli) -> None:
    regions = [f"r{index:02}" for index in range(20)]
    await prepare(cli.store_url, regions)

    results = await asyncio.gather(
        *(
            cli("update-image", "llm", f"ghcr.io/example/{region}:1.0", "--region", region)
            for region in regions
        )
    )

    for result in results:
        result.ok()
    endpoint = await cli.endpoint()
    assert endpoint["spec"]["region_images"] == {
        region: f"ghcr.io/example/{region}:1.0" for region in regions
    }
    assert endpoint["spec"]["image"] == IMAGE_1
    assert endpoint["metadata"]["generation"] == 1 + len(regions)


# Help.


def _verbs(command: Any = None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    command = command or typer.main.get_command(app)
    if not hasattr(command, "commands"):
        return [prefix]
    return [verb for name, sub in command.commands.items() for verb in _verbs(sub, (*prefix, name))]


def test_every_verb_s_help_shows_an_example(tmp_path: Path) -> None:
    verbs = _verbs()
    assert {" ".join(verb) for verb in verbs} >= {
        "deploy",
        "apply",
        "get",
        "list",
        "status",
        "scale",
        "update-image",
        "stop",
        "start",
        "canary",
        "promote",
        "rollback",
        "delete",
        "regions add",
        "regions list",
        "regions remove",
        "store init",
    }
    store_url = str(tmp_path / "unused.db")
    # In this process: one interpreter start per verb was half a minute of CPU.
    runner = CliRunner()
    without = []
    for verb in verbs:
        result = runner.invoke(app, [*verb, "--help"], env={"SERVEFLEET_STORE": store_url})
        assert result.exit_code == 0, (verb, result.output)
        if "Example" not in result.stdout:
            without.append(" ".join(verb))
    assert without == []
    assert not (tmp_path / "unused.db").exists()


# The quick start.


async def test_the_example_declarations_apply_on_a_fresh_store(tmp_path: Path) -> None:
    commands = [
        ["regions", "add", "local-1", "--kind", "local"],
        ["apply", "-f", "examples/demo.yaml"],
        ["list"],
        ["status", "demo"],
    ]
    store_url = str(tmp_path / "data" / "store.db")

    outputs = {}
    for command in commands:
        outputs[" ".join(command)] = (await servefleet(store_url, *command)).ok().stdout

    assert outputs["apply -f examples/demo.yaml"] == (
        "endpoint/demo created\nendpoint/llama-8b created\n"
    )
    listed = [line.split()[:3] for line in outputs["list"].splitlines()[1:]]
    assert listed == [["demo", "deploying", "local-1"], ["llama-8b", "stopped", "local-1"]]
    assert "local-1" in outputs["status demo"]
    # Running the quick start again changes nothing.
    again = await servefleet(store_url, "apply", "-f", "examples/demo.yaml")
    assert again.ok().stdout == "endpoint/demo unchanged\nendpoint/llama-8b unchanged\n"
