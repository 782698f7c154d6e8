"""A test API server (`tests.kubeapi.KubeApiServer`) in a process of its own:

    python -m bench.kubeapi_host KUBECONFIG NAMESPACE --latency S --auto-ready S [--max-in-flight N]

writes a kubeconfig for it, says `{"url": ..., "kubeconfig": ...}`, then answers
`counts` (requests by verb and by verb + resource, open watches, its own CPU and
memory) and `reset` (start counting afresh). See `bench.child`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from typing import Any

from bench.child import count_collections, die_with_parent, own_usage, serve_commands
from servefleet.collector import pace_for_a_server
from servefleet.runtime.local.gateway import event_loop_factory
from tests.kubeapi import KubeApiServer


def _counts(kube: KubeApiServer) -> dict[str, Any]:
    by_verb: Counter[str] = Counter()
    for (verb, _resource), count in kube.requests.items():
        by_verb[verb] += count
    return {
        "by_verb": dict(sorted(by_verb.items())),
        "by_verb_resource": {f"{v} {r}": n for (v, r), n in sorted(kube.requests.items())},
        "open_watches": kube.open_watches,
        "refused_in_flight": kube.refused_in_flight,
        **own_usage(),
    }


async def main(options: argparse.Namespace) -> None:
    async with KubeApiServer(auto_ready=options.auto_ready) as kube:
        if options.latency > 0:
            kube.add_latency(options.latency)
        kube.max_in_flight = options.max_in_flight
        path = kube.write_kubeconfig(options.kubeconfig, options.namespace)

        async def handle(command: str) -> dict[str, Any]:
            if command == "reset":
                kube.reset_counts()
                kube.refused_in_flight = 0
                return {}
            if command == "counts":
                return _counts(kube)
            raise ValueError(f"unknown command {command!r}")

        await serve_commands({"url": kube.url, "kubeconfig": str(path)}, handle)


if __name__ == "__main__":
    die_with_parent()
    count_collections()
    pace_for_a_server()  # as servefleet's own servers
    parser = argparse.ArgumentParser(prog="python -m bench.kubeapi_host")
    parser.add_argument("kubeconfig")
    parser.add_argument("namespace")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--auto-ready", type=float, default=0.05)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="requests served at once; more are refused with 429 (as --max-requests-inflight)",
    )
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main(parser.parse_args()))
