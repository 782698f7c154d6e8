"""`/v1/regions`: list and read (viewer), register and remove (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from servefleet.api.auth import allow
from servefleet.api.context import Endpoints
from servefleet.api.errors import ERROR_RESPONSES
from servefleet.spec import Region, RegionName, Role

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["regions"], responses=ERROR_RESPONSES)

Name = Annotated[RegionName, Path(description="The region's name.")]


@router.get(
    "/regions",
    dependencies=[allow(Role.VIEWER)],
    summary="List regions (as `servefleet regions list -o json`)",
)
async def list_regions(endpoints: Endpoints) -> list[Region]:
    return await endpoints.list_regions()


@router.get("/regions/{name}", dependencies=[allow(Role.VIEWER)], summary="One region")
async def get_region(name: Name, endpoints: Endpoints) -> Region:
    return await endpoints.get_region(name)


@router.post(
    "/regions",
    dependencies=[allow(Role.ADMIN)],
    summary="Register a region, or replace its settings (as `servefleet regions add`)",
)
async def add_region(region: Region, endpoints: Endpoints) -> Region:
    await endpoints.add_region(region)
    return region


@router.post(
    "/regions/{name}/drain",
    dependencies=[allow(Role.ADMIN)],
    summary="No new request to the region from the global entry (as `servefleet regions drain`)",
)
async def drain_region(name: Name, endpoints: Endpoints) -> Region:
    return await endpoints.drain_region(name, drained=True)


@router.post(
    "/regions/{name}/undrain",
    dependencies=[allow(Role.ADMIN)],
    summary="Route to the region again (as `servefleet regions undrain`)",
)
async def undrain_region(name: Name, endpoints: Endpoints) -> Region:
    return await endpoints.drain_region(name, drained=False)


@router.delete(
    "/regions/{name}",
    dependencies=[allow(Role.ADMIN)],
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a region no endpoint targets",
)
async def remove_region(name: Name, endpoints: Endpoints) -> None:
    await endpoints.remove_region(name)
