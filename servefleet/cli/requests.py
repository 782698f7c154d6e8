"""What the request verbs (`invoke`, `health`, `models NAME`) share: where a
request for an endpoint goes, and sending it.

Where a request goes (the base URL; the endpoint's route prefix, `ingress_path`,
default `/inference/NAME`, is added to it):

- `--url URL` (or `$SERVEFLEET_URL`): that address;
- with `--region R` of a local region: R's own gateway, as recorded by the running
  `servefleet up` of this store (`gateways.py`); of a Kubernetes region: its
  Ingress, the `ingress_url` it is registered with;
- otherwise the global entry recorded by the running `servefleet up`, which
  reaches every region, Kubernetes ones with an `ingress_url` included; with no
  `up` running, an endpoint only in Kubernetes regions goes to the first of them
  with an `ingress_url`, any other to `http://127.0.0.1:8080` (`up`'s default).

Exit codes: 0 for a 2xx answer; 1 for a user error (unknown endpoint, bad flag);
2 for usage errors; 3 when no answer came (connection refused, timeout, answer cut
off); 4 for 4xx (and any other non-2xx below 500); 5 for 5xx. `health` exits 0 when
every region shown is healthy and 6 when one is not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from servefleet.cli.app import state
from servefleet.cli.connect import run_on_fleet
from servefleet.cli.fleet import Fleet
from servefleet.cli.gateways import recorded_gateways
from servefleet.cli.output import err, fail
from servefleet.spec import Endpoint, Region, RegionKind, RegionStatus

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_GATEWAY",
    "EXIT_CLIENT_ERROR",
    "EXIT_NO_ANSWER",
    "EXIT_SERVER_ERROR",
    "Answer",
    "Lookup",
    "NoAnswer",
    "RegionOption",
    "Target",
    "UrlOption",
    "check_region",
    "check_url",
    "choose_target",
    "client_timeout",
    "described",
    "end",
    "exit_code",
    "fetch",
    "look_up",
    "region_url",
    "run_http",
]

T = TypeVar("T")

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
CONNECT_TIMEOUT = 10.0

EXIT_NO_ANSWER = 3
EXIT_CLIENT_ERROR = 4
EXIT_SERVER_ERROR = 5


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
class Lookup:
    endpoint: Endpoint
    statuses: list[RegionStatus]
    regions: dict[str, Region]


def look_up(name: str) -> Lookup:
    async def read(fleet: Fleet) -> Lookup:
        endpoint, statuses = await fleet.status(name)
        regions = {region.name: region for region in await fleet.list_regions()}
        return Lookup(endpoint, statuses, regions)

    return run_on_fleet(read)


def check_region(lookup: Lookup, region: str | None) -> None:
    endpoint = lookup.endpoint
    if region is not None and region not in endpoint.target_regions:
        fail(
            f"--region: endpoint {endpoint.name!r} does not run in region {region!r} "
            f"(its regions: {', '.join(endpoint.target_regions) or 'none'})"
        )


def region_url(region: str) -> str | None:
    """The base URL of `region`'s own gateway, None when no running `up` serves it."""
    for record in recorded_gateways(state.store_url, [region]):
        if region in record.regions:
            return record.regions[region]
    return None


def _unknown_ingress(region: str) -> str:
    return (
        f"{region!r} is a kubernetes region and servefleet does not know its "
        f"Ingress address; register it (servefleet regions add {region} --kind kubernetes "
        "--ingress-url https://INGRESS-HOST ...) or pass --url https://INGRESS-HOST"
    )


def check_url(url: str | None) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        fail(f"--url: must be an http:// or https:// URL (got {url!r})")


def choose_target(lookup: Lookup, region: str | None, url: str | None) -> Target:
    check_region(lookup, region)
    check_url(url)
    endpoint = lookup.endpoint
    if url:
        return Target(endpoint, url, region)
    if region is not None:
        known = lookup.regions.get(region)
        if known is not None and known.kind is RegionKind.KUBERNETES:
            if known.ingress_url is None:
                fail(f"--region: {_unknown_ingress(region)}")
            return Target(endpoint, known.ingress_url, region)
        base_url = region_url(region)
        if base_url is None:
            fail(
                f"--region: no running `servefleet up` of this store serves region "
                f"{region!r}; start it, or pass --url"
            )
        return Target(endpoint, base_url, region)
    records = recorded_gateways(state.store_url, endpoint.target_regions)
    gateway = next((record.gateway for record in records if record.gateway), None)
    if gateway is not None:
        return Target(endpoint, gateway, None)
    targets = [lookup.regions[name] for name in endpoint.target_regions if name in lookup.regions]
    if targets and all(target.kind is RegionKind.KUBERNETES for target in targets):
        reachable = next((target for target in targets if target.ingress_url), None)
        if reachable is None:
            fail(_unknown_ingress(targets[0].name))
        assert reachable.ingress_url is not None
        return Target(endpoint, reachable.ingress_url, reachable.name)
    return Target(endpoint, DEFAULT_GATEWAY, None)


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


def exit_code(status: int) -> int:
    if 200 <= status < 300:
        return 0
    return EXIT_SERVER_ERROR if status >= 500 else EXIT_CLIENT_ERROR


def run_http(target: Target, work: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
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
        end(EXIT_NO_ANSWER, f"{target.described}: {error}")
    except (aiohttp.ClientError, TimeoutError) as error:
        end(EXIT_NO_ANSWER, f"{target.described}: no answer: {described(error)}")


def described(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def end(code: int, message: str) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def client_timeout(seconds: float, *, streaming: bool = False) -> aiohttp.ClientTimeout:
    import aiohttp

    if streaming:
        # A stream may run for long; what must not happen is a long silence.
        return aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=seconds)
    return aiohttp.ClientTimeout(total=seconds, connect=CONNECT_TIMEOUT)


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None,
    seconds: float,
) -> Answer:
    headers = {"content-type": "application/json"} if body is not None else {}
    async with session.request(
        method, url, data=body, headers=headers, timeout=client_timeout(seconds)
    ) as response:
        return Answer(response.status, await response.read())


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
