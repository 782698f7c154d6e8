"""Replay every recorded kube-apiserver exchange against the test server.

Each file in ../shared/kubernetes-fixtures holds the requests a client made to a real
kube-apiserver 1.36 and the answers it got. The files are one session: the
Deployment `fixtures/llm` created in ssa-lifecycle is scaled in
ssa-replicas-ownership, updated in optimistic-concurrency and watched, changed and
deleted in list-watch; so a file of that chain is replayed after the files before it.

What is compared: the status code exactly; for Status bodies every field (messages
too, except the server-chosen resourceVersion in "too old resource version: 1 (N)");
for objects kind, apiVersion, metadata name/namespace/generation/labels/annotations,
spec (except the allocated clusterIP), status, and managedFields (manager, operation,
apiVersion, subresource, fieldsV1; not `time`); for watches the event types in order
and each event's object. uids and resourceVersions are the server's own: a recorded
value is mapped to the value the test server answered at the same step, so "the same
resourceVersion as the create" and "a new resourceVersion" are both checked, and
resourceVersions in later requests (stale PUTs, watch from a list) are translated.

Relaxed, with reasons: watch `timeoutSeconds` is capped at 2 s to keep the suite fast
(the bookmark before the timeout comes all the same); the writes that produced the
list-watch events were not recorded, so the replay performs them (re-apply with the
event's values, a status patch, a delete); a list's and a bookmark's resourceVersion
are only mapped (they are the server-wide revision, which the real cluster had moved
on by writes outside the recording); an apply conflict's `details.causes` may list
the managers in another order (the real server lists them in Go map iteration order,
which changes from one request to the next; each manager's fields keep their order);
the server's clock stands still during a replay, because managedFields entries are
sorted by the second of their `time` before the manager name and the recorded edits
all fell within one second, which a replay step crossing a second boundary would not
reproduce.

`pending/` holds recordings the test server did not answer when they were made;
the ones it answers now are replayed from there by name (ANSWERED_PENDING) until
planning moves them up beside the others.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import pytest

from tests.kubeapi import KubeApiServer, clock

from .conftest import FIXTURES

#: The recordings were made with urllib; its User-Agent names the field manager of
#: requests without `fieldManager` ("Python-urllib").
RECORDING_USER_AGENT = "Python-urllib/3.11"
WATCH_TIMEOUT_CAP = 2

#: The files that share the Deployment `fixtures/llm`, in recording order.
CHAIN = ["ssa-lifecycle", "ssa-replicas-ownership", "optimistic-concurrency", "list-watch"]

Json = dict[str, Any]
Action = Callable[["Replayer", list[Json]], Awaitable[None]]


#: Recordings in `pending/` that the test server now answers as the real one did.
#: Planning should move each up beside the others (/work/shared is read-only here);
#: then drop it from this list.
ANSWERED_PENDING = ["drift"]


def fixture_files() -> list[Any]:
    if not FIXTURES.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no fixtures at {FIXTURES}"))]
    files = sorted(FIXTURES.glob("*.json"))
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no *.json in {FIXTURES}"))]
    pending = [FIXTURES / "pending" / f"{name}.json" for name in ANSWERED_PENDING]
    return [pytest.param(path, id=path.stem) for path in files] + [
        pytest.param(path, id=f"pending/{path.stem}") for path in pending
    ]


def load(path: Path) -> Json:
    return dict(json.loads(path.read_text()))


def refresh(config: Any, observed: Any) -> Any:
    """`config` (an applied configuration) with the values `observed` has at the same
    places; list items are matched by `name` (else by position)."""
    if isinstance(config, dict) and isinstance(observed, dict):
        return {
            key: refresh(value, observed[key]) if key in observed else value
            for key, value in config.items()
        }
    if isinstance(config, list) and isinstance(observed, list):
        out = []
        for position, item in enumerate(config):
            match: Any = None
            if isinstance(item, dict) and "name" in item:
                match = next(
                    (o for o in observed if isinstance(o, dict) and o.get("name") == item["name"]),
                    None,
                )
            elif position < len(observed):
                match = observed[position]
            out.append(item if match is None else refresh(item, match))
        return out
    return copy.deepcopy(observed)


def object_path(obj: Json) -> str:
    metadata = obj["metadata"]
    plural = {"Deployment": "deployments", "Service": "services", "Ingress": "ingresses"}
    group_version = obj.get("apiVersion", "apps/v1")
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return f"{prefix}/namespaces/{metadata['namespace']}/{plural[obj['kind']]}/{metadata['name']}"


async def _reapply(replayer: Replayer, events: list[Json]) -> None:
    """The recording re-applied its configuration with a new hash and env value."""
    observed = events[0]["object"]
    path = object_path(observed)
    config = refresh(replayer.applied[path], observed)
    await replayer.send(
        "PATCH", f"{path}?fieldManager=servefleet", config, "application/apply-patch+yaml"
    )


async def _patch_status(replayer: Replayer, events: list[Json]) -> None:
    """The recording wrote the status a controller would (as Python-urllib)."""
    observed = events[1]["object"]
    await replayer.send(
        "PATCH",
        f"{object_path(observed)}/status",
        {"status": observed["status"]},
        "application/merge-patch+json",
    )


async def _delete(replayer: Replayer, events: list[Json]) -> None:
    await replayer.send("DELETE", object_path(events[2]["object"]), None, "application/json")


#: What the recording did while a watch was open (its requests were not recorded;
#: the events it saw say what they were).
WATCH_ACTIONS: dict[tuple[str, str], list[Action]] = {
    ("list-watch", "watch-from-list-rv"): [_reapply, _patch_status, _delete],
}

_GENERATED_IN_MESSAGES = re.compile(r"\(\d+\)$")


class Replayer:
    def __init__(self, server: KubeApiServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.resource_versions: dict[str, str] = {}
        self.uids: dict[str, str] = {}
        self.applied: dict[str, Json] = {}
        self.passed: list[str] = []

    # ---------------------------------------------------------------- requests

    def _translate_path(self, recorded: str) -> str:
        parts = urlsplit(recorded)
        query = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "resourceVersion":
                value = self.resource_versions.get(value, value)
            if key == "timeoutSeconds":
                value = str(min(int(value), WATCH_TIMEOUT_CAP))
            query.append((key, value))
        return parts.path + (f"?{urlencode(query)}" if query else "")

    def _translate_body(self, body: Any) -> Any:
        body = copy.deepcopy(body)
        if isinstance(body, dict):
            metadata = body.get("metadata") or {}
            recorded = metadata.get("resourceVersion")
            if recorded in self.resource_versions:
                metadata["resourceVersion"] = self.resource_versions[recorded]
        return body

    async def send(
        self, method: str, path: str, body: Any, content_type: str | None
    ) -> tuple[int, Any]:
        headers = {"User-Agent": RECORDING_USER_AGENT}
        if content_type:
            headers["Content-Type"] = content_type
        data = json.dumps(body).encode() if body is not None else None
        async with self.session.request(
            method, self.server.url + path, data=data, headers=headers
        ) as response:
            payload = await response.json(content_type=None)
        if method == "PATCH" and content_type == "application/apply-patch+yaml":
            self.applied[urlsplit(path).path] = body
        return response.status, payload

    # ------------------------------------------------------------------ replay

    async def replay(self, path: Path) -> None:
        for step in load(path)["steps"]:
            await self.step(path.stem, step)

    async def step(self, scenario: str, step: Json) -> None:
        where = f"{scenario}/{step['name']}"
        request, expected = step["request"], step["response"]
        path = self._translate_path(request["path"])
        query = dict(parse_qsl(urlsplit(path).query))
        if request["method"] == "GET" and query.get("watch") in ("1", "true", "True"):
            await self._watch(where, (scenario, step["name"]), path, expected)
        else:
            status, payload = await self.send(
                request["method"],
                path,
                self._translate_body(request.get("body")),
                request.get("content_type"),
            )
            assert status == expected["status"], f"{where}: HTTP {status}: {payload}"
            self.compare(where, expected["body"], payload)
        self.passed.append(where)

    async def _watch(self, where: str, key: tuple[str, str], path: str, expected: Json) -> None:
        recorded: list[Json] = expected.get("events") or expected.get("body") or []
        headers = {"User-Agent": RECORDING_USER_AGENT}
        timeout = aiohttp.ClientTimeout(total=WATCH_TIMEOUT_CAP + 10)
        async with self.session.get(
            self.server.url + path, headers=headers, timeout=timeout
        ) as response:
            assert response.status == expected["status"], where
            for action in WATCH_ACTIONS.get(key, []):
                await action(self, recorded)
            seen = [json.loads(line) async for line in response.content if line.strip()]
        assert [e["type"] for e in seen] == [e["type"] for e in recorded], (
            f"{where}: event types {[e['type'] for e in seen]}"
        )
        for position, (want, got) in enumerate(zip(recorded, seen, strict=True)):
            self.compare(f"{where}[{position}]", want["object"], got["object"], event=want["type"])

    # --------------------------------------------------------------- comparing

    def _mapped(
        self, table: dict[str, str], recorded: str, actual: str, fresh: bool, what: str
    ) -> None:
        if recorded in table:
            assert table[recorded] == actual, f"{what}: expected the value of an earlier step"
            return
        if fresh:
            assert actual not in table.values(), f"{what}: expected a new value, got {actual}"
        table[recorded] = actual

    def compare(self, where: str, expected: Json, actual: Json, event: str = "") -> None:
        if expected.get("kind") == "Status":
            self._compare_status(where, expected, actual)
        elif event == "BOOKMARK":
            assert set(actual) >= {"kind", "apiVersion", "metadata"}, where
            assert actual["kind"] == expected["kind"], where
            self._mapped(
                self.resource_versions,
                expected["metadata"]["resourceVersion"],
                actual["metadata"]["resourceVersion"],
                False,
                f"{where}: bookmark resourceVersion",
            )
        elif str(expected.get("kind", "")).endswith("List"):
            assert actual["kind"] == expected["kind"], where
            assert actual["apiVersion"] == expected["apiVersion"], where
            self._mapped(
                self.resource_versions,
                expected["metadata"]["resourceVersion"],
                actual["metadata"]["resourceVersion"],
                False,
                f"{where}: list resourceVersion",
            )
            assert len(actual["items"]) == len(expected["items"]), where
            for want, got in zip(expected["items"], actual["items"], strict=True):
                self._compare_object(f"{where}.items", want, got)
        else:
            self._compare_object(where, expected, actual)

    def _compare_status(self, where: str, expected: Json, actual: Json) -> None:
        want, got = dict(expected), dict(actual)
        if "causes" in (want.get("details") or {}) and isinstance(got.get("details"), dict):
            want["details"] = _causes_by_manager(want["details"])
            got["details"] = _causes_by_manager(got["details"])
        if want.get("reason") == "Expired":
            want["message"] = _GENERATED_IN_MESSAGES.sub("(N)", want["message"])
            got["message"] = _GENERATED_IN_MESSAGES.sub("(N)", str(got.get("message")))
        assert got == want, f"{where}: Status differs:\n{json.dumps(got, indent=1)}"

    def _compare_object(self, where: str, expected: Json, actual: Json) -> None:
        assert set(actual) == set(expected), f"{where}: top-level keys {sorted(actual)}"
        for key in ("kind", "apiVersion", "status"):
            assert actual.get(key) == expected.get(key), (
                f"{where}: {key} differs: {actual.get(key)}"
            )
        want_meta, got_meta = expected["metadata"], actual["metadata"]
        for key in ("name", "namespace", "generation", "labels", "annotations"):
            assert got_meta.get(key) == want_meta.get(key), f"{where}: metadata.{key} differs"
        assert ("creationTimestamp" in got_meta) == ("creationTimestamp" in want_meta), where
        self._mapped(self.uids, want_meta["uid"], got_meta["uid"], True, f"{where}: uid")
        self._mapped(
            self.resource_versions,
            want_meta["resourceVersion"],
            got_meta["resourceVersion"],
            True,
            f"{where}: resourceVersion",
        )
        assert _entries(got_meta) == _entries(want_meta), (
            f"{where}: managedFields differ:\n{json.dumps(_entries(got_meta), indent=1)}"
        )
        want_spec, got_spec = copy.deepcopy(expected.get("spec")), copy.deepcopy(actual.get("spec"))
        if expected.get("kind") == "Service" and isinstance(got_spec, dict) and want_spec:
            allocated = got_spec.pop("clusterIP", None)
            assert ipaddress.ip_address(str(allocated)) in ipaddress.ip_network("10.96.0.0/12")
            assert got_spec.pop("clusterIPs", None) == [allocated], where
            want_spec.pop("clusterIP", None)
            want_spec.pop("clusterIPs", None)
        assert got_spec == want_spec, f"{where}: spec differs:\n{json.dumps(got_spec, indent=1)}"


def _causes_by_manager(details: Json) -> Json:
    """`details` with its causes grouped by manager (a stable sort: each manager's
    fields keep their order)."""
    causes = sorted(details.get("causes") or [], key=lambda cause: str(cause.get("message")))
    return {**details, "causes": causes}


def _entries(metadata: Json) -> list[Json]:
    return [
        {key: value for key, value in entry.items() if key != "time"}
        for entry in metadata.get("managedFields") or []
    ]


@pytest.mark.parametrize("fixture", fixture_files())
async def test_replay(fixture: Path, kube: KubeApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify that the test server answers each recorded request as the real one did."""
    second = clock.now_rfc3339()
    monkeypatch.setattr(clock, "now_rfc3339", lambda: second)
    async with aiohttp.ClientSession() as session:
        replayer = Replayer(kube, session)
        if fixture.stem in CHAIN:
            for earlier in CHAIN[: CHAIN.index(fixture.stem)]:
                await replayer.replay(FIXTURES / f"{earlier}.json")
        await replayer.replay(fixture)
    recorded = load(fixture)["steps"]
    assert replayer.passed[-len(recorded) :] == [f"{fixture.stem}/{s['name']}" for s in recorded]


def test_answered_pending_recordings_are_still_pending() -> None:
    """Verify that each recording of ANSWERED_PENDING is still in `pending/`."""
    if not FIXTURES.is_dir():
        pytest.skip(f"no fixtures at {FIXTURES}")
    for name in ANSWERED_PENDING:
        assert (FIXTURES / "pending" / f"{name}.json").is_file(), (
            f"pending/{name}.json is gone: if planning moved it up, drop it from ANSWERED_PENDING"
        )
