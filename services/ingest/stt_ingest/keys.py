"""API key management (used by `python -m stt_ingest keys …`): create, revoke, list.

Only the SHA-256 of a key is stored (`stt_common.apikeys`); the plaintext and the webhook signing
secret are shown once, at creation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.apikeys import NewKey, generate_api_key
from stt_common.db.models import ApiKey


class KeyNotFoundError(LookupError):
    pass


class AmbiguousKeyError(LookupError):
    pass


@dataclass(frozen=True)
class CreatedKey:
    id: uuid.UUID
    name: str
    tenant: str
    prefix: str
    rate_limit_per_minute: int | None
    max_audio_seconds: float | None
    api_key: str
    webhook_secret: str


@dataclass(frozen=True)
class KeyInfo:
    id: uuid.UUID
    name: str
    tenant: str
    prefix: str
    rate_limit_per_minute: int | None
    max_audio_seconds: float | None
    created_at: datetime
    revoked_at: datetime | None


async def create_key(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    name: str,
    tenant: str,
    rate_limit_per_minute: int | None = None,
    max_audio_seconds: float | None = None,
) -> CreatedKey:
    """A new key; `rate_limit_per_minute` None means the service default, 0 means unlimited;
    `max_audio_seconds` None means the chunker's STT_MAX_AUDIO_SECONDS."""
    if not name.strip() or not tenant.strip():
        raise ValueError("name and tenant must not be empty")
    if rate_limit_per_minute is not None and rate_limit_per_minute < 0:
        raise ValueError("the rate limit must be >= 0")
    if max_audio_seconds is not None and not max_audio_seconds > 0:
        raise ValueError("the audio length limit must be > 0")
    material: NewKey = generate_api_key()
    row = ApiKey(
        id=uuid.uuid4(),
        name=name.strip()[:200],
        tenant=tenant.strip()[:200],
        key_hash=material.key_hash,
        prefix=material.prefix,
        webhook_secret=material.webhook_secret,
        rate_limit_per_minute=rate_limit_per_minute,
        max_audio_seconds=max_audio_seconds,
    )
    async with sessionmaker() as session, session.begin():
        session.add(row)
    return CreatedKey(
        id=row.id,
        name=row.name,
        tenant=row.tenant,
        prefix=row.prefix,
        rate_limit_per_minute=rate_limit_per_minute,
        max_audio_seconds=max_audio_seconds,
        api_key=material.plaintext,
        webhook_secret=material.webhook_secret,
    )


async def _active_key(session: AsyncSession, prefix_or_id: str) -> ApiKey:
    query = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    try:
        query = query.where(ApiKey.id == uuid.UUID(prefix_or_id))
    except ValueError:
        query = query.where(ApiKey.prefix == prefix_or_id)
    rows = list((await session.scalars(query)).all())
    if not rows:
        raise KeyNotFoundError(f"no active key {prefix_or_id!r}")
    if len(rows) > 1:
        raise AmbiguousKeyError(f"{len(rows)} active keys have prefix {prefix_or_id!r}; use the id")
    return rows[0]


async def revoke_key(sessionmaker: async_sessionmaker[AsyncSession], prefix_or_id: str) -> KeyInfo:
    """Revoke one active key, named by its id or its unique prefix. Revoking is immediate: the
    next request with the key answers 401."""
    async with sessionmaker() as session, session.begin():
        row = await _active_key(session, prefix_or_id)
        await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=func.now()))
        await session.refresh(row)
        return _info(row)


async def rotate_webhook_secret(sessionmaker: async_sessionmaker[AsyncSession], prefix_or_id: str) -> str:
    """Give a key a new webhook signing secret and return it (shown once). Deliveries attempted
    from now on, retries of older events included, are signed with the new secret."""
    secret = generate_api_key().webhook_secret
    async with sessionmaker() as session, session.begin():
        row = await _active_key(session, prefix_or_id)
        await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(webhook_secret=secret))
    return secret


async def list_keys(sessionmaker: async_sessionmaker[AsyncSession]) -> list[KeyInfo]:
    async with sessionmaker() as session:
        rows = (await session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))).all()
        return [_info(row) for row in rows]


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        name=row.name,
        tenant=row.tenant,
        prefix=row.prefix,
        rate_limit_per_minute=row.rate_limit_per_minute,
        max_audio_seconds=row.max_audio_seconds,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
