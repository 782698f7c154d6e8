"""`servefleet import --from-gco-table TABLE`: endpoints of the reference design's
DynamoDB table become servefleet endpoints.

Each item is reported as `created`, `skipped` (the name exists already, or the item
was deleted there) or `rejected` with the reason, and the command exits 1 if any
was rejected. Target regions must be registered first (`servefleet regions add`):
an item naming an unknown region is rejected with the registered ones listed, since
the kind and settings of a region cannot be guessed from its name.
"""

from __future__ import annotations

from typing import Annotated

import typer

from servefleet.cli.app import app, state
from servefleet.cli.connect import run_on_fleet
from servefleet.cli.fleet import Fleet
from servefleet.cli.output import fail, out
from servefleet.gco import Skipped, endpoint_name, to_manifest
from servefleet.service import OperationRefused
from servefleet.spec import InvalidInput
from servefleet.store import EndpointNotFound


async def _import_one(fleet: Fleet, item: dict[str, object]) -> tuple[str, str]:
    try:
        manifest = to_manifest(item)
    except Skipped as skipped:
        return "skipped", str(skipped)
    except InvalidInput as error:
        return "rejected", "; ".join(error.problems)
    name = manifest.metadata.name
    try:
        await fleet.get(name)
        return "skipped", "already exists"
    except EndpointNotFound:
        pass
    try:
        await fleet.deploy(
            name, manifest.spec, manifest.regions, stopped=manifest.state == "stopped"
        )
    except InvalidInput as error:
        return "rejected", "; ".join(error.problems)
    except OperationRefused as refused:
        return "skipped", str(refused)
    return "created", ", ".join(manifest.regions or [])


@app.command(
    name="import",
    epilog="Examples:\n\n"
    "* `servefleet import --from-gco-table gco-inference-endpoints --gco-region us-east-1`\n\n"
    "* `SERVEFLEET_STORE='dynamodb://servefleet?region=us-east-1' servefleet import "
    "--from-gco-table gco-inference-endpoints` (region taken from the store URL)",
)
def import_endpoints(
    from_gco_table: Annotated[
        str,
        typer.Option(
            "--from-gco-table", help="The reference design's DynamoDB table of endpoints."
        ),
    ],
    gco_region: Annotated[
        str | None,
        typer.Option(help="AWS region of that table (default: the dynamodb:// store's)."),
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(help="DynamoDB endpoint URL (default: the dynamodb:// store's, if any)."),
    ] = None,
) -> None:
    """Create servefleet endpoints from the reference design's (GCO's) endpoint table."""
    # Imported here: botocore is a cost that the other commands need not pay.
    from servefleet.store.dynamodb_client import DynamoLocation
    from servefleet.store.dynamodb_table import parse_url, scan_items

    store: DynamoLocation | None = None
    if state.store_url.startswith("dynamodb://"):
        try:
            store = parse_url(state.store_url)
        except ValueError as error:
            fail(str(error))
    region = gco_region or (store.region if store else None)
    if not region:
        fail("--gco-region: the region of the table is required (the store is not dynamodb://)")
    url = endpoint_url or (store.endpoint_url if store else None)

    async def import_all(fleet: Fleet) -> list[tuple[str, str, str]]:
        items = await scan_items(from_gco_table, region=region, endpoint_url=url)
        items.sort(key=endpoint_name)
        return [(endpoint_name(item), *await _import_one(fleet, item)) for item in items]

    results = run_on_fleet(import_all)
    for name, outcome, detail in results:
        out.print(f"endpoint/{name} {outcome}: {detail}", markup=False)
    counts = {
        kind: sum(1 for _, outcome, _ in results if outcome == kind)
        for kind in ("created", "skipped", "rejected")
    }
    out.print(", ".join(f"{count} {kind}" for kind, count in counts.items()), markup=False)
    if counts["rejected"]:
        raise typer.Exit(1)
