"""Verifying the webhooks the notifier sends (Standard Webhooks signing, docs/webhooks.md).

The notifier signs `{webhook-id}.{webhook-timestamp}.{raw body}` with HMAC-SHA256; the key is the API
key's webhook secret without its `whsec_` prefix, base64-decoded (either alphabet, padded or not).
`webhook-signature` holds space-separated `v1,<base64>` values (several while a secret is rotated).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from stt_client.errors import WebhookVerificationError
from stt_client.models import WebhookEvent

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0  # seconds either way, as Standard Webhooks recommends


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    if not secret.startswith(SECRET_PREFIX):
        # As the notifier does (stt_notifier.delivery.signing_key): a secret without the prefix is
        # the key itself.
        return secret.encode()
    encoded = secret[len(SECRET_PREFIX) :].strip().replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the webhook secret is not whsec_ followed by base64") from exc
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str | bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> WebhookEvent:
    """Check a webhook request and return its event; `WebhookVerificationError` when it is not signed
    with `secret` (`whsec_…`), is older or newer than `tolerance` seconds (a replay), or lacks the
    headers. `body` must be the raw bytes as received: verify before parsing.

    `headers` may be any mapping (a framework's case-insensitive headers, or a plain dict in any
    case). Receivers should also de-duplicate on `webhook-id` (deliveries are at least once)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id", "")
    timestamp = lowered.get("webhook-timestamp", "").strip()
    signatures = lowered.get("webhook-signature", "")
    if not (message_id and timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not timestamp.isdigit():
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds")
    age = (time.time() if now is None else now) - int(timestamp)
    if age > tolerance:
        raise WebhookVerificationError(f"the request is {age:.0f} s old (more than {tolerance:g} s)")
    if -age > tolerance:
        raise WebhookVerificationError(f"the request is dated {-age:.0f} s ahead (more than {tolerance:g} s)")
    raw = body.encode() if isinstance(body, str) else bytes(body)
    signed = f"{message_id}.{timestamp}.".encode() + raw
    expected = base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest())
    matched = False
    for part in signatures.split():
        version, _, value = part.partition(",")
        # Every candidate is compared (no early exit), in constant time.
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            matched = True
    if not matched:
        raise WebhookVerificationError("no signature matches the secret")
    try:
        event: WebhookEvent = json.loads(raw)
    except ValueError as exc:
        raise WebhookVerificationError("the signed body is not JSON") from exc
    return event
