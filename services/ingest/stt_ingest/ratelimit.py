"""Per-key rate limit on submissions, shared by every ingest replica through Redis.

Algorithm: a sliding-window log. Each accepted request adds one member (scored by the Redis server's
own clock, so replicas with skewed clocks agree) to a sorted set per key; members older than the
window are trimmed; a request is admitted while fewer than `limit` remain. All of it runs in one Lua
script, which Redis executes atomically, so concurrent requests on several replicas can never admit
more than `limit` per window. Unlike a fixed window (INCR + EXPIRE) there is no boundary burst of
2 x limit, and memory is bounded by `limit` members per key. Rejected requests are not recorded, so
a client that keeps retrying gets in as soon as the oldest request leaves the window.

Headers follow draft-ietf-httpapi-ratelimit-headers: `RateLimit-Limit`, `RateLimit-Remaining`,
`RateLimit-Reset` (seconds until a slot frees up) and `RateLimit-Policy`; a 429 adds `Retry-After`.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

_SCRIPT = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2])
local member = ARGV[3]
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window_ms)
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  redis.call('ZADD', key, now, member)
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', key, window_ms)
local reset_ms = window_ms
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
if oldest[2] then
  reset_ms = tonumber(oldest[2]) + window_ms - now
end
return {allowed, count, reset_ms}
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    window_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
            "RateLimit-Policy": f"{self.limit};w={self.window_seconds}",
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


class RateLimiter:
    def __init__(self, redis: Redis, *, window_seconds: int, prefix: str = "stt:ingest:ratelimit:") -> None:
        self._redis = redis
        self._window_seconds = window_seconds
        self._prefix = prefix
        self._script: Any = redis.register_script(_SCRIPT)

    async def hit(self, subject: str, limit: int) -> RateDecision | None:
        """Count one request for `subject`; None when `limit` is 0 (unlimited)."""
        if limit <= 0:
            return None
        window_ms = self._window_seconds * 1000
        result = await self._script(keys=[self._prefix + subject], args=[limit, window_ms, uuid.uuid4().hex])
        allowed, count, reset_ms = (int(value) for value in result)
        return RateDecision(
            allowed=bool(allowed),
            limit=limit,
            remaining=max(limit - count, 0),
            reset_seconds=max(math.ceil(reset_ms / 1000), 1),
            window_seconds=self._window_seconds,
        )
