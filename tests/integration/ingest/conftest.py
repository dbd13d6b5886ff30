"""Ingest fixtures: apps served in-process (httpx.ASGITransport, lifespan run for real) or by a real
uvicorn process, API keys made through `stt_ingest.keys`, and local HTTP servers on loopback
addresses for URL ingest (a media server and a redirecting server).

Nothing here talks to anything but 127.0.0.x: URL tests resolve names with a stub resolver, and
non-loopback addresses are only ever classified, never connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from stt_common.messages import Envelope, Topic
from stt_common.providers.catalogue import PROVIDERS
from stt_common.settings import Settings
from stt_common.ssrf import IPAddress
from stt_ingest import keys
from stt_ingest.app import create_app
from stt_ingest.settings import IngestSettings
from tests.helpers import free_port, wait_until
from tests.integration.ingest import media

ROOT = Path(__file__).resolve().parents[3]


# No provider key or endpoint from the environment (a developer's OPENAI_API_KEY): only `local` is
# configured unless a test sets a key.
NO_PROVIDER_KEYS: dict[str, Any] = {
    **{info.key_setting: None for info in PROVIDERS.values() if info.key_setting},
    "openai_base_url": None,
}


def ingest_settings(settings: Settings, **overrides: Any) -> IngestSettings:
    """IngestSettings pointing at the test stack, with overrides."""
    values = {
        **settings.model_dump(),
        **NO_PROVIDER_KEYS,
        "development": True,
        "kafka_enable_idempotence": False,
        # No pipeline runs here, so every job a test submits stays unfinished: one key's submissions
        # over a module would reach the cap (test_policies tests the cap with its own setting).
        "max_active_jobs_per_key": 0,
        # A progress stream (`…/events?follow=true`, SSE) on an unfinished job stays open until this
        # limit: short here, so that no client (schemathesis included) ever holds one for long.
        "follow_max_seconds": 5.0,
    }
    values.update(overrides)
    return IngestSettings(**values)


# -- DNS stub -----------------------------------------------------------------------------------


@dataclass
class StubResolver:
    """Answers only the names it knows (no query ever leaves the process) and counts calls."""

    names: dict[str, list[str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        if host not in self.names:
            raise OSError(f"stub resolver: unknown name {host}")
        return [ipaddress.ip_address(address) for address in self.names[host]]


# -- in-process apps ----------------------------------------------------------------------------


@dataclass
class Api:
    """A started app and a client for it."""

    app: Any
    client: httpx.AsyncClient
    settings: IngestSettings

    @property
    def state(self) -> Any:
        return self.app.state.ingest


AppFactory = Callable[..., contextlib.AbstractAsyncContextManager[Api]]


@pytest.fixture(scope="session")
def make_api(settings: Settings) -> AppFactory:
    @contextlib.asynccontextmanager
    async def factory(
        resolver: StubResolver | None = None, ssl_context: Any = None, **overrides: Any
    ) -> AsyncIterator[Api]:
        config = ingest_settings(settings, **overrides)
        app = create_app(config, resolver=resolver or StubResolver(), fetch_ssl_context=ssl_context)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest.test") as client:
                yield Api(app=app, client=client, settings=config)

    return factory


@pytest.fixture(scope="session")
async def api(make_api: AppFactory) -> AsyncIterator[Api]:
    """The default app: default limits, empty allow-list."""
    async with make_api() as started:
        yield started


# -- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    id: uuid.UUID
    plaintext: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.plaintext}


KeyFactory = Callable[..., Awaitable[Key]]


@pytest.fixture(scope="session")
def make_key(sessionmaker_: async_sessionmaker[AsyncSession]) -> KeyFactory:
    async def factory(rate_limit: int | None = 0, name: str = "test") -> Key:
        created = await keys.create_key(
            sessionmaker_, name=name, tenant="tests", rate_limit_per_minute=rate_limit
        )
        return Key(id=created.id, plaintext=created.api_key)

    return factory


@pytest.fixture
async def key(make_key: KeyFactory) -> Key:
    """A fresh key without a rate limit (so tests do not throttle each other)."""
    return await make_key(rate_limit=0)


# -- Kafka --------------------------------------------------------------------------------------


async def messages_for(
    settings: Settings, topic: Topic, job_id: uuid.UUID, *, at_least: int = 1
) -> list[Envelope]:
    """Every envelope about `job_id` on `topic`, read from the beginning (waits for `at_least`)."""
    found: list[Envelope] = []

    async def read() -> bool:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        try:
            await consumer.topics()  # fetches metadata
            numbers = sorted(consumer.partitions_for_topic(topic.value) or ())
            partitions = [TopicPartition(topic.value, number) for number in numbers]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found.clear()

            async def behind() -> bool:
                for tp in partitions:
                    if await consumer.position(tp) < ends[tp]:
                        return True
                return False

            while await behind():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        try:
                            envelope = Envelope.decode(record.value)
                        except ValueError:
                            continue  # other tests put garbage on the shared topics on purpose (DLQ tests)
                        if envelope.job_id == job_id:
                            found.append(envelope)
        finally:
            await consumer.stop()
        return len(found) >= at_least

    if at_least == 0:
        await read()
        return found
    await wait_until(
        read, timeout=15, what=f"{at_least} message(s) for {job_id} on {topic.value}", interval=0.3
    )
    return found


# -- local HTTP servers -------------------------------------------------------------------------


@dataclass
class LocalServer:
    host: str
    port: int
    hits: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)

    def url(self, path: str, host: str | None = None) -> str:
        shown = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{shown}:{self.port}{path}"


def _media_app(server: LocalServer) -> Starlette:
    wav = media.wav_bytes(seconds=1.0)

    async def record(request: Request) -> None:
        server.hits.append((request.url.path, request.headers.get("host", "")))

    async def tone(request: Request) -> Response:
        await record(request)
        return Response(wav, media_type="audio/wav")

    async def named(request: Request) -> Response:
        await record(request)
        return Response(
            wav,
            media_type="application/octet-stream",
            headers={"Content-Disposition": "attachment; filename*=UTF-8''r%C3%A9union%20notes.wav"},
        )

    async def text(request: Request) -> Response:
        await record(request)
        return PlainTextResponse("this is not audio at all, just text\n" * 20)

    async def big(request: Request) -> Response:
        await record(request)
        size = int(request.query_params.get("size", "100000"))

        async def body() -> AsyncIterator[bytes]:
            yield wav[:44]
            sent = 44
            while sent < size:
                block = bytes(min(65536, size - sent))
                sent += len(block)
                yield block

        return StreamingResponse(body(), media_type="audio/wav")  # no Content-Length: chunked

    async def slow(request: Request) -> Response:
        await record(request)

        async def body() -> AsyncIterator[bytes]:
            yield wav[:1000]
            await asyncio.sleep(30)
            yield wav[1000:]

        return StreamingResponse(body(), media_type="audio/wav")

    async def redirect(request: Request) -> Response:
        await record(request)
        return RedirectResponse(
            request.query_params["to"], status_code=int(request.query_params.get("code", "302"))
        )

    async def loop(request: Request) -> Response:
        await record(request)
        return RedirectResponse(str(request.url), status_code=302)

    async def missing(request: Request) -> Response:
        await record(request)
        return PlainTextResponse("gone", status_code=404)

    return Starlette(
        routes=[
            Route("/tone.wav", tone),
            Route("/download", named),
            Route("/text.mp3", text),
            Route("/big.wav", big),
            Route("/slow.wav", slow),
            Route("/redirect", redirect),
            Route("/loop", loop),
            Route("/missing.wav", missing),
        ]
    )


@contextlib.asynccontextmanager
async def serve_local(host: str, *, ssl_files: tuple[str, str] | None = None) -> AsyncIterator[LocalServer]:
    server_info = LocalServer(host=host, port=free_port())
    config = uvicorn.Config(
        _media_app(server_info),
        host=host,
        port=server_info.port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=1,  # the /slow.wav handler would otherwise hold shutdown for 30 s
        ssl_certfile=ssl_files[0] if ssl_files else None,
        ssl_keyfile=ssl_files[1] if ssl_files else None,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, timeout=10, what=f"local server on {host}", interval=0.05)
    try:
        yield server_info
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def media_server() -> AsyncIterator[LocalServer]:
    """Media and redirects on 127.0.0.1 (the address tests allow-list)."""
    async with serve_local("127.0.0.1") as server:
        yield server


@pytest.fixture(scope="session")
async def other_loopback_server() -> AsyncIterator[LocalServer]:
    """The same server on 127.0.0.2: a loopback address outside the allow-list. A test that ends
    up here has been fooled; it must stay unvisited."""
    async with serve_local("127.0.0.2") as server:
        yield server


@pytest.fixture(scope="session")
async def ipv6_loopback_server() -> AsyncIterator[LocalServer | None]:
    try:
        async with serve_local("::1") as server:
            yield server
    except (OSError, AssertionError, SystemExit):
        yield None


# -- a real ingest process ----------------------------------------------------------------------


@dataclass
class IngestProcess:
    base_url: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


@contextlib.contextmanager
def run_ingest_process(infra_env: dict[str, str], tmp_dir: Path, **env: str) -> Iterator[IngestProcess]:
    port = free_port()
    log = tmp_dir / f"ingest-{port}.log"
    process_env = {
        **os.environ,
        **infra_env,
        "PYTHONPATH": str(ROOT),
        "STT_HTTP_HOST": "127.0.0.1",
        "STT_HTTP_PORT": str(port),
        **env,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stt_ingest", "serve"],
            env=process_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    handle = IngestProcess(base_url=f"http://127.0.0.1:{port}", port=port, log=log, proc=proc)
    try:
        deadline_loop_ready(handle)
        yield handle
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def deadline_loop_ready(handle: IngestProcess, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.proc.poll() is not None:
            raise AssertionError("ingest exited:\n" + handle.log.read_text(errors="replace")[-3000:])
        try:
            if httpx.get(handle.base_url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("ingest did not start:\n" + handle.log.read_text(errors="replace")[-3000:])
