"""A canary version beside the primary one: adding it, promoting it, rolling it back."""

from __future__ import annotations

from typing import Any

from servefleet.service.records import EndpointRecords, revise_spec, with_spec
from servefleet.service.refusals import OperationRefused
from servefleet.spec import CanarySpec, Endpoint

__all__ = [
    "CanaryOperations",
]


class CanaryOperations(EndpointRecords):
    """Adding or changing a canary version, promoting it, or removing it."""

    async def canary(
        self,
        name: str,
        *,
        image: str | None = None,
        weight: int | None = None,
        replicas: int | None = None,
        command: list[str] | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        expected_revision: int | None = None,
    ) -> Endpoint:
        """Add a canary version, or change the one there is.

        The canary runs the primary's env with its own `env` laid over it; `env`
        adds or overrides keys of that overlay and keeps the ones set before, as
        `update_image(region=...)` does with per-region images.
        """
        given = {
            key: value
            for key, value in {
                "image": image,
                "weight": weight,
                "replicas": replicas,
                "command": command,
                "args": args,
                "env": env,
            }.items()
            if value is not None
        }

        def set_canary(current: Endpoint) -> Endpoint:
            existing = current.spec.canary
            if existing is None and not given.keys() & {"image", "command", "args", "env"}:
                raise OperationRefused(
                    f"canary.image: {name!r} has no canary yet; give the new version's image "
                    "(or its command, args or env)"
                )
            canary = (existing.model_dump() if existing else {}) | given
            if env is not None and existing is not None:
                canary["env"] = {**existing.env, **env}
            return with_spec(current, revise_spec(current.spec, canary=canary))

        return await self._mutate(name, set_canary, expected_revision)

    async def promote(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        """Make the canary version the primary one and remove the canary."""

        def promote(current: Endpoint) -> Endpoint:
            canary = _require_canary(current, "promote")
            changes: dict[str, Any] = {"canary": None, "env": {**current.spec.env, **canary.env}}
            for field in ("image", "command", "args"):
                if getattr(canary, field) is not None:
                    changes[field] = getattr(canary, field)
            return with_spec(current, revise_spec(current.spec, **changes))

        return await self._mutate(name, promote, expected_revision)

    async def rollback(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        """Remove the canary; all traffic goes back to the primary version."""

        def rollback(current: Endpoint) -> Endpoint:
            _require_canary(current, "roll back")
            return with_spec(current, revise_spec(current.spec, canary=None))

        return await self._mutate(name, rollback, expected_revision)


def _require_canary(endpoint: Endpoint, verb: str) -> CanarySpec:
    if endpoint.spec.canary is None:
        raise OperationRefused(f"canary: {endpoint.name!r} has no canary to {verb}")
    return endpoint.spec.canary
