"""`servefleet invoke`, `health` and `models NAME` as users run them: the installed
command in a child process, against `servefleet up` running in this process (see
`tests.scenarios.harness.local_fleet`) with real demo replicas behind real gateways.
The command finds the gateways through the record `up` leaves for its store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

from servefleet.service import EndpointService
from servefleet.spec import Region, RegionKind, RegionState, RegionStatus
from servefleet.store import open_store
from tests.cli.test_cli import COMMAND, TIMEOUT, servefleet
from tests.scenarios.harness import (
    SETTLE,
    Fleet,
    demo_spec,
    ingress_stand_in,
    manifest,
    up_process,
)
from tests.waiting import eventually

ENDPOINT = "talk"


async def deployed(fleet: Fleet, *args: str) -> None:
    """Endpoint ENDPOINT in region r1: one demo replica with extra `args`, ready."""
    await fleet.service.apply(manifest(ENDPOINT, demo_spec(replicas=1, args=list(args)), ["r1"]))
    await fleet.settled(ENDPOINT, replicas=1)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_invoke_and_models_answer_through_the_gateway(fleet: Fleet, sqlite_url: str) -> None:
    await deployed(fleet)

    chat, completion, listed, table = await asyncio.gather(
        servefleet(sqlite_url, "invoke", ENDPOINT, "--prompt", "alpha bravo"),
        servefleet(
            sqlite_url,
            *("invoke", ENDPOINT, "-r", "r1", "--path", "/v1/completions", "-o", "json"),
            *("--data", json.dumps({"prompt": "x y", "max_tokens": 3})),
        ),
        servefleet(sqlite_url, "models", ENDPOINT, "-o", "json"),
        servefleet(sqlite_url, "models", ENDPOINT),
    )
    assert chat.ok().stdout.startswith("alpha bravo alpha bravo")
    assert completion.json()["choices"][0]["text"] == "x y x"
    assert [model["id"] for model in listed.json()] == ["demo"]
    assert table.ok().stdout.splitlines()[1].split() == ["demo", "servefleet-demo"]


async def test_requests_go_to_the_leading_process_not_a_standby(
    fleet: Fleet, sqlite_url: str, tmp_path: Path
) -> None:
    """A second `servefleet up` of the store stands by for r1 (this process leads it);
    its gateways, recorded last, only refuse, so the verbs pass them over."""
    await deployed(fleet)
    async with up_process(
        sqlite_url, "--regions", "r1", "--port", "0", stderr=tmp_path / "standby.log"
    ) as standby:
        assert standby.region_url("r1") != fleet.region_url("r1")
        via_region, via_entry = await asyncio.gather(
            servefleet(sqlite_url, "invoke", ENDPOINT, "-r", "r1", "-p", "alpha", "-o", "json"),
            servefleet(sqlite_url, "invoke", ENDPOINT, "-p", "alpha", "-o", "json"),
        )
        assert via_region.json()["model"] == via_entry.json()["model"] == "demo"
        standby.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(standby.process.wait(), timeout=TIMEOUT) == 0


async def test_invoke_stream_prints_tokens_as_they_arrive(fleet: Fleet, sqlite_url: str) -> None:
    """The first token is on the terminal while the replica is still generating."""
    await deployed(fleet, "--token-delay", "0.5")
    request = {
        "model": "demo",
        "messages": [{"role": "user", "content": "alpha bravo charlie delta"}],
        "max_tokens": 4,
    }
    process = await asyncio.create_subprocess_exec(
        *(*COMMAND, "invoke", ENDPOINT, "--stream", "--data", json.dumps(request)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SERVEFLEET_STORE": sqlite_url},
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            seen = b""
            while b"alpha" not in seen:
                chunk = await process.stdout.read(1024)
                assert chunk, f"stdout closed before the first token: {seen!r}"
                seen += chunk
            assert b"delta" not in seen, "the whole answer arrived at once"
            rest, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert (seen + rest).decode() == "alpha bravo charlie delta\n"


async def test_health_reflects_an_unready_replica(
    fleet: Fleet, sqlite_url: str, tmp_path: Path
) -> None:
    unhealthy = tmp_path / "unhealthy"
    await deployed(fleet, "--unhealthy-file", str(unhealthy))

    healthy = await servefleet(sqlite_url, "health", ENDPOINT)
    assert healthy.ok().stdout.splitlines()[2].split() == [
        *("r1", "yes", "ready", "1/1", "routed", "-", "200", "ok")
    ]

    unhealthy.touch()

    async def unready() -> bool:
        status = await fleet.status(ENDPOINT)
        return status is not None and status.replicas_ready == 0

    await eventually(unready, within=SETTLE)
    sick = await servefleet(sqlite_url, "health", ENDPOINT, "-r", "r1", "-o", "json")
    assert sick.code == 6, sick
    [row] = json.loads(sick.stdout)["regions"]
    assert row["healthy"] is False
    assert row["state"] != RegionState.READY.value
    assert (row["ready"], row["routed"]) == ("0/1", True)
    assert row["probe"] == f"503: endpoint {ENDPOINT!r} has no ready replica"


async def test_invoke_exit_codes_follow_the_http_outcome(fleet: Fleet, sqlite_url: str) -> None:
    await deployed(fleet)

    missing, refused = await asyncio.gather(
        servefleet(sqlite_url, "invoke", ENDPOINT, "--path", "/v1/nothing"),
        servefleet(
            sqlite_url,
            *("invoke", ENDPOINT, "--prompt", "hi", "--url", f"http://127.0.0.1:{closed_port()}"),
        ),
    )
    assert missing.code == 4, missing
    assert f"endpoint {ENDPOINT!r} via {fleet.gateway_url}: HTTP 404" in missing.stderr
    assert refused.code == 3, refused
    assert "no answer" in refused.stderr

    await fleet.service.stop(ENDPOINT)

    async def refusing() -> bool:
        return (await fleet.chat(ENDPOINT)).status == 503

    await eventually(refusing, within=SETTLE)
    stopped = await servefleet(
        sqlite_url, "invoke", ENDPOINT, "-r", "r1", "--prompt", "hi", "--model", "demo"
    )
    assert stopped.code == 5, stopped
    assert f"HTTP 503: endpoint {ENDPOINT!r}" in stopped.stderr


async def test_request_verbs_name_what_they_cannot_reach(sqlite_url: str) -> None:
    """Without a running `servefleet up`: user errors, exit 1, naming the flag."""
    store = await open_store(sqlite_url)
    try:
        service = EndpointService(store)
        await service.add_region(Region(name="local-1", kind=RegionKind.LOCAL))
        await service.add_region(Region(name="k8s-1", kind=RegionKind.KUBERNETES))
        await service.apply(manifest("here", demo_spec(), ["local-1"]))
        await service.apply(manifest("there", demo_spec(), ["k8s-1"]))
    finally:
        await store.close()

    cases = [
        (("invoke", "here", "-r", "elsewhere", "--prompt", "hi"), "--region: endpoint 'here'"),
        (("invoke", "here", "-r", "local-1", "--prompt", "hi"), "no running `servefleet up`"),
        (("invoke", "there", "--prompt", "hi"), "'k8s-1' is a kubernetes region"),
        (("invoke", "here", "--data", "{nope"), "--data: not valid JSON"),
        (("invoke", "here", "--url", "localhost:80", "-p", "hi"), "--url: must be an http://"),
        (("invoke", "nobody", "--prompt", "hi"), "endpoint 'nobody' not found"),
    ]
    *results, unprobed = await asyncio.gather(
        *(servefleet(sqlite_url, *args) for args, _ in cases),
        servefleet(sqlite_url, "health", "there", "-o", "json"),
    )
    for result, (_, message) in zip(results, cases, strict=True):
        assert result.code == 1, result
        assert message in result.stderr, result

    assert unprobed.code == 6, unprobed
    [row] = json.loads(unprobed.stdout)["regions"]
    assert (row["state"], row["probe"]) == (
        "pending",
        "not probed: Ingress address unknown (regions add --ingress-url, or --url)",
    )


async def test_request_verbs_reach_a_cluster_through_its_registered_ingress(
    sqlite_url: str,
) -> None:
    """No `servefleet up` runs: an endpoint only in a Kubernetes region registered
    with `--ingress-url` is reached there by default and with `-r`, and `health`
    probes its health path through that Ingress."""
    name = "yonder"
    url, ingress = await ingress_stand_in(f"/inference/{name}", "k1")
    store = await open_store(sqlite_url)
    try:
        service = EndpointService(store)
        await service.add_region(Region(name="k8s-1", kind=RegionKind.KUBERNETES, ingress_url=url))
        await service.apply(manifest(name, demo_spec(replicas=1), ["k8s-1"]))
        record = await store.get_endpoint(name)
        await store.put_region_status(
            RegionStatus(
                endpoint=name,
                region="k8s-1",
                state=RegionState.READY,
                observed_generation=record.generation,
                replicas_ready=1,
                replicas_desired=1,
                routed=True,
            )
        )
        chat, through_region, listed, health = await asyncio.gather(
            servefleet(sqlite_url, "invoke", name, "--prompt", "alpha bravo"),
            servefleet(sqlite_url, "invoke", name, "-r", "k8s-1", "--path", "/v1/models"),
            servefleet(sqlite_url, "models", name, "-o", "json"),
            servefleet(sqlite_url, "health", name, "-o", "json"),
        )
    finally:
        await store.close()
        ingress.terminate()
        await ingress.wait()

    assert chat.ok().stdout.startswith("alpha bravo")
    assert through_region.ok().json()["data"][0]["id"] == "demo"
    assert [model["id"] for model in listed.json()] == ["demo"]
    [row] = health.ok().json()["regions"]
    assert (row["healthy"], row["probe"]) == (True, "200 ok"), row
