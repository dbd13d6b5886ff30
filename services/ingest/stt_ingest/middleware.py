"""Request context (pure ASGI, so streaming bodies pass through untouched):

* `X-Request-ID`: taken from the request when it is a sane token, generated otherwise; bound into
  every log line of the request (structlog contextvars) and returned on the response.
* Metrics by route *template* (`/api/v1/jobs/{job_id}`), never the raw path.
* The last resort for unhandled exceptions: logged with the stack trace, answered as a generic 500
  problem that carries only the request id; or, when a dependency could not be reached (the
  database or object storage down or restarting), as a 503 with Retry-After, so clients retry
  instead of giving up.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import structlog
from fastapi import HTTPException
from sqlalchemy.exc import DBAPIError
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stt_common.logs import get_logger
from stt_ingest import metrics
from stt_ingest.problems import PROBLEM_MEDIA_TYPE, problem_body

log = get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def dependency_unavailable(error: BaseException) -> bool:
    """True when `error` (or what caused it) says a dependency is unreachable or restarting: a
    connection refused, reset or closed (any `ConnectionError` in the chain: Postgres, S3, ...), or
    Postgres starting up or shutting down."""
    seen: BaseException | None = error
    for _ in range(10):  # a cause chain is short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, ConnectionError):
            return True
        # The driver's error (asyncpg's, in the chain): SQLSTATE class 08 is "connection exception",
        # 57P "operator intervention" (shutting down, starting up: "cannot connect now").
        if str(getattr(seen, "sqlstate", None) or "").startswith(("08", "57P")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def request_id_from(headers: Headers) -> str:
    presented = headers.get(REQUEST_ID_HEADER)
    if presented and _VALID_REQUEST_ID.match(presented):
        return presented
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        saved = structlog.contextvars.get_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            log.exception("unhandled error", method=scope.get("method"), route=route_template(scope))
            if response_started:
                raise
            headers = [(REQUEST_ID_HEADER.lower().encode(), request_id.encode())]
            if dependency_unavailable(error):
                status, code = 503, "service_unavailable"
                detail = (
                    "A service this API depends on (database or storage) is unreachable; try again shortly."
                )
                headers.append((b"retry-after", b"5"))
            else:
                status, code = 500, "internal_error"
                detail = "Something went wrong on our side; quote the request id if you report it."
            body = problem_body(status, code, detail, instance=scope.get("path"), request_id=request_id)
            payload = json.dumps(body).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                        (b"content-length", str(len(payload)).encode()),
                        *headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
        finally:
            route = route_template(scope)
            elapsed = time.perf_counter() - started
            metrics.HTTP_REQUESTS.labels(route, str(scope.get("method", "")), str(status)).inc()
            metrics.HTTP_SECONDS.labels(route).observe(elapsed)
            if route not in ("/healthz", "/readyz", "/metrics"):
                log.info(
                    "request",
                    method=scope.get("method"),
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 1),
                )
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(**saved)


class BodyLimitMiddleware:
    """Caps request bodies that the framework reads into memory (JSON). The upload route is exempt:
    it streams its body and enforces its own, larger limit."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            payload = json.dumps(
                problem_body(
                    413,
                    "payload_too_large",
                    f"The request body is larger than {self.max_bytes} bytes.",
                    instance=scope.get("path"),
                    request_id=scope.get("state", {}).get("request_id"),
                )
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                        (b"content-length", str(len(payload)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"The request body is larger than {self.max_bytes} bytes.")
            return message

        await self.app(scope, counting_receive, send)
