"""Job queries and actions. Jobs are put into the states the other stages would leave them in
(rows and objects written directly), then driven through the API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Chunk, Job, JobEvent, JobStatus
from stt_common.errors import next_step
from stt_common.messages import Topic
from stt_common.s3 import ObjectStore, chunk_audio_key, job_prefix, original_key, result_key
from stt_common.settings import Settings
from tests.integration.ingest.conftest import Api, Key, KeyFactory, messages_for

pytestmark = pytest.mark.timeout(120)


async def make_job(
    sessionmaker_: async_sessionmaker[AsyncSession],
    key: Key,
    status: JobStatus = JobStatus.TRANSCRIBING,
    *,
    chunks: list[str] = (),  # type: ignore[assignment]
    created_at: datetime | None = None,
    context_mode: str = "parallel",
    **values: Any,
) -> uuid.UUID:
    job_id = uuid.uuid4()
    async with sessionmaker_() as session, session.begin():
        job = Job(
            id=job_id,
            api_key_id=key.id,
            status=status,
            provider="local",
            context_mode=context_mode,
            options={},
            **values,
        )
        if created_at is not None:
            job.created_at = created_at
        session.add(job)
        await session.flush()
        for index, chunk_status in enumerate(chunks):
            session.add(
                Chunk(
                    job_id=job_id,
                    chunk_index=index,
                    status=chunk_status,
                    start_seconds=index * 290.0,
                    end_seconds=index * 290.0 + 300,
                )
            )
        if chunks:
            job.chunks_total = len(chunks)
    return job_id


async def job_row(sessionmaker_: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> Job | None:
    async with sessionmaker_() as session:
        return await session.get(Job, job_id)


async def test_a_job_shows_status_progress_error_and_links(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await make_job(sessionmaker_, key, chunks=["COMPLETED", "COMPLETED", "PROCESSING", "PENDING"])
    job = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=key.headers)).json()
    assert job["status"] == "TRANSCRIBING"
    assert job["progress"] == {"chunks_total": 4, "chunks_done": 2}
    assert job["error"] is None
    assert job["links"]["cancel"].endswith(f"/api/v1/jobs/{job_id}/cancel")
    assert job["links"]["result"] is None
    assert job["links"]["retry"] is None

    failed = await make_job(
        sessionmaker_, key, JobStatus.FAILED, error_code="auth_error", error_message="bad provider key"
    )
    job = (await api.client.get(f"/api/v1/jobs/{failed}", headers=key.headers)).json()
    assert job["error"] == {
        "code": "auth_error",
        "message": "bad provider key",
        "next_step": next_step("auth_error", failed),
        "retryable": True,
    }
    assert "ask the operator" in job["error"]["next_step"]
    assert job["links"]["retry"] is not None
    assert job["links"]["cancel"] is None

    # The same bytes would fail the same way: no retry offered, and one asked for is refused.
    bad = await make_job(
        sessionmaker_, key, JobStatus.FAILED, error_code="invalid_audio", error_message="not audio"
    )
    job = (await api.client.get(f"/api/v1/jobs/{bad}", headers=key.headers)).json()
    assert job["error"]["retryable"] is False
    assert "re-encoded file" in job["error"]["next_step"]
    assert job["links"]["retry"] is None
    refused = await api.client.post(f"/api/v1/jobs/{bad}/retry", headers=key.headers)
    assert refused.status_code == 409
    assert refused.json()["code"] == "job_not_retryable"
    assert "re-encoded file" in refused.json()["detail"]


async def test_another_keys_job_is_not_found_everywhere(
    api: Api, make_key: KeyFactory, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    owner, stranger = await make_key(), await make_key()
    job_id = await make_job(sessionmaker_, owner, JobStatus.COMPLETED)
    assert (await api.client.get(f"/api/v1/jobs/{job_id}", headers=owner.headers)).status_code == 200
    for method, path in [
        ("GET", ""),
        ("GET", "/events"),
        ("GET", "/result?format=txt"),
        ("POST", "/cancel"),
        ("POST", "/retry"),
        ("DELETE", ""),
    ]:
        response = await api.client.request(method, f"/api/v1/jobs/{job_id}{path}", headers=stranger.headers)
        assert response.status_code == 404, (method, path, response.text)  # not 403: the id is not confirmed
        assert response.json()["code"] == "job_not_found"
    listed = (await api.client.get("/api/v1/jobs", headers=stranger.headers)).json()
    assert listed["items"] == []
    assert await job_row(sessionmaker_, job_id) is not None


async def test_unknown_and_malformed_ids(api: Api, key: Key) -> None:
    missing = await api.client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers=key.headers)
    assert (missing.status_code, missing.json()["code"]) == (404, "job_not_found")
    malformed = await api.client.get("/api/v1/jobs/not-a-uuid", headers=key.headers)
    assert (malformed.status_code, malformed.json()["code"]) == (422, "validation_error")
    assert malformed.json()["errors"][0]["loc"] == ["path", "job_id"]


async def test_listing_filters_and_cursor_pagination(
    api: Api, make_key: KeyFactory, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    key = await make_key()
    base = datetime(2026, 1, 1, tzinfo=UTC)
    statuses = [
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.COMPLETED,
        JobStatus.TRANSCRIBING,
        JobStatus.COMPLETED,
    ]
    ids = [
        await make_job(sessionmaker_, key, status, created_at=base + timedelta(hours=i))
        for i, status in enumerate(statuses)
    ]
    # Two jobs created in the same instant: the id breaks the tie, no job is skipped or repeated.
    twins = [
        await make_job(sessionmaker_, key, JobStatus.COMPLETED, created_at=base + timedelta(hours=10))
        for _ in range(2)
    ]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.client.get("/api/v1/jobs", headers=key.headers, params=params)).json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            assert page["next"] is None
            break
        assert page["next"].startswith("http://ingest.test/api/v1/jobs?")
    assert pages == 4
    expected = sorted(twins, reverse=True) + list(reversed(ids))
    assert seen == [str(job_id) for job_id in expected]

    completed = (
        await api.client.get(
            "/api/v1/jobs", headers=key.headers, params={"status": "COMPLETED", "limit": 100}
        )
    ).json()
    assert {item["id"] for item in completed["items"]} == {
        str(ids[0]),
        str(ids[2]),
        str(ids[4]),
        *map(str, twins),
    }
    two_statuses = (
        await api.client.get(
            "/api/v1/jobs", headers=key.headers, params=[("status", "FAILED"), ("status", "TRANSCRIBING")]
        )
    ).json()
    assert {item["id"] for item in two_statuses["items"]} == {str(ids[1]), str(ids[3])}
    window = (
        await api.client.get(
            "/api/v1/jobs",
            headers=key.headers,
            params={
                "created_after": (base + timedelta(hours=1)).isoformat(),
                "created_before": (base + timedelta(hours=3)).isoformat(),
            },
        )
    ).json()
    assert [item["id"] for item in window["items"]] == [str(ids[2]), str(ids[1])]

    for bad in ("garbage", "eyJ0IjoiMjAyNiJ9", "e30"):
        response = await api.client.get("/api/v1/jobs", headers=key.headers, params={"cursor": bad})
        assert (response.status_code, response.json()["code"]) == (400, "invalid_cursor")
    for params in ({"limit": 0}, {"limit": 101}, {"status": "SLEEPING"}, {"created_after": "yesterday"}):
        response = await api.client.get("/api/v1/jobs", headers=key.headers, params=params)
        assert (response.status_code, response.json()["code"]) == (422, "validation_error"), params


async def test_events_are_the_timeline(api: Api, key: Key) -> None:
    from tests.integration.ingest.media import SAMPLES

    submitted = await api.client.post(
        "/api/v1/transcribe", headers=key.headers, files={"file": ("a.wav", SAMPLES["wav"])}
    )
    job_id = submitted.json()["job_id"]
    await api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=key.headers)
    events = (await api.client.get(f"/api/v1/jobs/{job_id}/events", headers=key.headers)).json()
    assert events["job_id"] == job_id
    assert [(e["from_status"], e["to_status"]) for e in events["items"]] == [
        (None, "PENDING"),
        ("PENDING", "UPLOADED"),
        ("UPLOADED", "CANCELLED"),
    ]
    assert events["items"][-1]["detail"] == {"action": "cancel"}


RESULTS = {
    "json": (b'{"segments": [{"start": 0.0, "end": 1.0, "text": "Barev"}]}', "application/json"),
    "txt": ("Barev, աշխարհ\n".encode(), "text/plain; charset=utf-8"),
    "srt": (b"1\n00:00:00,000 --> 00:00:01,000\nBarev\n", "application/x-subrip"),
    "vtt": (b"WEBVTT\n\n00:00.000 --> 00:01.000\nBarev\n", "text/vtt; charset=utf-8"),
}


async def test_result_is_409_until_completed_then_streamed(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> None:
    job_id = await make_job(sessionmaker_, key, JobStatus.MERGING)
    for fmt, (content, _) in RESULTS.items():
        await store.put_bytes(result_key(job_id, fmt), content)
    early = await api.client.get(f"/api/v1/jobs/{job_id}/result", headers=key.headers)
    assert (early.status_code, early.json()["code"]) == (409, "job_not_completed")

    async with sessionmaker_() as session, session.begin():
        (await session.get(Job, job_id)).status = JobStatus.COMPLETED  # type: ignore[union-attr]
    for fmt, (content, media_type) in RESULTS.items():
        response = await api.client.get(
            f"/api/v1/jobs/{job_id}/result", headers=key.headers, params={"format": fmt}
        )
        assert response.status_code == 200, response.text
        assert response.content == content
        assert response.headers["content-type"] == media_type
        assert response.headers["content-length"] == str(len(content))
    default = await api.client.get(f"/api/v1/jobs/{job_id}/result", headers=key.headers)
    assert default.content == RESULTS["json"][0]
    bad = await api.client.get(
        f"/api/v1/jobs/{job_id}/result", headers=key.headers, params={"format": "docx"}
    )
    assert bad.status_code == 422
    job = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=key.headers)).json()
    assert set(job["links"]["result"]) == {"json", "txt", "srt", "vtt"}

    await store.delete(result_key(job_id, "srt"))
    missing = await api.client.get(
        f"/api/v1/jobs/{job_id}/result", headers=key.headers, params={"format": "srt"}
    )
    assert (missing.status_code, missing.json()["code"]) == (404, "result_not_found")


async def test_cancel_an_active_job(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    job_id = await make_job(sessionmaker_, key, JobStatus.TRANSCRIBING, chunks=["COMPLETED", "PROCESSING"])
    response = await api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=key.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "CANCELLED"
    assert body["error"]["code"] == "cancelled"
    assert body["error"]["message"] == "Cancelled by the client."
    assert f"/api/v1/jobs/{body['id']}/retry" in body["error"]["next_step"]
    assert body["finished_at"] is not None
    (finished,) = await messages_for(settings, Topic.JOBS_FINISHED, job_id)
    assert finished.type == "stt.job.finished.v1"


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED])
async def test_cancel_of_a_finished_job_is_409(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession], status: JobStatus
) -> None:
    job_id = await make_job(sessionmaker_, key, status)
    response = await api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=key.headers)
    assert (response.status_code, response.json()["code"]) == (409, "job_not_cancellable")
    assert (await job_row(sessionmaker_, job_id)).status == status  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "status",
    [
        JobStatus.PENDING,
        JobStatus.UPLOADED,
        JobStatus.CHUNKING,
        JobStatus.TRANSCRIBING,
        JobStatus.MERGING,
        JobStatus.COMPLETED,
    ],
)
async def test_retry_of_a_job_that_is_not_failed_or_cancelled_is_409(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession], status: JobStatus
) -> None:
    job_id = await make_job(sessionmaker_, key, status)
    response = await api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=key.headers)
    assert (response.status_code, response.json()["code"]) == (409, "job_not_retryable")
    assert (await job_row(sessionmaker_, job_id)).status == status  # type: ignore[union-attr]


async def test_retry_without_chunks_goes_back_to_the_chunker(
    api: Api,
    key: Key,
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    settings: Settings,
) -> None:
    job_id = await make_job(
        sessionmaker_, key, JobStatus.FAILED, error_code="timeout", error_message="slow", redrive_count=3
    )
    no_original = await api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=key.headers)
    assert (no_original.status_code, no_original.json()["code"]) == (409, "original_missing")

    await store.put_bytes(original_key(job_id), b"audio")
    response = await api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=key.headers)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body["error"], body["finished_at"]) == ("UPLOADED", None, None)
    assert (await job_row(sessionmaker_, job_id)).redrive_count == 0  # type: ignore[union-attr]
    (trigger,) = await messages_for(settings, Topic.JOBS_SUBMITTED, job_id)
    assert trigger.chunk_index is None


@pytest.mark.parametrize("context_mode", ["parallel", "chained"])
async def test_retry_resumes_only_unfinished_chunks(
    api: Api,
    key: Key,
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    settings: Settings,
    context_mode: str,
) -> None:
    chunks = ["COMPLETED", "FAILED", "COMPLETED", "PROCESSING", "PENDING"]
    job_id = await make_job(sessionmaker_, key, JobStatus.CANCELLED, chunks=chunks, context_mode=context_mode)
    await store.put_bytes(original_key(job_id), b"audio")
    response = await api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=key.headers)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "TRANSCRIBING"
    async with sessionmaker_() as session:
        rows = (
            await session.scalars(select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.chunk_index))
        ).all()
        event = (
            await session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc())
            )
        ).first()
    assert [row.status for row in rows] == ["COMPLETED", "PENDING", "COMPLETED", "PENDING", "PENDING"]
    assert event is not None
    assert event.detail == {"action": "retry", "resume": "chunks", "chunks": [1, 3, 4]}
    expected = [1] if context_mode == "chained" else [1, 3, 4]
    messages = await messages_for(settings, Topic.CHUNKS_READY, job_id, at_least=len(expected))
    assert sorted(message.chunk_index for message in messages) == expected  # type: ignore[type-var]


async def test_retry_with_every_chunk_done_goes_to_merging(
    api: Api,
    key: Key,
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    settings: Settings,
) -> None:
    job_id = await make_job(sessionmaker_, key, JobStatus.FAILED, chunks=["COMPLETED", "COMPLETED"])
    await store.put_bytes(original_key(job_id), b"audio")
    response = await api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=key.headers)
    assert response.json()["status"] == "MERGING"
    await messages_for(settings, Topic.JOBS_TRANSCRIBED, job_id)


async def test_delete_removes_objects_then_rows(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> None:
    job_id = await make_job(sessionmaker_, key, JobStatus.COMPLETED, chunks=["COMPLETED"])
    neighbour = await make_job(sessionmaker_, key, JobStatus.COMPLETED)
    for object_key in (
        original_key(job_id),
        chunk_audio_key(job_id, 0),
        result_key(job_id, "json"),
        original_key(neighbour),
    ):
        await store.put_bytes(object_key, b"x")
    response = await api.client.delete(f"/api/v1/jobs/{job_id}", headers=key.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert await store.list_keys(job_prefix(job_id)) == []
    assert await store.exists(original_key(neighbour))
    assert await job_row(sessionmaker_, job_id) is None
    async with sessionmaker_() as session:
        assert (await session.scalars(select(Chunk).where(Chunk.job_id == job_id))).all() == []
    again = await api.client.delete(f"/api/v1/jobs/{job_id}", headers=key.headers)
    assert again.status_code == 404


async def test_delete_of_an_active_job_is_409(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await make_job(sessionmaker_, key, JobStatus.TRANSCRIBING)
    response = await api.client.delete(f"/api/v1/jobs/{job_id}", headers=key.headers)
    assert (response.status_code, response.json()["code"]) == (409, "job_active")
    assert await job_row(sessionmaker_, job_id) is not None
