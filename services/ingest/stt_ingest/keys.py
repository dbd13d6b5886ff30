"""API key management (used by `python -m stt_ingest keys …`): create, revoke, list; and the
ingest process's short cache of key lookups (`KeyCache`).

Only the SHA-256 of a key is stored (`stt_common.apikeys`); the plaintext and the webhook signing
secret are shown once, at creation.

Revoking a key notifies Postgres channel `stt_api_key_revoked` (payload: the key's hash) when its
transaction commits; every ingest replica listens on its pooled connections and drops the key from
its cache at once. A notification can be missed (a replica whose connections were all being
replaced at that moment), so the cache's TTL is the bound, not the notification.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

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
    """Revoke one active key, named by its id or its unique prefix. The next request with the key
    answers 401: this process's caches drop it now, other processes' when the notification sent
    with the commit reaches them, and at the latest after their STT_API_KEY_CACHE_SECONDS."""
    async with sessionmaker() as session, session.begin():
        row = await _active_key(session, prefix_or_id)
        await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=func.now()))
        # Delivered by Postgres only if (and when) the transaction commits.
        key_hash = row.key_hash
        await session.execute(select(func.pg_notify(REVOKED_CHANNEL, key_hash)))
        await session.refresh(row)
        info = _info(row)
    forget_key(key_hash)
    return info


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


# -- the cache of key lookups -------------------------------------------------------------------

REVOKED_CHANNEL = "stt_api_key_revoked"
KEY_CACHE_MAX_ENTRIES = 4096
"""Keys one process remembers at most. Only keys that exist and are active are cached, so this is a
bound on the keys in use within one TTL, not on what clients can present."""

V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    loaded_at: float


class KeyCache(Generic[V]):
    """Key hash -> what its lookup found, kept `ttl` seconds from the lookup (not from the last use,
    so a key revoked without notice stops working within `ttl`), `max_entries` at most (the least
    recently used goes first). Misses (unknown or revoked keys) are never kept: caching them would
    let a client that presents random keys evict the entries of real ones, and a key just created
    would be refused until its miss expired; an unknown key costs one indexed lookup either way.

    Concurrent lookups of one key share one database read (a cold or expired entry under 200
    concurrent pollers is one query, not 200)."""

    def __init__(self, ttl: float, *, max_entries: int = KEY_CACHE_MAX_ENTRIES) -> None:
        if ttl < 0 or max_entries < 1:
            raise ValueError("ttl must be >= 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[V | None]] = {}
        # Bumped by every `forget`: a lookup that was in flight meanwhile may have read the row
        # before the revocation, so its answer is returned but not kept.
        self._generation = 0
        self.hits = 0
        self.loads = 0
        _CACHES.add(self)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    async def get(self, key_hash: str, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value of `key_hash`, or `load()`'s (kept when it is not None)."""
        if not self.enabled:
            self.loads += 1
            return await load()
        entry = self._entries.get(key_hash)
        if entry is not None:
            if time.monotonic() - entry.loaded_at < self.ttl:
                self._entries.move_to_end(key_hash)
                self.hits += 1
                return entry.value
            del self._entries[key_hash]
        pending = self._loading.get(key_hash)
        if pending is None:
            pending = asyncio.ensure_future(self._load(key_hash, load, self._generation))
            # Nobody may be left to await it (every waiter's client went away): its outcome is
            # still retrieved, so a failed lookup is not reported as "never retrieved".
            pending.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._loading[key_hash] = pending
        # Shielded: one waiter's cancellation (its client left) does not cancel the others' lookup.
        return await asyncio.shield(pending)

    async def _load(
        self, key_hash: str, load: Callable[[], Awaitable[V | None]], generation: int
    ) -> V | None:
        self.loads += 1
        try:
            value = await load()
        finally:
            self._loading.pop(key_hash, None)
        if value is not None and generation == self._generation:
            self._entries[key_hash] = _Entry(value, time.monotonic())
            self._entries.move_to_end(key_hash)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def forget(self, key_hash: str) -> None:
        self._generation += 1
        self._entries.pop(key_hash, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()


_CACHES: weakref.WeakSet[KeyCache[Any]] = weakref.WeakSet()


def forget_key(key_hash: str) -> None:
    """Drop a key from every cache of this process (it was revoked, here or elsewhere)."""
    for cache in list(_CACHES):
        cache.forget(key_hash)


def on_revocation_notice(connection: object, pid: int, channel: str, payload: str) -> None:
    """asyncpg listener for REVOKED_CHANNEL (the signature asyncpg calls listeners with)."""
    forget_key(payload)
