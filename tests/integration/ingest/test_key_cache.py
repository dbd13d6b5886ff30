"""The per-process cache of API key lookups (`stt_ingest.keys.KeyCache`, STT_API_KEY_CACHE_SECONDS).

Apps run in-process against the real database; revocations made "elsewhere" are written with a
session of the test's own (as another process would), either silently (a plain UPDATE: only the TTL
can end the cached entry) or with the notification `keys.revoke_key` sends. The cache's counters
(`loads`: database lookups, `hits`) show whether a request read the database. No assertion is about
speed; the only waits are for a short TTL to pass.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.apikeys import hash_api_key
from stt_common.db.models import ApiKey
from stt_ingest import keys
from stt_ingest.auth import key_cache
from stt_ingest.keys import KeyCache
from tests.helpers import wait_until
from tests.integration.ingest.conftest import Api, AppFactory, Key, KeyFactory

pytestmark = pytest.mark.timeout(120)

LONG_TTL = 600.0  # longer than any test: an entry that goes away did not expire


async def revoke_elsewhere(
    sessionmaker_: async_sessionmaker[AsyncSession], key: Key, *, notify: bool
) -> None:
    """Revoke `key` the way another process would: this process's caches are not told directly.
    With `notify`, the database notification `keys.revoke_key` sends goes with the commit."""
    async with sessionmaker_() as session, session.begin():
        await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=func.now()))
        if notify:
            digest = hash_api_key(key.plaintext)
            await session.execute(select(func.pg_notify(keys.REVOKED_CHANNEL, digest)))


async def status(api: Api, key: Key) -> int:
    return (await api.client.get("/api/v1/jobs", headers=key.headers)).status_code


async def test_within_the_ttl_a_key_is_looked_up_once(
    make_api: AppFactory, make_key: KeyFactory, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    key = await make_key()
    async with make_api(api_key_cache_seconds=LONG_TTL) as api:
        cache = key_cache(api.state)
        for _ in range(3):
            assert await status(api, key) == 200
        bearer = {"Authorization": f"Bearer {key.plaintext}"}
        assert (await api.client.get("/api/v1/jobs", headers=bearer)).status_code == 200
        assert (cache.loads, cache.hits, len(cache)) == (1, 3, 1)
        # Revoked without a notice: the cached entry still answers (the documented bound is the
        # TTL), which shows the requests did not read the key from the database.
        await revoke_elsewhere(sessionmaker_, key, notify=False)
        assert await status(api, key) == 200
        assert cache.loads == 1


async def test_a_silent_revocation_takes_effect_when_the_entry_expires(
    make_api: AppFactory, make_key: KeyFactory, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    key = await make_key()
    async with make_api(api_key_cache_seconds=0.3) as api:
        cache = key_cache(api.state)
        assert await status(api, key) == 200
        await revoke_elsewhere(sessionmaker_, key, notify=False)

        async def refused() -> bool:
            return await status(api, key) == 401

        await wait_until(refused, timeout=10, what="the revoked key refused after the TTL", interval=0.05)
        # One lookup before, one after the entry expired: the 401 came from the database.
        assert cache.loads == 2
        assert len(cache) == 0


async def test_a_revocation_notice_from_another_process_drops_the_key_at_once(
    make_api: AppFactory, make_key: KeyFactory, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    key, other = await make_key(), await make_key()
    async with make_api(api_key_cache_seconds=LONG_TTL) as api:
        cache = key_cache(api.state)
        assert await status(api, key) == 200
        assert await status(api, other) == 200
        await revoke_elsewhere(sessionmaker_, key, notify=True)

        async def refused() -> bool:
            return await status(api, key) == 401

        # Within the TTL, so only the notice (delivered to the pool's idle connections) can do it.
        await wait_until(refused, timeout=10, what="the notice to reach the cache", interval=0.05)
        assert len(cache) == 1  # the other key stays cached
        loads = cache.loads
        assert await status(api, other) == 200
        assert cache.loads == loads


async def test_revoking_in_this_process_drops_the_key_before_the_next_request(
    make_api: AppFactory, make_key: KeyFactory, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    key = await make_key()
    async with make_api(api_key_cache_seconds=LONG_TTL) as api:
        assert await status(api, key) == 200
        await keys.revoke_key(sessionmaker_, str(key.id))
        assert await status(api, key) == 401


async def test_unknown_keys_are_not_cached(make_api: AppFactory) -> None:
    async with make_api(api_key_cache_seconds=LONG_TTL) as api:
        cache = key_cache(api.state)
        for _ in range(20):
            presented = {"X-API-Key": f"stt_{uuid.uuid4().hex}"}
            assert (await api.client.get("/api/v1/jobs", headers=presented)).status_code == 401
        assert (cache.loads, len(cache)) == (20, 0)
        # The same unknown key again is looked up again, not answered from a remembered miss.
        assert (await api.client.get("/api/v1/jobs", headers=presented)).status_code == 401
        assert cache.loads == 21


async def test_a_ttl_of_zero_looks_the_key_up_on_every_request(
    make_api: AppFactory, make_key: KeyFactory, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    key = await make_key()
    async with make_api(api_key_cache_seconds=0) as api:
        cache = key_cache(api.state)
        assert await status(api, key) == 200
        assert await status(api, key) == 200
        assert (cache.loads, cache.hits, len(cache)) == (2, 0, 0)
        await revoke_elsewhere(sessionmaker_, key, notify=False)
        assert await status(api, key) == 401


# -- KeyCache itself ------------------------------------------------------------------------------


def loader(value: Any, calls: list[str], name: str, gate: asyncio.Event | None = None) -> Any:
    async def load() -> Any:
        calls.append(name)
        if gate is not None:
            await gate.wait()
        return value

    return load


async def test_the_cache_keeps_at_most_its_bound_dropping_the_least_recently_used() -> None:
    cache: KeyCache[str] = KeyCache(LONG_TTL, max_entries=3)
    calls: list[str] = []
    for name in ("a", "b", "c"):
        await cache.get(name, loader(name.upper(), calls, name))
    assert await cache.get("a", loader("A", calls, "a")) == "A"  # a is now the most recently used
    for name in ("d", "e"):
        await cache.get(name, loader(name.upper(), calls, name))
    assert len(cache) == 3
    assert calls == ["a", "b", "c", "d", "e"]
    for name in ("a", "d", "e"):  # kept
        await cache.get(name, loader(name.upper(), calls, name))
    assert calls == ["a", "b", "c", "d", "e"]
    await cache.get("b", loader("B", calls, "b"))  # dropped: looked up again
    assert calls[-1] == "b"
    assert len(cache) == 3


async def test_concurrent_lookups_of_one_key_share_one_read() -> None:
    cache: KeyCache[str] = KeyCache(LONG_TTL)
    calls: list[str] = []
    gate = asyncio.Event()
    waiters = [asyncio.create_task(cache.get("k", loader("V", calls, "k", gate))) for _ in range(10)]
    await asyncio.sleep(0)  # every waiter reaches the cache before the read finishes
    waiters[0].cancel()  # the first requester goes away: the others' read goes on
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == ["V"] * 9
    assert calls == ["k"]
    assert len(cache) == 1


async def test_a_lookup_in_flight_when_its_key_is_revoked_is_not_kept() -> None:
    cache: KeyCache[str] = KeyCache(LONG_TTL)
    calls: list[str] = []
    gate = asyncio.Event()
    waiter = asyncio.create_task(cache.get("k", loader("V", calls, "k", gate)))
    await asyncio.sleep(0)
    keys.forget_key("k")  # the read may have seen the row before the revocation
    gate.set()
    assert await waiter == "V"
    assert len(cache) == 0
    await cache.get("k", loader("V", calls, "k"))
    assert calls == ["k", "k"]
