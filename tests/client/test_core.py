"""The client's pure parts, case by case: the progress-stream parser, the retry decisions and
`Retry-After`, and how options become form fields. (Their use against the real server:
test_client.py.)"""

from __future__ import annotations

import email.utils
import random

import httpx
import pytest

from stt_client import ApiError, RetryPolicy
from stt_client._core import Repeat, SSEParser, form_fields
from stt_client.errors import retry_after_seconds

pytestmark = pytest.mark.timeout(30)


def test_the_event_stream_parser() -> None:
    parser = SSEParser()
    lines = [
        "retry: 250",
        "",
        ": keep-alive",
        "",
        "id: 7",
        "event: status",
        'data: {"to_status":',
        'data: "COMPLETED"}',
        "",
        "data:no space after the colon",
        "",
        "id: 8",  # an id alone moves the last id, without an event
        "",
        "retry: soon",  # not digits: ignored
        "",
    ]
    events = [event for line in lines if (event := parser.feed(line)) is not None]
    assert [(event.event, event.id) for event in events] == [("status", "7"), ("message", "7")]
    assert events[0].json() == {"to_status": "COMPLETED"}
    assert events[1].data == "no space after the colon"
    assert events[1].json() is None
    assert parser.last_event_id == "8"
    assert parser.retry == 0.25


def _error(status: int, retry_after: float | None = None, code: str = "x") -> ApiError:
    return ApiError(status, code, retry_after=retry_after)


def test_what_is_retried_and_how_long_it_waits() -> None:
    policy = RetryPolicy(
        max_retries=2, backoff=1.0, max_backoff=3.0, max_retry_after=30, rng=random.Random(7)
    )
    # Server trouble: retried when the request is safe to repeat, with a growing, jittered, capped wait.
    waits = [policy.after_status(attempt, _error(503), Repeat.SAFE) for attempt in range(3)]
    assert waits[2] is None, "bounded"
    assert waits[0] is not None
    assert 0.5 <= waits[0] <= 1.0
    assert waits[1] is not None
    assert 1.0 <= waits[1] <= 2.0
    assert policy.after_status(0, _error(503), Repeat.UNSAFE) is None, "the server may have acted"
    assert policy.after_status(0, _error(400), Repeat.SAFE) is None
    assert policy.after_status(0, _error(409, code="idempotency_in_progress"), Repeat.SAFE) is not None
    # 429: the server did nothing, so any request is retried, no sooner than Retry-After.
    told = policy.after_status(0, _error(429, retry_after=4), Repeat.UNSAFE)
    assert told is not None
    assert 4 <= told <= 4.4
    assert policy.after_status(0, _error(429, retry_after=31), Repeat.SAFE) is None, "beyond the limit"
    # Connections: one never made is retried for any request; one that broke only for safe ones.
    refused = httpx.ConnectError("refused")
    broken = httpx.RemoteProtocolError("peer closed")
    assert policy.after_exception(0, refused, Repeat.UNSAFE) is not None
    assert policy.after_exception(0, broken, Repeat.UNSAFE) is None
    assert policy.after_exception(0, broken, Repeat.SAFE) is not None
    assert policy.after_exception(2, refused, Repeat.SAFE) is None


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("7") == 7.0
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(date, now=1_000_000) == 30.0
    assert retry_after_seconds(date, now=1_000_100) == 0.0, "a date in the past: now"
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_options_as_form_fields() -> None:
    fields = form_fields(
        {
            "language": "en",
            "vocabulary": ["Ararat", "Yerevan"],
            "output": {"word_timestamps": True},
            "chunk_seconds": 120,
            "prompt": None,  # not sent: the server's default
        }
    )
    assert fields == [
        ("language", "en"),
        ("vocabulary", "Ararat"),
        ("vocabulary", "Yerevan"),
        ("output", '{"word_timestamps": true}'),
        ("chunk_seconds", "120"),
    ]
