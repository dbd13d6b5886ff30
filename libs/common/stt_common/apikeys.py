"""API key material: keys are random tokens, stored only as SHA-256 hashes.

A fast hash is right here (unlike passwords): keys are 256-bit random, so there is nothing to
brute-force, and the lookup by hash must be cheap on every request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "stt_"


@dataclass(frozen=True)
class NewKey:
    plaintext: str
    key_hash: str
    prefix: str
    webhook_secret: str


def hash_api_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def keys_match(plaintext: str, key_hash: str) -> bool:
    """Constant-time comparison of a presented key with a stored hash."""
    return hmac.compare_digest(hash_api_key(plaintext), key_hash)


def generate_api_key() -> NewKey:
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(
        plaintext=plaintext,
        key_hash=hash_api_key(plaintext),
        prefix=plaintext[: len(KEY_PREFIX) + 6],
        # Standard Webhooks secrets are standard base64 of the key bytes after the `whsec_` prefix.
        webhook_secret="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
    )
