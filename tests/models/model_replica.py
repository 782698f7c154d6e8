"""A replica that needs a model: at start it reads every file of `--model` (the
runtime passes "{model_dir}") and then serves, on `--port`:

- `GET /health`: 200.
- anything else: JSON `{"model_dir", "env_model_dir", "files": {path: sha256}}`, what
  it found at start (hidden files, such as staging's stamp, left out).

Standard library only; it starts in well under a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True)
    options = parser.parse_args()
    files = {
        path.relative_to(options.model).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(options.model.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }
    seen = json.dumps(
        {
            "model_dir": str(options.model),
            "env_model_dir": os.environ.get("SERVEFLEET_MODEL_DIR"),
            "files": files,
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = b'{"status": "ok"}' if self.path == "/health" else seen
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

    ThreadingHTTPServer(("127.0.0.1", options.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
