"""API tokens in every store backend (SQLite, PostgreSQL, DynamoDB on moto), and
`TokenService` on top: only a salted hash is stored, and a revoked, unknown or
altered token is not recognised."""

from __future__ import annotations

import asyncpg
import pytest

from servefleet.spec import InvalidInput, Role
from servefleet.store import Store, TokenExists, TokenNotFound, open_store
from servefleet.store.postgres import SchemaMissing
from servefleet.store.sql import SCHEMA_VERSION
from servefleet.tokens import TokenService
from tests.conftest import EVERY_STORE, POSTGRES_URL


@EVERY_STORE
async def test_tokens_are_created_listed_and_revoked(store: Store) -> None:
    tokens = TokenService(store)
    ci, ci_secret = await tokens.create("ci", "deployer")
    admin, _ = await tokens.create("alice", "admin")

    assert await store.list_tokens() == [admin, ci]
    assert await store.get_token("ci") == ci
    assert ci.role is Role.DEPLOYER
    # The store never holds the token itself.
    assert ci_secret.split(".")[-1] not in ci.model_dump_json()

    await tokens.revoke("ci")

    assert await store.list_tokens() == [admin]
    with pytest.raises(TokenNotFound):
        await store.get_token("ci")
    with pytest.raises(TokenNotFound):
        await tokens.revoke("ci")


@EVERY_STORE
async def test_a_taken_name_is_refused_and_the_first_token_kept(store: Store) -> None:
    tokens = TokenService(store)
    first, secret = await tokens.create("ci", "viewer")

    with pytest.raises(TokenExists, match="token 'ci' already exists"):
        await tokens.create("ci", "admin")

    assert await store.list_tokens() == [first]
    assert await tokens.authenticate(secret) == first


@EVERY_STORE
async def test_only_a_live_unaltered_token_is_recognised(store: Store) -> None:
    tokens = TokenService(store)
    record, secret = await tokens.create("ci", "deployer")
    prefix, name, key = secret.split(".")

    assert await tokens.authenticate(secret) == record
    for presented in (
        f"{prefix}.{name}.{key[:-1]}",  # one character short
        f"{prefix}.{name}.{key}x",
        f"{prefix}.other.{key}",
        f"sf0.{name}.{key}",
        f"{prefix}.{name}",
        "",
        f"{prefix}.{'n' * 5000}.{key}",  # a name no token can have never reaches the store
    ):
        assert await tokens.authenticate(presented) is None, presented

    await tokens.revoke("ci")
    assert await tokens.authenticate(secret) is None
    # A new token of the same name does not bring the revoked one back.
    await tokens.create("ci", "deployer")
    assert await tokens.authenticate(secret) is None


@EVERY_STORE
async def test_a_bad_name_or_role_is_refused_naming_the_field(store: Store) -> None:
    with pytest.raises(InvalidInput) as refused:
        await TokenService(store).create("Not A Name", "root")

    assert [problem.field for problem in refused.value.details] == ["name", "role"]
    assert refused.value.problems[1] == (
        "role: must be 'viewer', 'deployer' or 'admin' (got 'root')"
    )
    assert await store.list_tokens() == []


@pytest.mark.postgres
async def test_store_init_migrates_a_schema_from_before_tokens() -> None:
    """A PostgreSQL schema made before tokens existed (version 1) is refused with the
    way out, and `store init` adds the token table."""
    schema = "t_tokens_migration"
    url = f"{POSTGRES_URL}?schema={schema}"
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await (await open_store(url, init=True)).close()
        await connection.execute(f'DROP TABLE "{schema}".api_tokens')
        await connection.execute(f'UPDATE "{schema}".servefleet_schema SET version = 1')

        with pytest.raises(SchemaMissing, match=r"is at version 1.*run `servefleet store init`"):
            await open_store(url)
        store = await open_store(url, init=True)
        try:
            _, secret = await TokenService(store).create("ci", "viewer")
            assert await TokenService(store).authenticate(secret) is not None
        finally:
            await store.close()
        version = await connection.fetchval(f'SELECT version FROM "{schema}".servefleet_schema')
        assert version == SCHEMA_VERSION == 2
    finally:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()
