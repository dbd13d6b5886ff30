"""What the sync and async clients share: the retry policy, the progress-stream (SSE) parser, and the
shaping of submissions. No I/O here, so both clients behave the same by construction."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any

import httpx

from stt_client.errors import ApiConnectionError, ApiError, ApiTimeoutError
from stt_client.models import SubmitOptions

API_PREFIX = "/api/v1"
USER_AGENT = "stt-client/0.1"
SSE_MEDIA_TYPE = "text/event-stream"
DEFAULT_TIMEOUT = 60.0
# A progress stream sends a heartbeat every few seconds: a read this long without one means it broke.
STREAM_READ_TIMEOUT = 120.0

UploadProgress = Callable[[int, int], None]  # (bytes sent, total bytes)


class Repeat(Enum):
    """How safe a request is to send again after an ambiguous failure (the server may have acted)."""

    SAFE = "safe"  # reads, deletes, cancels, submissions with an Idempotency-Key
    UNSAFE = "unsafe"  # retry: again only when the server certainly did nothing (429, no connection)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter, honouring `Retry-After`.

    Retried: 429, 500/502/503/504 and failed or broken connections, `max_retries` times at most. The
    wait is the server's `Retry-After` when it sent one (plus up to 10 % jitter, so that clients
    told the same moment do not all come back at once), else `backoff * 2**n` capped at
    `max_backoff`, with jitter. A `Retry-After` longer than `max_retry_after` is not waited for: the
    error is raised, `retry_after` on it."""

    max_retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2.0**attempt) * self.rng.uniform(0.5, 1.0)

    def after_status(self, attempt: int, error: ApiError, repeat: Repeat) -> float | None:
        """Seconds to wait before sending again after an error answer; None: give up."""
        if attempt >= self.max_retries:
            return None
        retryable = error.status in self.RETRY_STATUSES or error.code == "idempotency_in_progress"
        if not retryable or (repeat is Repeat.UNSAFE and error.status != 429):
            return None
        if error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return None
            return error.retry_after * self.rng.uniform(1.0, 1.1)
        return self._backoff(attempt)

    def after_exception(self, attempt: int, exc: httpx.TransportError, repeat: Repeat) -> float | None:
        """Seconds to wait before sending again after a failed connection; None: give up."""
        if attempt >= self.max_retries:
            return None
        # Nothing reached the server when the connection could not even be made.
        never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        if repeat is Repeat.UNSAFE and not never_sent:
            return None
        return self._backoff(attempt)


def connection_error(base_url: str, exc: httpx.TransportError) -> ApiConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return ApiTimeoutError(f"no answer from {base_url} in time ({type(exc).__name__})", url=base_url)
    return ApiConnectionError(f"cannot reach {base_url} ({type(exc).__name__}: {exc})", url=base_url)


def auth_headers(api_key: str | None, bearer: bool) -> dict[str, str]:
    if not api_key:
        return {}
    return {"Authorization": f"Bearer {api_key}"} if bearer else {"X-API-Key": api_key}


def new_idempotency_key() -> str:
    """One per logical submission, sent on each of its retries."""
    return f"stt-client-{uuid.uuid4()}"


# -- submissions --------------------------------------------------------------------------------


def is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def form_fields(options: SubmitOptions) -> list[tuple[str, str]]:
    """Options as the upload form's text fields (lists repeated, `output` as JSON)."""
    fields: list[tuple[str, str]] = []
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, list):
            fields.extend((name, str(item)) for item in value)
        elif isinstance(value, dict | bool):
            fields.append((name, json.dumps(value)))
        else:
            fields.append((name, str(value)))
    return fields


def url_body(url: str, options: SubmitOptions) -> dict[str, Any]:
    return {"url": url, **{name: value for name, value in options.items() if value is not None}}


class CountingReader:
    """A binary file whose reads are reported (upload progress). Seekable and sized like the file it
    wraps, so the upload has a Content-Length and starts over from byte 0 on a retry."""

    def __init__(self, handle: IO[bytes], total: int, on_read: UploadProgress | None) -> None:
        self._handle = handle
        self._total = total
        self._on_read = on_read
        self._sent = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._sent += len(data)
        if self._on_read is not None and (data or self._total == 0):
            self._on_read(self._sent, self._total)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._handle.seek(offset, whence)
        self._sent = position
        return position

    def tell(self) -> int:
        return self._handle.tell()


def upload_name(source: str | os.PathLike[str] | bytes, filename: str | None) -> str:
    if isinstance(source, bytes):
        if not filename:
            raise ValueError("bytes need a filename whose extension says what they are (e.g. talk.mp3)")
        return filename
    return filename or Path(source).name


# -- progress streams (Server-Sent Events) ------------------------------------------------------


@dataclass
class ServerSentEvent:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        try:
            return json.loads(self.data)
        except ValueError:
            return None


class SSEParser:
    """The event-stream format, line by line (https://html.spec.whatwg.org/#event-stream-interpretation):
    `field: value` lines, `:` comments (heartbeats), an empty line ends an event. `last_event_id` and
    `retry` (seconds) persist across events, as a browser's EventSource keeps them."""

    def __init__(self, last_event_id: str | None = None, retry: float = 1.0) -> None:
        self.last_event_id = last_event_id
        self.retry = retry
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        """The event `line` completes, if any."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = ServerSentEvent(self._event or "message", "\n".join(self._data), self.last_event_id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value) / 1000
        return None


def stream_request_headers(last_event_id: str | None) -> dict[str, str]:
    headers = {"Accept": SSE_MEDIA_TYPE, "Cache-Control": "no-cache"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return headers


def is_event_stream(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == SSE_MEDIA_TYPE


def stream_timeout(deadline_left: float | None) -> httpx.Timeout:
    read = STREAM_READ_TIMEOUT if deadline_left is None else max(0.1, min(STREAM_READ_TIMEOUT, deadline_left))
    return httpx.Timeout(DEFAULT_TIMEOUT, read=read)
