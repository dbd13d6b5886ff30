"""`POST /api/v1/transcribe`: streamed upload, magic bytes, size limit, options, trigger."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import IdempotencyKey, Job, JobEvent
from stt_common.messages import Topic
from stt_common.s3 import ObjectStore, original_key
from stt_common.settings import Settings
from stt_ingest import idempotency
from tests.helpers import free_port, wait_until
from tests.integration.ingest.conftest import Api, AppFactory, Key, messages_for
from tests.integration.ingest.media import SAMPLES, wav_bytes, wav_of_size

pytestmark = pytest.mark.timeout(120)


def upload(
    content: bytes, filename: str = "talk.wav", content_type: str = "audio/wav", **fields: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {name: value for name, value in fields.items() if value is not None}
    return {"files": {"file": (filename, content, content_type)}, "data": data}


async def job_count(sessionmaker_: async_sessionmaker[AsyncSession], key: Key) -> int:
    async with sessionmaker_() as session:
        return int(
            await session.scalar(select(func.count()).select_from(Job).where(Job.api_key_id == key.id)) or 0
        )


async def test_upload_is_stored_queued_and_answered_202(
    api: Api,
    key: Key,
    store: ObjectStore,
    sessionmaker_: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    content = wav_bytes(1.0)
    response = await api.client.post(
        "/api/v1/transcribe",
        headers=key.headers,
        **upload(
            content,
            language="en",
            prompt="Names: Anahit, Tigran",
            vocabulary="Yerevan",
            output='{"word_timestamps": true}',
        ),
    )
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = uuid.UUID(body["job_id"])
    assert body["status"] == "UPLOADED"
    assert response.headers["location"] == body["links"]["self"] == f"http://ingest.test/api/v1/jobs/{job_id}"
    assert "ratelimit-limit" not in response.headers  # this key has no limit
    assert await store.get_bytes(original_key(job_id)) == content

    async with sessionmaker_() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        events = (
            await session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        ).all()
    assert job.status == "UPLOADED"
    assert job.api_key_id == key.id
    assert (job.provider, job.language, job.context_mode) == ("local", "en", "parallel")
    assert job.options == {
        "prompt": "Names: Anahit, Tigran",
        "vocabulary": ["Yerevan"],
        "output": {"word_timestamps": True, "speaker_labels": False},
    }
    assert (job.original_filename, job.content_type, job.size_bytes) == (
        "talk.wav",
        "audio/wav",
        len(content),
    )
    assert [(e.from_status, e.to_status) for e in events] == [(None, "PENDING"), ("PENDING", "UPLOADED")]

    (trigger,) = await messages_for(settings, Topic.JOBS_SUBMITTED, job_id)
    assert trigger.type == "stt.job.submitted.v1"
    assert trigger.producer == "ingest"


async def test_fields_after_the_file_are_applied(make_api: AppFactory, key: Key) -> None:
    boundary = "xYzBoundary"
    content = SAMPLES["flac"]
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n\r\n'.encode()
        + content
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="provider"\r\n\r\ngemini\r\n'.encode()
        + f"--{boundary}--\r\n".encode()
    )
    async with make_api(gemini_api_key="gm-test") as api:  # gemini is configured
        response = await api.client.post(
            "/api/v1/transcribe",
            headers={**key.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=body,
        )
        assert response.status_code == 202, response.text
        job = (await api.client.get(response.headers["location"], headers=key.headers)).json()
    assert (job["provider"], job["context_mode"], job["content_type"]) == ("gemini", "chained", "audio/flac")


@pytest.mark.parametrize(
    ("content", "filename", "status", "code"),
    [
        (b"I am only text, pretending to be an mp3.\n" * 50, "song.mp3", 415, "unsupported_media_type"),
        (b"RIFF\x10\x00\x00\x00WA", "cut.wav", 415, "unsupported_media_type"),  # truncated header
        (b"", "empty.wav", 422, "empty_file"),
        # A WAV cut short: the header, then nothing (a 20-byte and a complete 44-byte header).
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", "cut.wav", 422, "truncated_media"),
        (wav_bytes(0.0), "silent-header.wav", 422, "truncated_media"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10), "tag-only.mp3", 422, "truncated_media"),
        (SAMPLES["mp4"], "movie.wav", 415, "content_mismatch"),
        (SAMPLES["wav"], "notes.txt", 415, "extension_not_allowed"),
        (SAMPLES["wav"], "noextension", 415, "extension_not_allowed"),
    ],
)
async def test_wrong_files_are_refused_and_leave_nothing(
    api: Api,
    key: Key,
    sessionmaker_: async_sessionmaker[AsyncSession],
    content: bytes,
    filename: str,
    status: int,
    code: str,
) -> None:
    response = await api.client.post("/api/v1/transcribe", headers=key.headers, **upload(content, filename))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert await job_count(sessionmaker_, key) == 0


async def test_every_accepted_format_is_taken(api: Api, key: Key) -> None:
    for ext, content in SAMPLES.items():
        response = await api.client.post(
            "/api/v1/transcribe", headers=key.headers, **upload(content, f"sample.{ext}")
        )
        assert response.status_code == 202, (ext, response.text)


async def test_one_byte_over_the_limit_is_413_and_nothing_is_kept(
    make_api: AppFactory, key: Key, store: ObjectStore, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    limit = 6 * 1024 * 1024  # above one 5 MiB multipart part, so the abort path is exercised
    async with make_api(max_upload_bytes=limit, s3_multipart_chunk_bytes=5 * 1024 * 1024) as small:
        at_limit = await small.client.post(
            "/api/v1/transcribe", headers=key.headers, **upload(wav_of_size(limit))
        )
        assert at_limit.status_code == 202, at_limit.text
        kept = uuid.UUID(at_limit.json()["job_id"])
        assert (await store.head(original_key(kept)))["ContentLength"] == limit

        before = set(await store.list_keys("jobs/"))
        over = await small.client.post(
            "/api/v1/transcribe", headers=key.headers, **upload(wav_of_size(limit + 1))
        )
        assert over.status_code == 413, over.text
        assert over.json()["code"] == "payload_too_large"
        assert set(await store.list_keys("jobs/")) == before
    assert await job_count(sessionmaker_, key) == 1  # only the one at the limit


async def test_declared_content_length_over_the_limit_is_refused_before_reading(
    make_api: AppFactory, key: Key
) -> None:
    async with make_api(max_upload_bytes=1000) as small:
        response = await small.client.post(
            "/api/v1/transcribe",
            headers={
                **key.headers,
                "Content-Type": "multipart/form-data; boundary=b",
                "Content-Length": "999999999",
            },
            content=b"--b--\r\n",
        )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("../../../../etc/passwd.wav", "passwd.wav"),
        ("..\\..\\boot.ini.wav", "boot.ini.wav"),
        ("Ереван — интервью 🎙.wav", "Ереван — интервью 🎙.wav"),
        ("e\u0301te\u0301.wav", "été.wav"),
        ("\u202egnp.wav", "gnp.wav"),
    ],
)
async def test_unicode_and_path_traversal_names_are_stored_safely(
    api: Api, key: Key, store: ObjectStore, raw: str, stored: str
) -> None:
    response = await api.client.post("/api/v1/transcribe", headers=key.headers, **upload(SAMPLES["wav"], raw))
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["job_id"])
    job = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=key.headers)).json()
    assert job["original_filename"] == stored
    # The object key never contains the client's name.
    assert await store.list_keys(f"jobs/{job_id}/") == [original_key(job_id)]


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"provider": "nonexistent"}, ["body", "provider"]),
        ({"language": "english please"}, ["body", "language"]),
        ({"context_mode": "sideways"}, ["body", "context_mode"]),
        ({"webhook_url": "http://169.254.169.254/latest"}, ["body", "webhook_url"]),
        ({"webhook_url": "http://127.0.0.1:9/hook"}, ["body", "webhook_url"]),
        ({"webhook_url": "file:///etc/passwd"}, ["body", "webhook_url"]),
        ({"output": "not json"}, ["body", "output"]),
        ({"output": '{"colour": "blue"}'}, ["body", "output", "colour"]),
        ({"delete_after_seconds": "10"}, ["body", "delete_after_seconds"]),
        ({"chunk_seconds": "29"}, ["body", "chunk_seconds"]),
        ({"chunk_seconds": "901"}, ["body", "chunk_seconds"]),
        ({"chunk_seconds": "two minutes"}, ["body", "chunk_seconds"]),
        ({"surprise": "field"}, ["body", "surprise"]),
    ],
)
async def test_invalid_options_are_422_with_field_errors(
    api: Api,
    key: Key,
    sessionmaker_: async_sessionmaker[AsyncSession],
    fields: dict[str, str],
    loc: list[str],
) -> None:
    response = await api.client.post(
        "/api/v1/transcribe", headers=key.headers, **upload(SAMPLES["wav"], **fields)
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert loc in [error["loc"] for error in problem["errors"]]
    assert all(set(error) == {"loc", "msg", "type"} for error in problem["errors"])  # never the input
    assert await job_count(sessionmaker_, key) == 0


async def test_form_shape_errors(api: Api, key: Key) -> None:
    wrong_name = await api.client.post(
        "/api/v1/transcribe",
        headers=key.headers,
        files={"attachment": ("a.wav", SAMPLES["wav"], "audio/wav")},
    )
    assert (wrong_name.status_code, wrong_name.json()["code"]) == (422, "unexpected_file")
    only_fields = await api.client.post(
        "/api/v1/transcribe",
        headers={**key.headers, "Content-Type": "multipart/form-data; boundary=b"},
        content=b'--b\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n--b--\r\n',
    )
    assert (only_fields.status_code, only_fields.json()["code"]) == (422, "missing_file")
    json_body = await api.client.post("/api/v1/transcribe", headers=key.headers, json={"file": "x"})
    assert (json_body.status_code, json_body.json()["code"]) == (415, "unsupported_content_type")
    two_files = await api.client.post(
        "/api/v1/transcribe",
        headers=key.headers,
        files=[
            ("file", ("a.wav", SAMPLES["wav"], "audio/wav")),
            ("file", ("b.wav", SAMPLES["wav"], "audio/wav")),
        ],
    )
    assert (two_files.status_code, two_files.json()["code"]) == (422, "unexpected_file")


async def test_a_broker_that_is_away_still_gets_a_202_and_a_job_for_the_redrive(
    make_api: AppFactory, key: Key, store: ObjectStore, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    async with make_api(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", trigger_timeout_seconds=2
    ) as no_kafka:
        response = await no_kafka.client.post(
            "/api/v1/transcribe", headers=key.headers, **upload(SAMPLES["wav"])
        )
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["job_id"])
    async with sessionmaker_() as session:
        job = await session.get(Job, job_id)
    assert job is not None
    assert job.status == "UPLOADED"
    assert await store.exists(original_key(job_id))


async def test_idempotent_upload(api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]) -> None:
    headers = {**key.headers, "Idempotency-Key": "upload-1"}
    first = await api.client.post(
        "/api/v1/transcribe", headers=headers, **upload(SAMPLES["wav"], language="en")
    )
    again = await api.client.post(
        "/api/v1/transcribe", headers=headers, **upload(SAMPLES["wav"], language="en")
    )
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    assert again.headers["idempotent-replayed"] == "true"

    other_file = await api.client.post(
        "/api/v1/transcribe", headers=headers, **upload(SAMPLES["mp3"], "a.mp3", language="en")
    )
    other_field = await api.client.post(
        "/api/v1/transcribe", headers=headers, **upload(SAMPLES["wav"], language="fr")
    )
    assert other_file.status_code == other_field.status_code == 422
    assert other_file.json()["code"] == other_field.json()["code"] == "idempotency_key_reused"
    assert await job_count(sessionmaker_, key) == 1

    # A refused upload releases its key, so the client can fix the request and retry with it.
    retry_headers = {**key.headers, "Idempotency-Key": "upload-2"}
    refused = await api.client.post(
        "/api/v1/transcribe", headers=retry_headers, **upload(b"text" * 100, "a.wav")
    )
    assert refused.status_code == 415
    async with sessionmaker_() as session:
        assert await session.get(IdempotencyKey, (key.id, "upload-2")) is None
    fixed = await api.client.post("/api/v1/transcribe", headers=retry_headers, **upload(SAMPLES["wav"]))
    assert fixed.status_code == 202

    bad = await api.client.post(
        "/api/v1/transcribe",
        headers={**key.headers, "Idempotency-Key": "bad key with spaces"},
        **upload(SAMPLES["wav"]),
    )
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_idempotency_key")


async def test_a_reservation_left_by_a_dead_upload_frees_its_key_when_its_lease_lapses(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    """Found by the chaos suite: ingest killed mid-upload leaves its pending reservation behind, and
    the client's retry with the same key was told "in progress" for six hours."""
    headers = {**key.headers, "Idempotency-Key": "died-mid-upload"}
    boundary = "lease-test"
    audio = wav_of_size(400_000)
    gate = asyncio.Event()

    async def stalling_body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode() + audio[:200_000]
        await gate.wait()
        yield audio[200_000:] + f"\r\n--{boundary}--\r\n".encode()

    running = asyncio.create_task(
        api.client.post(
            "/api/v1/transcribe",
            headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=stalling_body(),
        )
    )

    async def reservation() -> IdempotencyKey | None:
        async with sessionmaker_() as session:
            return await session.get(IdempotencyKey, (key.id, "died-mid-upload"))

    row = await wait_until(reservation, timeout=20, what="the upload's reservation")
    # Pending, the reservation is a short lease, not the day-long record a finished upload keeps.
    assert row.request_hash == idempotency.PENDING
    assert row.expires_at <= datetime.now(UTC) + idempotency.PENDING_LEASE + timedelta(seconds=5)
    busy = await api.client.post("/api/v1/transcribe", headers=headers, **upload(SAMPLES["wav"]))
    assert (busy.status_code, busy.json()["code"]) == (409, "idempotency_in_progress")
    assert "free again within 90 s" in busy.json()["detail"]
    gate.set()
    finished = await running
    assert finished.status_code == 202, finished.text
    # Now as if the process had died mid-upload: the row stays pending and nobody renews it.
    async with sessionmaker_() as session, session.begin():
        left = await session.get(IdempotencyKey, (key.id, "died-mid-upload"))
        assert left is not None
        left.request_hash, left.job_id = idempotency.PENDING, None
    async with sessionmaker_() as session, session.begin():  # the lease lapses
        row = await session.get(IdempotencyKey, (key.id, "died-mid-upload"))
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    retried = await api.client.post("/api/v1/transcribe", headers=headers, **upload(SAMPLES["wav"]))
    assert retried.status_code == 202, retried.text
    again = await api.client.post("/api/v1/transcribe", headers=headers, **upload(SAMPLES["wav"]))
    assert again.json()["job_id"] == retried.json()["job_id"]


async def test_a_running_upload_renews_its_reservation(
    key: Key, sessionmaker_: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "_RENEW_EVERY", 0.05)
    soon = datetime.now(UTC) + timedelta(seconds=2)
    async with sessionmaker_() as session, session.begin():
        session.add(
            IdempotencyKey(
                api_key_id=key.id, key="long-upload", request_hash=idempotency.PENDING, expires_at=soon
            )
        )
    async with idempotency.kept_alive(sessionmaker_, key.id, "long-upload"):
        await asyncio.sleep(0.3)  # the upload runs
    async with sessionmaker_() as session:
        row = await session.get(IdempotencyKey, (key.id, "long-upload"))
    assert row is not None
    assert row.expires_at > soon + timedelta(seconds=60)  # renewed to a whole lease from now


async def test_a_multipart_type_without_boundary_is_400(api: Api, key: Key) -> None:
    response = await api.client.post(
        "/api/v1/transcribe", headers={**key.headers, "Content-Type": "multipart/form-data"}, content=b"x"
    )
    assert (response.status_code, response.json()["code"]) == (400, "invalid_multipart")
