"""Progress streams: `GET /api/v1/jobs/{id}/events?follow=true` as Server-Sent Events.

One `FollowHub` per ingest process. Its poller (one background task, started with the first
follower) reads the new `job_events` rows of every followed job with ONE query per interval and
hands each row to the queues of that job's followers; a follower never queries the database after
its first read. Queues are bounded: a follower whose queue is full (a client that does not read) is
dropped (its queue emptied, its connection closed) rather than allowed to hold more memory. A client
that goes away unregisters at once.

A stream sends `retry:` first, then every timeline row after `Last-Event-ID` (`id:` = the row's
id, `event: status` for status changes, `progress` otherwise, `data:` = the timeline item's JSON),
then new rows as they are written, `: keep-alive` comments while nothing happens, and closes after
the terminal status (COMPLETED, FAILED, CANCELLED) or after `follow_max_seconds` (the client then
resumes with `Last-Event-ID`).

Rows are found by id (`id > watermark` per job). Ids come from a sequence, so a row whose transaction
commits after one with a larger id could in principle be passed over; every stage writes a job's
status changes under the job's row lock, one after another, so status rows come in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stt_common.db.models import TERMINAL_JOB_STATUSES, JobEvent
from stt_common.logs import get_logger
from stt_ingest.schemas import JobEventView

log = get_logger(__name__)

SSE_MEDIA_TYPE = "text/event-stream"
TERMINAL = frozenset(status.value for status in TERMINAL_JOB_STATUSES)


def wants_stream(accept: str | None) -> bool:
    """Whether `Accept` names `text/event-stream` (explicitly: `*/*` gets the JSON timeline)."""
    if not accept:
        return False
    for part in accept.split(","):
        media_type, _, params = part.strip().partition(";")
        if media_type.strip().lower() == SSE_MEDIA_TYPE and "q=0" not in params.replace(" ", "").split(";"):
            return True
    return False


def parse_last_event_id(value: str | None) -> int:
    """The row id a resuming client last saw; anything that is not one means "from the start"."""
    if value is None:
        return 0
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        return 0
    return int(text)


@dataclass(frozen=True)
class Item:
    """One timeline row, ready to send."""

    id: int
    job_id: uuid.UUID
    view: JobEventView

    @property
    def terminal(self) -> bool:
        return self.view.to_status in TERMINAL

    @classmethod
    def from_row(cls, row: JobEvent) -> Item:
        view = JobEventView(
            at=row.at,
            stage=row.stage,
            from_status=row.from_status,
            to_status=row.to_status,
            detail=row.detail,
        )
        return cls(id=row.id, job_id=row.job_id, view=view)

    @functools.cached_property
    def encoded(self) -> bytes:
        """The SSE block, made once per row: the poller hands the same Item to every follower of
        its job, and 1,000 followers must not mean 1,000 JSON encodings of one row."""
        name = "status" if self.view.to_status is not None else "progress"
        data = json.dumps(self.view.model_dump(mode="json"), separators=(",", ":"))
        return f"id: {self.id}\nevent: {name}\ndata: {data}\n\n".encode()


@dataclass(eq=False)
class Follower:
    """One open stream: its queue, filled by the poller, and the last row id given to it."""

    job_id: uuid.UUID
    last_id: int
    queue: asyncio.Queue[Item | None]  # None: the server is shutting down, end the stream
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


class FollowHub:
    """The followers of one process and the one poller that feeds them."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        interval: float,
        queue_size: int,
        max_followers: int,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.interval = interval
        self.queue_size = queue_size
        self.max_followers = max_followers
        self._followers: dict[uuid.UUID, set[Follower]] = {}
        self._marks: dict[uuid.UUID, int] = {}  # per job: the largest id read (or a follower's start)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.polls = 0  # queries the poller has run (tests check it does not grow with followers)
        self.dropped = 0  # followers dropped for not reading

    @property
    def follower_count(self) -> int:
        return sum(len(group) for group in self._followers.values())

    @property
    def followed_jobs(self) -> int:
        return len(self._followers)

    @property
    def full(self) -> bool:
        return self.follower_count >= self.max_followers

    def subscribe(self, job_id: uuid.UUID, last_id: int) -> Follower:
        """A follower of `job_id` given every row after `last_id` from the next poll on."""
        if self._closed:
            raise RuntimeError("the follow hub is closed")
        follower = Follower(job_id=job_id, last_id=last_id, queue=asyncio.Queue(self.queue_size))
        self._followers.setdefault(job_id, set()).add(follower)
        mark = self._marks.get(job_id)
        self._marks[job_id] = last_id if mark is None else min(mark, last_id)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="follow-poller")
        self._wake.set()
        return follower

    def unsubscribe(self, follower: Follower) -> None:
        group = self._followers.get(follower.job_id)
        if group is None:
            return
        group.discard(follower)
        if not group:
            del self._followers[follower.job_id]
            self._marks.pop(follower.job_id, None)

    def _drop(self, follower: Follower) -> None:
        """A follower that does not keep up: its memory goes now, its connection is closed."""
        self.unsubscribe(follower)
        while not follower.queue.empty():
            follower.queue.get_nowait()
        follower.dropped.set()
        self.dropped += 1
        log.warning("follower dropped: not reading", job_id=str(follower.job_id))

    async def close(self) -> None:
        """Stop the poller and end every stream (as at their maximum duration: clients resume)."""
        self._closed = True
        for group in list(self._followers.values()):
            for follower in list(group):
                self.unsubscribe(follower)
                while not follower.queue.empty():
                    follower.queue.get_nowait()
                follower.queue.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._closed:
            if not self._followers:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(self.interval)
            if not self._followers:
                continue
            try:
                rows = await self.poll_once()
            except Exception:  # a database hiccup: followers wait for the next interval
                log.exception("follow poll failed")
                continue
            self.fan_out(rows)

    async def poll_once(self) -> Sequence[Item]:
        """The new rows of every followed job: one query for all of them."""
        marks = dict(self._marks)
        if not marks:
            return []
        self.polls += 1
        ids = bindparam("followed", value=list(marks), type_=ARRAY(UUID(as_uuid=True)))
        query = (
            select(JobEvent)
            .where(JobEvent.job_id == any_(ids), JobEvent.id > min(marks.values()))
            .order_by(JobEvent.id)
        )
        async with self._sessionmaker() as session:
            rows = (await session.scalars(query)).all()
        return [Item.from_row(row) for row in rows if row.id > marks[row.job_id]]

    def fan_out(self, items: Sequence[Item]) -> None:
        for item in items:
            if item.job_id in self._marks:
                self._marks[item.job_id] = max(self._marks[item.job_id], item.id)
            for follower in list(self._followers.get(item.job_id, ())):
                if item.id <= follower.last_id:
                    continue
                try:
                    follower.queue.put_nowait(item)
                except asyncio.QueueFull:
                    self._drop(follower)
                    continue
                follower.last_id = item.id


class EventStreamResponse(Response):
    """The SSE answer for one follower: backlog, live rows, heartbeats, then the end.

    Sending, listening for the client's disconnect and watching for the follower being dropped run
    side by side: a client that stops reading blocks the send, and is then cut off when the poller
    drops it (the connection is closed without finishing the body)."""

    media_type = SSE_MEDIA_TYPE

    def __init__(
        self,
        *,
        hub: FollowHub,
        follower: Follower | None,
        backlog: Sequence[Item],
        heartbeat: float,
        max_seconds: float,
        retry_ms: int,
        headers: dict[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(content=b"", status_code=200, headers=headers, background=background)
        del self.headers["content-length"]
        self.hub = hub
        self.follower = follower
        self.backlog = backlog
        self.heartbeat = heartbeat
        self.max_seconds = max_seconds
        self.retry_ms = retry_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            writer = asyncio.create_task(self._write(send))
            listener = asyncio.create_task(self._listen(receive))
            watchers: set[asyncio.Task[Any]] = {writer, listener}
            if self.follower is not None:
                watchers.add(asyncio.create_task(self.follower.dropped.wait()))
            try:
                await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
            if writer.done() and not writer.cancelled() and writer.exception() is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if self.follower is not None:
                self.hub.unsubscribe(self.follower)

    async def _listen(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _write(self, send: Send) -> None:
        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await emit(f"retry: {self.retry_ms}\n\n".encode())
        for row in self.backlog:
            await emit(row.encoded)
        follower = self.follower
        if follower is None:  # the backlog ended with the terminal status
            return
        deadline = time.monotonic() + self.max_seconds
        while True:
            item: Item | None
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                async with asyncio.timeout(min(self.heartbeat, left)):
                    item = await follower.queue.get()
            except TimeoutError:
                if deadline - time.monotonic() > 0:
                    await emit(b": keep-alive\n\n")
                continue
            if item is None:
                return
            await emit(item.encoded)
            if item.terminal:
                return
