"""Signing (Standard Webhooks) and one HTTP attempt, SSRF-checked at delivery time.

Signature: the Standard Webhooks scheme (https://www.standardwebhooks.com/):

* `webhook-id`: the event id, the same on every attempt (receivers de-duplicate on it);
* `webhook-timestamp`: Unix seconds of this attempt;
* `webhook-signature`: `v1,` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")).

The key is the API key's webhook secret `whsec_<base64>` with the prefix removed and the rest
base64-decoded, as the specification defines it. Both base64 alphabets are accepted (`+/` and the
URL-safe `-_`), padded or not: the bytes are the same either way.

Every attempt checks the URL again (`stt_common.ssrf.check_url`: scheme, names, every resolved
address) and connects to the checked address itself, with the original `Host` header and TLS name,
so a DNS answer that changes between submission and delivery (or between check and connect) cannot
send the request inside the network. Redirects are not followed unless configured (then only
307/308, which keep the method and body, each hop checked the same way). Proxies from the
environment are ignored, and the whole attempt has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import httpx

from stt_common.ssrf import IPNetwork, Resolver, Target, UnsafeUrlError, check_url

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
USER_AGENT = "stt-notifier/0.1 (+webhooks)"
_FOLLOWED_REDIRECTS = {307, 308}
# A URL that cannot resolve may resolve later (DNS being fixed): retried. Every other refusal is a
# property of the URL or of where it points, and retrying would only knock on the same door.
_TRANSIENT_URL_CODES = {"url_unresolvable"}


# -- signing ------------------------------------------------------------------------------------


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; a secret without the prefix is used as it is."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    encoded = secret[len(SECRET_PREFIX) :].replace("-", "+").replace("_", "/")
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the webhook secret is not whsec_ followed by base64") from exc
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 signature>` of `id.timestamp.body`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_headers(
    secret: str, message_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(signing_key(secret), message_id, ts, body),
    }


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON, the same on every attempt."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


# -- one attempt --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    latency_ms: float
    error: str | None = None
    permanent: bool = False  # no retry can change the outcome (blocked URL, unsignable)
    retry_after_seconds: float | None = None
    hops: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410

    @property
    def result_class(self) -> str:
        """`2xx` … `5xx`, or `error` when there was no HTTP answer (metric label)."""
        if self.status_code is None:
            return "error"
        return f"{self.status_code // 100}xx"


@dataclass(frozen=True)
class SenderLimits:
    connect_timeout: float = 5.0
    timeout: float = 15.0
    dns_timeout: float = 5.0
    follow_redirects: bool = False
    max_redirects: int = 3
    max_url_length: int = 2048
    response_bytes: int = 1024


class _AttemptError(Exception):
    pass


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(when.timestamp() - current, 0.0)


class WebhookSender:
    """POSTs one signed body to a webhook URL, SSRF-checked per attempt and per hop."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        allow: Sequence[IPNetwork],
        limits: SenderLimits,
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

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        started = time.perf_counter()
        hops: list[str] = []

        def result(**values: Any) -> AttemptResult:
            latency = round((time.perf_counter() - started) * 1000, 3)
            return AttemptResult(latency_ms=latency, hops=tuple(hops), **values)

        try:
            async with asyncio.timeout(self._limits.timeout):
                current = url
                while True:
                    try:
                        target = await self.check(current)
                    except UnsafeUrlError as exc:
                        prefix = "redirect refused: " if hops else ""
                        return result(
                            status_code=None,
                            error=f"{prefix}{exc.code}: {exc.message}",
                            permanent=exc.code not in _TRANSIENT_URL_CODES,
                        )
                    hops.append(target.url)
                    status, response_headers, excerpt = await self._post(target, body, headers)
                    location = response_headers.get("location")
                    if (
                        self._limits.follow_redirects
                        and status in _FOLLOWED_REDIRECTS
                        and location
                        and len(hops) <= self._limits.max_redirects
                    ):
                        current = urljoin(target.url, location)
                        continue
                    error = None
                    if not 200 <= status < 300:
                        error = f"HTTP {status}"
                        if status in (301, 302, 303, 307, 308):
                            error += f" redirect to {location!r} not followed"
                        if excerpt:
                            error += f": {excerpt}"
                    retry_after = (
                        parse_retry_after(response_headers.get("retry-after"))
                        if status in (429, 503)
                        else None
                    )
                    return result(status_code=status, error=error, retry_after_seconds=retry_after)
        except TimeoutError:
            return result(status_code=None, error=f"timeout: no answer within {self._limits.timeout:g}s")
        except _AttemptError as exc:
            return result(status_code=None, error=str(exc))

    def _client(self) -> httpx.AsyncClient:
        # One client per hop: a pooled connection is keyed by address and must not be reused
        # for a different host name.
        return httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=self._limits.connect_timeout,
                read=self._limits.timeout,
                write=self._limits.timeout,
                pool=self._limits.connect_timeout,
            ),
            transport=httpx.AsyncHTTPTransport(verify=self._verify, retries=0, trust_env=False),
        )

    async def _post(
        self, target: Target, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, httpx.Headers, str]:
        """POST to each checked address in turn until one connects; (status, headers, body excerpt)."""
        request_headers = {
            **headers,
            "Host": target.host_header,
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
        }
        extensions: dict[str, object] = {}
        if target.scheme == "https" and target.literal is None:
            extensions["sni_hostname"] = target.host
        last_error: Exception | None = None
        async with self._client() as client:
            for address in target.addresses:
                request_url = httpx.URL(
                    scheme=target.scheme, host=str(address), port=target.port, raw_path=target.path.encode()
                )
                request = client.build_request(
                    "POST", request_url, headers=request_headers, content=body, extensions=extensions
                )
                try:
                    response = await client.send(request, stream=True)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    last_error = exc
                    continue
                except httpx.TimeoutException as exc:
                    raise _AttemptError(f"timeout: {type(exc).__name__}") from exc
                except httpx.HTTPError as exc:
                    raise _AttemptError(f"request failed: {type(exc).__name__}: {exc}"[:500]) from exc
                try:
                    excerpt = await self._excerpt(response)
                finally:
                    await response.aclose()
                return response.status_code, response.headers, excerpt
        detail = f"{type(last_error).__name__}: {last_error}" if last_error else "no address"
        raise _AttemptError(f"connect failed: {detail}"[:500])

    async def _excerpt(self, response: httpx.Response) -> str:
        """The start of the response body (for the attempt log), never more than the limit."""
        limit = self._limits.response_bytes
        if limit <= 0 or 200 <= response.status_code < 300:
            return ""
        kept = bytearray()
        try:
            async for block in response.aiter_raw():
                kept.extend(block[: limit - len(kept)])
                if len(kept) >= limit:
                    break
        except httpx.HTTPError:
            pass
        return kept.decode("utf-8", errors="replace").strip()
