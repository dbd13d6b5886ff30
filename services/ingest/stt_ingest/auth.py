"""API key authentication: `X-API-Key` (or `Authorization: Bearer <key>`, the form OpenAI's SDK and most
HTTP tooling send), looked up by its SHA-256 and compared in constant time.

Every job query is scoped by the returned principal's key id, so another key's job is simply not
found (404), never "forbidden" (403), which would confirm that the id exists.

Lookups are cached per process for STT_API_KEY_CACHE_SECONDS (`keys.KeyCache`: only active keys,
bounded, one read per key however many requests wait for it): a poller's GET then costs no key
query. Revocation reaches the cache by a Postgres notification on the pool's connections (each
listens from its first checkout after the cache exists), and at the latest when the entry expires.
"""

from __future__ import annotations

import uuid
import weakref
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from stt_common.apikeys import hash_api_key, keys_match
from stt_common.db.models import ApiKey
from stt_ingest.keys import REVOKED_CHANNEL, KeyCache, on_revocation_notice
from stt_ingest.problems import ApiProblem
from stt_ingest.state import AppState, app_state

API_KEY_HEADER = "X-API-Key"
_MAX_KEY_LENGTH = 256

api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="An API key made with `python -m stt_ingest keys create`.",
)
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="The same API key as a bearer token: `Authorization: Bearer <key>`.",
)


@dataclass(frozen=True)
class Principal:
    key_id: uuid.UUID
    name: str
    tenant: str
    rate_limit_per_minute: int | None


_CHALLENGE = {"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}", Bearer'}


async def authenticate(state: AppState, presented: str | None) -> Principal:
    if not presented:
        raise ApiProblem(
            401,
            "unauthenticated",
            f"Send an API key in the {API_KEY_HEADER} header (or as `Authorization: Bearer <key>`).",
            headers=_CHALLENGE,
        )
    if len(presented) > _MAX_KEY_LENGTH:
        raise ApiProblem(401, "invalid_api_key", "The API key is not valid.", headers=_CHALLENGE)
    digest = hash_api_key(presented)

    async def lookup() -> Principal | None:
        async with state.sessionmaker() as session:
            row = await session.scalar(
                select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
            )
        # The lookup is by hash; the constant-time comparison guards against anything that would
        # let the index lookup's timing or a collision stand in for a real match. Only a key that
        # passed it is cached (under the same hash).
        if row is None or not keys_match(presented, row.key_hash):
            return None
        return Principal(
            key_id=row.id, name=row.name, tenant=row.tenant, rate_limit_per_minute=row.rate_limit_per_minute
        )

    principal = await key_cache(state).get(digest, lookup)
    if principal is None:
        raise ApiProblem(401, "invalid_api_key", "The API key is not valid.", headers=_CHALLENGE)
    structlog.contextvars.bind_contextvars(api_key_id=str(principal.key_id), tenant=principal.tenant)
    return principal


# One cache per engine, i.e. per running app (tests run several apps in one process), made on first
# use and gone with the engine. `keys.revoke_key` and the notification listener reach every cache
# of the process through the registry in `keys`, whatever app it belongs to.
_CACHES: weakref.WeakKeyDictionary[AsyncEngine, KeyCache[Principal]] = weakref.WeakKeyDictionary()
_LISTENING = "stt_api_key_revocations"  # connection_record.info flag: this connection listens


def key_cache(state: AppState) -> KeyCache[Principal]:
    """This app's cache of key lookups (made on first use, with the pool's revocation listener)."""
    cache = _CACHES.get(state.engine)
    if cache is None:
        cache = KeyCache(state.settings.api_key_cache_seconds)
        _CACHES[state.engine] = cache
        if cache.enabled:
            event.listen(state.engine.sync_engine, "checkout", _listen_for_revocations)
    return cache


def _listen_for_revocations(dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
    """Pool `checkout` hook: a connection LISTENs for revocations from its first checkout on.

    Pooled connections wait idle between requests, which is when Postgres delivers notifications,
    so every replica with an open connection hears of a revocation within milliseconds. A connection
    replaced by the pool starts with an empty `info` and listens again at its next checkout."""
    if connection_record.info.get(_LISTENING):
        return
    # The hook runs in SQLAlchemy's greenlet, where run_async may await the driver (asyncpg).
    dbapi_connection.run_async(lambda driver: driver.add_listener(REVOKED_CHANNEL, on_revocation_notice))
    connection_record.info[_LISTENING] = True


async def current_principal(
    request: Request,
    api_key: Annotated[str | None, Depends(api_key_scheme)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    # `X-API-Key` wins when both are sent: it is this API's own header.
    return await authenticate(app_state(request), api_key or (bearer.credentials if bearer else None))


PrincipalDep = Annotated[Principal, Depends(current_principal)]
