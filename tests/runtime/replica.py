"""A tiny replica server for the local runtime's tests (standard library only).

It starts in well under 100 ms, so tests can start dozens of real processes, and it
dies at once on SIGTERM (Python's default), so a test notices when a replica is
stopped before its requests are answered. Routes:

- `GET /health`: 200, or 503 while `--unhealthy-file` exists.
- `GET /environ`: its whole environment, as a JSON object.
- `GET /hold?arrived=DIR&release=FILE`: touches a new file in DIR on arrival, then
  answers only once FILE exists; lets a test keep requests in flight.
- anything else: JSON describing the request and this process: version, pid, port,
  the `REPLICA_*` environment, method, path (with query) and body.

Every answer carries `x-demo-version`, like `python -m servefleet.demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", default="v1")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="before listening")
    parser.add_argument("--unhealthy-file", type=Path)
    options = parser.parse_args()
    time.sleep(options.startup_delay)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def _answer(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/health":
                unhealthy = options.unhealthy_file and options.unhealthy_file.exists()
                self._send(
                    503 if unhealthy else 200, {"status": "unhealthy" if unhealthy else "ok"}
                )
                return
            if url.path == "/environ":
                self._send(200, dict(os.environ))
                return
            if url.path == "/hold":
                query = parse_qs(url.query)
                (Path(query["arrived"][0]) / uuid.uuid4().hex).touch()
                release = Path(query["release"][0])
                while not release.exists():
                    time.sleep(0.01)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            self._send(
                200,
                {
                    "version": options.version,
                    "pid": os.getpid(),
                    "port": options.port,
                    "env": {k: v for k, v in os.environ.items() if k.startswith("REPLICA_")},
                    "method": self.command,
                    "path": self.path,
                    "body": body,
                },
            )

        def _send(self, status: int, document: object) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-demo-version", options.version)
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", options.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
