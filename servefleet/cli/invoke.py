"""`servefleet invoke`: send a request to an endpoint through its gateway and print
the answer (a completion's text, a stream as it arrives, or the body).

Exit codes as `requests.py` says: 0 for a 2xx answer, 3 no answer, 4 for 4xx,
5 for 5xx, 1 for a user error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from servefleet.cli.app import app
from servefleet.cli.options import NameArgument
from servefleet.cli.output import check_output, err, fail, out
from servefleet.cli.requests import (
    EXIT_CLIENT_ERROR,
    Answer,
    NoAnswer,
    RegionOption,
    Target,
    UrlOption,
    choose_target,
    client_timeout,
    end,
    exit_code,
    fetch,
    look_up,
    run_http,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["invoke"]


async def _body(
    target: Target,
    session: aiohttp.ClientSession,
    data: str | None,
    prompt: str | None,
    model: str | None,
    stream: bool,
    seconds: float,
) -> bytes | None:
    """The request body: `--data` as given (asking for a stream when --stream), a chat
    completion of `--prompt`, or none (a GET)."""
    if data is not None:
        document = json.loads(data)
        if stream and isinstance(document, dict):
            document.setdefault("stream", True)
        return json.dumps(document).encode()
    if prompt is None:
        return None
    chosen = model or await _served_model(target, session, seconds)
    return json.dumps(
        {"model": chosen, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    ).encode()


async def _served_model(  # noqa: RET503 - end() exits
    target: Target, session: aiohttp.ClientSession, seconds: float
) -> str:
    """The first model the endpoint says it serves, for a `--prompt` without `--model`."""
    answer = await fetch(session, "GET", target.url("/v1/models"), None, seconds)
    document = answer.json()
    if 200 <= answer.status < 300 and isinstance(document, dict):
        for entry in document.get("data") or []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                return str(entry["id"])
    if not 200 <= answer.status < 300:
        end(
            exit_code(answer.status),
            f"{target.described}: GET /v1/models to find the model answered "
            f"HTTP {answer.status}: {answer.reason}; pass --model",
        )
    end(EXIT_CLIENT_ERROR, f"{target.described}: /v1/models lists no model; pass --model")


def _completion_text(document: Any) -> str | None:
    """The generated text of a (chat) completion or one streamed chunk of it."""
    if not isinstance(document, dict):
        return None
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    for part in ("message", "delta"):
        content = choice.get(part)
        if isinstance(content, dict):
            text = content.get("content")
            return text if isinstance(text, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else None


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream, as they arrive."""
    async for raw in response.content:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if line.startswith("data:"):
            yield line[5:].removeprefix(" ")


async def _stream(
    target: Target,
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None,
    seconds: float,
    output: str,
) -> int:
    """Print a streamed answer as it arrives; returns the exit code."""
    import aiohttp

    headers = {"accept": "text/event-stream"}
    if body is not None:
        headers["content-type"] = "application/json"
    async with session.request(
        method, url, data=body, headers=headers, timeout=client_timeout(seconds, streaming=True)
    ) as response:
        if response.content_type != "text/event-stream" or not 200 <= response.status < 300:
            answer = Answer(response.status, await response.read())
            return _show(target, answer, output)
        wrote_text = False
        try:
            async for payload in _events(response):
                if payload == "[DONE]":
                    break
                text = _completion_text(_parsed(payload)) if output == "text" else None
                if text is None:
                    sys.stdout.write(payload + "\n")
                else:
                    sys.stdout.write(text)
                    wrote_text = True
                sys.stdout.flush()
        except aiohttp.ClientPayloadError as error:
            raise NoAnswer(f"the answer broke off: {error}") from error
        if wrote_text:
            sys.stdout.write("\n")
            sys.stdout.flush()
        return 0


def _parsed(payload: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None


def _show(target: Target, answer: Answer, output: str) -> int:
    """Print an answer (its text when it is a completion and output is text); returns
    the exit code."""
    code = exit_code(answer.status)
    if code:
        err.print(f"error: {target.described}: HTTP {answer.status}: {answer.reason}", markup=False)
        return code
    document = answer.json()
    text = _completion_text(document) if output == "text" else None
    if text is not None:
        out.print(text, markup=False)
    elif document is not None:
        out.print(json.dumps(document, indent=2), markup=False)
    else:
        out.print(answer.body.decode(errors="replace"), markup=False, end="")
    return 0


RequestTimeout = Annotated[
    float,
    typer.Option(
        "--timeout", help="Seconds to wait for the answer (streaming: between two chunks)."
    ),
]


@app.command(
    epilog="Examples:\n\n"
    "* `servefleet invoke demo --prompt 'hello there'`\n\n"
    "* `servefleet invoke demo --prompt 'tell me more' --stream`\n\n"
    '* `servefleet invoke embed --path /v1/embeddings --data \'{"input": "a cat"}\'`\n\n'
    "* `servefleet invoke demo --path /v1/models` (no body: a GET)\n\n"
    "Exit status: 0 for a 2xx answer, 3 no answer (refused, timed out, cut off), "
    "4 for 4xx, 5 for 5xx, 1 for a user error."
)
def invoke(
    name: NameArgument,
    region: RegionOption = None,
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="Request body (JSON), sent as is.")
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Ask this as a chat completion.")
    ] = None,
    path: Annotated[
        str, typer.Option("--path", help="Path below the endpoint's route.")
    ] = "/v1/chat/completions",
    model: Annotated[
        str | None,
        typer.Option(help="Model for --prompt (default: the first one the endpoint lists)."),
    ] = None,
    stream: Annotated[
        bool, typer.Option("--stream", help="Ask for a stream and print tokens as they arrive.")
    ] = False,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="text (a completion's text, else the body) or json (the body)."
        ),
    ] = "text",
    url: UrlOption = None,
    timeout: RequestTimeout = 300.0,
) -> None:
    """Send a request to an endpoint through its gateway and print the answer."""
    check_output(output, ("text", "json"))
    if data is not None and prompt is not None:
        fail("--data, --prompt: give one of them, not both")
    if not path.startswith("/"):
        fail(f"--path: must start with / (got {path!r})")
    if data is not None:
        try:
            json.loads(data)
        except ValueError as error:
            fail(f"--data: not valid JSON ({error}) (got {data!r})")
    if timeout <= 0:
        fail(f"--timeout: must be more than 0 seconds (got {timeout:g})")
    target = choose_target(look_up(name), region, url)

    async def send(session: aiohttp.ClientSession) -> int:
        body = await _body(target, session, data, prompt, model, stream, timeout)
        method = "GET" if body is None else "POST"
        if stream:
            return await _stream(target, session, method, target.url(path), body, timeout, output)
        answer = await fetch(session, method, target.url(path), body, timeout)
        return _show(target, answer, output)

    code = run_http(target, send)
    if code:
        raise typer.Exit(code)
