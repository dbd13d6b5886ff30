"""`Client` and `AsyncClient` against the real pipeline (tests/client/conftest.py): submissions of a
file, bytes and a URL; waiting through progress streams and by polling; every result format;
list, cancel, retry, delete; typed errors; retries with one Idempotency-Key through a proxy that
loses answers; Retry-After; and a webhook from the notifier verified with `verify_webhook`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_client import (
    ApiError,
    AsyncClient,
    Client,
    Job,
    RetryPolicy,
    WaitTimeoutError,
    WebhookVerificationError,
    verify_webhook,
)
from stt_client.models import Transcript, WebhookEvent
from stt_ingest.keys import create_key
from tests.client.conftest import FOLLOW_MAX_SECONDS, TONE, FaultProxy, Key, Loopback, Stack

pytestmark = pytest.mark.timeout(120)

FAST = RetryPolicy(backoff=0.05)  # retries without the default backoff's seconds


def test_submit_a_file_bytes_and_a_url_wait_and_fetch_every_format(
    stack: Stack, loopback: Loopback, key: Key, tone_file: Path
) -> None:
    sent: list[tuple[int, int]] = []
    with Client(stack.url, key.api_key) as stt:
        from_file = stt.submit(tone_file, on_upload=lambda done, total: sent.append((done, total)))
        from_bytes = stt.submit(TONE, filename="memo.wav", language="en")
        from_url = stt.submit(f"{loopback.url}/tone.wav", webhook_url=f"{loopback.url}/hook")
        assert sent[-1] == (len(TONE), len(TONE)), "upload progress reaches the whole file"
        assert from_url["status"] == "PENDING"  # the server fetches it next
        ids = [from_file["job_id"], from_bytes["job_id"], from_url["job_id"]]
        assert len(set(ids)) == 3, "each submission its own Idempotency-Key, so its own job"
        finished = [stt.wait(job_id, timeout=60) for job_id in ids]
        assert [job["status"] for job in finished] == ["COMPLETED"] * 3, stack.logs()
        assert stt.streams_opened >= 1, "waited through progress streams"
        assert finished[0]["original_filename"] == "tone.wav"
        assert finished[1]["original_filename"] == "memo.wav"
        assert finished[1]["language"] == "en"
        assert finished[2]["source_url"] == f"{loopback.url}/tone.wav"
        assert finished[0]["progress"]["chunks_done"] == finished[0]["progress"]["chunks_total"] >= 1

        job_id = ids[0]
        transcript: Transcript = stt.result(job_id)
        # The fake provider says "w0 w1 ..." a word every half second: 2 s of audio.
        assert transcript["text"].split()[:2] == ["w0", "w1"], transcript["text"]
        assert transcript["job_id"] == job_id
        assert transcript["segments"][0]["end"] > transcript["segments"][0]["start"]
        # The document has every key the model requires, and none it does not know.
        assert Transcript.__required_keys__ <= set(transcript) <= set(Transcript.__annotations__)
        assert json.loads(stt.result_bytes(job_id, "json")) == transcript
        assert stt.result(job_id, "txt").split() == transcript["text"].split()
        srt = stt.result(job_id, "srt")
        assert srt.startswith("1\n")
        assert "00:00:00,000 -->" in srt
        vtt = stt.result(job_id, "vtt")
        assert vtt.startswith("WEBVTT")
        assert "00:00:00.000 -->" in vtt
        # Listing finds all three, newest first.
        assert [job["id"] for job in stt.iter_jobs()] == ids[::-1]
        page = stt.list_jobs(limit=2, status="COMPLETED")
        assert [job["id"] for job in page["items"]] == ids[:0:-1]
        assert page["next_cursor"]
        rest = stt.list_jobs(limit=2, cursor=page["next_cursor"])
        assert [job["id"] for job in rest["items"]] == ids[:1]
        assert [job["id"] for job in stt.iter_jobs(max_items=2, page_size=1)] == ids[:0:-1]

        # The URL job named a webhook: the notifier's request verifies with the key's secret.
        wait_for(lambda: loopback.hooked(from_url["job_id"]), "the webhook")
        hooked = loopback.hooked(from_url["job_id"])[0]
        event: WebhookEvent = verify_webhook(hooked.headers, hooked.body, key.webhook_secret)
        assert event["type"] == "job.completed"
        assert WebhookEvent.__required_keys__ <= set(event) <= set(WebhookEvent.__annotations__)
        wait_for(lambda: stt.webhooks(from_url["job_id"])["items"][0]["status"] == "SUCCEEDED", "SUCCEEDED")
        deliveries = stt.webhooks(from_url["job_id"])["items"]
        assert deliveries[0]["event_id"] == hooked.headers["webhook-id"]
        assert deliveries[0]["attempts"][-1]["status_code"] == 204
        with pytest.raises(WebhookVerificationError):
            verify_webhook(hooked.headers, hooked.body.replace(b"COMPLETED", b"FAILED"), key.webhook_secret)


def test_answers_lost_after_the_server_acted_are_retried_with_the_same_idempotency_key(
    stack: Stack, proxy: FaultProxy, key: Key, tone_file: Path
) -> None:
    proxy.inject("POST", "/api/v1/transcribe", "502", "drop")
    with Client(proxy.url, key.api_key, retry=FAST) as stt:
        submitted = stt.submit(tone_file)
        again = stt.submit(tone_file)  # a new submission: a new key, a new job
    first, second, third, other = proxy.requests("POST", "/api/v1/transcribe")
    assert (first.fault, second.fault, third.fault) == ("502", "drop", None)
    assert (
        first.headers["idempotency-key"]
        == second.headers["idempotency-key"]
        == third.headers["idempotency-key"]
    )
    assert other.headers["idempotency-key"] != first.headers["idempotency-key"]
    # Ingest made the job on the first attempt; the retries were given that job back.
    made = json.loads(first.upstream_body)["job_id"]
    assert made == json.loads(second.upstream_body)["job_id"] == submitted["job_id"]
    assert first.upstream_headers.get("idempotent-replayed") is None
    assert second.upstream_headers["idempotent-replayed"] == "true"
    with Client(stack.url, key.api_key) as stt:
        assert {job["id"] for job in stt.iter_jobs()} == {made, again["job_id"]}
        for job_id in (made, again["job_id"]):  # finished, so the next test's pipeline is idle
            stt.wait(job_id, timeout=60)


def test_a_request_that_is_not_safe_to_repeat_is_not_repeated(
    stack: Stack, proxy: FaultProxy, loopback: Loopback, key: Key
) -> None:
    """A cancel whose answer is lost is not sent again (the server may have acted, and did)."""
    with Client(proxy.url, key.api_key, retry=FAST) as stt:
        job_id = stt.submit(f"{loopback.url}/gated.wav?gate=unsafe")["job_id"]
        proxy.inject("POST", f"/api/v1/jobs/{job_id}/cancel", "502")
        with pytest.raises(ApiError) as lost:
            stt.cancel(job_id)
        assert lost.value.status == 502
        assert lost.value.problem is None, "a gateway's answer, not the API's problem"
        assert len(proxy.requests("POST", "/cancel")) == 1
        assert stt.get_job(job_id)["status"] == "CANCELLED"
    loopback.gate("unsafe").set()


def test_429_is_retried_after_its_retry_after(stack: Stack, proxy: FaultProxy, key: Key) -> None:
    proxy.inject("GET", "/api/v1/jobs", "429:1")
    with Client(proxy.url, key.api_key) as stt:
        assert stt.list_jobs()["items"] == []
    refused, accepted = proxy.requests("GET", "/api/v1/jobs")
    assert refused.fault == "429:1"
    assert accepted.at - refused.at >= 1.0, "not sooner than Retry-After"


async def test_a_retry_after_beyond_the_limit_is_raised_as_the_apis_problem(
    stack: Stack, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    created = await create_key(sessionmaker_, name="slow", tenant="client-tests", rate_limit_per_minute=1)
    async with AsyncClient(stack.url, created.api_key, retry=RetryPolicy(max_retry_after=0.5)) as stt:
        with pytest.raises(ApiError) as refused:  # the minute's one submission, refused as no audio
            await stt.submit(b"meeting notes, not audio\n" * 50, filename="notes.wav")
        assert (refused.value.status, refused.value.code) == (415, "unsupported_media_type")
        started = time.monotonic()
        with pytest.raises(ApiError) as limited:
            await stt.submit(TONE, filename="tone.wav")
        assert time.monotonic() - started < 0.5, "not waited for"
    error = limited.value
    assert (error.status, error.code) == (429, "rate_limited")
    assert error.retry_after is not None
    assert error.retry_after >= 1
    assert error.hint == f"try again in {error.retry_after:g} s"
    assert error.detail
    assert "submissions per" in error.detail
    assert error.problem is not None
    assert error.problem["instance"] == "/api/v1/transcribe"


async def test_typed_errors(stack: Stack, key: Key) -> None:
    async with AsyncClient(stack.url, key.api_key) as stt:
        with pytest.raises(ApiError) as missing:
            await stt.get_job("6b4f5f46-9f0a-4a53-9c46-0d5f0d0b6f7e")
        with pytest.raises(ApiError) as invalid:
            await stt.submit(
                TONE, filename="tone.wav", fallback_providers=["wavam"], language="xx-not-a-tag!"
            )
        with pytest.raises(ValueError, match="filename"):
            await stt.submit(TONE)  # bytes say nothing of their format
    assert (missing.value.status, missing.value.code) == (404, "job_not_found")
    assert missing.value.hint == "check the job id; a key sees only its own jobs"
    assert missing.value.request_id, "the problem's request id, for the operator"
    assert "job_not_found" in str(missing.value)
    assert (invalid.value.status, invalid.value.code) == (422, "validation_error")
    assert invalid.value.errors
    assert all(error["loc"][0] == "body" for error in invalid.value.errors)
    # The key in either header the server accepts; a wrong one is a 401 with its own code.
    async with AsyncClient(stack.url, key.api_key, bearer=True) as bearer:
        assert (await bearer.list_jobs())["items"] == []
        assert [job async for job in bearer.iter_jobs()] == []
    async with AsyncClient(stack.url, "stt_not-a-key") as wrong:
        with pytest.raises(ApiError) as refused:
            await wrong.list_jobs()
    assert (refused.value.status, refused.value.code) == (401, "invalid_api_key")
    assert refused.value.hint == "check the API key"


async def test_cancel_retry_and_wait_across_streams_resumed_with_last_event_id(
    stack: Stack, proxy: FaultProxy, loopback: Loopback, key: Key
) -> None:
    seen: list[str] = []

    async def record(job: Job) -> None:  # on_update may be a coroutine function
        seen.append(job["status"])

    async with AsyncClient(proxy.url, key.api_key) as stt:
        # The download waits at the gate, so the job stays PENDING for as long as the test says.
        job_id = (await stt.submit(f"{loopback.url}/gated.wav?gate=resume"))["job_id"]
        assert (await stt.cancel(job_id))["status"] == "CANCELLED"
        with pytest.raises(ApiError) as twice:
            await stt.cancel(job_id)
        assert twice.value.status == 409
        assert (await stt.retry(job_id))["status"] == "PENDING"
        with pytest.raises(WaitTimeoutError) as impatient:
            await stt.wait(job_id, timeout=0.3)
        assert impatient.value.job["status"] == "PENDING"
        waiting = asyncio.create_task(stt.wait(job_id, on_update=record, timeout=60))
        await asyncio.sleep(FOLLOW_MAX_SECONDS * 2.5)  # the server ends streams; the client resumes
        loopback.gate("resume").set()
        job = await waiting
        assert job["status"] == "COMPLETED", stack.logs()
        assert seen[0] == "PENDING"
        assert seen[-1] == "COMPLETED"
        timeline = [event["to_status"] for event in await stt.events(job_id) if event["to_status"]]
        assert timeline[:3] == ["PENDING", "CANCELLED", "PENDING"]
        assert timeline[-1] == "COMPLETED"
        await stt.delete(job_id)
        with pytest.raises(ApiError) as gone:
            await stt.get_job(job_id)
        assert gone.value.code == "job_not_found"
    events = proxy.requests("GET", f"/jobs/{job_id}/events")
    streams = [seen for seen in events if seen.headers.get("accept") == "text/event-stream"]
    assert len(streams) >= 3, "the stream of the first wait, then the second's, then resumed ones"
    resumed = [stream.headers.get("last-event-id") for stream in streams[2:]]
    assert all(value is not None and value.isdigit() for value in resumed), resumed


async def test_wait_polls_a_server_without_streams(
    stack: Stack, proxy: FaultProxy, loopback: Loopback, key: Key
) -> None:
    proxy.no_streams = True
    async with AsyncClient(proxy.url, key.api_key) as stt:
        job_id = (await stt.submit(f"{loopback.url}/gated.wav?gate=poll"))["job_id"]
        waiting = asyncio.create_task(stt.wait(job_id, poll_interval=0.2, timeout=60))
        await asyncio.sleep(0.5)
        loopback.gate("poll").set()
        job = await waiting
        assert job["status"] == "COMPLETED", stack.logs()
        assert stt.streams_opened == 0
    assert len(proxy.requests("GET", f"/jobs/{job_id}/events")) == 1, "asked for a stream once"
    polls = [seen for seen in proxy.requests("GET", job_id) if seen.path == f"/api/v1/jobs/{job_id}"]
    assert len(polls) >= 3, "then polled"


def wait_for(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)
