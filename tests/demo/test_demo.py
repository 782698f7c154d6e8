"""The demo server, run for real: a subprocess on a free port, spoken to over HTTP.

Other tests and the local demo rely on the command-line contract of
`python -m servefleet.demo` (flags, routes, readiness, SIGTERM), so that is what is
tested here, through the same process boundary they use.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from servefleet.demo.server import parse_args

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@dataclass
class Demo:
    """A running demo server subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> int:
        """SIGTERM, then wait for the exit status; kills (and fails) if it does not
        exit in time. Signals only a running process, and only once: a second SIGTERM
        during the graceful shutdown would kill it (status -15)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"demo server ignored SIGTERM; log:\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_demo(log_dir: Path, *args: str) -> Demo:
    """Start `python -m servefleet.demo` on a free port with extra `args`, and return
    once its port accepts connections (not necessarily once it is healthy)."""
    port = free_port()
    log = log_dir / f"demo-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "servefleet.demo", "--port", str(port), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    demo = Demo(process, port, log)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise AssertionError(f"demo server exited with {process.returncode}:\n{demo.output()}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return demo
        except OSError:
            if time.monotonic() > deadline:
                demo.stop()
                raise AssertionError(f"demo server never listened:\n{demo.output()}") from None
            time.sleep(0.02)


DemoFactory = Callable[..., Demo]


@pytest.fixture
def demo_factory(tmp_path: Path) -> Iterator[DemoFactory]:
    """`demo_factory(*args)` starts a demo server; all are stopped afterwards."""
    started: list[Demo] = []

    def start(*args: str) -> Demo:
        demo = start_demo(tmp_path, *args)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        assert demo.stop() == 0, demo.output()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One plain server shared by the tests that do not need flags of their own."""
    args = ["--model", "tiny", "--version", "v7", "--token-delay", "0.02"]
    server = start_demo(tmp_path_factory.mktemp("demo"), *args)
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with http.get(url) as resp:
        return resp.status, await resp.json(), resp.headers


async def post_json(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def test_health_ok_and_identity(demo: Demo, http: aiohttp.ClientSession) -> None:
    status, body, headers = await get_json(http, f"{demo.url}/health")
    assert (status, body) == (200, {"status": "ok"})
    assert headers["x-demo-version"] == "v7"
    assert headers["x-demo-pid"] == str(demo.process.pid)

    status, body, _ = await get_json(http, f"{demo.url}/")
    assert status == 200
    assert body == {"model": "tiny", "version": "v7", "pid": demo.process.pid, "port": demo.port}


async def test_models(demo: Demo, http: aiohttp.ClientSession) -> None:
    status, body, _ = await get_json(http, f"{demo.url}/v1/models")
    assert status == 200
    assert body == {
        "object": "list",
        "data": [{"id": "tiny", "object": "model", "owned_by": "servefleet-demo"}],
    }


async def test_startup_delay_answers_loading_then_ok(
    demo_factory: DemoFactory, http: aiohttp.ClientSession
) -> None:
    demo = demo_factory("--startup-delay", "1")
    status, body, _ = await get_json(http, f"{demo.url}/health")
    assert (status, body) == (503, {"status": "loading"})

    deadline = time.monotonic() + START_TIMEOUT
    while status != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        status, body, _ = await get_json(http, f"{demo.url}/health")
    assert (status, body) == (200, {"status": "ok"})


async def test_unhealthy_file_toggles_health(
    demo_factory: DemoFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    flag = tmp_path / "unhealthy"
    demo = demo_factory("--unhealthy-file", str(flag))
    assert (await get_json(http, f"{demo.url}/health"))[:2] == (200, {"status": "ok"})
    flag.touch()
    assert (await get_json(http, f"{demo.url}/health"))[:2] == (503, {"status": "unhealthy"})
    flag.unlink()
    assert (await get_json(http, f"{demo.url}/health"))[:2] == (200, {"status": "ok"})


async def test_completion(demo: Demo, http: aiohttp.ClientSession) -> None:
    status, body = await post_json(
        http,
        f"{demo.url}/v1/completions",
        {"model": "tiny", "prompt": "the quick fox", "max_tokens": 5},
    )
    assert status == 200
    assert body["id"]
    assert body["object"] == "text_completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "tiny"
    assert body["system_fingerprint"] == "v7"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["text"] == "the quick fox the quick"
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


async def test_chat_completion(demo: Demo, http: aiohttp.ClientSession) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    status, body = await post_json(
        http, f"{demo.url}/v1/chat/completions", {"model": "tiny", "messages": messages}
    )
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny"
    assert body["system_fingerprint"] == "v7"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 16  # the default max_tokens
    assert choice["message"]["content"].startswith("hello there hello")
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 16, "total_tokens": 20}


async def test_streamed_chat_arrives_token_by_token(
    demo: Demo, http: aiohttp.ClientSession
) -> None:
    request = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 8,
        "stream": True,
    }
    async with http.post(f"{demo.url}/v1/chat/completions", json=request) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["x-demo-version"] == "v7"
        events: list[str] = []
        ended_before_first_event: bool | None = None
        async for line in resp.content:
            if line.strip():
                events.append(_sse_data(line))
                if ended_before_first_event is None:
                    # Whether the server had finished the response by then.
                    ended_before_first_event = resp.content.is_eof()
    # The first event was read while the server was still generating the rest.
    assert ended_before_first_event is False
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) == 8
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk["system_fingerprint"] for chunk in chunks} == {"v7"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
    assert text == "one two three one two three one two"


async def test_streamed_completion_matches_unstreamed(
    demo: Demo, http: aiohttp.ClientSession
) -> None:
    request = {"prompt": "alpha beta", "max_tokens": 4}
    _, whole = await post_json(http, f"{demo.url}/v1/completions", request)
    async with http.post(f"{demo.url}/v1/completions", json={**request, "stream": True}) as resp:
        events = [_sse_data(line) async for line in resp.content if line.strip()]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == whole["choices"][0]["text"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", b"{not json"),
        ("/v1/completions", b'{"max_tokens": 3}'),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": "many"}'),
        ("/v1/chat/completions", b"[]"),
        ("/v1/chat/completions", b'{"model": "tiny"}'),
        ("/v1/chat/completions", b'{"messages": [{"content": "no role"}]}'),
    ],
)
async def test_bad_request(demo: Demo, http: aiohttp.ClientSession, path: str, body: bytes) -> None:
    async with http.post(
        f"{demo.url}{path}", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        assert resp.headers["x-demo-version"] == "v7"
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]


async def test_sigterm_exits_cleanly(
    demo_factory: DemoFactory, http: aiohttp.ClientSession
) -> None:
    demo = demo_factory("--version", "v2")
    _, _, headers = await get_json(http, f"{demo.url}/health")
    assert headers["x-demo-version"] == "v2"
    assert demo.stop() == 0  # stop() sends SIGTERM once and waits


def _sse_data(line: bytes) -> str:
    text = line.decode().strip()
    assert text.startswith("data: "), text
    return text.removeprefix("data: ")


async def test_error_percent_answers_500_to_that_share_of_requests_but_health(
    demo_factory: DemoFactory, http: aiohttp.ClientSession
) -> None:
    demo = demo_factory("--error-percent", "10", "--token-delay", "0")
    statuses = []
    for _ in range(20):
        async with http.get(f"{demo.url}/v1/models") as resp:
            statuses.append(resp.status)
    assert statuses.count(500) == 2
    assert statuses.count(200) == 18
    for _ in range(20):
        async with http.get(f"{demo.url}/health") as resp:
            assert resp.status == 200


@pytest.mark.parametrize(
    ("argv", "environment", "expected"),
    [
        (["--error-percent", "150"], {}, "argument --error-percent: must be a percent"),
        (["--error-percent", "many"], {}, "argument --error-percent: not a percent"),
        ([], {"DEMO_ERROR_PERCENT": "-1"}, "DEMO_ERROR_PERCENT: must be a percent"),
    ],
)
def test_an_error_percent_out_of_range_is_refused_by_name(
    argv: list[str],
    environment: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert expected in capsys.readouterr().err


def test_the_error_percent_comes_from_the_environment_without_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEMO_ERROR_PERCENT", "12.5")
    assert parse_args([]).error_percent == 12.5
    assert parse_args(["--error-percent", "0"]).error_percent == 0
