"""A fault-injecting HTTP proxy in front of the real S3 server: requests pass through unchanged (the
Host header too, so SigV4 signatures stay valid), except those a rule picks, which either get the
answer S3 gives when it is overloaded (503 SlowDown) or are held for a while before they are passed
on. A held request is passed on even if its client gave up meanwhile, as a server that has received
a whole PUT body commits it whatever the client does next. Loopback only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

# Hop-by-hop headers, and those aiohttp recomputes for the body it sends.
_NOT_FORWARDED = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}
)
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Fault:
    """Answer 503 SlowDown to the next `times` requests for which `matches(method, path)` holds."""

    matches: Callable[[str, str], bool]
    times: int
    failed: list[str] = field(default_factory=list)


@dataclass
class Delay:
    """Hold every request for which `matches(method, path)` holds for `seconds`, then pass it on."""

    matches: Callable[[str, str], bool]
    seconds: float
    held: list[str] = field(default_factory=list)
    passed_on: list[str] = field(default_factory=list)


class FaultyS3Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self.delays: list[Delay] = []
        self._forwarding: set[asyncio.Task[web.Response]] = set()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FaultyS3Proxy:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._client = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*self._forwarding, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def fail(self, matches: Callable[[str, str], bool], *, times: int) -> Fault:
        fault = Fault(matches, times)
        self.faults.append(fault)
        return fault

    def delay(self, matches: Callable[[str, str], bool], *, seconds: float) -> Delay:
        delay = Delay(matches, seconds)
        self.delays.append(delay)
        return delay

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        what = f"{request.method} {request.path}"
        for fault in self.faults:
            if len(fault.failed) < fault.times and fault.matches(request.method, request.path):
                fault.failed.append(what)
                return web.Response(status=503, body=_SLOW_DOWN, content_type="application/xml")
        delays = [delay for delay in self.delays if delay.matches(request.method, request.path)]
        # In a task of its own: a client that disconnects cancels this handler, not the forwarding.
        forwarding = asyncio.create_task(self._forward(request, body, what, delays))
        self._forwarding.add(forwarding)
        forwarding.add_done_callback(self._forwarding.discard)
        return await asyncio.shield(forwarding)

    async def _forward(
        self, request: web.Request, body: bytes, what: str, delays: list[Delay]
    ) -> web.Response:
        for delay in delays:
            delay.held.append(what)
            await asyncio.sleep(delay.seconds)
        try:
            return await self._pass_on(request, body)
        finally:
            for delay in delays:
                delay.passed_on.append(what)

    async def _pass_on(self, request: web.Request, body: bytes) -> web.Response:
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        async with self._client.request(
            request.method,
            self.upstream + request.raw_path,  # path and query exactly as signed
            headers=headers,
            data=body if body else None,
            skip_auto_headers={"Content-Type", "User-Agent", "Accept", "Accept-Encoding"},
            allow_redirects=False,
        ) as answer:
            payload = await answer.read()
            reply_headers = {k: v for k, v in answer.headers.items() if k.lower() not in _NOT_FORWARDED}
            if request.method == "HEAD":  # no body, but the object's length is the answer
                reply_headers["Content-Length"] = answer.headers.get("Content-Length", "0")
                return web.Response(status=answer.status, headers=reply_headers)
            return web.Response(status=answer.status, body=payload, headers=reply_headers)
