"""Shared library pieces that need no servers: envelope, errors, settings, offset tracking."""

from __future__ import annotations

import uuid

import httpx
import pytest
from aiokafka import TopicPartition
from pydantic import ValidationError

from stt_common.apikeys import generate_api_key, hash_api_key, keys_match
from stt_common.errors import (
    AuthError,
    ErrorCode,
    InvalidAudioError,
    ProviderUnavailableError,
    RateLimitedError,
    classify,
    is_transient,
)
from stt_common.messages import Envelope, Topic
from stt_common.runner import OffsetTracker
from stt_common.settings import Settings


def test_envelope_round_trip_and_keys() -> None:
    job_id = uuid.uuid4()
    chunk = Envelope.for_topic(Topic.CHUNKS_READY, job_id, producer="chunker", chunk_index=7)
    assert Envelope.decode(chunk.encode()) == chunk
    assert chunk.key() == f"{job_id}:7".encode()
    job = Envelope.for_topic(Topic.JOBS_SUBMITTED, job_id, producer="ingest")
    assert job.key() == str(job_id).encode()
    assert job.type == "stt.job.submitted.v1"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b'{"type": "stt.job.submitted.v1", "job_id": "not-a-uuid", "producer": "x"}',
        b'{"type": "stt.unknown.v1", "job_id": "6b4f5f46-9f0a-4a53-9c46-0d5f0d0b6f7e", "producer": "x"}',
        b'{"type": "stt.job.submitted.v1", "job_id": "6b4f5f46-9f0a-4a53-9c46-0d5f0d0b6f7e",'
        b' "producer": "x", "audio": "AAAA"}',
    ],
)
def test_envelope_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        Envelope.decode(raw)


def test_envelope_rejects_missing_value() -> None:
    with pytest.raises(ValueError, match="no value"):
        Envelope.decode(None)


def test_dlq_topic_names() -> None:
    assert Topic.CHUNKS_READY.dlq == "stt.chunks.ready.dlq"


@pytest.mark.parametrize(
    ("exc", "code", "transient"),
    [
        (RateLimitedError("slow down", retry_after=3), ErrorCode.RATE_LIMITED, True),
        (AuthError("bad key"), ErrorCode.AUTH_ERROR, False),
        (InvalidAudioError("garbage"), ErrorCode.INVALID_AUDIO, False),
        (ProviderUnavailableError("503"), ErrorCode.PROVIDER_UNAVAILABLE, True),
        (httpx.ReadTimeout("slow"), ErrorCode.TIMEOUT, True),
        (httpx.ConnectError("refused"), ErrorCode.PROVIDER_UNAVAILABLE, True),
        (TimeoutError(), ErrorCode.TIMEOUT, True),
        # A message that merely mentions a code is not classified by its text.
        (RuntimeError("rate limit exceeded (429)"), ErrorCode.UNKNOWN, False),
    ],
)
def test_classification_is_by_type(exc: BaseException, code: ErrorCode, transient: bool) -> None:
    assert classify(exc) is code
    assert is_transient(exc) is transient


def test_settings_refuse_placeholder_secret_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("STT_S3_SECRET_ACCESS_KEY", "minioadmin")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings()
    monkeypatch.setenv("STT_DEVELOPMENT", "true")
    assert Settings().development
    monkeypatch.setenv("STT_DEVELOPMENT", "false")
    monkeypatch.setenv("STT_S3_SECRET_ACCESS_KEY", "a-real-long-secret-value")
    assert Settings().s3_secret_access_key.get_secret_value() == "a-real-long-secret-value"


def test_api_keys_are_hashed_and_compared() -> None:
    key = generate_api_key()
    assert key.key_hash == hash_api_key(key.plaintext)
    assert key.plaintext not in key.key_hash
    assert keys_match(key.plaintext, key.key_hash)
    assert not keys_match(key.plaintext + "x", key.key_hash)


def test_offset_tracker_commits_only_below_the_first_unfinished() -> None:
    tp = TopicPartition("t", 0)
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.start(tp, offset)
    tracker.finish(tp, 11, ok=True)
    tracker.finish(tp, 12, ok=True)
    assert tracker.committable() == {}  # 10 still running
    tracker.finish(tp, 10, ok=True)
    assert tracker.committable() == {tp: 13}
    tracker.mark_committed({tp: 13})
    tracker.finish(tp, 13, ok=False)  # a failed message is never committed past
    tracker.start(tp, 14)
    tracker.finish(tp, 14, ok=True)
    assert tracker.committable() == {}
    assert tracker.in_flight() == 0
