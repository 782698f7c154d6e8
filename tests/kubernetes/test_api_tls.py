"""Applies over TLS, as on a real cluster: the test API server serves https with a
certificate signed by a CA made here, and the kubeconfig carries that CA
(`certificate-authority-data`), the name the certificate holds
(`tls-server-name`) and the user's credentials, a token or a client certificate
(as kind, minikube and kubeadm clusters give their admin). Applies go on
servefleet's own HTTP/1.1 client (`transport.py`), which must speak TLS exactly as
the client's aiohttp session does for the other requests."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient

from servefleet.runtime.base import RuntimeUnavailable
from servefleet.runtime.kubernetes.api import ClusterApi, make_api_client
from servefleet.runtime.kubernetes.cluster import KubernetesRuntime
from servefleet.runtime.kubernetes.render import ObjectRef
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from tests.kubeapi import KubeApiServer
from tests.kubernetes.conftest import FAST
from tests.kubernetes.test_cluster import planned
from tests.tls import Authority

SERVER_NAME = "kube-apiserver.test"
"""The only name the server's certificate holds: not the address dialled."""


def write_kubeconfig(
    server: KubeApiServer, path: Path, trusted: Authority, user: dict[str, str]
) -> Path:
    """A kubeconfig of `server` trusting `trusted`'s certificates, as `user`."""
    kubeconfig = server.kubeconfig("llm")
    cluster = kubeconfig["clusters"][0]["cluster"]
    cluster["certificate-authority-data"] = trusted.data()
    cluster["tls-server-name"] = SERVER_NAME
    kubeconfig["users"][0]["user"] = user
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


async def runtime_client(kubeconfig: Path) -> ApiClient:
    """The client the runtime makes of `kubeconfig` (`KubernetesRuntime.from_kubeconfig`)."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return make_api_client(configuration)


@asynccontextmanager
async def https_server(
    authority: Authority, *, client_certificates: bool = False
) -> AsyncIterator[KubeApiServer]:
    certificate = authority.issue("kube-apiserver", names=(f"DNS:{SERVER_NAME}",))
    tls = authority.server_context(certificate, client_certificates=client_certificates)
    async with KubeApiServer(tls=tls) as server:
        yield server


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "llm"},
        "spec": {"ports": [{"port": 80}]},
    }


async def apply_services(api: ClusterApi, *names: str) -> None:
    for name in names:
        ref = ObjectRef("v1", "Service", "llm", name)
        await api.apply(ref, service(name), "servefleet", force=True)


async def test_applies_go_over_tls_on_servefleet_s_own_client(tmp_path: Path) -> None:
    """The kubeconfig's CA, certificate name and token on two applies; the
    client's own session is closed first, so they cannot have gone on it."""
    authority = Authority.make(tmp_path / "ca")
    async with https_server(authority) as server:
        kubeconfig = write_kubeconfig(
            server, tmp_path / "kubeconfig", authority, {"token": "t0k3n"}
        )
        api_client = await runtime_client(kubeconfig)
        api = ClusterApi("r1", "llm", api_client, FAST)
        try:
            await api_client.rest_client.pool_manager.close()
            await apply_services(api, "first", "second")
        finally:
            await api.close()
            await api_client.close()

    applies = [info for info in server.request_log if info.verb == "patch"]
    assert [(info.name, info.authorization) for info in applies] == [
        ("first", "Bearer t0k3n"),
        ("second", "Bearer t0k3n"),
    ]
    assert server.get_object("services", "llm", "second") is not None


async def test_a_server_whose_certificate_another_ca_signed_is_never_sent_an_apply(
    tmp_path: Path,
) -> None:
    """Verify that an apply to a server the kubeconfig does not trust fails with the
    certificate's failure named, after its retries, and reaches nothing."""
    authority, stranger = (
        Authority.make(tmp_path / "ca"),
        Authority.make(tmp_path / "other", "other"),
    )
    async with https_server(authority) as server:
        kubeconfig = write_kubeconfig(server, tmp_path / "kubeconfig", stranger, {"token": "t0k3n"})
        api_client = await runtime_client(kubeconfig)
        api = ClusterApi("r1", "llm", api_client, FAST)
        try:
            with pytest.raises(RuntimeUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await apply_services(api, "llm")
        finally:
            await api.close()
            await api_client.close()

    assert server.request_log == []


async def test_a_cluster_that_authenticates_users_by_client_certificate(tmp_path: Path) -> None:
    """The whole runtime (lists and watches on the client's session, applies on
    servefleet's client) on a server that requires a client certificate its CA
    signed, as kind's and minikube's do of their admin."""
    authority = Authority.make(tmp_path / "ca")
    certificate, key = authority.issue("kubernetes-admin", client=True).data()
    user = {"client-certificate-data": certificate, "client-key-data": key}
    async with https_server(authority, client_certificates=True) as server:
        kubeconfig = write_kubeconfig(server, tmp_path / "kubeconfig", authority, user)
        runtime = await KubernetesRuntime.from_kubeconfig(
            "r1", RegionSettings(namespace="llm"), kubeconfig, cluster=FAST
        )
        async with runtime:
            await runtime.apply(planned())

    applied = {(info.resource, info.name) for info in server.request_log if info.verb == "patch"}
    assert ("deployments", "llm") in applied
    assert ("services", "llm") in applied
    assert server.count("watch") > 0  # the session spoke TLS with the certificate too


async def test_the_client_keeps_the_kubeconfig_s_tls_context_where_applies_take_it(
    tmp_path: Path,
) -> None:
    """`transport.py` takes the TLS context kubernetes-asyncio built from the
    kubeconfig from a private attribute of its session's connector (there is no
    public one): an upgrade that moves it fails here first."""
    authority = Authority.make(tmp_path / "ca", "kubeconfig-ca")
    async with https_server(authority) as server:
        kubeconfig = write_kubeconfig(server, tmp_path / "kubeconfig", authority, {})
    api_client = await runtime_client(kubeconfig)
    try:
        context = api_client.rest_client.pool_manager.connector._ssl  # type: ignore[union-attr]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED
        subjects = [ca["subject"] for ca in context.get_ca_certs()]
        assert ((("commonName", "kubeconfig-ca"),),) in subjects  # the kubeconfig's CA
    finally:
        await api_client.close()
