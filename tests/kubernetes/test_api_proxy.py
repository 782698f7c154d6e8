"""Behind a proxy (a kubeconfig's `proxy-url`, or the environment's), applies go
on the client's aiohttp session, which speaks to the proxy; servefleet's own
client does not (`transport.py`). A forward proxy of the test's own relays the
absolute-form requests it gets to the test API server and records them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from kubernetes_asyncio import client, config

from servefleet.runtime.kubernetes.api import ClusterApi, make_api_client
from servefleet.runtime.kubernetes.render import ObjectRef
from tests.kubeapi import KubeApiServer
from tests.kubernetes.conftest import FAST

_NOT_RELAYED = frozenset({"host", "content-length", "connection", "proxy-connection"})


@asynccontextmanager
async def forward_proxy(relayed: list[tuple[str, str]]) -> AsyncIterator[str]:
    """An HTTP forward proxy on loopback (its URL) that appends (method, URL) of
    every request it relays to `relayed`."""
    async with aiohttp.ClientSession(auto_decompress=False) as onward:

        async def relay(request: web.Request) -> web.Response:
            relayed.append((request.method, str(request.url)))
            headers = {
                name: value
                for name, value in request.headers.items()
                if name.lower() not in _NOT_RELAYED
            }
            async with onward.request(
                request.method, request.url, headers=headers, data=await request.read()
            ) as answer:
                return web.Response(
                    status=answer.status,
                    body=await answer.read(),
                    headers={"Content-Type": answer.headers.get("Content-Type", "")},
                )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", relay)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()


async def test_applies_go_through_the_kubeconfig_s_proxy(tmp_path: Path) -> None:
    relayed: list[tuple[str, str]] = []
    async with KubeApiServer() as server, forward_proxy(relayed) as proxy:
        kubeconfig = server.kubeconfig("llm", token="t0k3n")
        kubeconfig["clusters"][0]["cluster"]["proxy-url"] = proxy
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(path), client_configuration=configuration)
        api_client = make_api_client(configuration)
        api = ClusterApi("r1", "llm", api_client, FAST)
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "llm", "namespace": "llm"},
            "spec": {"ports": [{"port": 80}]},
        }
        try:
            stored = await api.apply(
                ObjectRef("v1", "Service", "llm", "llm"), service, "servefleet", force=True
            )
        finally:
            await api.close()
            await api_client.close()

    assert stored["metadata"]["name"] == "llm"
    assert relayed == [
        (
            "PATCH",
            f"{server.url}/api/v1/namespaces/llm/services/llm?fieldManager=servefleet&force=true",
        )
    ]
    (applied,) = [info for info in server.request_log if info.verb == "patch"]
    assert applied.authorization == "Bearer t0k3n"
