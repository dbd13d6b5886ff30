"""Per-provider request budget, shared by every transcriber replica through Redis, so that ten pods
never stampede one vendor.

Two limits per provider, both optional (a provider with neither never touches Redis):

* Requests per minute — a sliding-window log, as in ingest's rate limiter: each admitted call adds a
  member scored by the Redis server's clock (so replicas with skewed clocks agree) and a call is
  admitted while fewer than N members are younger than the window. A fixed window (INCR + EXPIRE)
  would admit 2 x N around a window boundary; the log never lets more than N calls start in any
  window-long span of Redis time, and holds at most N members per provider.
* Concurrent calls — a sorted set of holder ids scored by lease expiry. Expired leases are dropped on
  every acquire, so a replica that is SIGKILLed mid-call loses its slot after at most one lease; a
  live holder renews its lease every third of it from a background task, so a long call keeps it.

Both limits are checked and taken by one Lua script, which Redis runs atomically: a call never takes a
rate entry without a concurrency slot or the other way round. Waiting is polling: a call blocked by
the rate limit sleeps until the oldest entry leaves the window (the script says when), one blocked by
concurrency polls every `poll_seconds` (jittered), since a release can come at any time. Waiters are
not served in order. Nothing is shared across providers, so a chunk waiting for one vendor never
holds up calls to another.

Redis down: fail OPEN. If Redis cannot be reached when a call asks for its slot, the call goes ahead
unbudgeted, with a warning and `stt_provider_budget_fail_open_total`. A Redis blip must not stall
transcription, and the vendors' own 429s are still retried with backoff by the handler; the limits are
a courtesy to the vendors, not a safety property. Renew and release failures are logged only: the
lease frees the slot in the end.

Keys (hash-tagged by provider, so both keys of one script share a Redis Cluster slot):
`<prefix>{<provider>}:rate` (ZSET call id -> start ms) and `<prefix>{<provider>}:leases`
(ZSET holder id -> lease expiry ms); both carry a TTL, so an idle provider leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from stt_common.logs import get_logger

if TYPE_CHECKING:  # only a type here; keeps the import light for processes that just need the budget
    from stt_transcriber.settings import TranscriberSettings

log = get_logger(__name__)

BUDGET_WAIT = Histogram(
    "stt_provider_budget_wait_seconds",
    "Time a provider call waited for its request budget (rate and concurrency limits).",
    ["provider"],
    buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
BUDGET_IN_FLIGHT = Gauge(
    "stt_provider_budget_in_flight", "Concurrency slots this replica holds.", ["provider"]
)
BUDGET_FAIL_OPEN = Counter(
    "stt_provider_budget_fail_open_total",
    "Provider calls let through without a budget because Redis could not be reached.",
    ["provider"],
)
BUDGET_LEASES_LOST = Counter(
    "stt_provider_budget_leases_lost_total",
    "Held slots whose lease ran out before it was renewed (the limit may be exceeded meanwhile).",
    ["provider"],
)

# KEYS: rate log, leases. ARGV: rate limit, window ms, concurrency, lease ms, call id (0 = no limit).
# Returns {acquired, wait ms, blocked by the rate limit}.
_ACQUIRE = """
local rate_limit = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2])
local concurrency = tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4])
local id = ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= concurrency then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, tonumber(first[2]) - now, 0}
  end
end
if rate_limit > 0 then
  -- Entries exactly one window old still count: no two calls N apart start within a closed window.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - window_ms))
  if redis.call('ZCARD', KEYS[1]) >= rate_limit then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, tonumber(oldest[2]) + window_ms - now + 1, 1}
  end
  redis.call('ZADD', KEYS[1], now, id)
  if redis.call('PTTL', KEYS[1]) < window_ms then redis.call('PEXPIRE', KEYS[1], window_ms) end
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[2], now + lease_ms, id)
  if redis.call('PTTL', KEYS[2]) < lease_ms then redis.call('PEXPIRE', KEYS[2], lease_ms) end
end
return {1, 0, 0}
"""

# KEYS: leases. ARGV: holder id, lease ms. A lease still in the set was never counted as free by an
# acquire (each one drops expired leases first), so extending it is safe; one already dropped may have
# been given away and is not revived. Returns 1 if renewed.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_ms = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + lease_ms, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease_ms then redis.call('PEXPIRE', KEYS[1], lease_ms) end
return 1
"""

_REDIS_ERRORS = (RedisError, OSError)  # OSError covers refused connections and the builtin TimeoutError


class BudgetBusy(Exception):
    """The provider's budget stayed full for the caller's patience: the caller should do other work
    (the transcriber hands the chunk back to the queue) rather than hold its place waiting."""

    def __init__(self, provider: str, waited: float) -> None:
        super().__init__(f"{provider}: no request budget free after {waited:.1f} s")
        self.provider, self.waited = provider, waited


class VendorBudget:
    """Rate and concurrency limits per provider; a provider missing from both maps (or given 0) is
    unlimited. `window_seconds` is the rate window (60 in production, shorter in tests). The budget
    owns `redis` and closes it in `aclose`."""

    def __init__(
        self,
        redis: Redis,
        *,
        requests_per_minute: Mapping[str, int] | None = None,
        concurrency: Mapping[str, int] | None = None,
        lease_seconds: float = 30.0,
        window_seconds: float = 60.0,
        poll_seconds: float = 0.1,
        prefix: str = "stt:budget:",
    ) -> None:
        self._redis = redis
        self._rate = {name: n for name, n in (requests_per_minute or {}).items() if n > 0}
        self._concurrency = {name: n for name, n in (concurrency or {}).items() if n > 0}
        self._lease_seconds = lease_seconds
        self._lease_ms = max(int(lease_seconds * 1000), 1)
        self._window_ms = max(int(window_seconds * 1000), 1)
        self._poll_seconds = poll_seconds
        self._prefix = prefix
        self._acquire: Any = redis.register_script(_ACQUIRE)
        self._renew: Any = redis.register_script(_RENEW)

    @classmethod
    def from_settings(cls, settings: TranscriberSettings) -> VendorBudget:
        # Short timeouts and a single immediate retry (for a pooled connection that went stale when
        # Redis restarted): when Redis is gone a call should fail open in about a second, not wait
        # out redis-py's default backoff.
        redis = Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 1)
        )
        return cls(
            redis,
            requests_per_minute=settings.provider_requests_per_minute,
            concurrency=settings.provider_concurrency,
            lease_seconds=settings.budget_lease_seconds,
        )

    async def aclose(self) -> None:
        await self._redis.aclose()

    @contextlib.asynccontextmanager
    async def slot(self, provider: str, *, patience: float | None = None) -> AsyncIterator[float]:
        """Wait until `provider`'s budget allows one more call, hold a concurrency slot (if it has a
        limit) until the block exits; yields the seconds waited. With `patience`, give up after that
        many seconds with `BudgetBusy`."""
        rate = self._rate.get(provider, 0)
        concurrency = self._concurrency.get(provider, 0)
        if not rate and not concurrency:
            yield 0.0
            return
        call_id = uuid.uuid4().hex
        started = time.monotonic()
        held = await self._wait(provider, call_id, rate, concurrency, patience)
        waited = time.monotonic() - started
        BUDGET_WAIT.labels(provider).observe(waited)
        if not held:  # only a rate limit, or Redis failed: nothing to renew or give back
            yield waited
            return
        BUDGET_IN_FLIGHT.labels(provider).inc()
        renewer = asyncio.create_task(self._keep_lease(provider, call_id), name=f"budget-lease-{provider}")
        try:
            yield waited
        finally:
            renewer.cancel()  # a renew still in flight cannot revive the lease after the release (XX)
            BUDGET_IN_FLIGHT.labels(provider).dec()
            await self._release(provider, call_id)

    def _key(self, provider: str, kind: str) -> str:
        return f"{self._prefix}{{{provider}}}:{kind}"

    async def _wait(
        self, provider: str, call_id: str, rate: int, concurrency: int, patience: float | None
    ) -> bool:
        """Block until the script admits the call; True when it now holds a concurrency slot."""
        started = time.monotonic()
        keys = [self._key(provider, "rate"), self._key(provider, "leases")]
        args = [rate, self._window_ms, concurrency, self._lease_ms, call_id]
        while True:
            try:
                acquired, wait_ms, by_rate = (int(v) for v in await self._acquire(keys=keys, args=args))
            except _REDIS_ERRORS as exc:
                BUDGET_FAIL_OPEN.labels(provider).inc()
                log.warning(
                    "provider budget unavailable; calling without it", provider=provider, error=repr(exc)
                )
                return False
            except asyncio.CancelledError:
                # The script may have taken a slot before the cancellation reached us.
                if concurrency:
                    await self._release(provider, call_id)
                raise
            if acquired:
                return concurrency > 0
            waited = time.monotonic() - started
            # A rate limit says exactly when it frees up; a concurrency slot may free at any moment.
            still = wait_ms / 1000 if by_rate else 0.0
            if patience is not None and waited + still >= patience:
                BUDGET_WAIT.labels(provider).observe(waited)
                raise BudgetBusy(provider, waited)
            jitter = random.uniform(0, self._poll_seconds)  # waiters of one provider spread out
            if by_rate:  # exact: the oldest entry leaves the window then
                await asyncio.sleep(wait_ms / 1000 + jitter)
            else:  # a holder may release at any moment; the earliest lease expiry bounds the wait
                await asyncio.sleep(min(wait_ms / 1000, self._poll_seconds / 2 + jitter))

    async def _keep_lease(self, provider: str, call_id: str) -> None:
        key = self._key(provider, "leases")
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                renewed = await self._renew(keys=[key], args=[call_id, self._lease_ms])
            except _REDIS_ERRORS as exc:
                log.warning("provider budget lease not renewed", provider=provider, error=repr(exc))
                continue
            if not renewed:
                BUDGET_LEASES_LOST.labels(provider).inc()
                log.warning("provider budget lease lost; the slot may go to another call", provider=provider)
                return

    async def _release(self, provider: str, call_id: str) -> None:
        try:
            await self._redis.zrem(self._key(provider, "leases"), call_id)
        except _REDIS_ERRORS as exc:
            log.warning(
                "provider budget slot not released; its lease frees it", provider=provider, error=repr(exc)
            )
