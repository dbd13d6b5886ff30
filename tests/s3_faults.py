"""A fault-injecting HTTP proxy in front of the real S3 server: requests pass through unchanged (the
Host header too, so SigV4 signatures stay valid), except those a rule picks, which get the answer S3
gives when it is overloaded (503 SlowDown). Loopback only."""

from __future__ import annotations

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


class FaultyS3Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
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
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def fail(self, matches: Callable[[str, str], bool], *, times: int) -> Fault:
        fault = Fault(matches, times)
        self.faults.append(fault)
        return fault

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        for fault in self.faults:
            if len(fault.failed) < fault.times and fault.matches(request.method, request.path):
                fault.failed.append(f"{request.method} {request.path}")
                return web.Response(status=503, body=_SLOW_DOWN, content_type="application/xml")
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
