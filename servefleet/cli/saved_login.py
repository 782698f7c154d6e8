"""The login `servefleet login` saves: the API's URL and a token, in one JSON file in
the user's config directory (`$XDG_CONFIG_HOME/servefleet/login.json`, else
`~/.config/servefleet/login.json` on Linux), readable by the user alone.

The file is written whole to a new file created with mode 0600 (never widened and
then narrowed, so no other user can open it in between), then renamed over the old
one; its directory is created with mode 0700. Plain files, read and written by the
verbs before and after their event loop runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

__all__ = ["SavedLogin", "forget", "load", "login_path", "save"]


@dataclass(frozen=True)
class SavedLogin:
    server: str
    token: str


def login_path() -> Path:
    return platformdirs.user_config_path("servefleet") / "login.json"


def load() -> SavedLogin | None:
    """The saved login; None if there is none. A file that is not one is a
    ValueError naming it."""
    path = login_path()
    try:
        document = json.loads(path.read_text())
        return SavedLogin(server=str(document["server"]), token=str(document["token"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: not a saved login ({error}); run `servefleet login URL` again, or "
            "`servefleet logout` to remove it"
        ) from None


def save(login: SavedLogin) -> Path:
    path = login_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600, exclusively.
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    written = Path(name)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump({"server": login.server, "token": login.token}, file)
        os.replace(written, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            written.unlink()
        raise
    return path


def forget() -> bool:
    """Remove the saved login; whether there was one."""
    try:
        login_path().unlink()
    except FileNotFoundError:
        return False
    return True
