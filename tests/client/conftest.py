"""Fixtures of the Python client's tests: the whole pipeline as real processes (ingest, chunker,
transcriber, merger, notifier) on the session's Postgres, Redis and S3 and a Kafka broker of their own,
with a fake OpenAI as the provider; and loopback helpers served from threads (so that synchronous
tests can use them while the session's event loop sleeps): a media server that is also a webhook
receiver, and a fault-injecting proxy in front of ingest.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stt_common.settings import Settings
from stt_devstack.harness import ServiceProcess, stop_services
from stt_ingest.keys import create_key
from tests.fakes.loopback import ThreadedServer
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import free_port, private_broker
from tests.integration.ingest.media import wav_bytes

# Streams end this soon (the server's maximum), so every wait() longer than this resumes one with
# Last-Event-ID: that path runs for real, not only in tests that force it.
FOLLOW_MAX_SECONDS = 1.0
TONE = wav_bytes(seconds=2.0)


# -- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    url: str  # ingest, straight
    services: dict[str, ServiceProcess]
    fake: FakeOpenAI

    def logs(self) -> str:
        return "\n".join(f"== {name}\n{service.log()[-2000:]}" for name, service in self.services.items())


@pytest.fixture(scope="package")
async def stack(
    infra_env: dict[str, str], settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    # A broker of their own: these stages hear only this package's jobs, and leave no backlog.
    async with private_broker(settings) as broker:
        with FakeOpenAI() as fake:
            log_dir = tmp_path_factory.mktemp("client-stack")
            port = free_port()
            base = {
                **os.environ,
                **infra_env,
                "STT_KAFKA_BOOTSTRAP_SERVERS": broker,
                "STT_LOG_LEVEL": "INFO",
                "STT_OPENAI_API_KEY": "sk-test",  # ingest takes jobs only for configured providers
            }
            services = {
                "ingest": ServiceProcess(
                    "ingest",
                    {
                        **base,
                        "STT_HTTP_HOST": "127.0.0.1",
                        "STT_HTTP_PORT": str(port),
                        "STT_DEFAULT_PROVIDER": "openai",
                        "STT_SSRF_ALLOW_NETWORKS": "127.0.0.1/32",  # the loopback media server
                        "STT_MAX_ACTIVE_JOBS_PER_KEY": "0",
                        "STT_FOLLOW_POLL_INTERVAL_SECONDS": "0.1",
                        "STT_FOLLOW_MAX_SECONDS": str(FOLLOW_MAX_SECONDS),
                        "STT_FOLLOW_RETRY_MS": "200",
                    },
                    log_dir,
                ),
                "chunker": ServiceProcess("chunker", base, log_dir),
                "transcriber": ServiceProcess(
                    "transcriber",
                    {
                        **base,
                        "STT_OPENAI_BASE_URL": fake.base_url,
                        "STT_BACKOFF_BASE_SECONDS": "0.05",
                        "STT_BACKOFF_MAX_SECONDS": "0.2",
                        "STT_COVERAGE_RETRIES": "1",
                        "STT_COVERAGE_GAP_SECONDS": "2",
                    },
                    log_dir,
                ),
                "merger": ServiceProcess("merger", base, log_dir),
                "notifier": ServiceProcess(
                    "notifier",
                    {
                        **base,
                        "STT_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
                        "STT_WEBHOOK_POLL_INTERVAL_SECONDS": "0.2",
                    },
                    log_dir,
                ),
            }
            try:
                for service in services.values():
                    service.start()
                await asyncio.gather(*(service.ready() for service in services.values()))
                yield Stack(url=f"http://127.0.0.1:{port}", services=services, fake=fake)
            finally:
                stop_services(services.values())


@dataclass(frozen=True)
class Key:
    api_key: str
    webhook_secret: str


@pytest.fixture
async def key(sessionmaker_: async_sessionmaker[AsyncSession]) -> Key:
    """A key of the test's own, without a rate limit: its jobs are the test's only."""
    created = await create_key(sessionmaker_, name="client", tenant="client-tests", rate_limit_per_minute=0)
    return Key(created.api_key, created.webhook_secret)


# -- media and webhooks ---------------------------------------------------------------------------


@dataclass
class Hooked:
    headers: dict[str, str]
    body: bytes


@dataclass
class Loopback:
    """`/tone.wav`; `/gated.wav?gate=NAME`, the same once `gate(NAME)` is set (a download that waits
    for the test); `/hook`, a webhook receiver that records what it is sent and answers 204."""

    url: str = ""
    stopping: threading.Event = field(default_factory=threading.Event)
    hooks: list[Hooked] = field(default_factory=list)
    _gates: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def gate(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def hooked(self, job_id: str) -> list[Hooked]:
        """The webhook requests about `job_id`."""
        return [hook for hook in self.hooks if job_id.encode() in hook.body]

    def app(self) -> Starlette:
        async def tone(request: Request) -> Response:
            return Response(TONE, media_type="audio/wav")

        async def gated(request: Request) -> Response:
            gate = self.gate(request.query_params["gate"])
            while not gate.is_set() and not self.stopping.is_set():
                await asyncio.sleep(0.05)
            return Response(TONE, media_type="audio/wav")

        async def hook(request: Request) -> Response:
            self.hooks.append(Hooked(dict(request.headers), await request.body()))
            return Response(status_code=204)

        return Starlette(
            routes=[
                Route("/tone.wav", tone),
                Route("/gated.wav", gated),
                Route("/hook", hook, methods=["POST"]),
            ]
        )


@pytest.fixture(scope="package")
def loopback() -> Iterator[Loopback]:
    served = Loopback()
    server = ThreadedServer(served.app(), served.stopping, name="client-loopback")
    served.url = f"http://127.0.0.1:{server.start()}"
    try:
        yield served
    finally:
        server.stop()


# -- the fault-injecting proxy ----------------------------------------------------------------------


@dataclass
class Seen:
    """One request through the proxy, and what happened to it."""

    method: str
    path: str
    headers: dict[str, str]
    at: float
    fault: str | None
    upstream_status: int | None = None
    upstream_headers: dict[str, str] = field(default_factory=dict)
    upstream_body: bytes = b""


_HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length"}


class FaultProxy:
    """A reverse proxy to ingest that fails requests as scripted, the way real networks and
    gateways do (not a stand-in for the server: every request it lets through reaches ingest).

    `inject(method, path_prefix, fault, ...)` queues faults for matching requests, one per request:
    * `"502"`: forward the request, then drop ingest's answer and answer 502 (the server acted; the
      client cannot know);
    * `"drop"`: forward the request, then break the connection mid-answer;
    * `"429:N"`: answer 429 with `Retry-After: N` without forwarding.
    `no_streams`: answer progress-stream requests as a server without streams does (JSON timeline)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.no_streams = False
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        self._faults: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None

    def inject(self, method: str, path_prefix: str, *faults: str) -> None:
        with self._lock:
            self._faults.extend((method, path_prefix, fault) for fault in faults)

    def requests(self, method: str, path_part: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.method == method and path_part in seen.path]

    def _take(self, method: str, path: str) -> str | None:
        with self._lock:
            for index, (want_method, prefix, fault) in enumerate(self._faults):
                if want_method == method and path.startswith(prefix):
                    del self._faults[index]
                    return fault
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if self._client is None:  # made in the server's own thread and loop
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None))
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in _HOP_BY_HOP
        }
        if self.no_streams and path.endswith("/events"):
            headers.pop("accept", None)  # a server that predates streams answers JSON whatever is asked
        fault = self._take(method, path)
        seen = Seen(method, path, headers, time.monotonic(), fault)
        self.seen.append(seen)
        if fault is not None and fault.startswith("429:"):
            await _answer(send, 429, b'{"error": "slow down"}', {"retry-after": fault[4:]})
            return
        query = scope.get("query_string", b"").decode()
        target = self.upstream + path + (f"?{query}" if query else "")
        request = self._client.build_request(method, target, headers=headers, content=body)
        response = await self._client.send(request, stream=True)
        try:
            seen.upstream_status = response.status_code
            seen.upstream_headers = dict(response.headers)
            if fault == "502":
                seen.upstream_body = await response.aread()
                await _answer(send, 502, b"upstream went away", {"content-type": "text/plain"})
                return
            if fault == "drop":
                seen.upstream_body = await response.aread()
                await send(
                    {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
                )
                await send({"type": "http.response.body", "body": b"{", "more_body": True})
                raise ConnectionAbortedError("the proxy breaks the connection, as scripted")
            relayed = [
                (name.encode(), value.encode())
                for name, value in response.headers.multi_items()
                if name.lower() not in _HOP_BY_HOP
            ]
            if "content-length" in response.headers:
                relayed.append((b"content-length", response.headers["content-length"].encode()))
            await send({"type": "http.response.start", "status": response.status_code, "headers": relayed})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _answer(send: Any, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(name.encode(), value.encode()) for name, value in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


@pytest.fixture
def proxy(stack: Stack) -> Iterator[FaultProxy]:
    """A fresh proxy per test: no fault or record carries over."""
    proxy = FaultProxy(stack.url)
    server = ThreadedServer(proxy, proxy.stopping, name="client-proxy")
    proxy.url = f"http://127.0.0.1:{server.start()}"
    try:
        yield proxy
    finally:
        server.stop()


@pytest.fixture
def tone_file(tmp_path: Path) -> Path:
    path = tmp_path / "tone.wav"
    path.write_bytes(TONE)
    return path
