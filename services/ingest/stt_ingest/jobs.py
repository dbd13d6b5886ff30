"""Job queries and actions for one API key: read, list, cancel, retry, delete.

Every query is scoped by the caller's key id, so a job of another key is "not found". Status changes
go through `stt_common.db.jobs.transition_job` (conditional, with a timeline row); Kafka triggers are
produced after the commit, and a trigger that cannot be produced leaves the job in a state the
maintenance re-drive picks up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, true, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from stt_common import metrics as common_metrics
from stt_common.db.jobs import transition_job
from stt_common.db.models import (
    ACTIVE_JOB_STATUSES,
    Chunk,
    ChunkStatus,
    Job,
    JobEvent,
    JobStatus,
)
from stt_common.errors import ErrorCode
from stt_common.messages import Topic
from stt_common.pipeline import ChunkView, job_next_step, resume_triggers, same_bytes_would_fail
from stt_common.s3 import job_prefix, original_key
from stt_ingest.auth import Principal
from stt_ingest.problems import ApiProblem
from stt_ingest.schemas import (
    RESULT_FORMATS,
    JobErrorView,
    JobEvents,
    JobEventView,
    JobLinks,
    JobView,
    Progress,
)
from stt_ingest.state import AppState

STAGE = "ingest"
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


def not_found() -> ApiProblem:
    return ApiProblem(404, "job_not_found", "No job with this id.")


async def owned_job(
    session: AsyncSession, principal: Principal, job_id: uuid.UUID, *, lock: bool = False
) -> Job:
    query = select(Job).where(Job.id == job_id, Job.api_key_id == principal.key_id)
    if lock:
        query = query.with_for_update()
    job = await session.scalar(query)
    if job is None:
        raise not_found()
    return job


# -- views --------------------------------------------------------------------------------------


def job_url(base_url: str, job_id: uuid.UUID) -> str:
    return f"{base_url}/api/v1/jobs/{job_id}"


def job_links(base_url: str, job_id: uuid.UUID, status: JobStatus, *, retryable: bool = True) -> JobLinks:
    url = job_url(base_url, job_id)
    return JobLinks(
        self=url,
        events=f"{url}/events",
        result={fmt: f"{url}/result?format={fmt}" for fmt in RESULT_FORMATS}
        if status == JobStatus.COMPLETED
        else None,
        cancel=f"{url}/cancel" if status in ACTIVE_JOB_STATUSES else None,
        retry=f"{url}/retry" if status in RETRYABLE and retryable else None,
    )


async def progress_of(session: AsyncSession, jobs: Sequence[Job]) -> dict[uuid.UUID, Progress]:
    """Chunks total/done per job, counted from the chunk rows (one query for a page of jobs)."""
    ids = [job.id for job in jobs]
    counts: dict[uuid.UUID, tuple[int, int]] = {}
    if ids:
        rows = await session.execute(
            select(
                Chunk.job_id,
                func.count(),
                func.count().filter(Chunk.status == ChunkStatus.COMPLETED),
            )
            .where(Chunk.job_id.in_(ids))
            .group_by(Chunk.job_id)
        )
        counts = {row[0]: (int(row[1]), int(row[2])) for row in rows}
    result: dict[uuid.UUID, Progress] = {}
    for job in jobs:
        total, done = counts.get(job.id, (0, 0))
        result[job.id] = Progress(chunks_total=max(total, job.chunks_total or 0), chunks_done=done)
    return result


def job_view(job: Job, progress: Progress, base_url: str) -> JobView:
    status = JobStatus(job.status)
    error = (
        JobErrorView(
            code=job.error_code,
            message=job.error_message,
            next_step=job_next_step(job),
            retryable=not same_bytes_would_fail(job),
        )
        if job.error_code
        else None
    )
    return JobView(
        id=job.id,
        status=status,
        provider=job.provider,
        model=job.model,
        language=job.language,
        context_mode="chained" if job.context_mode == "chained" else "parallel",
        options=dict(job.options or {}),
        webhook_url=job.webhook_url,
        source_url=job.source_url,
        original_filename=job.original_filename,
        content_type=job.content_type,
        size_bytes=job.size_bytes,
        duration_seconds=job.duration_seconds,
        delete_after_seconds=job.delete_after_seconds,
        progress=progress,
        error=error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        status_changed_at=job.status_changed_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        links=job_links(base_url, job.id, status, retryable=not same_bytes_would_fail(job)),
    )


# `GET /api/v1/jobs/{id}`'s read: the job and its chunk counts in ONE statement. Built once: building
# it per request (clause coercion, a fresh cache key) cost more CPU than running it.
_CHUNK_COUNTS = (
    select(
        func.count().label("total"),
        func.count().filter(Chunk.status == ChunkStatus.COMPLETED).label("done"),
    )
    .where(Chunk.job_id == Job.id)
    .lateral("chunk_counts")
)
_JOB_VIEW_QUERY = (
    select(Job, _CHUNK_COUNTS.c.total, _CHUNK_COUNTS.c.done)
    .join(_CHUNK_COUNTS, true())
    .where(Job.id == bindparam("job_id"), Job.api_key_id == bindparam("key_id"))
)


async def load_view(state: AppState, principal: Principal, job_id: uuid.UUID, base_url: str) -> JobView:
    """One job as `GET /api/v1/jobs/{id}` shows it, read outside a transaction (a single statement
    needs none: it reads one snapshot), so a poll is one query round trip instead of BEGIN, two
    queries and ROLLBACK. The counts are `progress_of`'s."""
    reader = _reader(state)
    async with reader.gate, state.sessionmaker(bind=reader.engine) as session:
        row = (await session.execute(_JOB_VIEW_QUERY, {"job_id": job_id, "key_id": principal.key_id})).first()
    if row is None:
        raise not_found()
    job, total, done = row
    progress = Progress(chunks_total=max(int(total), job.chunks_total or 0), chunks_done=int(done))
    return job_view(job, progress, base_url)


@dataclass
class _Reader:
    engine: AsyncEngine  # the app's pool, without the transaction SQLAlchemy opens by default
    # Polls queue here, first come first served, rather than in the pool: with more polls in flight
    # than connections, the pool's queue lets a newcomer take a connection just handed to a waiter,
    # which then goes to the back again (200 pollers on 20 connections: p99 several times the
    # median). `db_pool_size` at most, so the pool's overflow stays free for everything else.
    gate: asyncio.Semaphore


_READERS: weakref.WeakKeyDictionary[AsyncEngine, _Reader] = weakref.WeakKeyDictionary()


def _reader(state: AppState) -> _Reader:
    """Made once per app (per engine): building the option engine per request costs more than the
    read itself."""
    reader = _READERS.get(state.engine)
    if reader is None:
        reader = _READERS[state.engine] = _Reader(
            engine=state.engine.execution_options(isolation_level="AUTOCOMMIT"),
            gate=asyncio.Semaphore(state.settings.db_pool_size),
        )
    return reader


async def load_events(state: AppState, principal: Principal, job_id: uuid.UUID) -> JobEvents:
    async with state.sessionmaker() as session:
        await owned_job(session, principal, job_id)
        rows = (
            await session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        ).all()
    return JobEvents(
        job_id=job_id,
        items=[
            JobEventView(
                at=row.at,
                stage=row.stage,
                from_status=row.from_status,
                to_status=row.to_status,
                detail=row.detail,
            )
            for row in rows
        ],
    )


async def load_event_rows(
    state: AppState, principal: Principal, job_id: uuid.UUID, *, after: int = 0
) -> tuple[list[JobEvent], bool]:
    """The timeline rows after id `after` (404 for another key's job) and whether the job has ended.

    The job is read before its rows: a job found finished has its terminal row among them."""
    async with state.sessionmaker() as session:
        job = await owned_job(session, principal, job_id)
        rows = list(
            (
                await session.scalars(
                    select(JobEvent)
                    .where(JobEvent.job_id == job_id, JobEvent.id > after)
                    .order_by(JobEvent.id)
                )
            ).all()
        )
    ended = JobStatus(job.status).terminal
    statuses = [row.to_status for row in rows if row.to_status is not None]
    if statuses and JobStatus(statuses[-1]).terminal:
        ended = True
    return rows, ended


# -- listing ------------------------------------------------------------------------------------


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = json.dumps({"t": created_at.isoformat(), "i": str(job_id)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names; 400 for anything this API did not give out (whatever the
    client made of it: not JSON, not an object, other types, a time out of range)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        created, identifier = data["t"], data["i"]
        if not isinstance(created, str) or not isinstance(identifier, str):
            raise TypeError("cursor fields are strings")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("cursor times carry an offset")
        created_at = created_at.astimezone(UTC)
        job_id = uuid.UUID(identifier)
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise ApiProblem(400, "invalid_cursor", "The cursor is not one this API gave out.") from exc
    return created_at, job_id


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class JobFilter:
    statuses: tuple[JobStatus, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None


async def list_jobs(
    state: AppState,
    principal: Principal,
    *,
    filters: JobFilter,
    limit: int,
    cursor: str | None,
    base_url: str,
) -> tuple[list[JobView], str | None]:
    """Newest first; keyset pagination over (created_at, id), so pages are stable under inserts."""
    query = select(Job).where(Job.api_key_id == principal.key_id)
    if filters.statuses:
        query = query.where(Job.status.in_([status.value for status in filters.statuses]))
    after, before = _aware(filters.created_after), _aware(filters.created_before)
    if after is not None:
        query = query.where(Job.created_at >= after)
    if before is not None:
        query = query.where(Job.created_at < before)
    if cursor:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created_at, job_id))
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    async with state.sessionmaker() as session:
        jobs = list((await session.scalars(query)).all())
        page, more = jobs[:limit], len(jobs) > limit
        progress = await progress_of(session, page)
    views = [job_view(job, progress[job.id], base_url) for job in page]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more and page else None
    return views, next_cursor


# -- actions ------------------------------------------------------------------------------------


async def cancel_job(state: AppState, principal: Principal, job_id: uuid.UUID) -> None:
    """Any active job becomes CANCELLED (conditional: a job that finished meanwhile stays finished)."""
    async with state.sessionmaker() as session, session.begin():
        job = await owned_job(session, principal, job_id)
        previous = await transition_job(
            session,
            job_id,
            JobStatus.CANCELLED,
            allowed_from=ACTIVE_JOB_STATUSES,
            stage=STAGE,
            detail={"action": "cancel"},
            error_code=ErrorCode.CANCELLED.value,
            error_message="Cancelled by the client.",
        )
        if previous is None:
            raise ApiProblem(
                409, "job_not_cancellable", f"The job is {job.status}; only active jobs can be cancelled."
            )
    common_metrics.JOBS_FINISHED.labels(JobStatus.CANCELLED.value, ErrorCode.CANCELLED.value).inc()
    state.ingestor.cancel(job_id)
    await state.trigger.trigger(Topic.JOBS_FINISHED, job_id)


async def retry_job(state: AppState, principal: Principal, job_id: uuid.UUID) -> None:
    """A FAILED or CANCELLED job resumes where it stopped:

    * no original yet (a URL whose download failed): PENDING, and the download runs again;
    * not chunked (or chunking unfinished: its partial chunk rows are dropped): UPLOADED,
      `stt.jobs.submitted` again;
    * chunked: every unfinished chunk (PENDING/PROCESSING/FAILED) goes back to PENDING and only those
      are emitted on `stt.chunks.ready` (in chained mode only the first, the rest follow in order);
      the job is TRANSCRIBING again;
    * every chunk done: MERGING, `stt.jobs.transcribed` again.
    """
    async with state.sessionmaker() as session:
        job = await owned_job(session, principal, job_id)
    if JobStatus(job.status) not in RETRYABLE:
        raise ApiProblem(
            409,
            "job_not_retryable",
            f"The job is {job.status}; only FAILED or CANCELLED jobs can be retried.",
        )
    if same_bytes_would_fail(job):
        why = f"The job failed with {job.error_code}. {job_next_step(job)}"
        raise ApiProblem(409, "job_not_retryable", why)
    has_original = await state.store.exists(original_key(job_id))
    if not has_original and not job.source_url:
        raise ApiProblem(409, "original_missing", "The job's uploaded file is gone; submit it again.")

    clear: dict[str, Any] = {
        "error_code": None,
        "error_message": None,
        "finished_at": None,
        "redrive_count": 0,
    }
    async with state.sessionmaker() as session, session.begin():
        if job.chunks_total is None:
            # Stopped while chunking: the rows announced so far are a partial set whose objects
            # the chunker's failure path (or the orphan sweep) deletes; chunking starts over.
            await session.execute(delete(Chunk).where(Chunk.job_id == job_id))
        chunks = list(
            (
                await session.scalars(
                    select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.chunk_index).with_for_update()
                )
            ).all()
        )
        unfinished = [chunk.chunk_index for chunk in chunks if chunk.status != ChunkStatus.COMPLETED]
        if unfinished:  # every unfinished chunk is taken again from the start
            await session.execute(
                update(Chunk)
                .where(Chunk.job_id == job_id, Chunk.status != ChunkStatus.COMPLETED)
                .values(
                    status=ChunkStatus.PENDING, error_code=None, error_message=None, lease_expires_at=None
                )
            )
        views = [
            ChunkView(chunk.chunk_index, chunk.status == ChunkStatus.COMPLETED, waiting=True)
            for chunk in chunks
        ]
        chunked = job.chunks_total is not None
        triggers = resume_triggers(job.context_mode, views, chunked=chunked) if has_original else []
        topic = triggers[0][0] if triggers else Topic.JOBS_SUBMITTED
        target, resume = _RESUME[topic] if has_original else (JobStatus.PENDING, "download")
        detail: dict[str, Any] = {"action": "retry", "resume": resume}
        if resume == "chunks":
            detail["chunks"] = unfinished
        previous = await transition_job(
            session, job_id, target, allowed_from=RETRYABLE, stage=STAGE, detail=detail, **clear
        )
        if previous is None:
            raise ApiProblem(
                409,
                "job_not_retryable",
                "The job changed status meanwhile; only FAILED or CANCELLED jobs can be retried.",
            )
    if resume == "download":
        assert job.source_url is not None
        state.ingestor.start(job_id, job.source_url)
        return
    await state.trigger.trigger_all(triggers, job_id)


# Where a retried job stands, by the first trigger that resumes it.
_RESUME: dict[Topic, tuple[JobStatus, str]] = {
    Topic.JOBS_SUBMITTED: (JobStatus.UPLOADED, "chunking"),
    Topic.CHUNKS_READY: (JobStatus.TRANSCRIBING, "chunks"),
    Topic.JOBS_TRANSCRIBED: (JobStatus.MERGING, "merge"),
}


async def delete_job(state: AppState, principal: Principal, job_id: uuid.UUID) -> None:
    """Objects first, then rows (chunks, events and deliveries go with the job row): if the object
    delete fails the job stays visible and the client can retry; the reverse could orphan objects."""
    async with state.sessionmaker() as session:
        job = await owned_job(session, principal, job_id)
    if JobStatus(job.status) in ACTIVE_JOB_STATUSES:
        raise ApiProblem(409, "job_active", f"The job is {job.status}; cancel it before deleting it.")
    await state.store.delete_prefix(job_prefix(job_id))
    async with state.sessionmaker() as session, session.begin():
        await session.execute(delete(Job).where(Job.id == job_id, Job.api_key_id == principal.key_id))


def ensure_completed(job: Job) -> None:
    if job.status != JobStatus.COMPLETED:
        raise ApiProblem(
            409, "job_not_completed", f"The job is {job.status}; its result exists once it is COMPLETED."
        )
