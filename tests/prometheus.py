"""A real Prometheus for tests, scraping a stand-in ingress controller.

`IngressExporter` stands in for ingress-nginx's controller, which the test API server
does not have (nor would a cluster without ingress-nginx): it exposes, on loopback,
the two series ingress-nginx's controller exports per request —
`nginx_ingress_controller_requests` (named so exactly: the controller's Go client
adds no `_total`, which prometheus_client's Counter would) and
`nginx_ingress_controller_request_duration_seconds` (a histogram with Prometheus'
default buckets, as the controller's `--time-buckets` default) — labelled as the
controller labels them (`status`, `method`, `path`, `namespace`, `ingress`,
`service`, `canary`), and counts what the test says was answered: a request routed
to a canary carries the endpoint's Ingress and Service and, in `canary`, the canary
backend's upstream name (`<namespace>-<service>-<port>`), as ingress-nginx's Lua
balancer sets it.

`PrometheusServer` runs Debian's `prometheus` (scripts/test installs it) on a free
loopback port, scraping the exporter every second, with its storage in a temporary
directory; `prometheus_running` gives one per test module (start-up is about a
second); it logs every query it is asked (`PrometheusServer.queries_asked`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import Lock, Thread
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["IngressExporter", "PrometheusServer", "free_port", "prometheus_running"]

LABELS = ("status", "method", "path", "namespace", "ingress", "service", "canary")
PROMETHEUS = shutil.which("prometheus")


class _Requests(Collector):
    """`nginx_ingress_controller_requests`, a count per label set, by that very name."""

    NAME = "nginx_ingress_controller_requests"

    def __init__(self) -> None:
        self._lock = Lock()
        self._counts: dict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, labels: tuple[str, ...], count: int) -> None:
        with self._lock:
            self._counts[labels] += count

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.NAME, "The total number of client requests", "unknown")
        with self._lock:
            for labels, value in self._counts.items():
                metric.add_sample(self.NAME, dict(zip(LABELS, labels, strict=True)), value)
        yield metric


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Prometheus scrapes every second; the test's output need not list it."""


class IngressExporter:
    """The stand-in ingress controller's metrics, served on loopback (see the module)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = _Requests()
        self.registry.register(self.requests)
        self.duration = Histogram(
            "nginx_ingress_controller_request_duration_seconds",
            "The request processing time in milliseconds",
            LABELS,
            registry=self.registry,
        )
        self._server: WSGIServer | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def answered(
        self,
        namespace: str,
        ingress: str,
        service: str,
        *,
        canary: str = "",
        status: int = 200,
        seconds: float = 0.02,
        count: int = 1,
    ) -> None:
        """`count` requests through `ingress` answered `status` in `seconds`; `canary`:
        the canary backend's upstream they were sent to ("" for the main backend)."""
        labels = (str(status), "POST", "/", namespace, ingress, service, canary)
        self.requests.inc(labels, count)
        for _ in range(count):
            self.duration.labels(*labels).observe(seconds)

    @contextmanager
    def serving(self) -> Iterator[IngressExporter]:
        server = make_server("127.0.0.1", 0, make_wsgi_app(self.registry), handler_class=_Quiet)
        thread = Thread(target=server.serve_forever, name="ingress-exporter", daemon=True)
        thread.start()
        self._server = server
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


@dataclass
class PrometheusServer:
    url: str
    exporter: IngressExporter
    query_log: Path
    """Prometheus' own log of every query it was asked (`query_log_file`)."""

    def queries_asked(self) -> list[str]:
        """Every PromQL expression asked so far, in order (a line Prometheus is still
        writing, with no newline yet, is not one)."""
        if not self.query_log.exists():
            return []
        written, _, _ = self.query_log.read_text().rpartition("\n")
        lines = written.splitlines()
        return [json.loads(line)["params"]["query"] for line in lines if line.strip()]

    def query(self, promql: str) -> list[dict[str, object]]:
        """The instant vector `promql` gives now."""
        data = urllib.parse.urlencode({"query": promql}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/query", data, timeout=5) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        result: list[dict[str, object]] = body["data"]["result"]
        return result


def free_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def prometheus_running() -> Iterator[PrometheusServer]:
    """Prometheus scraping a fresh `IngressExporter` every second, once it is ready."""
    assert PROMETHEUS is not None, "prometheus is not installed (scripts/test installs it)"
    with (
        IngressExporter().serving() as exporter,
        tempfile.TemporaryDirectory(prefix="prometheus-") as directory,
    ):
        config = Path(directory) / "prometheus.yml"
        query_log = Path(directory) / "queries.log"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s, "
            f"query_log_file: '{query_log}'}}\n"
            "scrape_configs:\n"
            "  - job_name: ingress-nginx\n"
            f"    static_configs: [{{targets: ['{exporter.address}']}}]\n"
        )
        url = f"http://127.0.0.1:{free_port()}"
        log = (Path(directory) / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={Path(directory) / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            _wait_until_ready(process, url, Path(directory) / "prometheus.log")
            yield PrometheusServer(url, exporter, query_log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until Prometheus answers queries. Its first scrape comes about 5 s after its
    start (its scrape manager takes the discovered targets at that pace), which the
    tests need not wait for: the counts are cumulative."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"prometheus was not ready within 60 s:\n{log.read_text()}")
