"""SSRF-safe HTTP(S) download of a client-supplied URL.

Per hop: `ssrf.check_url` resolves the host once and checks every address; the request then goes to
the checked address itself (the URL is rewritten to the IP), with the original `Host` header and, for
https, the original name as SNI and certificate hostname (`sni_hostname`), so there is no second DNS
lookup a rebinding attacker could answer differently. Redirects are never followed by httpx: each
`Location` is checked like the first URL, up to `max_redirects` hops. Proxies from the environment
are ignored (`trust_env=False`), bodies are read raw (`Accept-Encoding: identity`, no decompression)
so the byte limit is the real limit, and connect/read timeouts bound a slow source.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import unquote, urljoin

import httpx

from stt_common.errors import ErrorCode
from stt_common.ssrf import IPNetwork, Resolver, Target, UnsafeUrlError, check_url

_REDIRECTS = {301, 302, 303, 307, 308}
_READ_BLOCK = 64 * 1024
USER_AGENT = "stt-ingest/0.1 (+url-ingest)"


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
    def __init__(
        self,
        *,
        resolver: Resolver,
        allow: Sequence[IPNetwork],
        limits: FetchLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._resolver = resolver
        self._allow = list(allow)
        self._limits = limits
        self._verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True

    async def check(self, url: str) -> Target:
        return await check_url(
            url,
            resolver=self._resolver,
            allow=self._allow,
            dns_timeout=self._limits.dns_timeout,
            max_length=self._limits.max_url_length,
        )

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self._limits.connect_timeout,
            read=self._limits.read_timeout,
            write=self._limits.read_timeout,
            pool=self._limits.connect_timeout,
        )

    async def _send(self, client: httpx.AsyncClient, target: Target) -> httpx.Response:
        """GET the target from each checked address in turn until one connects."""
        headers = {
            "Host": target.host_header,
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            "Accept-Encoding": "identity",
        }
        extensions: dict[str, object] = {}
        if target.scheme == "https" and target.literal is None:
            extensions["sni_hostname"] = target.host
        last_error: Exception | None = None
        for address in target.addresses:
            url = httpx.URL(
                scheme=target.scheme, host=str(address), port=target.port, raw_path=target.path.encode()
            )
            request = client.build_request("GET", url, headers=headers, extensions=extensions)
            try:
                return await client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                last_error = exc
            except httpx.ConnectError as exc:
                last_error = exc
            except httpx.HTTPError as exc:
                raise FetchError("source_error", "The request to the source failed.") from exc
        if isinstance(last_error, httpx.TimeoutException):
            raise FetchError(
                "source_timeout", "The source did not answer in time.", job_code=ErrorCode.TIMEOUT
            ) from last_error
        raise FetchError("source_unreachable", "Could not connect to the source.") from last_error

    def _client(self) -> httpx.AsyncClient:
        # One client (one connection pool) per hop: a pooled connection is keyed by address and
        # must not be reused for a different host name.
        return httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=self._timeout(),
            transport=httpx.AsyncHTTPTransport(verify=self._verify, retries=0, trust_env=False),
        )

    @contextlib.asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Download]:
        """Follow the URL (and its redirects, each checked) to a 2xx response and hold it open."""
        hops: list[str] = []
        current = url
        while True:
            try:
                target = await self.check(current)
            except UnsafeUrlError as exc:
                if not hops:
                    raise
                raise FetchError("redirect_blocked", f"A redirect was refused: {exc.message}") from exc
            hops.append(target.url)
            client = self._client()
            try:
                response = await self._send(client, target)
            except BaseException:
                await client.aclose()
                raise
            try:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    if len(hops) > self._limits.max_redirects:
                        raise FetchError(
                            "too_many_redirects", f"More than {self._limits.max_redirects} redirects."
                        )
                    current = urljoin(target.url, response.headers["location"])
                    continue
                if not 200 <= response.status_code < 300:
                    raise FetchError("source_http_error", f"The source answered HTTP {response.status_code}.")
                length_header = response.headers.get("content-length", "")
                content_length = int(length_header) if length_header.isdigit() else None
                if content_length is not None and content_length > self._limits.max_bytes:
                    raise FetchError("too_large", f"The file is larger than {self._limits.max_bytes} bytes.")
                yield Download(
                    url=target.url,
                    filename=filename_from(response, target.url),
                    content_length=content_length,
                    _response=response,
                    hops=hops,
                )
                return
            finally:
                await response.aclose()
                await client.aclose()
