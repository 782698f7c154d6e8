"""`servefleet install-manifests`: what runs a kubernetes region's reconciler inside
its cluster."""

from __future__ import annotations

from typing import Annotated

import typer
import yaml
from pydantic import ValidationError

from servefleet.cli.app import app
from servefleet.cli.connect import run_on_fleet
from servefleet.cli.output import fail, out
from servefleet.spec import invalid_input

__all__ = ["install_manifests"]


@app.command(
    "install-manifests",
    epilog="Example: `kubectl create secret generic servefleet-store -n llm "
    "--from-literal=url=postgresql://...; servefleet install-manifests --region eu-west "
    "| kubectl apply -f -`",
)
def install_manifests(
    region: Annotated[str, typer.Option("--region", "-r", help="A registered kubernetes region.")],
    image: Annotated[str | None, typer.Option(help="The servefleet image to run.")] = None,
    namespace: Annotated[
        str | None,
        typer.Option(help="Where the reconciler runs (default: the region's namespace)."),
    ] = None,
    store_secret: Annotated[
        str, typer.Option(help="Secret holding the store URL (read into SERVEFLEET_STORE).")
    ] = "servefleet-store",
    store_secret_key: Annotated[str, typer.Option(help="Key of the URL in that Secret.")] = "url",
    create_namespace: Annotated[
        bool, typer.Option(help="Also render the reconciler's Namespace.")
    ] = False,
) -> None:
    """Print the manifests that run a region's reconciler inside its cluster: a
    ServiceAccount, a least-privilege Role and RoleBinding, and a Deployment."""
    from servefleet.cli.reconcile import cluster_regions
    from servefleet.runtime.kubernetes import install

    try:
        (registered,) = cluster_regions(run_on_fleet(lambda fleet: fleet.list_regions()), [region])
    except ValueError as error:
        fail(str(error))
    fields = {
        "image": image,
        "namespace": namespace or registered.namespace,
        "store_secret": store_secret,
        "store_secret_key": store_secret_key,
        "create_namespace": create_namespace,
    }
    try:
        options = install.InstallOptions.model_validate(
            {key: value for key, value in fields.items() if value is not None}
        )
    except ValidationError as error:
        fail(*invalid_input(error).problems)
    manifests = install.install_manifests(registered, options)
    out.print(yaml.safe_dump_all(manifests, sort_keys=False).rstrip("\n"), markup=False)
