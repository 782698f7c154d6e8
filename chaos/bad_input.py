"""Scenario: hypothesis-generated invalid declarations at volume.

The cases come from tests/test_spec_properties.py's `broken_documents`: a valid
declaration with exactly one field broken by one of its rules (every rule drawn
alike), paired with the field that must be named. Each case goes

- through the models and the manifest parsing `apply -f` uses (every case; the
  same check as the property tests' `check_refused_by_the_models`);
- through `servefleet serve` as `POST /v1/apply` (every case): a 4xx whose problems
  each name the field (prefixed by the document's index), never a 500;
- through `apply -f -`: a sample in-process (the property tests' `Cli` and
  `check_refused_by_apply`: exit 1, nothing on stdout, each error line naming the
  document and the field, nothing stored), and a smaller one through the installed
  command in its own process.

Invariants: every case refused naming its field, no traceback anywhere, no 500, and
the store (its endpoints and its change feed) unchanged at the end.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from bench.progress import show
from chaos.report import Row
from servefleet.service import EndpointService
from servefleet.spec import Region, RegionKind, Role
from servefleet.store import Store, open_store
from servefleet.tokens import TokenService
from tests.cli.test_cli import servefleet
from tests.scenarios.harness import serve_process
from tests.test_spec_properties import (
    REGIONS,
    RULES,
    Cli,
    Document,
    broken_documents,
    check_refused_by_apply,
    check_refused_by_the_models,
    dump,
)

Case = tuple[str, Document]
"""The field that must be named, and the declaration."""

AT_ONCE = 8
"""Requests (or commands) in flight at once."""


@dataclass(frozen=True)
class Plan:
    declarations: int
    in_process_cli: int
    """How many of them also go through `apply -f -` in-process."""
    command: int
    """How many of them also go through the installed command."""


FULL = Plan(declarations=10_000, in_process_cli=300, command=30)
QUICK = Plan(declarations=300, in_process_cli=10, command=3)


def _generate(count: int, seed: int) -> list[Case]:
    """`count` broken declarations, every rule drawn alike (blocking: run in a thread)."""
    cases: list[Case] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.sampled_from(RULES).flatmap(broken_documents))
    @hypothesis_seed(seed)
    def collect(case: Case) -> None:
        cases.append(case)

    collect()
    return cases


def _refusals(check: Callable[[], None]) -> str | None:
    """None when `check()` passes, else why not (the property tests' checks assert)."""
    try:
        check()
    except (AssertionError, pytest.fail.Exception) as failure:
        return f"{type(failure).__name__}: {failure}"[:400]
    except Exception as error:  # an error escaping the CLI is what a user sees as a traceback
        return f"traceback: {type(error).__name__}: {error}"[:400]
    return None


def _check_models(cases: list[Case]) -> list[str]:
    return [
        f"models, {path}: {why}"
        for path, document in cases
        if (why := _refusals(functools.partial(check_refused_by_the_models, path, document)))
    ]


def _check_in_process_cli(cases: list[Case], directory: Path) -> list[str]:
    cli = Cli(directory)
    return [
        f"apply -f (in-process), {path}: {why}"
        for index, (path, document) in enumerate(cases)
        if (
            why := _refusals(
                functools.partial(
                    check_refused_by_apply, cli, path, 1, [document], ("yaml", "json")[index % 2]
                )
            )
        )
    ]


async def _check_command(store_url: str, case: Case, fmt: str) -> str | None:
    path, document = case
    result = await servefleet(store_url, "apply", "-f", "-", stdin=dump([document], fmt))
    name = document["metadata"]["name"]
    lines = result.stderr.split("error: ")[1:]
    if (
        result.code != 1
        or result.stdout
        or "Traceback" in result.stderr
        or not lines
        or not all(line.startswith(f"- document 1 ({name}): {path}: ") for line in lines)
    ):
        return f"apply -f (command), {path}: exit {result.code}: {result.stderr[:300]!r}"
    return None


def _json_body(document: Document) -> str | None:
    """The document as a JSON list of one, None when JSON cannot carry it (NaN)."""
    try:
        return json.dumps([document], allow_nan=False)
    except ValueError:
        return None


async def _check_api(client: aiohttp.ClientSession, url: str, case: Case) -> str | None:
    path, document = case
    body = _json_body(document)
    if body is None:
        return None
    async with client.post(
        f"{url}/v1/apply", data=body, headers={"content-type": "application/json"}
    ) as response:
        text = await response.text()
        status = response.status
    if not 400 <= status < 500:
        return f"API, {path}: HTTP {status}: {text[:300]}"
    problems = json.loads(text).get("problems", [])
    if not problems or not all(
        f"{problem['field']}.".startswith(f"0.{path}.") for problem in problems
    ):
        return f"API, {path}: HTTP {status} does not name the field: {text[:300]}"
    return None


async def _bounded(checks: list[Callable[[], Awaitable[str | None]]]) -> list[str]:
    slots = asyncio.Semaphore(AT_ONCE)

    async def one(check: Callable[[], Awaitable[str | None]]) -> str | None:
        async with slots:
            return await check()

    return [why for why in await asyncio.gather(*(one(check) for check in checks)) if why]


async def _snapshot(store: Store) -> tuple[list[Any], int]:
    endpoints = await store.list_endpoints()
    return [endpoint.model_dump(mode="json") for endpoint in endpoints], await store.feed_position()


async def run(plan: Plan, rng: random.Random, workdir: Path) -> Row:
    row = Row(
        "bad input",
        f"{plan.declarations:,} hypothesis-generated declarations, each with one field broken "
        f"by one of {len(RULES)} rules: models + POST /v1/apply for each, `apply -f -` for "
        f"{plan.in_process_cli} in-process and {plan.command} as a command",
    )
    store_url = f"sqlite:///{workdir / 'store.db'}"
    store = await open_store(store_url, init=True)
    try:
        service = EndpointService(store)
        for name in REGIONS:
            await service.add_region(Region(name=name, kind=RegionKind.LOCAL))
        _, token = await TokenService(store).create("chaos", Role.ADMIN)
        before = await _snapshot(store)
        show(f"generating {plan.declarations:,} declarations")
        cases = await asyncio.to_thread(_generate, plan.declarations, rng.randrange(2**32))
        show("through the models")
        problems = await asyncio.to_thread(_check_models, cases)
        sample = rng.sample(cases, min(plan.in_process_cli, len(cases)))
        show("through apply -f, in-process")
        problems += await asyncio.to_thread(_check_in_process_cli, sample, workdir)
        show("through the command and the API")
        log = workdir / "serve.log"
        async with (
            serve_process(store_url, stderr=log) as (_process, url),
            aiohttp.ClientSession(headers={"authorization": f"Bearer {token}"}) as client,
        ):
            commands = [
                lambda case=case, i=i: _check_command(store_url, case, ("yaml", "json")[i % 2])
                for i, case in enumerate(rng.sample(cases, min(plan.command, len(cases))))
            ]
            api = [lambda case=case: _check_api(client, url, case) for case in cases]
            problems += await _bounded([*commands, *api])
        if "Traceback" in await asyncio.to_thread(log.read_text, errors="replace"):
            problems.append("a traceback in the log of `servefleet serve`")
        after = await _snapshot(store)
    finally:
        await store.close()
    if after != before:
        problems.append("the store changed")
    row.broken = problems[:20] + ([f"… {len(problems) - 20} more"] if len(problems) > 20 else [])
    row.duplicate_writes = 0 if after == before else 1
    row.details = {
        "declarations": len(cases),
        "rules": len(RULES),
        "without_json_form": sum(_json_body(document) is None for _, document in cases),
        "problems": len(problems),
    }
    return row
