"""The dashboard at `/` in a real headless browser: Debian's chromium driven by
playwright, against a real API server on loopback over a SQLite file.

The grid appears with every endpoint; a change made through the API shows up
without a reload; a viewer gets no action buttons; a deployer's confirmed scale
changes the stored record; the stream indicator turns "down" when the server goes
away and "live" again, resumed, when it comes back. Values from the API reach the
page as text, never as markup; the files carry a policy that lets the page load
nothing from elsewhere.

Skipped only where chromium is not installed and CI is not set (`scripts/test`
installs it); in CI (`CI=true`) a missing chromium fails. Waits are generous (the
suite runs three workers on two cores); nothing here asserts how long anything took.

`SERVEFLEET_DASHBOARD_SCREENSHOT=docs/dashboard.png pytest tests/api/test_dashboard.py
-k grid` also writes the README's screenshot.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from servefleet.service import EndpointService
from servefleet.spec import EndpointManifest, Region, RegionKind, RegionState, RegionStatus, Role
from servefleet.store import Store, open_store
from servefleet.tokens import TokenService
from tests.api.conftest import running_api

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000
"""How long any one expectation may take to come true: generous, for a loaded machine."""
REGIONS = ("eu-west", "us-east", "ap-south")

pytestmark = pytest.mark.slow(seconds=3)
expect.set_options(timeout=WAIT_MS)


def _chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
    pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}): apt-get install chromium")


@dataclass
class Fleet:
    """A store with three regions and a token of each role, and the server's URL."""

    store: Store
    tokens: dict[Role, str]
    url: str = ""
    errors: list[str] = field(default_factory=list)
    """What the pages opened by `open_dashboard` reported as errors."""

    @property
    def service(self) -> EndpointService:
        return EndpointService(self.store)

    async def endpoint(self, name: str, regions: tuple[str, ...] = REGIONS, **spec: Any) -> None:
        manifest = {
            "metadata": {"name": name},
            "regions": list(regions),
            "spec": {"image": "ghcr.io/org/server:1.0", **spec},
        }
        await self.service.create(EndpointManifest.model_validate(manifest))

    async def report(
        self, name: str, region: str, state: RegionState, ready: int, desired: int, **more: Any
    ) -> None:
        """A region's status, as its reconciler would write it."""
        await self.store.put_region_status(
            RegionStatus(
                endpoint=name,
                region=region,
                state=state,
                observed_generation=1,
                replicas_ready=ready,
                replicas_desired=desired,
                routed=ready > 0,
                last_transition=more.pop("since", datetime.now(UTC)),
                **more,
            )
        )

    async def post(self, path: str, body: Any, role: Role = Role.DEPLOYER) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}{path}", json=body, headers=headers) as response,
        ):
            assert response.status == 200, await response.text()


@pytest_asyncio.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    store = await open_store(f"sqlite:///{tmp_path / 'store.db'}", init=True)
    issued = {
        role: (await TokenService(store).create(f"{role.value}-token", role.value))[1]
        for role in Role
    }
    for region in REGIONS:
        await store.put_region(Region(name=region, kind=RegionKind.LOCAL))
    yield Fleet(store, issued)
    await store.close()


@pytest_asyncio.fixture
async def served(fleet: Fleet) -> AsyncIterator[Fleet]:
    """`fleet` with the API serving it for the whole test."""
    async with running_api(fleet.store) as (url, _):
        fleet.url = url
        yield fleet


@pytest_asyncio.fixture
async def browser(fleet: Fleet) -> AsyncIterator[Browser]:
    executable = _chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(executable), args=LAUNCH_ARGS
        )
        yield launched
        await launched.close()
    assert fleet.errors == []


async def open_dashboard(browser: Browser, fleet: Fleet, role: Role) -> Page:
    """The page at `/`, signed in with the token of `role` through its form, live."""
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(WAIT_MS)
    page.on("pageerror", lambda error: fleet.errors.append(str(error)))

    def console(message: ConsoleMessage) -> None:
        # A cut or refused connection is the browser's own line; the page shows it too.
        if message.type == "error" and "net::ERR_" not in message.text:
            fleet.errors.append(message.text)

    page.on("console", console)
    await page.goto(f"{fleet.url}/")
    await page.locator("#token").fill(fleet.tokens[role])
    await page.get_by_role("button", name="Open the dashboard", exact=True).click()
    await expect(page.locator("#stream")).to_have_attribute("data-state", "live")
    await expect(page.locator("#who")).to_have_text(f"{role.value}-token ({role.value})")
    assert fleet.tokens[role] not in page.url
    return page


def cell(page: Page, endpoint: str, region: str) -> Any:
    return page.locator(f'#grid td[data-endpoint="{endpoint}"][data-region="{region}"]')


async def demo_fleet(fleet: Fleet) -> None:
    """A few endpoints in various states, as the README's screenshot shows them."""
    now = datetime.now(UTC)
    await fleet.endpoint(
        "chat-llama",
        replicas=3,
        canary={"image": "ghcr.io/org/vllm:0.7", "weight": 10, "replicas": 1},
        image="ghcr.io/org/vllm:0.6",
    )
    await fleet.endpoint("embed-minilm", regions=("eu-west", "us-east"), replicas=2)
    await fleet.endpoint("rerank", regions=("us-east", "ap-south"))
    for region in REGIONS:
        await fleet.report(
            "chat-llama",
            region,
            RegionState.READY,
            3,
            3,
            canary_ready=1,
            canary_desired=1,
            since=now - timedelta(minutes=42),
        )
    await fleet.report(
        "chat-llama",
        "ap-south",
        RegionState.PROGRESSING,
        2,
        3,
        canary_ready=0,
        canary_desired=1,
        message="waiting for 1 replica to pass /health (model loading)",
        since=now - timedelta(seconds=40),
    )
    await fleet.report("embed-minilm", "eu-west", RegionState.READY, 2, 2, since=now)
    await fleet.report(
        "embed-minilm",
        "us-east",
        RegionState.DEGRADED,
        1,
        2,
        message="replica embed-minilm-1 restarted 3 times: exit code 137",
        since=now - timedelta(minutes=3),
    )
    await fleet.report("rerank", "us-east", RegionState.READY, 1, 1, since=now - timedelta(hours=5))


async def test_the_page_loads_nothing_from_elsewhere(served: Fleet) -> None:
    """The files need no token and hold no record; the policy lets the page load only
    this server's script and style and talk only to it (no CDN, no inline script)."""
    async with aiohttp.ClientSession() as session:
        for path, media_type in [
            ("/", "text/html"),
            ("/dashboard.js", "text/javascript"),
            ("/dashboard.css", "text/css"),
        ]:
            async with session.get(f"{served.url}{path}") as response:
                assert response.status == 200
                assert response.content_type == media_type
                policy = response.headers["Content-Security-Policy"]
                assert "default-src 'none'" in policy
                assert "script-src 'self';" in policy
                assert "connect-src 'self';" in policy
                text = await response.text()
                assert "http://" not in text
                assert "https://" not in text


async def test_the_grid_shows_every_endpoint_in_every_region(
    served: Fleet, browser: Browser, tmp_path: Path
) -> None:
    await demo_fleet(served)

    page = await open_dashboard(browser, served, Role.DEPLOYER)

    rows = page.locator("#grid tbody tr")
    await expect(rows).to_have_count(3)
    await expect(page.locator("#grid thead th")).to_have_text(
        ["endpoint", "ap-south", "eu-west", "us-east"]
    )
    llama = cell(page, "chat-llama", "ap-south")
    await expect(llama.locator(".state")).to_have_text("progressing")
    await expect(llama.locator(".replicas")).to_have_text("2/3 ready")
    await expect(llama.locator(".image")).to_have_text("ghcr.io/org/vllm:0.6")
    await expect(llama.locator(".canary")).to_have_text("canary 10%, 0/1 ready")
    await expect(llama.locator(".routed")).to_have_text("routed")
    await expect(llama.locator(".message")).to_have_text(
        "waiting for 1 replica to pass /health (model loading)"
    )
    await expect(llama.locator(".changed")).to_contain_text(" s ago")
    await expect(cell(page, "embed-minilm", "us-east").locator(".state")).to_have_text("degraded")
    await expect(cell(page, "rerank", "ap-south").locator(".state")).to_have_text("pending")
    await expect(cell(page, "rerank", "eu-west")).to_have_class("untargeted")

    await page.get_by_role("button", name="chat-llama", exact=True).click()
    await expect(page.locator("#details-name")).to_have_text(
        "chat-llama: running, generation 1, revision 1"
    )
    await expect(page.locator("#declaration")).to_contain_text('"image": "ghcr.io/org/vllm:0.7"')
    await expect(page.locator('#history section[data-region="ap-south"] td')).to_contain_text(
        ["progressing", "2/3", "0/1", "routed", "waiting for 1 replica"]
    )
    assert served.tokens[Role.DEPLOYER] not in page.url
    await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    if docs_copy := os.environ.get("SERVEFLEET_DASHBOARD_SCREENSHOT"):
        await page.screenshot(path=docs_copy)  # the window: the grid and the details' top


async def test_a_change_through_the_api_shows_up_without_a_reload(
    served: Fleet, browser: Browser
) -> None:
    await served.endpoint("live", regions=("eu-west",))
    page = await open_dashboard(browser, served, Role.VIEWER)
    live = cell(page, "live", "eu-west")
    await expect(live.locator(".replicas")).to_have_text("0/1 ready")
    await page.evaluate("window.notReloaded = true")

    await served.post("/v1/endpoints/live/scale", {"replicas": 4})
    await expect(live.locator(".replicas")).to_have_text("0/4 ready")
    injected = '<img src=x onerror="window.injected = true">'
    await served.report("live", "eu-west", RegionState.PROGRESSING, 2, 4, message=injected)
    await expect(live.locator(".message")).to_have_text(injected)
    await expect(live.locator(".replicas")).to_have_text("2/4 ready")
    await page.get_by_role("button", name="live", exact=True).click()
    await served.report("live", "eu-west", RegionState.READY, 4, 4)
    await expect(live.locator(".state")).to_have_text("ready")
    history = page.locator('#history section[data-region="eu-west"] tbody tr')
    await expect(history).to_have_count(2)  # the changes seen, newest first
    await expect(history.first).to_contain_text("ready")
    await expect(history.last).to_contain_text(injected)
    await served.endpoint("newcomer", regions=("us-east",))
    await expect(cell(page, "newcomer", "us-east")).to_be_visible()
    await served.service.delete("newcomer")
    await expect(page.locator('#grid tr[data-endpoint="newcomer"] .desired')).to_have_text(
        "deleted"
    )

    assert await page.evaluate("window.notReloaded") is True
    assert await page.locator("#grid img").count() == 0
    assert await page.evaluate("window.injected") is None


async def test_a_viewer_sees_no_action_buttons(served: Fleet, browser: Browser) -> None:
    await served.endpoint("looked-at")
    page = await open_dashboard(browser, served, Role.VIEWER)

    await page.get_by_role("button", name="looked-at", exact=True).click()

    await expect(page.locator("#declaration")).to_contain_text('"name": "looked-at"')
    await expect(page.locator("#actions")).to_be_hidden()
    for verb in ("Scale", "Stop", "Start", "Promote canary", "Roll back canary"):
        await expect(page.get_by_role("button", name=verb, exact=True)).to_have_count(0)


async def test_a_deployer_scales_after_confirming_and_the_record_changes(
    served: Fleet, browser: Browser
) -> None:
    await served.endpoint("scaled", replicas=1)
    page = await open_dashboard(browser, served, Role.DEPLOYER)
    await page.get_by_role("button", name="scaled", exact=True).click()
    await expect(page.locator("#replicas")).to_have_value("1")

    await page.get_by_role("button", name="Stop", exact=True).click()
    await expect(page.locator("#confirm-text")).to_have_text(
        "Stop scaled? Every replica stops and its route is removed."
    )
    await page.get_by_role("button", name="Cancel", exact=True).click()
    await expect(page.locator("#confirm")).to_be_hidden()
    assert (await served.store.get_endpoint("scaled")).desired_state.runs

    await page.locator("#replicas").fill("5")
    await page.get_by_role("button", name="Scale", exact=True).click()
    await expect(page.locator("#confirm-text")).to_have_text("Scale scaled to 5 replicas?")
    await page.get_by_role("button", name="Confirm", exact=True).click()

    await expect(page.locator("#action-result")).to_have_text("scale: done")
    stored = await served.store.get_endpoint("scaled")
    assert (stored.spec.replicas, stored.revision) == (5, 2)
    await expect(page.locator("#details-name")).to_have_text(
        "scaled: running, generation 2, revision 2"
    )


@pytest.mark.slow(seconds=8)  # the server gives the open stream 5 s to end
async def test_the_stream_shows_down_while_the_server_is_away_then_resumes(
    fleet: Fleet, browser: Browser
) -> None:
    await fleet.endpoint("steady", regions=("eu-west",), replicas=1)
    async with running_api(fleet.store) as (url, _):
        fleet.url = url
        page = await open_dashboard(browser, fleet, Role.VIEWER)
        await expect(cell(page, "steady", "eu-west").locator(".replicas")).to_have_text("0/1 ready")
    port = int(url.rsplit(":", 1)[1])

    await expect(page.locator("#stream")).to_have_attribute("data-state", "down")
    await expect(page.locator("#stream")).to_contain_text("stream down")
    await fleet.service.scale("steady", 2)

    async with running_api(fleet.store, port=port):
        await expect(page.locator("#stream")).to_have_attribute("data-state", "live")
        await expect(cell(page, "steady", "eu-west").locator(".replicas")).to_have_text("0/2 ready")
        await page.close()  # else the server gives its open stream 5 s to end


@pytest.mark.slow(seconds=8)
async def test_when_the_feed_moved_on_while_away_the_page_lists_again(
    fleet: Fleet, browser: Browser
) -> None:
    """A purge the page could not resume past (the feed dropped it) still shows."""
    await fleet.endpoint("kept", regions=("eu-west",))
    await fleet.endpoint("gone", regions=("eu-west",))
    async with running_api(fleet.store) as (url, _):
        fleet.url = url
        page = await open_dashboard(browser, fleet, Role.VIEWER)
        await expect(page.locator("#grid tbody tr")).to_have_count(2)
    await expect(page.locator("#stream")).to_have_attribute("data-state", "down")

    fleet.store.feed_retention = 2  # type: ignore[attr-defined]  # SQLite's, as in test_watch
    gone = await fleet.store.get_endpoint("gone")
    await fleet.store.purge_endpoint("gone", expected_revision=gone.revision)
    for replicas in (2, 3, 4):
        await fleet.service.scale("kept", replicas)

    async with running_api(fleet.store, port=int(url.rsplit(":", 1)[1])):
        await expect(page.locator("#grid tbody tr")).to_have_count(1)
        await expect(cell(page, "kept", "eu-west").locator(".replicas")).to_have_text("0/4 ready")
        await expect(page.locator("#stream")).to_have_attribute("data-state", "live")
        await page.close()
