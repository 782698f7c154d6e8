"""Request verbs: `invoke`, `health` and `models NAME`, through an endpoint's gateway.

Where a request goes (the base URL; the endpoint's route prefix, `ingress_path`,
default `/inference/NAME`, is added to it):

- `--url URL` (or `$SERVEFLEET_URL`): that address, e.g. a Kubernetes region's
  Ingress, whose address servefleet does not know;
- with `--region R` of a local region: R's own gateway, as recorded by the running
  `servefleet up` of this store;
- otherwise the global gateway recorded by the running `servefleet up`, else
  `http://127.0.0.1:8080` (its default).

`servefleet up` records its gateway URLs, and the local regions it leads, in a
small file per process under the user state directory, keyed by the store URL,
and removes it when it stops. A record whose process is gone is ignored, and a
process leading the region is preferred to a standby, whose gateway only refuses.

Exit codes: 0 for a 2xx answer; 1 for a user error (unknown endpoint, bad flag);
2 for usage errors; 3 when no answer came (connection refused, timeout, answer cut
off); 4 for 4xx (and any other non-2xx below 500); 5 for 5xx. `health` exits 0 when
every region shown is healthy and 6 when one is not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import platformdirs
import typer
from rich.table import Table

from servefleet.cli.main import (
    NameArgument,
    _check_output,
    _fail,
    _print_documents,
    _run,
    _state,
    app,
    err,
    out,
)
from servefleet.cli.models import SERVED, models_app
from servefleet.service import EndpointService
from servefleet.spec import Endpoint, Region, RegionKind, RegionState, RegionStatus

if TYPE_CHECKING:
    import aiohttp

__all__ = ["endpoint_models", "record_gateways", "recorded_gateways"]

T = TypeVar("T")

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
CONNECT_TIMEOUT = 10.0

EXIT_NO_ANSWER = 3
EXIT_CLIENT_ERROR = 4
EXIT_SERVER_ERROR = 5
EXIT_UNHEALTHY = 6


# Where `servefleet up` says its gateways are.


@dataclass(frozen=True)
class GatewayRecord:
    """The URLs one running `servefleet up` serves on."""

    pid: int
    gateway: str
    """The global entry point ("" when it runs no local region)."""
    regions: dict[str, str]
    """Each local region's own gateway."""
    leading: list[str]
    """The regions whose replicas this process runs now."""


def _records_dir(store_url: str) -> Path:
    key = hashlib.sha256(store_url.encode()).hexdigest()[:16]
    return platformdirs.user_state_path("servefleet") / "gateways" / key


def record_gateways(
    store_url: str, gateway: str, regions: dict[str, str], leading: list[str]
) -> Path:
    """Write (or rewrite) this process's gateway URLs and led regions for the CLI to
    find; returns the file to remove on the way out. Blocking: call it on a thread."""
    directory = _records_dir(store_url)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{os.getpid()}.json"
    record = {"pid": os.getpid(), "gateway": gateway, "regions": regions, "leading": leading}
    with tempfile.NamedTemporaryFile(
        "w", dir=directory, prefix=f"{os.getpid()}.", suffix=".partial", delete=False
    ) as partial:
        partial.write(json.dumps(record))
    os.replace(partial.name, path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recorded_gateways(store_url: str, serving: list[str]) -> list[GatewayRecord]:
    """The records of the running `servefleet up` processes of this store: those leading
    one of the regions `serving` first, then newest first."""
    directory = _records_dir(store_url)
    if not directory.is_dir():
        return []
    records = []
    for path in sorted(directory.glob("*.json"), key=_modified, reverse=True):
        try:
            data = json.loads(path.read_text())
            record = GatewayRecord(
                int(data["pid"]), str(data["gateway"]), dict(data["regions"]), list(data["leading"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # Removed meanwhile, or not ours to read.
        if _alive(record.pid):
            records.append(record)
    return sorted(records, key=lambda record: not set(serving) & set(record.leading))


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# Choosing the address.


@dataclass(frozen=True)
class Target:
    """Where requests for one endpoint go, and how errors name it."""

    endpoint: Endpoint
    base_url: str
    region: str | None

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + self.endpoint.ingress_path + path

    @property
    def described(self) -> str:
        where = f" in region {self.region!r}" if self.region else ""
        return f"endpoint {self.endpoint.name!r}{where} via {self.base_url}"


@dataclass(frozen=True)
class _Lookup:
    endpoint: Endpoint
    statuses: list[RegionStatus]
    regions: dict[str, Region]


def _lookup(name: str) -> _Lookup:
    async def read(service: EndpointService) -> _Lookup:
        endpoint, statuses = await service.status(name)
        regions = {region.name: region for region in await service.list_regions()}
        return _Lookup(endpoint, statuses, regions)

    return _run(read)


def _check_region(lookup: _Lookup, region: str | None) -> None:
    endpoint = lookup.endpoint
    if region is not None and region not in endpoint.target_regions:
        _fail(
            f"--region: endpoint {endpoint.name!r} does not run in region {region!r} "
            f"(its regions: {', '.join(endpoint.target_regions) or 'none'})"
        )


def _region_url(region: str) -> str | None:
    """The base URL of `region`'s own gateway, None when no running `up` serves it."""
    for record in recorded_gateways(_state.store_url, [region]):
        if region in record.regions:
            return record.regions[region]
    return None


def _unknown_ingress(region: str) -> str:
    return (
        f"{region!r} is a kubernetes region and servefleet does not know its "
        "Ingress address; pass --url http://INGRESS-HOST"
    )


def _check_url(url: str | None) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        _fail(f"--url: must be an http:// or https:// URL (got {url!r})")


def _target(lookup: _Lookup, region: str | None, url: str | None) -> Target:
    _check_region(lookup, region)
    _check_url(url)
    endpoint = lookup.endpoint
    if url:
        return Target(endpoint, url, region)
    if region is not None:
        known = lookup.regions.get(region)
        if known is not None and known.kind is RegionKind.KUBERNETES:
            _fail(f"--region: {_unknown_ingress(region)}")
        region_url = _region_url(region)
        if region_url is None:
            _fail(
                f"--region: no running `servefleet up` of this store serves region "
                f"{region!r}; start it, or pass --url"
            )
        return Target(endpoint, region_url, region)
    kinds = {
        lookup.regions[name].kind for name in endpoint.target_regions if name in lookup.regions
    }
    if kinds == {RegionKind.KUBERNETES}:
        _fail(_unknown_ingress(endpoint.target_regions[0]))
    records = recorded_gateways(_state.store_url, endpoint.target_regions)
    gateway = next((record.gateway for record in records if record.gateway), DEFAULT_GATEWAY)
    return Target(endpoint, gateway, None)


# Talking HTTP.


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def reason(self) -> str:
        """What the answer says went wrong: an OpenAI-style or gateway error message,
        else the start of the body."""
        document = self.json()
        if isinstance(document, dict):
            error = document.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return str(error["message"])
            if isinstance(error, str):
                return error
        text = self.body.decode(errors="replace").strip()
        return text[:500] or "(empty body)"


class NoAnswer(Exception):
    """The request got no (complete) HTTP answer."""


def _exit_code(status: int) -> int:
    if 200 <= status < 300:
        return 0
    return EXIT_SERVER_ERROR if status >= 500 else EXIT_CLIENT_ERROR


def _http(target: Target, work: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    """Run `work` with a client session; a request that got no answer ends the command."""
    # aiohttp is imported here rather than at the top so that every other verb of
    # the CLI starts without paying for it.
    import aiohttp

    async def main() -> T:
        async with aiohttp.ClientSession() as session:
            return await work(session)

    try:
        return asyncio.run(main())
    except NoAnswer as error:
        _end(EXIT_NO_ANSWER, f"{target.described}: {error}")
    except (aiohttp.ClientError, TimeoutError) as error:
        _end(EXIT_NO_ANSWER, f"{target.described}: no answer: {_described(error)}")


def _described(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def _end(code: int, message: str) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def _timeout(seconds: float, *, streaming: bool = False) -> aiohttp.ClientTimeout:
    import aiohttp

    if streaming:
        # A stream may run for long; what must not happen is a long silence.
        return aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=seconds)
    return aiohttp.ClientTimeout(total=seconds, connect=CONNECT_TIMEOUT)


async def _fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None,
    seconds: float,
) -> Answer:
    headers = {"content-type": "application/json"} if body is not None else {}
    async with session.request(
        method, url, data=body, headers=headers, timeout=_timeout(seconds)
    ) as response:
        return Answer(response.status, await response.read())


# invoke


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


async def _served_model(target: Target, session: aiohttp.ClientSession, seconds: float) -> str:
    """The first model the endpoint says it serves, for a `--prompt` without `--model`."""
    answer = await _fetch(session, "GET", target.url("/v1/models"), None, seconds)
    document = answer.json()
    if 200 <= answer.status < 300 and isinstance(document, dict):
        for entry in document.get("data") or []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                return str(entry["id"])
    if not 200 <= answer.status < 300:
        _end(
            _exit_code(answer.status),
            f"{target.described}: GET /v1/models to find the model answered "
            f"HTTP {answer.status}: {answer.reason}; pass --model",
        )
    _end(EXIT_CLIENT_ERROR, f"{target.described}: /v1/models lists no model; pass --model")


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
        method, url, data=body, headers=headers, timeout=_timeout(seconds, streaming=True)
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
    code = _exit_code(answer.status)
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


RegionOption = Annotated[
    str | None, typer.Option("--region", "-r", help="Send through this region only.")
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="SERVEFLEET_URL",
        help="Base URL to send through instead of the gateway `servefleet up` runs, "
        "e.g. a Kubernetes region's Ingress.",
        show_default=False,
    ),
]
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
    _check_output(output, ("text", "json"))
    if data is not None and prompt is not None:
        _fail("--data, --prompt: give one of them, not both")
    if not path.startswith("/"):
        _fail(f"--path: must start with / (got {path!r})")
    if data is not None:
        try:
            json.loads(data)
        except ValueError as error:
            _fail(f"--data: not valid JSON ({error}) (got {data!r})")
    if timeout <= 0:
        _fail(f"--timeout: must be more than 0 seconds (got {timeout:g})")
    target = _target(_lookup(name), region, url)

    async def send(session: aiohttp.ClientSession) -> int:
        body = await _body(target, session, data, prompt, model, stream, timeout)
        method = "GET" if body is None else "POST"
        if stream:
            return await _stream(target, session, method, target.url(path), body, timeout, output)
        answer = await _fetch(session, method, target.url(path), body, timeout)
        return _show(target, answer, output)

    code = _http(target, send)
    if code:
        raise typer.Exit(code)


# models NAME


@models_app.command(
    SERVED,
    hidden=True,
    epilog="Examples: `servefleet models llm`, `servefleet models llm -r eu-west -o json`",
)
def endpoint_models(
    name: NameArgument,
    region: RegionOption = None,
    url: UrlOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
) -> None:
    """List the models endpoint NAME serves (its /v1/models, through the gateway); exits
    like `invoke` on a failed request."""
    _check_output(output, ("table", "yaml", "json"))
    target = _target(_lookup(name), region, url)

    async def fetch(session: aiohttp.ClientSession) -> Answer:
        return await _fetch(session, "GET", target.url("/v1/models"), None, CONNECT_TIMEOUT * 3)

    answer = _http(target, fetch)
    code = _exit_code(answer.status)
    if code:
        _end(code, f"{target.described}: HTTP {answer.status}: {answer.reason}")
    document = answer.json()
    models = document.get("data") if isinstance(document, dict) else None
    if not isinstance(models, list):
        _end(EXIT_SERVER_ERROR, f"{target.described}: /v1/models did not answer a model list")
    if output != "table":
        _print_documents([entry for entry in models if isinstance(entry, dict)], output, many=True)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("MODEL", "OWNED BY"):
        table.add_column(column)
    for entry in models:
        if isinstance(entry, dict):
            table.add_row(str(entry.get("id", "-")), str(entry.get("owned_by", "-")))
    out.print(table)


# health


@dataclass(frozen=True)
class _Probe:
    ok: bool
    shown: str


_INGRESS_UNKNOWN = "not probed: Ingress address unknown (pass --url)"


def _probe_plan(lookup: _Lookup, region: str, url: str | None) -> str | _Probe | None:
    """The base URL to probe `region` through; else what stands for the probe: a
    failure for a local region no `servefleet up` serves (nobody answers there), or
    None for a cluster whose Ingress is unknown (judged by its status alone)."""
    if url:
        return url
    known = lookup.regions.get(region)
    if known is not None and known.kind is RegionKind.KUBERNETES:
        return None
    base = _region_url(region)
    return base or _Probe(False, "not probed: no running `servefleet up` serves this region")


async def _probe(session: aiohttp.ClientSession, url: str, seconds: float) -> _Probe:
    import aiohttp

    try:
        answer = await _fetch(session, "GET", url, None, seconds)
    except (aiohttp.ClientError, TimeoutError) as error:
        return _Probe(False, f"no answer: {_described(error)}")
    if 200 <= answer.status < 300:
        return _Probe(True, f"{answer.status} ok")
    return _Probe(False, f"{answer.status}: {answer.reason}")


def _healthy(status: RegionStatus | None, probe: _Probe | None) -> bool:
    return (
        status is not None
        and status.state is RegionState.READY
        and status.routed
        and status.replicas_ready >= status.replicas_desired
        and (probe is None or probe.ok)
    )


@app.command(
    epilog="Examples: `servefleet health demo`, `servefleet health llm -r eu-west "
    "--url https://llm.eu-west.example.com`\n\n"
    "Exit status: 0 when every region shown is healthy, 6 when one is not, 1 for a user error."
)
def health(
    name: NameArgument,
    region: Annotated[str | None, typer.Option("--region", "-r", help="Only this region.")] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="SERVEFLEET_URL",
            help="Probe through this base URL (e.g. a Kubernetes region's Ingress); "
            "needs --region when the endpoint runs in several regions.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each probe may take.")] = 10.0,
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
) -> None:
    """Show each region's readiness and probe the health path through its gateway."""
    _check_output(output, ("table", "yaml", "json"))
    lookup = _lookup(name)
    _check_region(lookup, region)
    endpoint = lookup.endpoint
    regions = [region] if region else endpoint.target_regions
    _check_url(url)
    if url and len(regions) > 1:
        _fail(f"--url: name the region it reaches with --region (got {url!r})")
    plans = {each: _probe_plan(lookup, each, url) for each in regions}

    async def probe_all(session: aiohttp.ClientSession) -> dict[str, _Probe | None]:
        async def one(plan: str | _Probe | None) -> _Probe | None:
            if not isinstance(plan, str):
                return plan
            target = Target(endpoint, plan, None)
            return await _probe(session, target.url(endpoint.spec.health_path), timeout)

        results = await asyncio.gather(*(one(plan) for plan in plans.values()))
        return dict(zip(plans, results, strict=True))

    probes = _http(Target(endpoint, url or DEFAULT_GATEWAY, region), probe_all)
    by_region = {status.region: status for status in lookup.statuses}
    rows = []
    for each in regions:
        status, probe = by_region.get(each), probes[each]
        rows.append(
            {
                "region": each,
                "healthy": _healthy(status, probe),
                "state": status.state.value if status else "pending",
                "ready": f"{status.replicas_ready}/{status.replicas_desired}" if status else "-",
                "routed": bool(status and status.routed),
                "message": status.message if status else "no report yet",
                "probe": probe.shown if probe else _INGRESS_UNKNOWN,
            }
        )
    if output == "table":
        out.print(
            f"endpoint/{name}: {endpoint.desired_state.value}, "
            f"health path {endpoint.spec.health_path}",
            markup=False,
        )
        table = Table(box=None, pad_edge=False)
        for column in ("REGION", "HEALTHY", "STATE", "READY", "ROUTED", "MESSAGE", "PROBE"):
            table.add_column(column)
        for row in rows:
            table.add_row(
                str(row["region"]),
                "yes" if row["healthy"] else "no",
                str(row["state"]),
                str(row["ready"]),
                "routed" if row["routed"] else "unrouted",
                str(row["message"]) or "-",
                str(row["probe"]),
            )
        out.print(table)
    else:
        _print_documents([{"name": name, "regions": rows}], output, many=False)
    if not all(row["healthy"] for row in rows):
        raise typer.Exit(EXIT_UNHEALTHY)
