"""Signing and scheduling, without any server: the Standard Webhooks vector, our secrets, the
verification example the docs give receivers, and the retry schedule."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from stt_common.apikeys import generate_api_key
from stt_common.pinned import retry_after_seconds
from stt_common.settings import Settings
from stt_notifier.delivery import (
    AttemptResult,
    encode_body,
    sign,
    signature_headers,
    signing_key,
)
from stt_notifier.handler import event_id_for
from stt_notifier.loop import DeliveryLoop
from stt_notifier.settings import DEFAULT_RETRY_SCHEDULE_SECONDS, NotifierSettings
from tests.fakes.webhook_receiver import verify as receiver_verify

DOCS = Path(__file__).resolve().parents[3] / "docs" / "webhooks.md"


def docs_verifier() -> Any:
    """The Python block of docs/webhooks.md, executed as a receiver would paste it."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/webhooks.md should hold exactly one Python block"
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], str(DOCS), "exec"), namespace)
    return namespace["verify_webhook"]


def test_standard_webhooks_reference_vector() -> None:
    # The vector the Standard Webhooks reference libraries test against.
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_our_secrets_decode_to_32_random_bytes_in_either_alphabet() -> None:
    for _ in range(50):
        secret = generate_api_key().webhook_secret
        key = signing_key(secret)
        assert len(key) == 32
        standard = "whsec_" + secret[6:].replace("-", "+").replace("_", "/")
        assert signing_key(standard) == key
    with pytest.raises(ValueError, match="base64"):
        signing_key("whsec_not*base64")
    assert signing_key("plain-secret") == b"plain-secret"


@pytest.mark.parametrize("verifier", [docs_verifier(), receiver_verify], ids=["docs", "receiver"])
def test_receivers_verify_what_the_notifier_signs(verifier: Any) -> None:
    secret = generate_api_key().webhook_secret
    body = encode_body({"type": "job.completed", "job_id": str(uuid.uuid4()), "status": "COMPLETED"})
    headers = signature_headers(secret, "evt_x_completed_1", body)
    assert verifier(secret, headers, body)
    assert not verifier(secret, headers, body + b" ")  # tampered body
    assert not verifier(generate_api_key().webhook_secret, headers, body)  # another key's secret
    assert not verifier(secret, {**headers, "webhook-id": "evt_other"}, body)  # id is signed
    old = signature_headers(secret, "evt_x_completed_1", body, timestamp=int(time.time()) - 3600)
    assert not verifier(secret, old, body)  # replayed
    rotated = {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]}
    assert verifier(secret, rotated, body)  # any one matching v1 signature is enough
    assert not verifier(secret, {k: v for k, v in headers.items() if k != "webhook-signature"}, body)


def test_body_is_canonical_json() -> None:
    payload = {"b": 1, "a": {"y": "é", "x": None}}
    assert encode_body(payload) == encode_body(dict(reversed(payload.items())))
    assert encode_body(payload) == '{"a":{"x":null,"y":"é"},"b":1}'.encode()


def test_event_ids_are_stable_and_fit_the_column() -> None:
    job_id = uuid.UUID("6b4f5f46-9f0a-4a53-9c46-0d5f0d0b6f7e")
    from stt_common.db.models import JobStatus

    assert event_id_for(job_id, JobStatus.COMPLETED, 1) == "evt_6b4f5f469f0a4a539c460d5f0d0b6f7e_completed_1"
    assert event_id_for(job_id, JobStatus.COMPLETED, 0) == event_id_for(job_id, JobStatus.COMPLETED, 1)
    assert len(event_id_for(job_id, JobStatus.CANCELLED, 999)) <= 64


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 60) == pytest.approx(60.0)


def _loop(settings: Settings, **overrides: Any) -> DeliveryLoop:
    values = {**settings.model_dump(), "development": True, **overrides}
    return DeliveryLoop(NotifierSettings(**values), sessions=None, sender=None)  # type: ignore[arg-type]


def test_default_schedule_is_ten_attempts_over_about_a_day() -> None:
    settings = NotifierSettings(development=True)
    assert settings.webhook_max_attempts == 10
    total = sum(DEFAULT_RETRY_SCHEDULE_SECONDS)
    assert 20 * 3600 < total < 26 * 3600
    delays = list(DEFAULT_RETRY_SCHEDULE_SECONDS)
    assert delays == sorted(delays)


def test_retry_delays_follow_the_schedule_with_bounded_jitter() -> None:
    base = Settings(development=True)
    failed = AttemptResult(status_code=500, latency_ms=1.0)
    exact = _loop(base, webhook_retry_schedule_seconds=[10, 20, 40], webhook_retry_jitter=0.0)
    assert [exact.retry_delay(n, failed) for n in (1, 2, 3)] == [10, 20, 40]
    jittered = _loop(base, webhook_retry_schedule_seconds=[100], webhook_retry_jitter=0.2)
    delays = {jittered.retry_delay(1, failed) for _ in range(200)}
    assert all(80 <= delay <= 120 for delay in delays)
    assert len(delays) > 50  # actually random
    throttled = AttemptResult(status_code=429, latency_ms=1.0, retry_after_seconds=300)
    assert exact.retry_delay(1, throttled) == 300  # Retry-After wins when longer
    capped = _loop(base, webhook_retry_schedule_seconds=[10], webhook_retry_after_max_seconds=60)
    assert (
        capped.retry_delay(1, AttemptResult(status_code=503, latency_ms=1, retry_after_seconds=99999)) == 60
    )


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_WEBHOOK_RETRY_SCHEDULE_SECONDS", "1, 2.5,4")
    monkeypatch.setenv("STT_WEBHOOK_ALLOW_NETWORKS", '["10.0.0.0/8", "127.0.0.1"]')
    monkeypatch.setenv("STT_API_URL", "http://127.0.0.1:18000/")
    settings = NotifierSettings(development=True)
    assert settings.webhook_retry_schedule_seconds == [1.0, 2.5, 4.0]
    assert settings.webhook_max_attempts == 4
    assert [str(n) for n in settings.webhook_allow_networks] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert settings.public_base_url == "http://127.0.0.1:18000"
    monkeypatch.setenv("STT_PUBLIC_BASE_URL", "https://stt.example.com")
    assert NotifierSettings(development=True).public_base_url == "https://stt.example.com"
    monkeypatch.setenv("STT_WEBHOOK_RETRY_SCHEDULE_SECONDS", "-1")
    with pytest.raises(ValueError, match=">= 0"):
        NotifierSettings(development=True)
