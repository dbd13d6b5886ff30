"""The per-provider request budget (`stt_transcriber.budget`) against the real Redis of the test stack:
concurrency and rate limits within one process and across two, leases of dead holders, and a provider
without limits (or Redis down) that never waits. Each test has its own key prefix."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from stt_common.settings import Settings
from stt_transcriber.budget import VendorBudget
from stt_transcriber.settings import TranscriberSettings
from tests.helpers import free_port

MakeBudget = Callable[..., VendorBudget]


@pytest.fixture
def prefix() -> str:
    return f"stt:test:budget:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis(settings: Settings, prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def make_budget(settings: Settings, prefix: str, redis: Redis) -> AsyncIterator[MakeBudget]:
    budgets: list[VendorBudget] = []

    def make(**kwargs: Any) -> VendorBudget:
        budget = VendorBudget(Redis.from_url(settings.redis_url), prefix=prefix, **kwargs)
        budgets.append(budget)
        return budget

    yield make
    for budget in budgets:
        await budget.aclose()


def metric(name: str, provider: str) -> float:
    return REGISTRY.get_sample_value(name, {"provider": provider}) or 0.0


async def test_concurrency_limit_within_one_process(
    make_budget: MakeBudget, redis: Redis, prefix: str
) -> None:
    budget = make_budget(concurrency={"vendor": 2})
    inside = peak = done = 0

    async def call() -> None:
        nonlocal inside, peak, done
        async with budget.slot("vendor"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1
            done += 1

    async with asyncio.timeout(15):
        await asyncio.gather(*(call() for _ in range(8)))
    assert done == 8
    assert 1 <= peak <= 2
    assert await redis.zcard(f"{prefix}{{vendor}}:leases") == 0  # every slot was given back
    assert metric("stt_provider_budget_in_flight", "vendor") == 0


async def test_rate_limit_in_any_window(make_budget: MakeBudget, redis: Redis, prefix: str) -> None:
    window = 1.0
    budget = make_budget(requests_per_minute={"vendor": 5}, window_seconds=window)
    rate_key = f"{prefix}{{vendor}}:rate"
    starts: list[float] = []
    admitted: dict[bytes, float] = {}  # Redis' own admission times (ms), read while they are in the log

    async def call() -> None:
        async with budget.slot("vendor"):
            starts.append(time.monotonic())
            admitted.update(await redis.zrange(rate_key, 0, -1, withscores=True))

    async with asyncio.timeout(15):
        await asyncio.gather(*(call() for _ in range(11)))  # three windows' worth

    assert len(starts) == 11
    assert len(admitted) == 11
    # As Redis saw it: any 6 consecutive starts span more than one window.
    scores = sorted(admitted.values())
    assert all(later - first > window * 1000 for first, later in zip(scores, scores[5:], strict=False))
    # As the callers saw it (a little slack for the round trip after admission).
    starts.sort()
    assert all(later - first > window - 0.25 for first, later in zip(starts, starts[5:], strict=False))


class FakeVendor(ThreadingHTTPServer):
    """Answers every GET after 0.2 s and records how many it was serving at once."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _VendorHandler)
        self.lock = threading.Lock()
        self.current = self.peak = 0
        self.served: Counter[str] = Counter()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _VendorHandler(BaseHTTPRequestHandler):
    server: FakeVendor

    def do_GET(self) -> None:
        vendor = self.server
        with vendor.lock:
            vendor.current += 1
            vendor.peak = max(vendor.peak, vendor.current)
        time.sleep(0.2)
        with vendor.lock:  # counted out before the reply, so the caller's slot covers it
            vendor.current -= 1
            vendor.served[self.path] += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_vendor() -> Iterator[FakeVendor]:
    server = FakeVendor()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# One transcriber replica: 10 calls at once through the budget, started when the test says "go".
REPLICA = """
import asyncio, sys
import httpx
from redis.asyncio import Redis
from stt_transcriber.budget import VendorBudget

async def main(redis_url, prefix, url):
    budget = VendorBudget(Redis.from_url(redis_url), concurrency={"fakevendor": 3}, prefix=prefix)
    async with httpx.AsyncClient(timeout=30) as client:
        async def call():
            async with budget.slot("fakevendor"):
                (await client.get(url)).raise_for_status()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await asyncio.gather(*(call() for _ in range(10)))
    await budget.aclose()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_concurrency_limit_across_two_processes(
    settings: Settings, prefix: str, redis: Redis, fake_vendor: FakeVendor
) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            REPLICA,
            settings.redis_url,
            prefix,
            f"{fake_vendor.url}/replica-{n}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for n in range(2)
    ]
    try:
        async with asyncio.timeout(60):
            for proc in procs:  # both have imported everything: start them together
                assert proc.stdout is not None
                assert (await proc.stdout.readline()).strip() == b"ready"
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            codes = [await proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    assert codes == [0, 0]
    assert fake_vendor.served == {"/replica-0": 10, "/replica-1": 10}
    assert 1 <= fake_vendor.peak <= 3
    assert await redis.zcard(f"{prefix}{{fakevendor}}:leases") == 0


# A replica SIGKILLed while it holds the only slot.
DYING_REPLICA = """
import asyncio, os, signal, sys
from redis.asyncio import Redis
from stt_transcriber.budget import VendorBudget

async def main(redis_url, prefix):
    redis = Redis.from_url(redis_url)
    budget = VendorBudget(redis, concurrency={"vendor": 1}, lease_seconds=1.5, prefix=prefix)
    async with budget.slot("vendor"):
        os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_dead_holder_frees_its_slot_after_the_lease(
    settings: Settings, make_budget: MakeBudget, redis: Redis, prefix: str
) -> None:
    leases = f"{prefix}{{vendor}}:leases"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DYING_REPLICA, settings.redis_url, prefix
    )
    assert await proc.wait() == -9
    [(dead_holder, _)] = await redis.zrange(leases, 0, -1, withscores=True)  # it leaked its slot

    budget = make_budget(concurrency={"vendor": 1}, lease_seconds=1.5)
    async with asyncio.timeout(15), budget.slot("vendor"):
        holders = await redis.zrange(leases, 0, -1)
    assert len(holders) == 1
    assert dead_holder not in holders  # the dead one's lease ran out and was dropped
    assert await redis.zcard(leases) == 0


async def test_live_holder_keeps_its_slot_past_the_lease(make_budget: MakeBudget) -> None:
    """The lease is renewed while the block runs, so a call longer than the lease is not overtaken."""
    budget = make_budget(concurrency={"vendor": 1}, lease_seconds=0.6)
    lost_before = metric("stt_provider_budget_leases_lost_total", "vendor")
    events: list[str] = []
    holder_in = asyncio.Event()

    async def holder() -> None:
        async with budget.slot("vendor"):
            events.append("holder in")
            holder_in.set()
            await asyncio.sleep(1.5)  # 2.5 leases
            events.append("holder out")

    async def contender() -> None:
        await holder_in.wait()
        async with budget.slot("vendor"):
            events.append("contender in")

    async with asyncio.timeout(15):
        await asyncio.gather(holder(), contender())
    assert events == ["holder in", "holder out", "contender in"]
    assert metric("stt_provider_budget_leases_lost_total", "vendor") == lost_before


async def test_unlimited_provider_never_touches_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits come from JSON env vars; nothing listens on the Redis port, so any Redis call would fail."""
    monkeypatch.setenv("STT_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("STT_PROVIDER_CONCURRENCY", '{"wavam": 2}')
    monkeypatch.setenv("STT_PROVIDER_REQUESTS_PER_MINUTE", '{"openai": 50, "gemini": 0}')
    settings = TranscriberSettings()
    assert settings.provider_concurrency == {"wavam": 2}
    assert settings.provider_requests_per_minute == {"openai": 50, "gemini": 0}

    budget = VendorBudget.from_settings(settings)
    try:
        unlimited = ("local", "gemini")  # no limit, and a limit of 0
        failed_open = [metric("stt_provider_budget_fail_open_total", name) for name in unlimited]
        for name in unlimited:
            async with budget.slot(name) as waited:
                assert waited == 0.0
        assert [metric("stt_provider_budget_fail_open_total", name) for name in unlimited] == failed_open

        # A limited provider with Redis down fails open: the call goes ahead and is counted.
        before = metric("stt_provider_budget_fail_open_total", "wavam")
        async with asyncio.timeout(15), budget.slot("wavam"):
            pass
        assert metric("stt_provider_budget_fail_open_total", "wavam") == before + 1
    finally:
        await budget.aclose()
