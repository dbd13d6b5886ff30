"""`verify_webhook` against what the notifier really signs (its own signing code,
stt_notifier.delivery) and, independently, against the `standardwebhooks` package, the reference
implementation of the scheme: each side must accept what the other signs and refuse the same
tampering. (The delivery of a real job, through the notifier process, is in test_client.py.)"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import standardwebhooks

from stt_client import WebhookVerificationError, verify_webhook
from stt_notifier.delivery import encode_body, signature_headers

pytestmark = pytest.mark.timeout(30)

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
EVENT = {
    "type": "job.completed",
    "job_id": "6b4f5f46-9f0a-4a53-9c46-0d5f0d0b6f7e",
    "status": "COMPLETED",
    "created_at": "2026-11-24T10:00:00.123456Z",
    "finished_at": "2026-11-24T10:05:00.654321Z",
    "note": "non-ASCII survives: réunion ✓",
}
BODY = encode_body(EVENT)
MESSAGE_ID = "evt_6b4f5f469f0a4a539c460d5f0d0b6f7e_completed_1"
Tamper = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]


def test_a_notifier_signed_request_verifies_and_gives_the_event() -> None:
    headers = signature_headers(SECRET, MESSAGE_ID, BODY)
    assert verify_webhook(headers, BODY, SECRET) == EVENT
    # Header names in any case (frameworks differ), the body as bytes or as the text it decodes to.
    shouted = {name.upper(): value for name, value in headers.items()}
    assert verify_webhook(shouted, BODY.decode(), SECRET)["job_id"] == EVENT["job_id"]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b.replace(b"COMPLETED", b"FAILED")),
        lambda h, b: ({**h, "webhook-id": MESSAGE_ID + "x"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) - 1)}, b),
        lambda h, b: ({**h, "webhook-signature": h["webhook-signature"].replace("v1,", "v2,")}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
    ],
    ids=["body", "id", "timestamp", "version", "no-signature"],
)
def test_anything_changed_is_refused(tamper: Tamper) -> None:
    headers, body = tamper(signature_headers(SECRET, MESSAGE_ID, BODY), BODY)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body, SECRET)


def test_another_secret_is_refused() -> None:
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify_webhook(signature_headers(SECRET, MESSAGE_ID, BODY), BODY, other)


def test_old_and_future_timestamps_are_refused_within_the_tolerance_only() -> None:
    now = int(time.time())
    stale = signature_headers(SECRET, MESSAGE_ID, BODY, timestamp=now - 301)
    with pytest.raises(WebhookVerificationError, match="old"):
        verify_webhook(stale, BODY, SECRET)
    ahead = signature_headers(SECRET, MESSAGE_ID, BODY, timestamp=now + 301)
    with pytest.raises(WebhookVerificationError, match="ahead"):
        verify_webhook(ahead, BODY, SECRET)
    # The same requests are fine with a longer tolerance, or at the time they were sent.
    assert verify_webhook(stale, BODY, SECRET, tolerance=600)["status"] == "COMPLETED"
    assert verify_webhook(stale, BODY, SECRET, now=now - 300)["status"] == "COMPLETED"
    not_a_number = {**stale, "webhook-timestamp": "soon"}
    with pytest.raises(WebhookVerificationError, match="Unix seconds"):
        verify_webhook(not_a_number, BODY, SECRET)


def test_one_matching_signature_among_several_is_enough() -> None:
    """While a secret is rotated a sender may sign with both; other versions are skipped."""
    headers = signature_headers(SECRET, MESSAGE_ID, BODY)
    old = signature_headers("whsec_" + base64.b64encode(b"o" * 32).decode(), MESSAGE_ID, BODY)
    both = f"{old['webhook-signature']} v1a,bm90LWFuLWVkMjU1MTktc2ln {headers['webhook-signature']}"
    assert verify_webhook({**headers, "webhook-signature": both}, BODY, SECRET)["type"] == "job.completed"
    with pytest.raises(WebhookVerificationError):
        verify_webhook({**headers, "webhook-signature": old["webhook-signature"]}, BODY, SECRET)


def test_secret_spellings_name_the_same_key() -> None:
    """`whsec_` + standard or URL-safe base64, padded or not, is one key; a bare string is the key
    itself (as the notifier treats it)."""
    key = bytes(range(251, 256)) + secrets.token_bytes(26)  # 0xfb..: '+' and '/' in standard base64
    standard = "whsec_" + base64.b64encode(key).decode()
    urlsafe = "whsec_" + base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert standard != urlsafe
    headers = signature_headers(standard, MESSAGE_ID, BODY)
    for spelling in (standard, urlsafe, key):
        assert verify_webhook(headers, BODY, spelling)["job_id"] == EVENT["job_id"]
    bare = signature_headers("plain-secret", MESSAGE_ID, BODY)
    assert verify_webhook(bare, BODY, "plain-secret")["job_id"] == EVENT["job_id"]
    with pytest.raises(ValueError, match="base64"):
        verify_webhook(headers, BODY, "whsec_not base64!")


def test_the_reference_implementation_agrees() -> None:
    reference = standardwebhooks.Webhook(SECRET)
    # What the reference signs, verify_webhook accepts...
    sent_at = datetime.now(tz=UTC)
    theirs = {
        "webhook-id": MESSAGE_ID,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": reference.sign(MESSAGE_ID, sent_at, BODY),
    }
    assert verify_webhook(theirs, BODY, SECRET) == EVENT
    # ...what the notifier signs (and verify_webhook accepts), the reference accepts...
    ours = signature_headers(SECRET, MESSAGE_ID, BODY)
    assert reference.verify(BODY, ours) == EVENT
    # ...both sign the same request the same way...
    at = int(sent_at.timestamp())
    same = signature_headers(SECRET, MESSAGE_ID, BODY, timestamp=at)["webhook-signature"]
    assert same == reference.sign(MESSAGE_ID, datetime.fromtimestamp(at, tz=UTC), BODY)
    # ...and both refuse the same tampered body and the same stale request.
    tampered = BODY.replace(b"COMPLETED", b"CANCELLED")
    stale = signature_headers(SECRET, MESSAGE_ID, BODY, timestamp=int(time.time()) - 301)
    for headers, body in ((ours, tampered), (stale, BODY)):
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            reference.verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            verify_webhook(headers, body, SECRET)
