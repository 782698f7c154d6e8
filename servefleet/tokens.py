"""API tokens: minting, listing, revoking, and recognising a presented one.

A token reads `sf1.<name>.<secret>`: the name says which record to check, the
secret is 32 bytes from `secrets` (256 bits, base64url). The store keeps only a
per-token random salt and sha256(salt + secret), compared with
`hmac.compare_digest` so the time taken says nothing about how much matched.

Why sha256 and not scrypt or PBKDF2: a slow hash protects *guessable* secrets
(passwords) by making each guess expensive. A 256-bit random secret cannot be
guessed at any cost, so slowness would buy nothing and would make every API
request pay tens of milliseconds of CPU, which also hands an attacker a cheap way
to load the server. The salt keeps equal secrets from having equal digests and
rules out precomputed tables.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime

from pydantic import TypeAdapter, ValidationError

from servefleet.service import utc_now
from servefleet.spec import ApiToken, Rfc1123Label, invalid_input
from servefleet.store import Store, TokenNotFound

__all__ = ["TokenService"]

_PREFIX = "sf1"
_SECRET_BYTES = 32
_SALT_BYTES = 16
_TOKEN_NAME: TypeAdapter[str] = TypeAdapter(Rfc1123Label)


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class TokenService:
    def __init__(self, store: Store, clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._clock = clock

    async def create(self, name: str, role: str) -> tuple[ApiToken, str]:
        """A new token: its record, and the token itself, which is shown this once."""
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        salt = secrets.token_hex(_SALT_BYTES)
        try:
            record = ApiToken.model_validate(
                {
                    "name": name,
                    "role": role,
                    "salt": salt,
                    "digest": _digest(salt, secret),
                    "created_at": self._clock(),
                }
            )
        except ValidationError as error:
            raise invalid_input(error) from None
        await self._store.create_token(record)
        return record, f"{_PREFIX}.{name}.{secret}"

    async def list(self) -> list[ApiToken]:
        return await self._store.list_tokens()

    async def revoke(self, name: str) -> None:
        await self._store.delete_token(name)

    async def authenticate(self, presented: str) -> ApiToken | None:
        """The token's record, or None for anything that is not a live token."""
        prefix, _, rest = presented.partition(".")
        name, _, secret = rest.partition(".")
        if prefix != _PREFIX or not secret:
            return None
        try:
            # Checked first: a name no token can have (a megabyte, say) never reaches the store.
            record = await self._store.get_token(_TOKEN_NAME.validate_python(name))
        except (ValidationError, TokenNotFound):
            return None
        if not hmac.compare_digest(_digest(record.salt, secret), record.digest):
            return None
        return record
