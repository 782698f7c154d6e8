"""The CLI over the HTTP API (`--server`, `SERVEFLEET_SERVER`): real `servefleet`
processes against a real API server (uvicorn on loopback, in this process) over a
real SQLite store (and PostgreSQL for the script of every verb), printing what
they print on the store itself.

A process in API mode is given a store URL of its own that nobody creates: had it
opened a store instead of going through the API, that file would exist (and what
it printed would not match, its store holding no region).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from servefleet.service import EndpointService
from servefleet.spec import EndpointSpec, Region, RegionKind, Role
from servefleet.store import Store, open_store
from servefleet.tokens import TokenService
from tests.api.conftest import running_api
from tests.cli.test_cli import (
    COMMAND,
    IMAGE_1,
    IMAGE_2,
    IMAGE_3,
    MULTI_DOCUMENT_BAD_SECOND,
    MULTI_DOCUMENT_UNKNOWN_REGION_SECOND,
    REPO,
    TIMEOUT,
    Result,
)

_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")


@dataclass
class Fleet:
    """The API over a store, and the way in: its URL and a token of each role; an
    API-mode process's own (never created) store."""

    url: str
    store: Store
    tokens: dict[Role, str]
    unused_store: Path

    async def run(
        self, *args: str, env: dict[str, str | None] | None = None, stdin: str | None = None
    ) -> Result:
        return await servefleet_apart(self.unused_store, *args, env=env, stdin=stdin)

    async def cli(self, *args: str, role: Role = Role.ADMIN, stdin: str | None = None) -> Result:
        """`servefleet --server URL --token TOKEN *args`."""
        return await self.run(
            "--server", self.url, "--token", self.tokens[role], *args, stdin=stdin
        )

    async def snapshot(self) -> tuple[Any, ...]:
        return (
            await self.store.list_endpoints(),
            await self.store.list_regions(),
            await self.store.feed_position(),
        )


async def servefleet_apart(
    unused_store: Path,
    *args: str,
    env: dict[str, str | None] | None = None,
    stdin: str | None = None,
) -> Result:
    """`servefleet *args` in a process whose store is `unused_store` unless `env` says
    otherwise (None: the variable unset), and whose environment names no other
    servefleet setting."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SERVEFLEET_")},
        "SERVEFLEET_STORE": str(unused_store),
        **(env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={name: value for name, value in environment.items() if value is not None},
        cwd=REPO,
    )
    async with asyncio.timeout(TIMEOUT):
        stdout, stderr = await process.communicate(None if stdin is None else stdin.encode())
    assert process.returncode is not None
    return Result(args, process.returncode, stdout.decode(), stderr.decode())


async def prepared_store(url: str) -> Store:
    store = await open_store(url, init=True)
    for name in ("r1", "r2", "r3"):
        await store.put_region(Region(name=name, kind=RegionKind.LOCAL))
    return store


@contextlib.asynccontextmanager
async def running_fleet(tmp_path: Path, store_url: str | None = None) -> AsyncIterator[Fleet]:
    """The API over the store at `store_url` (else a SQLite file of its own)."""
    store = await prepared_store(store_url or f"sqlite:///{tmp_path / 'api.db'}")
    tokens = TokenService(store)
    issued = {role: (await tokens.create(f"{role.value}-token", role.value))[1] for role in Role}
    try:
        async with running_api(store) as (url, _):
            fleet = Fleet(url, store, issued, tmp_path / "unused.db")
            yield fleet
            assert not fleet.unused_store.exists(), "an API-mode command opened a store"
    finally:
        await store.close()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with running_fleet(tmp_path) as running:
        yield running


# The same output, verb by verb: each step runs on a store directly and through the
# API over another store set up alike; code, stdout and stderr must match (times
# aside, since the records were written at different moments).

_GET_OUTPUT = f"""\
metadata: {{name: llm}}
spec: {{image: {IMAGE_2}, replicas: 4}}
"""

SCRIPT: list[tuple[list[str], str | None]] = [
    (["regions", "list"], None),
    (["regions", "list", "-o", "json"], None),
    (["regions", "add", "r4", "--kind", "local"], None),
    (["deploy", "llm", "--image", IMAGE_1, "--replicas", "2", "-e", "M=a", "-r", "r1"], None),
    (["regions", "remove", "r4"], None),
    (["deploy", "llm", "--image", IMAGE_1], None),  # 409: the name is taken
    (["deploy", "m3", "--image", IMAGE_1, "-r", "r1", "-r", "nowhere"], None),  # 422
    (["deploy", "Upper", "--image", IMAGE_1], None),  # 422 from the API's own validation
    (["deploy", "m2", "--image", IMAGE_1, "--env", "1BAD=x"], None),  # refused before sending
    (["deploy", "idle", "--image", IMAGE_1, "-r", "r2", "--stopped"], None),
    (["list"], None),
    (["list", "-o", "json"], None),
    (["list", "-o", "yaml", "-r", "r2"], None),
    (["scale", "llm", "4"], None),
    (["scale", "nope", "4"], None),  # 404
    (["autoscale", "llm", "--min", "1", "--max", "6", "--concurrency", "4"], None),
    (["scale", "llm", "5"], None),  # 409: autoscaled
    (["autoscale", "llm", "--min", "7", "--rps", "0"], None),  # 422, named --min and --rps
    (["autoscale", "llm", "--off", "--max", "3"], None),  # 422, named --max
    (["autoscale", "llm", "--off", "--replicas", "4"], None),
    (["canary", "llm", "--image", IMAGE_2, "--weight", "20", "-e", "B=c"], None),
    (["canary", "llm", "--weight", "150"], None),  # 422 from the service
    (["status", "llm"], None),
    (["status", "llm", "-o", "json"], None),
    (["get", "llm", "-o", "yaml"], None),
    (["get", "llm", "-o", "json"], None),
    (["get", "nope"], None),
    (["update-image", "llm", IMAGE_3, "-r", "nope"], None),  # 422, named --region
    (["update-image", "llm", IMAGE_3, "-r", "r2"], None),  # 409, named --region
    (["update-image", "llm", IMAGE_3, "-r", "r1"], None),
    (["apply", "-f", "-"], MULTI_DOCUMENT_BAD_SECOND),
    (["apply", "-f", "-"], MULTI_DOCUMENT_UNKNOWN_REGION_SECOND),
    (["apply", "-f", "-"], _GET_OUTPUT),
    (["apply", "-f", "-"], _GET_OUTPUT),
    (["stop", "llm", "--wait", "--timeout", "0.2"], None),  # nothing reconciles: not in place
    (["start", "llm"], None),
    (["promote", "llm"], None),
    (["rollback", "llm"], None),  # 409: no canary any more
    (["rollout", "start", "llm", "--image", "Not An Image"], None),  # 422, named image
    (["rollout", "start", "llm", "--image", IMAGE_3], None),
    (["rollout", "pause", "llm"], None),
    (["rollout", "status", "llm"], None),
    (["rollout", "abort", "llm"], None),
    (["rollout", "resume", "llm"], None),  # 409: rolled back
    (["health", "llm", "-o", "json"], None),
    (["delete", "llm"], None),
    (["scale", "llm", "3"], None),  # 409: being deleted
    (["regions", "remove", "r1"], None),  # refused: an endpoint targets it
    (["regions", "remove", "zz"], None),  # 404
    (["regions", "drain", "r3"], None),
    (["regions", "list"], None),
    (["regions", "drain", "zz"], None),  # 404
    (["list"], None),
]


def timeless(result: Result) -> tuple[int, str, str]:
    return (
        result.code,
        _TIME.sub("<time>", result.stdout),
        _TIME.sub("<time>", result.stderr),
    )


@pytest.mark.slow(seconds=40)
@pytest.mark.timeout(300)  # about 40 s alone; on a loaded machine: more
async def test_every_verb_prints_through_the_api_what_it_prints_on_the_store(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Both sides on SQLite: the API's routes run over PostgreSQL too in tests/api,
    and this script's 50 steps over it would cost the suite another worker-minute."""
    async with running_fleet(tmp_path, sqlite_url) as fleet:
        await _compare_script(fleet, tmp_path)


async def _compare_script(fleet: Fleet, tmp_path: Path) -> None:
    local_url = f"sqlite:///{tmp_path / 'local.db'}"
    await (await prepared_store(local_url)).close()

    compared = []
    for args, stdin in SCRIPT:
        on_store, through_api = await asyncio.gather(
            fleet.run(*args, env={"SERVEFLEET_STORE": local_url}, stdin=stdin),
            fleet.cli(*args, stdin=stdin),
        )
        compared.append((" ".join(args), timeless(through_api), timeless(on_store)))

    assert [(verb, api) for verb, api, _ in compared] == [
        (verb, store) for verb, _, store in compared
    ]
    codes = {verb: api[0] for verb, api, _ in compared}
    assert set(codes.values()) == {0, 1, 6}, codes  # successes, refusals, an unhealthy probe
    assert (await fleet.store.get_endpoint("llm")).desired_state.value == "deleted"


# Refusals: one line naming the field or the reason, exit 1, nothing stored.


async def test_a_refused_change_prints_the_field_exits_1_and_stores_nothing(
    fleet: Fleet,
) -> None:
    await EndpointService(fleet.store).deploy("llm", EndpointSpec(image=IMAGE_1), ["r1"])
    before = await fleet.snapshot()

    results = await asyncio.gather(
        fleet.cli("deploy", "m3", "--image", IMAGE_1, "-r", "nowhere"),
        fleet.cli("deploy", "Bad_Name", "--image", IMAGE_1),
        fleet.cli("canary", "llm", "--image", IMAGE_2, "--weight", "0"),
        fleet.cli("apply", "-f", "-", stdin=MULTI_DOCUMENT_UNKNOWN_REGION_SECOND),
        fleet.cli("regions", "add", "k1", "--kind", "kubernetes", "--namespace", "Not_Valid"),
    )

    assert [(r.code, r.stdout, r.stderr) for r in results] == [
        (1, "", "error: --region: region 'nowhere' is not registered (registered: r1, r2, r3)\n"),
        (
            1,
            "",
            "error: name: must be lowercase letters, digits and '-', start with a letter and "
            "end with a letter or digit (got 'Bad_Name')\n",
        ),
        (1, "", "error: spec.canary.weight: must be greater than or equal to 1 (got 0)\n"),
        (1, "", "error: regions: region 'nowhere' is not registered (registered: r1, r2, r3)\n"),
        (1, "", results[4].stderr),
    ]
    assert results[4].stderr.startswith("error: region.namespace: "), results[4]
    assert await fleet.snapshot() == before


async def test_a_viewer_reads_but_its_changes_are_refused_with_the_reason(
    fleet: Fleet,
) -> None:
    # The API and the token from the environment, as a CI job would pass them.
    viewer = {"SERVEFLEET_SERVER": fleet.url, "SERVEFLEET_TOKEN": fleet.tokens[Role.VIEWER]}
    await EndpointService(fleet.store).deploy("llm", EndpointSpec(image=IMAGE_1), ["r1"])
    before = await fleet.snapshot()

    listed, deploy, scale, regions_add = await asyncio.gather(
        fleet.run("list", "-o", "json", env=viewer),
        fleet.run("deploy", "m1", "--image", IMAGE_1, env=viewer),
        fleet.run("scale", "llm", "3", env=viewer),
        fleet.cli("regions", "add", "r9", role=Role.DEPLOYER),
    )

    assert [document["metadata"]["name"] for document in listed.json()] == ["llm"]
    refused = f"error: the API at {fleet.url} refused the request: token "
    assert (deploy.code, deploy.stdout, deploy.stderr) == (
        1,
        "",
        f"{refused}'viewer-token' has role viewer; this needs deployer\n",
    )
    assert (scale.code, scale.stderr) == (
        1,
        f"{refused}'viewer-token' has role viewer; this needs deployer\n",
    )
    assert (regions_add.code, regions_add.stderr) == (
        1,
        f"{refused}'deployer-token' has role deployer; this needs admin\n",
    )
    assert await fleet.snapshot() == before


async def test_no_token_or_an_unknown_one_is_refused_naming_the_way_to_give_one(
    fleet: Fleet,
) -> None:
    without, unknown = await asyncio.gather(
        fleet.run("--server", fleet.url, "list"),
        fleet.run("list", env={"SERVEFLEET_SERVER": fleet.url, "SERVEFLEET_TOKEN": "sf1.x.y"}),
    )

    assert (without.code, without.stdout, without.stderr) == (
        1,
        "",
        f"error: the API at {fleet.url} refused the request: send a token as "
        "`Authorization: Bearer TOKEN` (give a token with --token or SERVEFLEET_TOKEN, or "
        "`servefleet login`)\n",
    )
    assert (unknown.code, unknown.stderr) == (
        1,
        f"error: the API at {fleet.url} refused the request: the token is unknown or "
        "revoked (give a token with --token or SERVEFLEET_TOKEN, or `servefleet login`)\n",
    )


async def test_conflicts_with_the_current_record_are_one_line_and_change_nothing(
    fleet: Fleet,
) -> None:
    await EndpointService(fleet.store).deploy("llm", EndpointSpec(image=IMAGE_1), ["r1"])
    before = await fleet.snapshot()

    taken, no_canary = await asyncio.gather(
        fleet.cli("deploy", "llm", "--image", IMAGE_2, role=Role.DEPLOYER),
        fleet.cli("promote", "llm", role=Role.DEPLOYER),
    )

    assert (taken.code, taken.stdout, taken.stderr) == (
        1,
        "",
        "error: name: endpoint 'llm' already exists; change it with apply, scale, "
        "update-image or canary, or delete it first\n",
    )
    assert (no_canary.code, no_canary.stderr) == (
        1,
        "error: canary: 'llm' has no canary to promote\n",
    )
    assert await fleet.snapshot() == before


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_api_that_does_not_answer_is_named_and_exits_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    unused_store = tmp_path / "unused.db"

    listed, deployed, bad_url = await asyncio.gather(
        servefleet_apart(unused_store, "--server", url, "list"),
        servefleet_apart(
            unused_store, "deploy", "m1", "--image", IMAGE_1, env={"SERVEFLEET_SERVER": url + "/"}
        ),
        servefleet_apart(unused_store, "--api", "127.0.0.1:8000", "list"),
    )

    assert (listed.code, listed.stdout) == (1, "")
    assert listed.stderr.startswith(f"error: cannot reach the API at {url}: "), listed
    assert len(listed.stderr.splitlines()) == 1, listed
    assert (deployed.code, deployed.stderr.splitlines()[0]) == (1, listed.stderr.rstrip("\n"))
    assert (bad_url.code, bad_url.stderr) == (
        1,
        "error: --api: must be an http:// or https:// URL (got '127.0.0.1:8000')\n",
    )
    assert not unused_store.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["store", "init"],
        ["tokens", "list"],
        ["tokens", "create", "--name", "ci", "--role", "viewer"],
        ["serve", "--port", "0"],
        ["up", "--regions", "r1", "--port", "0"],
        ["reconcile", "--region", "r1"],
    ],
    ids=" ".join,
)
async def test_commands_that_need_the_store_itself_refuse_the_api(
    fleet: Fleet, args: list[str]
) -> None:
    refused = await fleet.cli(*args)

    command = " ".join(word for word in args[:2] if not word.startswith("-"))
    assert (refused.code, refused.stdout, refused.stderr) == (
        1,
        "",
        f"error: --server: `servefleet {command}` works on the store itself, not through "
        f"the API ({fleet.url}); drop --server and give --store\n",
    )


async def test_the_older_names_api_and_servefleet_api_still_work_and_are_named(
    fleet: Fleet,
) -> None:
    token = {"SERVEFLEET_TOKEN": fleet.tokens[Role.ADMIN]}
    by_flag, by_variable, both, refused = await asyncio.gather(
        fleet.run("--api", fleet.url, "regions", "list", "-o", "json", env=token),
        fleet.run("regions", "list", "-o", "json", env={**token, "SERVEFLEET_API": fleet.url}),
        # A flag before a variable, --server before --api.
        fleet.run(
            "--api",
            fleet.url,
            "regions",
            "list",
            env={**token, "SERVEFLEET_SERVER": "http://127.0.0.1:1"},
        ),
        fleet.run("tokens", "list", env={"SERVEFLEET_API": fleet.url}),
    )

    assert [region["name"] for region in by_flag.json()] == ["r1", "r2", "r3"]
    assert by_variable.json() == by_flag.json()
    assert both.code == 0, both
    assert (refused.code, refused.stderr) == (
        1,
        f"error: SERVEFLEET_API: `servefleet tokens list` works on the store itself, not "
        f"through the API ({fleet.url}); unset SERVEFLEET_API and give --store\n",
    )
