"""API key authentication: `X-API-Key` (or `Authorization: Bearer <key>`, the form OpenAI's SDK and most
HTTP tooling send), looked up by its SHA-256 and compared in constant time.

Every job query is scoped by the returned principal's key id, so another key's job is simply not
found (404), never "forbidden" (403), which would confirm that the id exists.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from stt_common.apikeys import hash_api_key, keys_match
from stt_common.db.models import ApiKey
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
    async with state.sessionmaker() as session:
        row = await session.scalar(
            select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
        )
    # The lookup is by hash; the constant-time comparison guards against anything that would let
    # the index lookup's timing or a collision stand in for a real match.
    if row is None or not keys_match(presented, row.key_hash):
        raise ApiProblem(401, "invalid_api_key", "The API key is not valid.", headers=_CHALLENGE)
    structlog.contextvars.bind_contextvars(api_key_id=str(row.id), tenant=row.tenant)
    return Principal(
        key_id=row.id, name=row.name, tenant=row.tenant, rate_limit_per_minute=row.rate_limit_per_minute
    )


async def current_principal(
    request: Request,
    api_key: Annotated[str | None, Depends(api_key_scheme)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    # `X-API-Key` wins when both are sent: it is this API's own header.
    return await authenticate(app_state(request), api_key or (bearer.credentials if bearer else None))


PrincipalDep = Annotated[Principal, Depends(current_principal)]
