"""Stale jobs: re-drive them, and fail them as `stalled` once re-driving has not helped.

A job is stale when it is active and neither its status nor its timeline (`job_events`) changed for
its status's threshold; a TRANSCRIBING job with a chunk under a live lease is not stale (the
transcriber renews the lease while it works). What is re-emitted follows from the DB state:

* PENDING: nothing can be re-emitted (the upload or URL download ran in an ingest process that
  died), so it is failed as `stalled` after its threshold; the client can retry it.
* otherwise what `stt_common.pipeline.resume_triggers` says (the decision ingest's retry and the
  chunker share): UPLOADED and CHUNKING (not chunked yet, whatever chunk rows the chunker has
  announced) `stt.jobs.submitted` (the trigger lost between commit and produce; the chunker
  chunks a CHUNKING job again, keys are deterministic);
  TRANSCRIBING `stt.chunks.ready` for every chunk PENDING or PROCESSING under an expired lease
  (chained mode: the first unfinished chunk only); MERGING (every chunk done) `stt.jobs.transcribed`.

Each re-drive increments `jobs.redrive_count` and appends a timeline row (stage `maintenance`,
`{"redrive": n, …}`); that row also restarts the staleness clock, so re-drives are one threshold
apart. Progress (a status change or any other stage's timeline row after the last re-drive) resets
the count, so only re-drives *without progress* use up the budget (`max_redrives`, default 2);
after that the job is failed (`stalled`) and `stt.jobs.finished` is emitted so its webhook hears.

Each job is examined under its row lock (`FOR UPDATE SKIP LOCKED`: a job a stage is transitioning
right now is skipped) and re-checked there, so a job that moved on since the scan is left alone,
and the trigger is produced before the re-drive is committed: a re-drive is counted only if it
was emitted.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common import metrics as common_metrics
from stt_common.db.jobs import record_event, transition_job
from stt_common.db.models import (
    ACTIVE_JOB_STATUSES,
    TERMINAL_JOB_STATUSES,
    Chunk,
    ChunkStatus,
    Job,
    JobEvent,
    JobStatus,
    WebhookDelivery,
)
from stt_common.errors import ErrorCode
from stt_common.kafka import EventProducer
from stt_common.logs import get_logger
from stt_common.messages import Topic
from stt_common.pipeline import chunk_views, resume_triggers
from stt_maintenance.settings import MaintenanceSettings

STAGE = "maintenance"
log = get_logger(__name__)

_STATUS_ORDER = (
    JobStatus.PENDING,
    JobStatus.UPLOADED,
    JobStatus.CHUNKING,
    JobStatus.TRANSCRIBING,
    JobStatus.MERGING,
)
assert set(_STATUS_ORDER) == set(ACTIVE_JOB_STATUSES)


def _live_lease() -> Any:
    return exists().where(
        Chunk.job_id == Job.id,
        Chunk.status == ChunkStatus.PROCESSING,
        Chunk.lease_expires_at > func.now(),
    )


def stale_query(settings: MaintenanceSettings) -> Select[uuid.UUID, str]:
    """Active jobs past their status's threshold, oldest first."""
    last_event = select(func.max(JobEvent.at)).where(JobEvent.job_id == Job.id).scalar_subquery()
    activity = func.greatest(Job.status_changed_at, func.coalesce(last_event, Job.status_changed_at))
    clauses = []
    for status in _STATUS_ORDER:
        cutoff = func.now() - settings.stale_after(status)
        clauses.append(and_(Job.status == status.value, Job.status_changed_at < cutoff, activity < cutoff))
    return (
        select(Job.id, Job.status)
        .where(or_(*clauses))
        .where(~and_(Job.status == JobStatus.TRANSCRIBING.value, _live_lease()))
        .order_by(Job.status_changed_at)
        .limit(settings.maintenance_batch_size)
    )


class StaleJobs:
    def __init__(
        self,
        settings: MaintenanceSettings,
        sessions: async_sessionmaker[AsyncSession],
        producer: EventProducer,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._producer = producer

    async def candidates(self) -> list[tuple[uuid.UUID, JobStatus]]:
        async with self._sessions() as session:
            rows = (await session.execute(stale_query(self._settings))).all()
        return [(row[0], JobStatus(row[1])) for row in rows]

    async def handle(self, job_id: uuid.UUID, status: JobStatus) -> str:
        """Re-drive or fail one stale job: "redriven", "failed" or "skipped" (moved on, or busy)."""
        async with self._sessions() as session:
            job = await session.scalar(select(Job).where(Job.id == job_id).with_for_update(skip_locked=True))
            if job is None or job.status != status:
                return "skipped"
            last_event, last_redrive, last_progress, now = (
                await session.execute(
                    select(
                        func.max(JobEvent.at),
                        func.max(JobEvent.at).filter(
                            JobEvent.stage == STAGE, JobEvent.detail.has_key("redrive")
                        ),
                        func.max(JobEvent.at).filter(JobEvent.stage != STAGE),
                        func.now(),
                    ).where(JobEvent.job_id == job_id)
                )
            ).one()
            activity = max(job.status_changed_at, last_event or job.status_changed_at)
            if activity >= now - self._settings.stale_after(status):
                return "skipped"
            if status == JobStatus.TRANSCRIBING and await session.scalar(
                select(_live_lease()).where(Job.id == job_id)
            ):
                return "skipped"

            count = job.redrive_count
            progress = max(job.status_changed_at, last_progress or job.status_changed_at)
            if count and (last_redrive is None or progress > last_redrive):
                count = 0  # it moved since the last re-drive: a fresh budget
            if status == JobStatus.PENDING or count >= self._settings.max_redrives:
                await self._fail(session, job, count)
                return "failed"

            triggers = resume_triggers(
                job.context_mode, await chunk_views(session, job_id), chunked=job.chunks_total is not None
            )
            count += 1
            await session.execute(update(Job).where(Job.id == job_id).values(redrive_count=count))
            detail: dict[str, Any] = {
                "redrive": count,
                "status": status.value,
                "topic": triggers[0][0].value if triggers else None,
                "triggers": len(triggers),
            }
            chunks = [chunk_index for _, chunk_index in triggers if chunk_index is not None]
            if chunks:
                detail["chunks"] = chunks
            record_event(session, job_id, stage=STAGE, detail=detail)
            for topic, chunk_index in triggers:
                await self._producer.trigger(topic, job_id, producer=STAGE, chunk_index=chunk_index)
            await session.commit()
        log.info("re-drove a stale job", job_id=str(job_id), **detail)
        return "redriven"

    async def _fail(self, session: AsyncSession, job: Job, count: int) -> None:
        threshold = int(self._settings.stale_after(JobStatus(job.status)).total_seconds())
        if job.status == JobStatus.PENDING:
            message = (
                f"The upload or download did not finish within {threshold} s "
                "(the process receiving it stopped); retry the job or submit it again."
            )
        else:
            message = (
                f"No progress in {job.status} after {count} re-drive(s), each after {threshold} s "
                "without activity."
            )
        previous = await transition_job(
            session,
            job.id,
            JobStatus.FAILED,
            allowed_from={JobStatus(job.status)},
            stage=STAGE,
            detail={"error_code": ErrorCode.STALLED.value, "error_message": message, "redrives": count},
            error_code=ErrorCode.STALLED.value,
            error_message=message,
            redrive_count=count,
        )
        await session.commit()
        if previous is None:
            return
        common_metrics.JOBS_FINISHED.labels(JobStatus.FAILED.value, ErrorCode.STALLED.value).inc()
        log.warning("failed a stalled job", job_id=str(job.id), status=previous.value, redrives=count)
        # After the commit, so the notifier reads the job as FAILED (like `pipeline.fail_job`).
        await self._producer.trigger(Topic.JOBS_FINISHED, job.id, producer=STAGE)


# -- finished jobs whose notification may have been lost ----------------------------------------


def unnotified_query(settings: MaintenanceSettings) -> Select[uuid.UUID]:
    """Finished jobs with a webhook and no delivery row for their last terminal state, finished
    between `renotify_after` and `renotify_window` ago, not re-notified within `renotify_after`."""
    finished = func.coalesce(Job.finished_at, Job.status_changed_at)
    after = func.now() - _seconds(settings.renotify_after_seconds)
    delivered = exists().where(WebhookDelivery.job_id == Job.id, WebhookDelivery.created_at >= finished)
    recently = exists().where(
        JobEvent.job_id == Job.id,
        JobEvent.stage == STAGE,
        JobEvent.detail.has_key("renotify"),
        JobEvent.at > after,
    )
    return (
        select(Job.id)
        .where(
            Job.status.in_([status.value for status in TERMINAL_JOB_STATUSES]),
            Job.webhook_url.is_not(None),
            Job.api_key_id.is_not(None),
            finished < after,
            finished > func.now() - _seconds(settings.renotify_window_seconds),
            ~delivered,
            ~recently,
        )
        .order_by(finished)
        .limit(settings.maintenance_batch_size)
    )


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


async def renotify(
    sessions: async_sessionmaker[AsyncSession], producer: EventProducer, job_id: uuid.UUID
) -> None:
    """Emit `finished` again for a job whose trigger (or its handling) was lost; the notifier's
    event ids make this harmless if the delivery exists after all."""
    async with sessions() as session:
        attempts = await session.scalar(
            select(func.count())
            .select_from(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.stage == STAGE, JobEvent.detail.has_key("renotify"))
        )
        record_event(session, job_id, stage=STAGE, detail={"renotify": int(attempts or 0) + 1})
        await producer.trigger(Topic.JOBS_FINISHED, job_id, producer=STAGE)
        await session.commit()
