"""An OpenAI-compatible demo model server on aiohttp, with no model behind it.

The control plane starts, probes, routes to and replaces inference servers; to show
and test that without a GPU, this server answers the same routes a real one does
(`/health`, `/v1/models`, `/v1/completions`, `/v1/chat/completions`) and can be told
to misbehave in the ways that matter:

- `--startup-delay` imitates a slow model load: the port listens at once, but
  `/health` answers 503 `{"status": "loading"}` until the delay has passed, so
  probes see "not ready" rather than "connection refused".
- `--unhealthy-file` lets a test make a replica unready, and ready again, from the
  outside: while the file exists `/health` answers 503 `{"status": "unhealthy"}`.
- `--token-delay` paces generation, so streamed responses visibly arrive token by
  token.
- `--error-percent` (or `$DEMO_ERROR_PERCENT`) makes it answer 500 to that share
  of its requests, spread evenly (every tenth for 10), `/health` excepted: a
  version that is ready but hurts, for a rollout's guard rails to catch.
- `--version` is echoed in every response (header `x-demo-version`, and
  `system_fingerprint` in completions) next to the process id (`x-demo-pid`), so a
  canary rollout can be watched and asserted on.

Generation is deterministic: the reply cycles through the words of the prompt (or of
the last user message), or `token0 token1 ...` when there are none. Token counts are
word counts. Only `/health` reflects loading and unhealthiness; the other routes
always answer, as documented above.

The module imports only the standard library and `aiohttp.web` so that it starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

OWNED_BY = "servefleet-demo"
DEFAULT_MAX_TOKENS = 16
# How long in-flight requests (e.g. open streams) get to finish after SIGTERM.
SHUTDOWN_TIMEOUT = 5.0


@dataclass(frozen=True)
class Settings:
    """Everything the command line controls."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "demo"
    version: str = "v1"
    startup_delay: float = 0.0
    token_delay: float = 0.01
    unhealthy_file: Path | None = None
    error_percent: float = 0.0
    path_prefix: str = ""
    """Also serve every path under this prefix, as a model server behind an Ingress
    that routes on the prefix and rewrites nothing sees its requests (the global
    entry's tests stand a demo in for a Kubernetes region's Ingress with it)."""


SETTINGS = web.AppKey("settings", Settings)
ERROR_PERCENT_VARIABLE = "DEMO_ERROR_PERCENT"
# time.monotonic() when the app started, i.e. when the port began to listen.
STARTED_AT = web.AppKey("started_at", float)


class BadRequest(Exception):
    """A request body the OpenAI API would reject with invalid_request_error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Generation:
    """What a completion request asks for, once validated."""

    words: list[str]
    prompt_tokens: int
    max_tokens: int
    stream: bool

    def tokens(self) -> list[str]:
        """The `max_tokens` tokens of the reply, each after the first with its
        leading space, so that concatenating them gives the reply text."""
        out = []
        for i in range(self.max_tokens):
            word = self.words[i % len(self.words)] if self.words else f"token{i}"
            out.append(word if i == 0 else f" {word}")
        return out


def make_app(settings: Settings) -> web.Application:
    """The demo server's application, configured by `settings`."""
    app = web.Application()
    app[SETTINGS] = settings
    app[STARTED_AT] = time.monotonic()

    async def mark_started(app: web.Application) -> None:
        app[STARTED_AT] = time.monotonic()

    app.on_startup.append(mark_started)
    # A signal rather than a middleware: it also stamps streamed responses, whose
    # headers are sent before the handler returns.
    app.on_response_prepare.append(_stamp_headers)
    if settings.error_percent:
        app.middlewares.append(_failing_share(settings.error_percent))
    for prefix in dict.fromkeys(("", settings.path_prefix.rstrip("/"))):
        app.router.add_get(prefix or "/", _index)
        app.router.add_get(f"{prefix}/health", _health)
        app.router.add_get(f"{prefix}/v1/models", _models)
        app.router.add_post(f"{prefix}/v1/completions", _completions)
        app.router.add_post(f"{prefix}/v1/chat/completions", _chat_completions)
    return app


def _failing_share(percent: float) -> Middleware:
    """Answer 500 to `percent` of the requests, `/health` excepted: request n fails
    when it takes the failures counted so far past n x percent / 100, so the
    share holds over any run of requests, not only on average."""
    answered = 0

    @web.middleware
    async def fail_some(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal answered
        if request.path == "/health":
            return await handler(request)
        answered += 1
        if int(answered * percent / 100) > int((answered - 1) * percent / 100):
            return web.json_response(
                {"error": {"message": "demo: a failure asked for by --error-percent"}},
                status=500,
            )
        return await handler(request)

    return fail_some


async def _stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["x-demo-version"] = request.app[SETTINGS].version
    response.headers["x-demo-pid"] = str(os.getpid())


async def _index(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.json_response(
        {
            "model": settings.model,
            "version": settings.version,
            "pid": os.getpid(),
            "port": _bound_port(request),
        }
    )


def _bound_port(request: web.Request) -> int:
    """The port this request arrived on (the real one even under `--port 0`)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[1], int):
        return sockname[1]
    return request.app[SETTINGS].port


async def _health(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if time.monotonic() - request.app[STARTED_AT] < settings.startup_delay:
        return web.json_response({"status": "loading"}, status=503)
    if settings.unhealthy_file is not None and settings.unhealthy_file.exists():
        return web.json_response({"status": "unhealthy"}, status=503)
    return web.json_response({"status": "ok"})


async def _models(request: web.Request) -> web.Response:
    model = request.app[SETTINGS].model
    return web.json_response(
        {"object": "list", "data": [{"id": model, "object": "model", "owned_by": OWNED_BY}]}
    )


async def _completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await _json_body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' is required and must be a string", "prompt")
        words = prompt.split()
        generation = _generation(body, words, len(words))
    except BadRequest as error:
        return _error_response(error)
    return await _respond(request, generation, chat=False)


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await _json_body(request)
        texts, last_user = _read_messages(body.get("messages"))
        prompt_tokens = sum(len(text.split()) for text in texts)
        generation = _generation(body, last_user.split(), prompt_tokens)
    except BadRequest as error:
        return _error_response(error)
    return await _respond(request, generation, chat=True)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except ValueError as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _read_messages(messages: object) -> tuple[list[str], str]:
    """The text of every message, and that of the last user message (or of the last
    message, when no user spoke)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty array", "messages")
    texts: list[str] = []
    last_user: str | None = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role'", "messages")
        text = _content_text(message.get("content"))
        if text is None:
            raise BadRequest(
                f"messages[{i}].content must be a string, an array of parts or null",
                "messages",
            )
        texts.append(text)
        if message["role"] == "user":
            last_user = text
    return texts, texts[-1] if last_user is None else last_user


def _content_text(content: object) -> str | None:
    """The text of a message's content: a string, null (assistant tool calls), or
    OpenAI content parts, of which the text parts count. None when malformed."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return " ".join(
            part["text"]
            for part in content
            if part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return None


def _generation(body: dict[str, Any], words: list[str], prompt_tokens: int) -> Generation:
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("'max_tokens' must be a positive integer", "max_tokens")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    return Generation(words, prompt_tokens, max_tokens, stream)


def _error_response(error: BadRequest) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": error.message,
                "type": "invalid_request_error",
                "param": error.param,
                "code": None,
            }
        },
        status=400,
    )


async def _respond(request: web.Request, generation: Generation, chat: bool) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    head = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": settings.model,
        "system_fingerprint": settings.version,
    }
    tokens = generation.tokens()
    if generation.stream:
        return await _stream(request, head, tokens, chat)
    for _ in tokens[1:]:
        await asyncio.sleep(settings.token_delay)
    text = "".join(tokens)
    choice: dict[str, Any]
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    choice |= {"logprobs": None, "finish_reason": "length"}
    return web.json_response(
        {
            **head,
            "object": "chat.completion" if chat else "text_completion",
            "choices": [choice],
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": generation.prompt_tokens + len(tokens),
            },
        }
    )


async def _stream(
    request: web.Request, head: dict[str, Any], tokens: list[str], chat: bool
) -> web.StreamResponse:
    """Server-sent events: one chunk per token (the last one carrying the
    finish_reason), each written as soon as it is generated, then `[DONE]`."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        for i, token in enumerate(tokens):
            if i:
                await asyncio.sleep(request.app[SETTINGS].token_delay)
            finish_reason = "length" if i == len(tokens) - 1 else None
            choice: dict[str, Any]
            if chat:
                delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
                choice = {"index": 0, "delta": delta}
            else:
                choice = {"index": 0, "text": token}
            choice |= {"logprobs": None, "finish_reason": finish_reason}
            chunk = {
                **head,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "choices": [choice],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # The client went away mid-stream; there is nobody left to tell.
    return response


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be zero or more seconds: {text!r}")
    return value


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percent: {text!r}") from None
    if not 0 <= value <= 100:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be a percent from 0 to 100 (got {text!r})")
    return value


def port_number(text: str) -> int:
    """argparse's `type=` for a port (shared with the example servers)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the command line (and `$PORT`, the default port)."""
    parser = argparse.ArgumentParser(
        prog="python -m servefleet.demo",
        description="An OpenAI-compatible demo model server: no GPU, no model.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=port_number,
        default=os.environ.get("PORT", "8000"),
        help="port to listen on (default: $PORT, else 8000)",
    )
    parser.add_argument("--model", default="demo", help="model id to serve")
    parser.add_argument("--version", default="v1", help="version reported in every response")
    parser.add_argument(
        "--startup-delay",
        type=_non_negative_seconds,
        default=0.0,
        metavar="SECONDS",
        help="/health answers 503 loading for this long after start (default: 0)",
    )
    parser.add_argument(
        "--token-delay",
        type=_non_negative_seconds,
        default=0.01,
        metavar="SECONDS",
        help="pause between generated tokens (default: 0.01)",
    )
    parser.add_argument(
        "--unhealthy-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="/health answers 503 unhealthy while this file exists",
    )
    parser.add_argument(
        "--error-percent",
        type=_percent,
        default=None,
        metavar="PERCENT",
        help=f"answer 500 to this share of requests but /health (default: ${ERROR_PERCENT_VARIABLE}"
        ", else 0)",
    )
    parser.add_argument(
        "--path-prefix",
        default="",
        metavar="PREFIX",
        help="also serve every path under PREFIX, e.g. /inference/demo, as behind an "
        "Ingress that does not rewrite paths (default: none)",
    )
    args = parser.parse_args(argv)
    if args.path_prefix and not args.path_prefix.startswith("/"):
        parser.error(f"--path-prefix: must start with '/' (got {args.path_prefix!r})")
    error_percent = args.error_percent
    if error_percent is None:
        try:
            error_percent = _percent(os.environ.get(ERROR_PERCENT_VARIABLE, "0"))
        except argparse.ArgumentTypeError as error:
            parser.error(f"{ERROR_PERCENT_VARIABLE}: {error}")
    return Settings(
        host=args.host,
        port=args.port,
        model=args.model,
        version=args.version,
        startup_delay=args.startup_delay,
        token_delay=args.token_delay,
        unhealthy_file=args.unhealthy_file,
        error_percent=error_percent,
        path_prefix=args.path_prefix,
    )


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly (exit status 0)."""
    settings = parse_args(argv)
    web.run_app(
        make_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        print=lambda message: print(
            f"servefleet demo: model {settings.model!r} version {settings.version!r} "
            f"pid {os.getpid()}\n{message}",
            flush=True,
        ),
    )
