"""Hostile clients and hostile sources, beyond what tests/integration/ingest already pins (a silent
client's 408, chunked and declared oversize bodies, an empty file part, a finite chunked source over
the limit are in test_streaming.py / test_upload.py / test_url.py):

* slow loris against a real uvicorn ingest process, stalling *after* the upload has become an S3
  multipart upload with parts sent: 408 after `upload_idle_timeout_seconds`, the multipart upload
  aborted (none left in progress), nothing under the job's prefix, no job row left behind;
* a URL source whose chunked body never ends: the job fails naming the size limit, in bounded time,
  the source's connection is dropped, and the S3 multipart upload that had started is aborted;
* a source that announces 10 GiB, and one that serves nothing;
* a request with no body at all, to the real process.

Loopback only: the sources are the bouncer on 127.0.0.3, the one address the operator allow-list
(`ssrf_allow_networks`) admits.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Job
from stt_common.s3 import ObjectStore, job_prefix
from tests.helpers import wait_until
from tests.integration.ingest.conftest import (
    Api,
    AppFactory,
    IngestProcess,
    Key,
    KeyFactory,
    StubResolver,
)
from tests.security.conftest import (
    BOUNCER_ALLOW,
    BOUNCER_HOST,
    UPLOAD_IDLE_TIMEOUT,
    Bouncer,
    multipart_uploads,
)

pytestmark = pytest.mark.timeout(120)

IDLE_TIMEOUT = UPLOAD_IDLE_TIMEOUT
BOUNDARY = "securityBoundary"


@pytest.fixture(scope="module")
async def hostile_key(make_key: KeyFactory) -> Key:
    return await make_key(rate_limit=0, name="hostile")


async def jobs_of(sessions: async_sessionmaker[AsyncSession], key: Key) -> list[Job]:
    async with sessions() as session:
        return list(await session.scalars(select(Job).where(Job.api_key_id == key.id)))


def wav_header(data_size: int) -> bytes:
    return (
        b"RIFF" + struct.pack("<I", data_size + 36) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data" + struct.pack("<I", data_size)
    )  # fmt: skip


def head(key: Key, content_length: int) -> bytes:
    return (
        "POST /api/v1/transcribe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-API-Key: {key.plaintext}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


async def read_answer(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes, or its whole response (Content-Length)."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        block = await asyncio.wait_for(reader.read(65536), max(deadline - time.monotonic(), 0.1))
        data += block
        head_, sep, body = data.partition(b"\r\n\r\n")
        if not block:
            return data
        if sep:
            lengths = [
                int(line.split(b":", 1)[1])
                for line in head_.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if lengths and len(body) >= lengths[0]:
                return data


# -- slow loris ---------------------------------------------------------------------------------


async def test_slow_loris_mid_multipart_is_cut_off_and_leaves_nothing(
    ingest_process: IngestProcess,
    hostile_key: Key,
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
) -> None:
    """Headers, the form, 12 MiB of a file announced as 40 MiB (two S3 parts' worth), then silence."""
    bucket = store.bucket
    uploads_before = await multipart_uploads(store._client, bucket, "jobs/")
    objects_before = set(await store.list_keys("jobs/"))
    part_head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="loris.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    sent = wav_header(40 * 1024 * 1024) + bytes(12 * 1024 * 1024 - 44)
    reader, writer = await asyncio.open_connection("127.0.0.1", ingest_process.port)
    try:
        writer.write(head(hostile_key, len(part_head) + 40 * 1024 * 1024 + 100) + part_head)
        for offset in range(0, len(sent), 256 * 1024):
            writer.write(sent[offset : offset + 256 * 1024])
            await writer.drain()
        stalled_at = time.monotonic()

        # While the client stalls: the job exists, PENDING, and its S3 multipart upload is open.
        async def in_progress() -> tuple[Job, set[tuple[str, str]]] | None:
            jobs = await jobs_of(sessionmaker_, hostile_key)
            uploads = await multipart_uploads(store._client, bucket, "jobs/") - uploads_before
            return (jobs[0], uploads) if len(jobs) == 1 and uploads else None

        job, uploads = await wait_until(
            in_progress, timeout=IDLE_TIMEOUT + 10, what="the stalled upload in S3", interval=0.1
        )
        assert job.status == "PENDING"
        assert uploads == {(f"jobs/{job.id}/original", next(iter(uploads))[1])}

        answer = await read_answer(reader, timeout=IDLE_TIMEOUT + 20)
        waited = time.monotonic() - stalled_at
    finally:
        writer.close()
    status_line = answer.split(b"\r\n", 1)[0]
    assert b" 408 " in status_line, answer[:400]
    assert b"application/problem+json" in answer
    assert b'"code":"upload_timeout"' in answer
    assert waited >= IDLE_TIMEOUT - 0.5  # cut off by the idle timeout, not by something else

    async def cleaned_up() -> bool:
        return (
            not await jobs_of(sessionmaker_, hostile_key)
            and not await multipart_uploads(store._client, bucket, "jobs/") - uploads_before
            and not await store.list_keys(job_prefix(job.id))
        )

    await wait_until(cleaned_up, timeout=10, what="the cut-off upload leaves no job, object or parts")
    assert set(await store.list_keys("jobs/")) == objects_before


async def test_a_request_with_no_body_is_a_clear_4xx(ingest_process: IngestProcess, hostile_key: Key) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", ingest_process.port)
    try:
        writer.write(head(hostile_key, 0))
        await writer.drain()
        answer = await read_answer(reader, timeout=15)
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:400]
    assert b"application/problem+json" in answer
    assert b'"code":"' in answer


# -- hostile URL sources ------------------------------------------------------------------------

FETCH_LIMIT = 6 * 1024 * 1024  # above one S3 part: the multipart upload starts, then must be aborted


@pytest.fixture(scope="module")
async def fetching(make_api: AppFactory) -> AsyncIterator[Api]:
    resolver = StubResolver(names={"bouncer.test": [BOUNCER_HOST]})
    async with make_api(
        resolver=resolver,
        ssrf_allow_networks=BOUNCER_ALLOW,
        url_fetch_max_bytes=FETCH_LIMIT,
        url_read_timeout_seconds=5.0,
        url_fetch_timeout_seconds=60.0,
    ) as api:
        yield api


async def settled(api: Api, key: Key, job_id: str, timeout: float = 30) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        job: dict[str, Any] = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=key.headers)).json()
        return job if job["status"] != "PENDING" else None

    result: dict[str, Any] = await wait_until(done, timeout=timeout, what=f"job {job_id}", interval=0.05)
    return result


async def test_an_endless_source_is_cut_at_the_size_limit(
    fetching: Api, hostile_key: Key, bouncer: Bouncer, store: ObjectStore
) -> None:
    uploads_before = await multipart_uploads(store._client, store.bucket, "jobs/")
    streams = len(bouncer.endless_sent)
    started = time.monotonic()
    response = await fetching.client.post(
        "/api/v1/transcribe/url",
        headers=hostile_key.headers,
        json={"url": bouncer.url("/endless.wav", host="bouncer.test")},
    )
    assert response.status_code == 202, response.text
    job = await settled(fetching, hostile_key, response.json()["job_id"])
    elapsed = time.monotonic() - started
    assert job["status"] == "FAILED", job
    assert job["error"]["message"] == f"The file is larger than {FETCH_LIMIT} bytes.", job["error"]
    assert elapsed < 30  # bounded by the size limit, not by the (60 s) fetch deadline
    job_id = uuid.UUID(job["id"])
    assert await store.list_keys(job_prefix(job_id)) == []
    assert await multipart_uploads(store._client, store.bucket, "jobs/") - uploads_before == set()
    # The connection was dropped: the source stops being read soon after the limit.
    [index] = range(streams, len(bouncer.endless_sent))

    async def stopped() -> bool:
        first = bouncer.endless_sent[index]
        await asyncio.sleep(0.3)
        return bouncer.endless_sent[index] == first

    await wait_until(stopped, timeout=10, what="the endless source to be abandoned")
    # What it sent is the limit plus what sat in socket buffers, not an unbounded amount.
    assert bouncer.endless_sent[index] < FETCH_LIMIT + 32 * 1024 * 1024


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/declared-huge.wav", f"The file is larger than {FETCH_LIMIT} bytes."),
        ("/empty.wav", "empty"),
    ],
    ids=["declared-10GiB", "empty"],
)
async def test_a_source_announcing_too_much_or_serving_nothing_fails_clearly(
    fetching: Api, hostile_key: Key, bouncer: Bouncer, store: ObjectStore, path: str, reason: str
) -> None:
    started = time.monotonic()
    response = await fetching.client.post(
        "/api/v1/transcribe/url",
        headers=hostile_key.headers,
        json={"url": bouncer.url(path, host="bouncer.test")},
    )
    assert response.status_code == 202, response.text
    job = await settled(fetching, hostile_key, response.json()["job_id"])
    assert time.monotonic() - started < 15  # not the read timeout of the held-open connection
    assert job["status"] == "FAILED", job
    assert reason in job["error"]["message"], job["error"]
    assert await store.list_keys(job_prefix(uuid.UUID(job["id"]))) == []
