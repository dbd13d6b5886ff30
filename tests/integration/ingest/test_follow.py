"""Progress streams: `GET /api/v1/jobs/{id}/events?follow=true` with `Accept: text/event-stream`.

The real app (real Postgres, Redis, S3, Kafka) served by an in-process uvicorn on loopback, read as
Server-Sent Events through httpx streaming; jobs and their timeline rows are written straight to the
database, as the pipeline's stages write them. No assertion is about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Job, JobEvent, JobStatus
from stt_common.settings import Settings
from stt_ingest.app import create_app
from stt_ingest.follow import FollowHub
from tests.helpers import free_port, wait_until
from tests.integration.ingest.conftest import Key, KeyFactory, StubResolver, ingest_settings

pytestmark = pytest.mark.timeout(180)

SSE = {"Accept": "text/event-stream"}


@dataclass
class Server:
    base_url: str
    app: Any

    @property
    def hub(self) -> FollowHub:
        hub: FollowHub = self.app.state.ingest.follow
        return hub


@contextlib.asynccontextmanager
async def serve(settings: Settings, **overrides: Any) -> AsyncIterator[Server]:
    values: dict[str, Any] = {
        "follow_poll_interval_seconds": 0.05,
        "follow_heartbeat_seconds": 30.0,
        "follow_max_seconds": 60.0,
        **overrides,
    }
    app = create_app(ingest_settings(settings, **values), resolver=StubResolver())
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, timeout=20, what="ingest on uvicorn", interval=0.05)
    try:
        yield Server(base_url=f"http://127.0.0.1:{port}", app=app)
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
async def server(settings: Settings) -> AsyncIterator[Server]:
    async with serve(settings) as started:
        yield started


@dataclass
class Stream:
    status: int
    headers: httpx.Headers
    events: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    body: bytes = b""


async def read_stream(
    base_url: str,
    key: Key,
    job_id: uuid.UUID,
    *,
    last_event_id: int | None = None,
    stop_after: int | None = None,
) -> Stream:
    """Reads a stream until the server closes it (or `stop_after` events have come)."""
    headers = {**key.headers, **SSE}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=60) as client,
        client.stream(
            "GET", f"/api/v1/jobs/{job_id}/events", params={"follow": "true"}, headers=headers
        ) as r,
    ):
        stream = Stream(status=r.status_code, headers=r.headers)
        if r.status_code != 200:
            stream.body = await r.aread()
            return stream
        current: dict[str, Any] = {}
        async for line in r.aiter_lines():
            if line == "":
                if "data" in current:
                    stream.events.append(current)
                    if stop_after is not None and len(stream.events) >= stop_after:
                        return stream
                current = {}
            elif line.startswith(":"):
                stream.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "retry":
                    stream.retry = int(value)
                elif name == "id":
                    current["id"] = int(value)
                elif name == "event":
                    current["event"] = value
                elif name == "data":
                    current["data"] = json.loads(value)
    return stream


async def new_job(
    sessionmaker_: async_sessionmaker[AsyncSession], key: Key, status: JobStatus = JobStatus.TRANSCRIBING
) -> uuid.UUID:
    job_id = uuid.uuid4()
    async with sessionmaker_() as session, session.begin():
        session.add(
            Job(
                id=job_id,
                api_key_id=key.id,
                status=status,
                provider="local",
                context_mode="parallel",
                options={"prompt": None, "vocabulary": [], "output": {}},
                original_filename="tone.wav",
                content_type="audio/wav",
                size_bytes=1000,
            )
        )
        await session.flush()
        session.add(
            JobEvent(job_id=job_id, stage="ingest", to_status=JobStatus.PENDING, detail={"kind": "upload"})
        )
        session.add(
            JobEvent(job_id=job_id, stage="chunker", from_status="PENDING", to_status=status, detail={})
        )
    return job_id


async def add_rows(
    sessionmaker_: async_sessionmaker[AsyncSession],
    job_id: uuid.UUID,
    *,
    progress: int = 0,
    to_status: JobStatus | None = None,
) -> None:
    async with sessionmaker_() as session, session.begin():
        for index in range(progress):
            session.add(JobEvent(job_id=job_id, stage="transcriber", detail={"chunk_index": index}))
            await session.flush()
        if to_status is not None:
            session.add(
                JobEvent(job_id=job_id, stage="merger", from_status="MERGING", to_status=to_status, detail={})
            )
            if to_status.terminal:
                job = await session.get(Job, job_id)
                assert job is not None
                job.status = to_status


async def test_events_in_order_then_terminal_closes(
    server: Server, sessionmaker_: async_sessionmaker[AsyncSession], key: Key
) -> None:
    job_id = await new_job(sessionmaker_, key)
    reader = asyncio.create_task(read_stream(server.base_url, key, job_id))
    await wait_until(lambda: server.hub.follower_count >= 1, timeout=20, what="a follower")
    await add_rows(sessionmaker_, job_id, progress=3)
    await add_rows(sessionmaker_, job_id, to_status=JobStatus.COMPLETED)
    stream = await asyncio.wait_for(reader, 30)

    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.retry == 3000
    ids = [item["id"] for item in stream.events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids) == 6
    assert [item["event"] for item in stream.events] == ["status", "status"] + ["progress"] * 3 + ["status"]
    assert [item["data"]["to_status"] for item in stream.events] == [
        "PENDING",
        "TRANSCRIBING",
        None,
        None,
        None,
        "COMPLETED",
    ]
    # The same items as the JSON timeline, in the same order.
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        timeline = (await client.get(f"/api/v1/jobs/{job_id}/events", headers=key.headers)).json()
    assert [item["data"] for item in stream.events] == timeline["items"]
    await wait_until(lambda: server.hub.follower_count == 0, timeout=10, what="the follower to be gone")


async def test_finished_job_streams_its_timeline_and_closes(
    server: Server, sessionmaker_: async_sessionmaker[AsyncSession], key: Key
) -> None:
    job_id = await new_job(sessionmaker_, key)
    await add_rows(sessionmaker_, job_id, progress=1, to_status=JobStatus.FAILED)
    stream = await asyncio.wait_for(read_stream(server.base_url, key, job_id), 30)
    assert [item["data"]["to_status"] for item in stream.events] == [
        "PENDING",
        "TRANSCRIBING",
        None,
        "FAILED",
    ]


async def test_last_event_id_resumes_without_repeats(
    server: Server, sessionmaker_: async_sessionmaker[AsyncSession], key: Key
) -> None:
    job_id = await new_job(sessionmaker_, key)
    await add_rows(sessionmaker_, job_id, progress=2)
    first = await asyncio.wait_for(read_stream(server.base_url, key, job_id, stop_after=3), 30)
    seen = first.events[-1]["id"]

    reader = asyncio.create_task(read_stream(server.base_url, key, job_id, last_event_id=seen))
    await add_rows(sessionmaker_, job_id, progress=1, to_status=JobStatus.CANCELLED)
    second = await asyncio.wait_for(reader, 30)

    assert all(item["id"] > seen for item in second.events)
    ids = [item["id"] for item in first.events + second.events]
    assert len(ids) == len(set(ids)) == 6
    assert second.events[-1]["data"]["to_status"] == "CANCELLED"


async def test_another_keys_job_is_404_before_any_stream(
    server: Server, sessionmaker_: async_sessionmaker[AsyncSession], key: Key, make_key: KeyFactory
) -> None:
    job_id = await new_job(sessionmaker_, key)
    other = await make_key(rate_limit=0)
    stream = await read_stream(server.base_url, other, job_id)
    assert stream.status == 404
    assert json.loads(stream.body)["code"] == "job_not_found"
    assert (await read_stream(server.base_url, other, uuid.uuid4())).status == 404
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        response = await client.get(f"/api/v1/jobs/{job_id}/events", params={"follow": "true"}, headers=SSE)
    assert response.status_code == 401


async def test_json_timeline_unchanged_without_both(
    server: Server, sessionmaker_: async_sessionmaker[AsyncSession], key: Key
) -> None:
    job_id = await new_job(sessionmaker_, key)
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        for params, headers in (
            ({}, {}),
            ({"follow": "true"}, {}),
            ({"follow": "true"}, {"Accept": "*/*"}),
            ({"follow": "true"}, {"Accept": "application/json"}),
            ({}, SSE),
            ({"follow": "false"}, SSE),
        ):
            response = await client.get(
                f"/api/v1/jobs/{job_id}/events", params=params, headers={**key.headers, **headers}
            )
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert body["job_id"] == str(job_id)
            assert [item["to_status"] for item in body["items"]] == ["PENDING", "TRANSCRIBING"]
            assert set(body["items"][0]) == {"at", "stage", "from_status", "to_status", "detail"}
    assert server.hub.follower_count == 0


async def test_heartbeat_when_idle_and_max_duration_closes(
    settings: Settings, sessionmaker_: async_sessionmaker[AsyncSession], key: Key
) -> None:
    async with serve(settings, follow_heartbeat_seconds=0.1, follow_max_seconds=1.0) as quick:
        job_id = await new_job(sessionmaker_, key)
        stream = await asyncio.wait_for(read_stream(quick.base_url, key, job_id), 30)
        assert "keep-alive" in stream.comments
        assert [item["data"]["to_status"] for item in stream.events] == ["PENDING", "TRANSCRIBING"]
        await wait_until(lambda: quick.hub.follower_count == 0, timeout=10, what="the follower to be gone")
        # The client resumes; nothing new, the stream ends again at the limit, no repeats.
        again = await asyncio.wait_for(
            read_stream(quick.base_url, key, job_id, last_event_id=stream.events[-1]["id"]), 30
        )
        assert again.events == []


async def test_client_disconnect_frees_the_follower(
    server: Server, sessionmaker_: async_sessionmaker[AsyncSession], key: Key
) -> None:
    job_id = await new_job(sessionmaker_, key)
    stream = await asyncio.wait_for(read_stream(server.base_url, key, job_id, stop_after=2), 30)
    assert len(stream.events) == 2
    await wait_until(lambda: server.hub.follower_count == 0, timeout=10, what="the follower to be gone")
    await wait_until(lambda: server.hub.followed_jobs == 0, timeout=10, what="the job to be unfollowed")


async def test_many_followers_share_one_poller(
    server: Server, sessionmaker_: async_sessionmaker[AsyncSession], make_key: KeyFactory
) -> None:
    owner = await make_key(rate_limit=0)
    jobs = [await new_job(sessionmaker_, owner) for _ in range(50)]
    followed = [job_id for job_id in jobs for _ in range(4)]  # 200 streams, 4 per job
    readers = [asyncio.create_task(read_stream(server.base_url, owner, job_id)) for job_id in followed]
    hub = server.hub
    await wait_until(lambda: hub.follower_count >= 200, timeout=60, what="200 followers")

    engine = server.app.state.ingest.engine.sync_engine
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "job_events" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        polls_before = hub.polls
        async with sessionmaker_() as session, session.begin():
            for job_id in jobs:
                session.add(JobEvent(job_id=job_id, stage="transcriber", detail={"chunk_index": 0}))
        for job_id in jobs:
            await add_rows(sessionmaker_, job_id, to_status=JobStatus.COMPLETED)
        streams = await asyncio.wait_for(asyncio.gather(*readers), 120)
        polls = hub.polls - polls_before
    finally:
        event.remove(engine, "before_cursor_execute", count)

    for stream in streams:
        assert [item["event"] for item in stream.events][-2:] == ["progress", "status"]
        assert stream.events[-1]["data"]["to_status"] == "COMPLETED"
    # Every query on job_events in the window was the poller's (one per interval), none a follower's.
    assert len(statements) <= polls + 1
    assert polls < len(followed)
    pollers = [task for task in asyncio.all_tasks() if task.get_name() == "follow-poller"]
    assert len(pollers) == 1
    await wait_until(lambda: hub.follower_count == 0, timeout=20, what="every follower gone")


async def test_slow_consumer_is_disconnected(
    settings: Settings, sessionmaker_: async_sessionmaker[AsyncSession], key: Key
) -> None:
    """A client that stops reading: the send blocks, the queue fills, the follower is dropped, its
    queue emptied and the connection ended (here: the ASGI call returns)."""
    config = ingest_settings(settings, follow_poll_interval_seconds=0.05, follow_queue_size=3)
    app = create_app(config, resolver=StubResolver())
    async with app.router.lifespan_context(app):
        hub: FollowHub = app.state.ingest.follow
        job_id = await new_job(sessionmaker_, key)
        stalled = asyncio.Event()
        received = asyncio.Event()

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == 200
                return
            stalled.set()
            await asyncio.Event().wait()  # the socket never drains

        async def receive() -> dict[str, Any]:
            if not received.is_set():
                received.set()
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        path = f"/api/v1/jobs/{job_id}/events"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"follow=true",
            "headers": [
                (b"host", b"ingest.test"),
                (b"accept", b"text/event-stream"),
                (b"x-api-key", key.plaintext.encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("ingest.test", 80),
        }
        call = asyncio.create_task(app(scope, receive, send))
        await asyncio.wait_for(stalled.wait(), 30)
        await wait_until(lambda: hub.follower_count == 1, timeout=10, what="a follower")
        await add_rows(sessionmaker_, job_id, progress=10)
        await asyncio.wait_for(call, 30)
        assert hub.dropped == 1
        assert hub.follower_count == 0
        assert hub.followed_jobs == 0
