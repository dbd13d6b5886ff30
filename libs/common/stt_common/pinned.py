"""Outbound HTTP(S) to a client-supplied URL, pinned to the addresses the SSRF check approved.

The one place the mechanism lives (URL ingest's GET and the notifier's webhook POST both use it):

* Per hop, `ssrf.check_url` resolves the host once and checks every address.
* The request then goes to a checked address itself (the URL is rewritten to the IP), with the
  original `Host` header and, for an https name, the original name as SNI and certificate hostname
  (`sni_hostname`): there is no second DNS lookup a rebinding attacker could answer differently.
  The addresses are tried in turn until one answers.
* One httpx client (one connection pool) per hop, `trust_env=False` (no proxy from the
  environment), `follow_redirects=False`, transport `retries=0`.
* Redirects are followed here, never by httpx: each `Location` is checked like the first URL.

What a refusal or failure was is told by a small typed error: the first URL refused
(`UnsafeUrlError`, from `ssrf`), a redirect refused, no address answering, the request failing
after it connected, too many redirects. Each caller turns those into its own codes and messages.

Also `parse_retry_after` / `retry_after_seconds` (`Retry-After`, and `retry-after-ms`).
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import ssl
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import httpx

from stt_common.ssrf import IPNetwork, Resolver, Target, UnsafeUrlError, check_url

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Safe methods may be tried on the next address after any timeout; any other method only after a
# failed connect (a request that connected and then timed out may have been acted on).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# -- errors -------------------------------------------------------------------------------------


class PinnedError(Exception):
    """The request did not get an answer to hand back (a refused first URL is `UnsafeUrlError`)."""


class RedirectRefusedError(PinnedError):
    """A redirect's `Location` failed the SSRF check; `refusal` says why."""

    def __init__(self, refusal: UnsafeUrlError) -> None:
        super().__init__(f"redirect refused: {refusal.code}: {refusal.message}")
        self.refusal = refusal


class ConnectFailedError(PinnedError):
    """No checked address answered. `cause` is the last address's error (None: no address);
    for a safe method a timeout before the answer also moves on, and counts here."""

    def __init__(self, cause: Exception | None) -> None:
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else "no address"
        super().__init__(f"connect failed: {detail}")
        self.cause = cause

    @property
    def timed_out(self) -> bool:
        return isinstance(self.cause, httpx.TimeoutException)


class RequestFailedError(PinnedError):
    """The request failed after it connected (or in a way no other address could fix)."""

    def __init__(self, cause: httpx.HTTPError) -> None:
        super().__init__(f"request failed: {type(cause).__name__}: {cause}")
        self.cause = cause

    @property
    def timed_out(self) -> bool:
        return isinstance(self.cause, httpx.TimeoutException)


class TooManyRedirectsError(PinnedError):
    def __init__(self, max_redirects: int) -> None:
        super().__init__(f"more than {max_redirects} redirects")
        self.max_redirects = max_redirects


# -- the client ---------------------------------------------------------------------------------


@dataclass
class Answer:
    """The final response, open: its body is streamed by the caller (`response.aiter_raw()`)."""

    url: str  # the checked URL of the hop that answered
    response: httpx.Response
    hops: list[str] = field(default_factory=list)


class PinnedClient:
    """Sends one request to a URL (and its redirects), each hop checked and pinned."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        allow: Sequence[IPNetwork],
        connect_timeout: float,
        read_timeout: float,
        dns_timeout: float = 5.0,
        max_url_length: int = 2048,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._resolver = resolver
        self._allow = list(allow)
        self._dns_timeout = dns_timeout
        self._max_url_length = max_url_length
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        self._verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True

    async def check(self, url: str) -> Target:
        return await check_url(
            url,
            resolver=self._resolver,
            allow=self._allow,
            dns_timeout=self._dns_timeout,
            max_length=self._max_url_length,
        )

    def _client(self) -> httpx.AsyncClient:
        # One client (one connection pool) per hop: a pooled connection is keyed by address and
        # must not be reused for a different host name.
        return httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=self._timeout,
            transport=httpx.AsyncHTTPTransport(verify=self._verify, retries=0, trust_env=False),
        )

    async def _send(
        self,
        client: httpx.AsyncClient,
        target: Target,
        method: str,
        headers: Mapping[str, str],
        content: bytes | None,
    ) -> httpx.Response:
        """Send to each checked address in turn until one answers; the response is streamed."""
        request_headers = {"Host": target.host_header, **headers}
        extensions: dict[str, object] = {}
        if target.scheme == "https" and target.literal is None:
            extensions["sni_hostname"] = target.host
        next_on: tuple[type[Exception], ...] = (
            (httpx.ConnectError, httpx.TimeoutException)
            if method.upper() in _SAFE_METHODS
            else (httpx.ConnectError, httpx.ConnectTimeout)
        )
        last_error: Exception | None = None
        for address in target.addresses:
            url = httpx.URL(
                scheme=target.scheme, host=str(address), port=target.port, raw_path=target.path.encode()
            )
            request = client.build_request(
                method, url, headers=request_headers, content=content, extensions=extensions
            )
            try:
                return await client.send(request, stream=True)
            except next_on as exc:
                last_error = exc
            except httpx.HTTPError as exc:
                raise RequestFailedError(exc) from exc
        raise ConnectFailedError(last_error) from last_error

    @contextlib.asynccontextmanager
    async def open(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        redirect_codes: Collection[int] = REDIRECT_CODES,
        max_redirects: int = 5,
        raise_too_many: bool = True,
        hops: list[str] | None = None,
    ) -> AsyncIterator[Answer]:
        """Send the request, following redirects whose status is in `redirect_codes` (the same
        method, headers and body on every hop), and hold the final response open.

        `hops` (if given) receives each checked URL as it is reached, also when an error follows.
        A redirect past `max_redirects` raises `TooManyRedirectsError`, or with
        `raise_too_many=False` is itself the final response (the caller says it was not followed).
        """
        visited = hops if hops is not None else []
        current = url
        count = 0  # hops checked so far
        while True:
            try:
                target = await self.check(current)
            except UnsafeUrlError as exc:
                if not count:
                    raise
                raise RedirectRefusedError(exc) from exc
            count += 1
            visited.append(target.url)
            async with self._client() as client:
                response = await self._send(client, target, method, headers or {}, content)
                try:
                    location = response.headers.get("location")
                    if response.status_code in redirect_codes and location:
                        if count <= max_redirects:
                            current = urljoin(target.url, location)
                            continue
                        if raise_too_many:
                            raise TooManyRedirectsError(max_redirects)
                    yield Answer(url=target.url, response=response, hops=visited)
                    return
                finally:
                    await response.aclose()


# -- Retry-After --------------------------------------------------------------------------------


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` value (seconds or an HTTP date; a date in the past is 0);
    None if absent or invalid. `now` (Unix seconds) is for tests."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = datetime.now(UTC).timestamp() if now is None else now
        return max(when.timestamp() - current, 0.0)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def parse_retry_after(headers: Mapping[str, str] | Any, *, now: float | None = None) -> float | None:
    """Seconds to wait from response headers: `retry-after-ms` (OpenAI and others) first, else
    `Retry-After`; None if neither says."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            ms = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(ms):
                return max(ms / 1000.0, 0.0)
    return retry_after_seconds(headers.get("retry-after"), now=now)
