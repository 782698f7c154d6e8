"""`servefleet login URL` and `logout`: real processes whose home and config
directories are the test's own, against a real API (uvicorn on loopback, over
SQLite). The token is checked before it is saved, saved readable by the user alone,
never printed; the verbs then go through that API with no --server; flags and
variables still win, and the commands on the store ignore the login."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servefleet.spec import Role
from tests.cli.test_api_mode import Fleet, running_fleet
from tests.cli.test_cli import Result


class User:
    """A user of this machine: a home, a config and a data directory of their own."""

    def __init__(self, fleet: Fleet, root: Path) -> None:
        self.fleet = fleet
        self.home = root / "home"
        self.config = root / "config"
        self.data = root / "data"
        self.home.mkdir()

    @property
    def login_file(self) -> Path:
        return self.config / "servefleet" / "login.json"

    @property
    def default_store(self) -> Path:
        return self.data / "servefleet" / "store.db"

    async def run(
        self, *args: str, stdin: str | None = None, env: dict[str, str | None] | None = None
    ) -> Result:
        """`servefleet *args` as this user, with no servefleet variable set but `env`."""
        return await self.fleet.run(
            *args,
            stdin=stdin,
            env={
                "HOME": str(self.home),
                "XDG_CONFIG_HOME": str(self.config),
                "XDG_DATA_HOME": str(self.data),
                "XDG_STATE_HOME": str(self.home / "state"),
                "SERVEFLEET_STORE": None,
                **(env or {}),
            },
        )

    async def login(self, role: Role = Role.DEPLOYER) -> Result:
        return await self.run("login", self.fleet.url, stdin=self.fleet.tokens[role] + "\n")


@pytest.fixture
async def user(tmp_path: Path) -> AsyncIterator[User]:
    async with running_fleet(tmp_path) as fleet:
        yield User(fleet, tmp_path)


def _printed(result: Result) -> str:
    return result.stdout + result.stderr


async def test_login_checks_the_token_saves_it_for_the_user_alone_and_the_verbs_use_it(
    user: User,
) -> None:
    logged_in = await user.login(Role.DEPLOYER)

    assert (logged_in.code, logged_in.stderr) == (0, ""), logged_in
    assert logged_in.stdout == (
        f"logged in to {user.fleet.url} as token 'deployer-token' (deployer); "
        f"saved in {user.login_file}\n"
    )
    assert user.fleet.tokens[Role.DEPLOYER] not in _printed(logged_in)
    assert stat.S_IMODE(user.login_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(user.login_file.parent.stat().st_mode) == 0o700
    assert json.loads(user.login_file.read_text()) == {
        "server": user.fleet.url,
        "token": user.fleet.tokens[Role.DEPLOYER],
    }

    listed = await user.run("regions", "list", "-o", "json")
    deployed = await user.run("deploy", "m1", "--image", "ghcr.io/org/server:1.0", "-r", "r1")
    refused = await user.run("regions", "add", "r9")

    assert [region["name"] for region in listed.json()] == ["r1", "r2", "r3"]
    assert deployed.code == 0, deployed
    assert (await user.fleet.store.get_endpoint("m1")).target_regions == ["r1"]
    assert (refused.code, refused.stderr) == (
        1,
        f"error: the API at {user.fleet.url} refused the request: token 'deployer-token' "
        "has role deployer; this needs admin\n",
    )
    assert not user.default_store.exists(), "a verb opened the default store"


async def test_a_token_the_api_refuses_is_not_saved_and_not_printed(user: User) -> None:
    bad = "sf1.someone.not-a-secret-anyone-has"

    by_flag, by_stdin, empty = (
        await user.run("login", user.fleet.url, "--token", bad),
        await user.run("login", user.fleet.url, stdin=bad + "\n"),
        await user.run("login", user.fleet.url, stdin="\n"),
    )

    refused = (
        f"error: the API at {user.fleet.url} refused the request: the token is unknown or "
        "revoked (give a token with --token or SERVEFLEET_TOKEN, or `servefleet login`)\n"
    )
    assert (by_flag.code, by_flag.stdout, by_flag.stderr) == (1, "", refused)
    assert (by_stdin.code, by_stdin.stdout, by_stdin.stderr) == (1, "", refused)
    assert (empty.code, empty.stderr) == (
        1,
        "error: --token: no token given (pass --token, set SERVEFLEET_TOKEN or type it)\n",
    )
    assert not user.login_file.exists()
    assert bad.split(".")[2] not in _printed(by_flag) + _printed(by_stdin)


async def test_a_failed_login_keeps_the_earlier_one(user: User) -> None:
    await user.login(Role.VIEWER)

    unreachable = await user.run("login", "http://127.0.0.1:1", stdin="sf1.a.b\n")
    not_a_url = await user.run("login", "127.0.0.1:8000", stdin="sf1.a.b\n")

    assert (unreachable.code, unreachable.stdout) == (1, "")
    assert unreachable.stderr.startswith("error: cannot reach the API at http://127.0.0.1:1: ")
    assert (not_a_url.code, not_a_url.stderr) == (
        1,
        "error: URL: must be an http:// or https:// URL (got '127.0.0.1:8000')\n",
    )
    assert json.loads(user.login_file.read_text())["token"] == user.fleet.tokens[Role.VIEWER]


async def test_a_flag_beats_a_variable_which_beats_the_login(user: User) -> None:
    await user.login(Role.ADMIN)
    closed = "http://127.0.0.1:1"
    # The same server under another name: the saved token is not sent there.
    elsewhere = user.fleet.url.replace("127.0.0.1", "localhost")

    by_variable = await user.run("regions", "list", env={"SERVEFLEET_SERVER": closed})
    by_flag = await user.run(
        "--server", user.fleet.url, "regions", "list", env={"SERVEFLEET_SERVER": closed}
    )
    other_token = await user.run(
        "regions", "list", env={"SERVEFLEET_TOKEN": user.fleet.tokens[Role.VIEWER]}
    )
    other_server = await user.run("--server", elsewhere, "regions", "list")
    store_named = await user.run("--store", str(user.default_store), "regions", "list")

    assert by_variable.stderr.startswith(f"error: cannot reach the API at {closed}: ")
    assert by_flag.code == 0, by_flag  # with the saved token: the same server
    assert other_token.code == 0, other_token
    assert (other_server.code, other_server.stderr) == (
        1,
        f"error: the API at {elsewhere} refused the request: send a token as "
        "`Authorization: Bearer TOKEN` (give a token with --token or SERVEFLEET_TOKEN, or "
        "`servefleet login`)\n",
    )
    assert store_named.code == 0, store_named
    assert user.default_store.exists(), "--store did not win over the login"


async def test_the_commands_on_the_store_ignore_the_login(user: User) -> None:
    await user.login(Role.ADMIN)

    init = await user.run("store", "init")
    tokens = await user.run("tokens", "list", "-o", "json")
    serve = await user.run("serve", "--host", "0.0.0.0", "--port", "0")

    assert init.code == 0, init
    assert (tokens.code, tokens.json()) == (0, [])  # the default store's, not the API's
    assert serve.code == 1
    assert "TLS" in serve.stderr, serve  # refused for its own reason, not for --server


async def test_logout_forgets_the_login_and_the_verbs_use_the_store_again(user: User) -> None:
    await user.login()

    logged_out = await user.run("logout")
    again = await user.run("logout")
    listed = await user.run("regions", "list", "-o", "json")

    assert (logged_out.code, logged_out.stdout) == (0, f"logged out: removed {user.login_file}\n")
    assert (again.code, again.stdout) == (
        0,
        f"not logged in ({user.login_file} does not exist)\n",
    )
    assert not user.login_file.exists()
    assert (listed.code, listed.json()) == (0, [])
    assert user.default_store.exists()


async def test_a_damaged_login_file_is_named(user: User) -> None:
    user.login_file.parent.mkdir(parents=True)
    user.login_file.write_text("{not json")

    listed = await user.run("regions", "list")
    logged_out = await user.run("logout")

    assert (listed.code, listed.stdout) == (1, "")
    assert listed.stderr.startswith(f"error: {user.login_file}: not a saved login ("), listed
    assert listed.stderr.endswith(
        "run `servefleet login URL` again, or `servefleet logout` to remove it\n"
    )
    assert logged_out.code == 0
    assert not user.login_file.exists()


async def test_a_login_that_cannot_be_saved_is_one_line(user: User) -> None:
    user.config.write_text("")  # a file where the config directory goes

    result = await user.login()

    assert (result.code, result.stdout) == (1, "")
    assert result.stderr.startswith(f"error: {user.login_file}: cannot save the login: "), result
    assert len(result.stderr.splitlines()) == 1, result
