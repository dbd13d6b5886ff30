"""Signing (Standard Webhooks) and one HTTP attempt, SSRF-checked at delivery time.

Signature: the Standard Webhooks scheme (https://www.standardwebhooks.com/):

* `webhook-id`: the event id, the same on every attempt (receivers de-duplicate on it);
* `webhook-timestamp`: Unix seconds of this attempt;
* `webhook-signature`: `v1,` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")).

The key is the API key's webhook secret `whsec_<base64>` with the prefix removed and the rest
base64-decoded, as the specification defines it. Both base64 alphabets are accepted (`+/` and the
URL-safe `-_`), padded or not: the bytes are the same either way.

Every attempt goes through `stt_common.pinned.PinnedClient`: it checks the URL again
(`stt_common.ssrf.check_url`: scheme, names, every resolved address) and connects to the checked
address itself, with the original `Host` header and TLS name,
so a DNS answer that changes between submission and delivery (or between check and connect) cannot
send the request inside the network. Redirects are not followed unless configured (then only
307/308, which keep the method and body, each hop checked the same way). Proxies from the
environment are ignored, and the whole attempt has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from stt_common.pinned import (
    REDIRECT_CODES,
    PinnedClient,
    PinnedError,
    RedirectRefusedError,
    RequestFailedError,
    retry_after_seconds,
)
from stt_common.ssrf import IPNetwork, Resolver, Target, UnsafeUrlError

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
USER_AGENT = "stt-notifier/0.1 (+webhooks)"
_FOLLOWED_REDIRECTS = {307, 308}
# A URL that cannot resolve may resolve later (DNS being fixed): retried. Every other refusal is a
# property of the URL or of where it points, and retrying would only knock on the same door.
_TRANSIENT_URL_CODES = {"url_unresolvable"}


def _permanent(refusal: UnsafeUrlError) -> bool:
    return refusal.code not in _TRANSIENT_URL_CODES


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


class WebhookSender:
    """POSTs one signed body to a webhook URL through `PinnedClient`, checked per attempt and per hop."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        allow: Sequence[IPNetwork],
        limits: SenderLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limits = limits
        self._client = PinnedClient(
            resolver=resolver,
            allow=allow,
            connect_timeout=limits.connect_timeout,
            read_timeout=limits.timeout,
            dns_timeout=limits.dns_timeout,
            max_url_length=limits.max_url_length,
            ssl_context=ssl_context,
        )

    async def check(self, url: str) -> Target:
        return await self._client.check(url)

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        started = time.perf_counter()
        hops: list[str] = []

        def result(**values: Any) -> AttemptResult:
            latency = round((time.perf_counter() - started) * 1000, 3)
            return AttemptResult(latency_ms=latency, hops=tuple(hops), **values)

        request_headers = {
            **headers,
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
        }
        try:
            async with (
                asyncio.timeout(self._limits.timeout),
                self._client.open(
                    url,
                    method="POST",
                    headers=request_headers,
                    content=body,
                    redirect_codes=_FOLLOWED_REDIRECTS if self._limits.follow_redirects else (),
                    max_redirects=self._limits.max_redirects,
                    raise_too_many=False,  # the redirect past the limit is the answer, not followed
                    hops=hops,
                ) as answer,
            ):
                status = answer.response.status_code
                response_headers = answer.response.headers
                excerpt = await self._excerpt(answer.response)
        except TimeoutError:
            return result(status_code=None, error=f"timeout: no answer within {self._limits.timeout:g}s")
        except UnsafeUrlError as exc:
            return result(status_code=None, error=f"{exc.code}: {exc.message}", permanent=_permanent(exc))
        except RedirectRefusedError as exc:
            refusal = exc.refusal
            return result(
                status_code=None,
                error=f"redirect refused: {refusal.code}: {refusal.message}",
                permanent=_permanent(refusal),
            )
        except RequestFailedError as exc:
            if exc.timed_out:
                return result(status_code=None, error=f"timeout: {type(exc.cause).__name__}")
            return result(status_code=None, error=str(exc)[:500])
        except PinnedError as exc:  # ConnectFailedError: no address answered
            return result(status_code=None, error=str(exc)[:500])
        location = response_headers.get("location")
        error = None
        if not 200 <= status < 300:
            error = f"HTTP {status}"
            if status in REDIRECT_CODES:
                error += f" redirect to {location!r} not followed"
            if excerpt:
                error += f": {excerpt}"
        retry_after = None
        if status in (429, 503):
            retry_after = retry_after_seconds(response_headers.get("retry-after"))
        return result(status_code=status, error=error, retry_after_seconds=retry_after)

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
