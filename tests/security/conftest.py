"""Security suite fixtures: a loopback canary every hostile URL aims at, a hostile source server
(redirects, endless bodies) on an allow-listed loopback address, a switchable DNS stub, and an
egress guard. Nothing here sends a packet anywhere but 127.0.0.x / ::1.

* The canary (127.0.0.1, and ::1 on the same port where the host has IPv6) is NOT in any
  allow-list: every test that aims at it must leave it with zero connections.
* The bouncer (127.0.0.3) is the only address the apps under test allow-list
  (`ssrf_allow_networks` / `webhook_allow_networks` = 127.0.0.3/32): it is where redirects to the
  canary start from, and where hostile bodies are served.
* `no_egress` refuses any httpx connection to a non-loopback address before a socket exists, so
  a check that lets a public or tunnelled address through is recorded and never sends anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from stt_common.ssrf import IPAddress
from tests.helpers import free_port, wait_until

# Fixtures shared with the integration suites (imported: they are registered where they are named).
from tests.integration.ingest.conftest import IngestProcess, make_api, make_key, run_ingest_process  # noqa: F401
from tests.integration.notifier.conftest import factory, owner  # noqa: F401

BOUNCER_HOST = "127.0.0.3"
BOUNCER_ALLOW = f'["{BOUNCER_HOST}/32"]'
PUBLIC_ADDRESS = "93.184.215.14"  # only ever classified, or refused by `no_egress`

# Known fake secrets the real processes are started with (test_secrets.py looks for them).
FAKE_OPENAI_KEY = "sk-test-" + secrets.token_hex(20)
FAKE_GEMINI_KEY = "AIzaTest" + secrets.token_hex(16)
UPLOAD_IDLE_TIMEOUT = 4.0  # long enough to see a stalled upload in S3, short enough for the suite
UPLOAD_PART_BYTES = 5 * 1024 * 1024


@pytest.fixture(scope="session")
def ingest_process(
    infra_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestProcess]:
    """One real `python -m stt_ingest serve` for the suite: small idle timeout, 5 MiB S3 parts, the
    bouncer allow-listed, fake vendor keys, debug logs (stdout and stderr in `log`)."""
    with run_ingest_process(
        infra_env,
        tmp_path_factory.mktemp("security-ingest"),
        STT_UPLOAD_IDLE_TIMEOUT_SECONDS=str(UPLOAD_IDLE_TIMEOUT),
        STT_UPLOAD_PART_BYTES=str(UPLOAD_PART_BYTES),
        STT_MAX_UPLOAD_BYTES=str(64 * 1024 * 1024),
        STT_MAX_ACTIVE_JOBS_PER_KEY="0",  # hundreds of hostile submissions by one key, none processed
        STT_SSRF_ALLOW_NETWORKS=f"{BOUNCER_HOST}/32",
        STT_OPENAI_API_KEY=FAKE_OPENAI_KEY,
        STT_GEMINI_API_KEY=FAKE_GEMINI_KEY,
        STT_LOG_LEVEL="DEBUG",
    ) as process:
        yield process


# -- the canary ---------------------------------------------------------------------------------


@dataclass
class Canary:
    """A real listening socket that records every connection it accepts (and answers a WAV, so a
    fetch that reaches it would succeed: a leak cannot hide as a failed download)."""

    port: int
    hosts: list[str]
    connections: list[tuple[str, bytes]] = field(default_factory=list)  # (peer, first bytes)

    @property
    def hits(self) -> int:
        return len(self.connections)


def _wav(seconds: float = 0.5) -> bytes:
    frames = int(16000 * seconds)
    data = bytes(frames * 2)
    return (
        b"RIFF" + struct.pack("<I", len(data) + 36) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data" + struct.pack("<I", len(data)) + data
    )  # fmt: skip


WAV = _wav()


@pytest.fixture(scope="session")
async def canary() -> AsyncIterator[Canary]:
    port = free_port()
    hosts = ["127.0.0.1"]
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nConnection: close\r\n"
        + f"Content-Length: {len(WAV)}\r\n\r\n".encode()
        + WAV
    )
    state = Canary(port=port, hosts=hosts)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername"))
        try:
            first = await asyncio.wait_for(reader.read(4096), 2)
        except (TimeoutError, OSError):
            first = b""
        state.connections.append((peer, first))
        with contextlib.suppress(OSError):
            writer.write(answer)
            await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(handle, "127.0.0.1", port)]
    with contextlib.suppress(OSError):
        servers.append(await asyncio.start_server(handle, "::1", port, family=socket.AF_INET6))
        hosts.append("::1")
    try:
        yield state
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


# -- the bouncer: redirects and hostile bodies, on the one allow-listed address -------------------


@dataclass
class Bouncer:
    host: str
    port: int
    hits: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    endless_sent: list[int] = field(default_factory=list)  # bytes sent by each /endless response

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"


def _bouncer_app(bouncer: Bouncer) -> Starlette:
    async def redirect(request: Request) -> Response:
        bouncer.hits.append((request.method, request.url.path))
        await request.body()
        return RedirectResponse(
            request.query_params["to"], status_code=int(request.query_params.get("code", "302"))
        )

    async def missing(request: Request) -> Response:
        bouncer.hits.append((request.method, request.url.path))
        await request.body()
        return PlainTextResponse("no such file", status_code=404)

    async def endless(request: Request) -> Response:
        """A WAV header, then zeros for ever (chunked: no Content-Length to refuse up front)."""
        bouncer.hits.append((request.method, request.url.path))
        index = len(bouncer.endless_sent)
        bouncer.endless_sent.append(0)
        block = bytes(64 * 1024)

        async def body() -> AsyncIterator[bytes]:
            yield WAV[:44]
            while True:
                bouncer.endless_sent[index] += len(block)
                yield block
                await asyncio.sleep(0)

        return StreamingResponse(body(), media_type="audio/wav")

    async def empty(request: Request) -> Response:
        bouncer.hits.append((request.method, request.url.path))
        return Response(b"", media_type="audio/wav")

    async def declared_huge(request: Request) -> Response:
        """Announces 10 GiB, sends a WAV header, then holds the connection open."""
        bouncer.hits.append((request.method, request.url.path))

        async def body() -> AsyncIterator[bytes]:
            yield WAV[:44]
            await asyncio.sleep(30)

        return StreamingResponse(
            body(), media_type="audio/wav", headers={"Content-Length": str(10 * 1024**3)}
        )

    return Starlette(
        routes=[
            Route("/empty.wav", empty),
            Route("/declared-huge.wav", declared_huge),
            Route("/redirect", redirect, methods=["GET", "POST"]),
            Route("/missing.wav", missing, methods=["GET", "POST"]),
            Route("/endless.wav", endless),
        ]
    )


@pytest.fixture(scope="session")
async def bouncer() -> AsyncIterator[Bouncer]:
    state = Bouncer(host=BOUNCER_HOST, port=free_port())
    server = uvicorn.Server(
        uvicorn.Config(
            _bouncer_app(state),
            host=state.host,
            port=state.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
    )
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, timeout=10, what="bouncer server", interval=0.05)
    try:
        yield state
    finally:
        server.should_exit = True
        await task


# -- DNS stub -------------------------------------------------------------------------------------


@dataclass
class SwitchableResolver:
    """Answers only the names it knows, from the current `phase` (a name may answer differently
    when a job is submitted and when its webhook is delivered: DNS rebinding). Unknown names fail
    as a real lookup would; no query ever leaves the process."""

    phases: dict[str, dict[str, list[str]]]
    phase: str = "default"
    calls: list[tuple[str, str]] = field(default_factory=list)  # (phase, host)
    sequences: dict[str, list[list[str]]] = field(default_factory=dict)  # host -> answers in turn

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append((self.phase, host))
        queued = self.sequences.get(host)
        if queued:
            answer = queued.pop(0) if len(queued) > 1 else queued[0]
        else:
            names = {**self.phases.get("default", {}), **self.phases.get(self.phase, {})}
            if host not in names:
                raise OSError(f"stub resolver: unknown name {host}")
            answer = names[host]
        return [ipaddress.ip_address(address) for address in answer]


# -- egress guard ---------------------------------------------------------------------------------


@contextlib.contextmanager
def egress_guard() -> Iterator[list[str]]:
    """httpx in this process may connect to loopback only; anything else is refused before a socket
    is opened, and recorded (the list yielded)."""
    refused: list[str] = []
    original = httpx.AsyncHTTPTransport.handle_async_request

    async def guarded(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            refused.append(str(request.url))
            raise httpx.ConnectError("security test: no traffic beyond loopback", request=request)
        return await original(self, request)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", guarded)
        yield refused


@pytest.fixture
def no_egress() -> Iterator[list[str]]:
    with egress_guard() as refused:
        yield refused


def problem(response: httpx.Response) -> dict[str, Any]:
    """The response as a problem document (asserting that it is one)."""
    assert response.headers.get("content-type") == "application/problem+json", response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    assert isinstance(body.get("code"), str)
    assert body["code"]
    return body


async def multipart_uploads(client: Any, bucket: str, prefix: str) -> set[tuple[str, str]]:
    """In-progress S3 multipart uploads under `prefix`: (key, upload id)."""
    answer = await client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return {(item["Key"], item["UploadId"]) for item in answer.get("Uploads", [])}
