"""The operations endpoint of a worker stage: `/healthz`, `/readyz`, `/metrics`.

A tiny HTTP/1.1 responder on asyncio streams: workers need three GET routes, not a web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stt_common.logs import get_logger

log = get_logger(__name__)

LivenessCheck = Callable[[], str | None]  # None when alive, else the reason
ReadinessCheck = Callable[[], Awaitable[None]]  # raises when not ready

_READINESS_TIMEOUT_SECONDS = 5.0


class OpsServer:
    def __init__(
        self, *, host: str, port: int, liveness: LivenessCheck, readiness: dict[str, ReadinessCheck]
    ) -> None:
        self._host = host
        self._port = port
        self._liveness = liveness
        self._readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def check_ready(self) -> dict[str, str]:
        """Every dependency's state: "ok" or the error, checked concurrently with a timeout."""

        async def one(check: ReadinessCheck) -> str:
            try:
                await asyncio.wait_for(check(), _READINESS_TIMEOUT_SECONDS)
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"[:200]
            return "ok"

        names = list(self._readiness)
        results = await asyncio.gather(*(one(self._readiness[name]) for name in names))
        return dict(zip(names, results, strict=True))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            status, content_type, body = await self._route(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest()
        if path == "/healthz":
            reason = self._liveness()
            if reason is None:
                return "200 OK", "text/plain", b"ok\n"
            return "503 Service Unavailable", "text/plain", f"{reason}\n".encode()
        if path == "/readyz":
            states = await self.check_ready()
            body = "".join(f"{name}: {state}\n" for name, state in states.items()).encode()
            if all(state == "ok" for state in states.values()):
                return "200 OK", "text/plain", body
            log.warning("not ready", checks=states)
            return "503 Service Unavailable", "text/plain", body
        return "404 Not Found", "text/plain", b"not found\n"
