"""The dashboard: one page, its script and its style, served at `/` without a token.

None of the three holds a record. The page asks for a token, keeps it in the tab's
`sessionStorage` (never in the URL), and reads everything through the API with it
like any other client: `/v1/whoami` for the role (which decides the buttons shown),
`/v1/endpoints` and `/v1/watch` for the grid, the endpoint verbs for the actions.
Plain files with no build step and nothing from another origin; the
Content-Security-Policy below lets the page load only them and talk only to this
server, so a value that slipped past the script's escaping could still not run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from fastapi import APIRouter, Response

__all__ = ["DASHBOARD_PATHS", "router"]

_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
DASHBOARD_PATHS = frozenset(_FILES)

_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated each time, so an upgraded server's page is the one shown.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _file_route(file: str, media_type: str) -> Callable[[], Awaitable[Response]]:
    body = (resources.files("servefleet.api") / "static" / file).read_bytes()

    async def serve() -> Response:
        return Response(body, media_type=media_type, headers=_HEADERS)

    return serve


for _path, (_file, _media_type) in _FILES.items():
    router.get(_path, name=_file)(_file_route(_file, _media_type))
