"""SSRF-safe HTTP(S) download of a client-supplied URL.

The request goes through `stt_common.pinned.PinnedClient`: every hop is checked by `ssrf.check_url`
and sent to the checked address itself (original `Host` header and TLS name), no proxy from the
environment, each redirect's `Location` checked like the first URL, up to `max_redirects` hops.
Here are only the download's own rules: bodies are read raw (`Accept-Encoding: identity`, no
decompression) so the byte limit is the real limit, connect/read timeouts bound a slow source, and
every failure is a `FetchError` with the job's error code.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import unquote

import httpx

from stt_common.errors import ErrorCode
from stt_common.pinned import (
    REDIRECT_CODES,
    ConnectFailedError,
    PinnedClient,
    PinnedError,
    RedirectRefusedError,
    TooManyRedirectsError,
)
from stt_common.ssrf import IPNetwork, Resolver, Target

_READ_BLOCK = 64 * 1024
USER_AGENT = "stt-ingest/0.1 (+url-ingest)"
_HEADERS = {"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"}


class FetchError(Exception):
    """The download failed; `job_code` is the job's error code, `code` says what happened."""

    def __init__(self, code: str, message: str, *, job_code: ErrorCode = ErrorCode.UNKNOWN) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_code = job_code


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_redirects: int = 5
    dns_timeout: float = 5.0
    max_url_length: int = 2048


@dataclass
class Download:
    """An open response: `blocks()` streams its body; `filename` is the best name we know."""

    url: str
    filename: str | None
    content_length: int | None
    _response: httpx.Response
    hops: list[str] = field(default_factory=list)

    async def blocks(self) -> AsyncIterator[bytes]:
        try:
            async for block in self._response.aiter_raw(_READ_BLOCK):
                yield block
        except httpx.TimeoutException as exc:
            raise FetchError(
                "source_timeout", "The source stopped sending.", job_code=ErrorCode.TIMEOUT
            ) from exc
        except httpx.HTTPError as exc:
            raise FetchError("source_error", "The connection to the source broke.") from exc


_FILENAME_STAR = re.compile(r"^(?P<charset>[\w!#$%&+^`{}~-]*)'[\w-]*'(?P<value>.*)$")


def filename_from(response: httpx.Response, url: str) -> str | None:
    """Content-Disposition's filename (RFC 6266, `filename*` first), else the URL's last segment."""
    header = response.headers.get("content-disposition")
    if header:
        message = Message()
        message["content-disposition"] = header
        params = dict(message.get_params(header="content-disposition", failobj=[]) or [])
        star = params.get("filename*")
        if isinstance(star, str):
            match = _FILENAME_STAR.match(star)
            if match:
                with contextlib.suppress(LookupError, UnicodeError):
                    return unquote(match["value"], encoding=match["charset"] or "utf-8", errors="strict")
        plain = message.get_filename()
        if plain:
            return plain
    path = httpx.URL(url).path
    last = unquote(path.rsplit("/", 1)[-1])
    return last or None


class SafeFetcher:
    """GETs a client-supplied URL through `PinnedClient`; only the ingest's rules live here."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        allow: Sequence[IPNetwork],
        limits: FetchLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limits = limits
        self._client = PinnedClient(
            resolver=resolver,
            allow=allow,
            connect_timeout=limits.connect_timeout,
            read_timeout=limits.read_timeout,
            dns_timeout=limits.dns_timeout,
            max_url_length=limits.max_url_length,
            ssl_context=ssl_context,
        )

    async def check(self, url: str) -> Target:
        return await self._client.check(url)

    def _fetch_error(self, exc: PinnedError) -> FetchError:
        if isinstance(exc, RedirectRefusedError):
            return FetchError("redirect_blocked", f"A redirect was refused: {exc.refusal.message}")
        if isinstance(exc, TooManyRedirectsError):
            return FetchError("too_many_redirects", f"More than {self._limits.max_redirects} redirects.")
        if isinstance(exc, ConnectFailedError):
            if exc.timed_out:
                return FetchError(
                    "source_timeout", "The source did not answer in time.", job_code=ErrorCode.TIMEOUT
                )
            return FetchError("source_unreachable", "Could not connect to the source.")
        return FetchError("source_error", "The request to the source failed.")

    @contextlib.asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Download]:
        """Follow the URL (and its redirects, each checked) to a 2xx response and hold it open.

        A refused first URL raises `UnsafeUrlError`; every other failure is a `FetchError`."""
        hops: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            try:
                answer = await stack.enter_async_context(
                    self._client.open(
                        url,
                        method="GET",
                        headers=_HEADERS,
                        redirect_codes=REDIRECT_CODES,
                        max_redirects=self._limits.max_redirects,
                        hops=hops,
                    )
                )
            except PinnedError as exc:
                raise self._fetch_error(exc) from exc
            response = answer.response
            if not 200 <= response.status_code < 300:
                raise FetchError("source_http_error", f"The source answered HTTP {response.status_code}.")
            length_header = response.headers.get("content-length", "")
            content_length = int(length_header) if length_header.isdigit() else None
            if content_length is not None and content_length > self._limits.max_bytes:
                raise FetchError("too_large", f"The file is larger than {self._limits.max_bytes} bytes.")
            yield Download(
                url=answer.url,
                filename=filename_from(response, answer.url),
                content_length=content_length,
                _response=response,
                hops=hops,
            )
