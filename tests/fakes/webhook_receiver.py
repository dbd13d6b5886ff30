"""A webhook receiver on 127.0.0.1 for tests: verifies Standard Webhooks signatures on its own
(independently of the notifier's code) and answers as scripted per path.

    async with serve_receiver() as receiver:
        url = receiver.hook("/a", secret=created_key.webhook_secret, script=[500, 500, 500])
        ...
        receiver.received("/a")  # every request, with `verified`

A path answers its script in order (status codes; "slow" sleeps past any client timeout; "redirect"
answers 307 to `/redirected`), then 200 for ever after (or `then`, e.g. 410). A request whose
signature does not verify is answered 401, so a signing bug shows up as a failure, not a success.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.helpers import free_port, wait_until

TOLERANCE_SECONDS = 300


def secret_key(secret: str) -> bytes:
    """`whsec_<base64>` → key bytes (standard or URL-safe alphabet, padding optional)."""
    assert secret.startswith("whsec_"), secret
    encoded = secret[len("whsec_") :].replace("-", "+").replace("_", "/")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)


def verify(secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None) -> bool:
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (msg_id and timestamp.isdigit() and signatures):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int
    at: float

    @property
    def event_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


@dataclass
class Hook:
    secret: str
    script: list[int | str]
    then: int = 200
    calls: int = 0


@dataclass
class WebhookReceiver:
    host: str
    port: int
    hooks: dict[str, Hook] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def hook(self, path: str, *, secret: str, script: list[int | str] | None = None, then: int = 200) -> str:
        """Expect signed requests on `path`; returns its URL."""
        self.hooks[path] = Hook(secret=secret, script=list(script or []), then=then)
        return self.url(path)

    def received(self, path: str | None = None) -> list[Received]:
        return [r for r in self.requests if path is None or r.path == path]

    def delivered(self, path: str) -> list[Received]:
        """Requests on `path` that verified and were answered 2xx."""
        return [r for r in self.received(path) if r.verified and 200 <= r.answered < 300]

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        headers = {key.lower(): value for key, value in request.headers.items()}
        path = request.url.path
        hook = self.hooks.get(path)
        verified = hook is not None and verify(hook.secret, headers, body)
        if hook is None:
            answer: int | str = 404
        elif not verified:
            answer = 401
        else:
            answer = hook.script[hook.calls] if hook.calls < len(hook.script) else hook.then
            hook.calls += 1
        record = Received(path, headers, body, verified, 0, time.time())
        self.requests.append(record)
        if answer == "slow":
            record.answered = 599
            await asyncio.sleep(60)
            return PlainTextResponse("too late")
        if answer == "redirect":
            record.answered = 307
            return Response(status_code=307, headers={"Location": "/redirected"})
        assert isinstance(answer, int)
        record.answered = answer
        return PlainTextResponse(f"answer {answer}", status_code=answer)


@contextlib.asynccontextmanager
async def serve_receiver(host: str = "127.0.0.1") -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(host=host, port=free_port())
    app = Starlette(routes=[Route("/{path:path}", receiver._handle, methods=["POST", "GET"])])
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=receiver.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
    )
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, timeout=10, what="webhook receiver", interval=0.05)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task
