"""typer's CliRunner for tests that run servefleet's command line in this process.

typer's own runner builds the click command tree from the Typer app on every
`invoke`: about 0.13 s of CPU for servefleet's app, ten times what a verb on a
SQLite store takes, and most of the property tests' time. The tree depends only
on the app's declarations (a process builds it once too), so this runner builds
it once per app and runs every invocation on it; everything else is typer's.
"""

from __future__ import annotations

from functools import cache
from typing import Any
from unittest import mock

import typer.main
import typer.testing
from typer import Typer
from typer.testing import Result

__all__ = ["CliRunner"]

_command_of = cache(typer.main.get_command)


class CliRunner(typer.testing.CliRunner):
    def invoke(self, app: Typer, *args: Any, **kwargs: Any) -> Result:
        with mock.patch.object(typer.testing, "_get_command", _command_of):
            return super().invoke(app, *args, **kwargs)
