"""Retention: expired jobs (S3 prefix, then rows), expired idempotency keys, old delivery rows, and
chunk objects a failed chunking left behind.

A job expires `retention_days` after it finished, or earlier when it asked for it
(`delete_after_seconds`). Objects go first and the row second, under the job's row lock and with
the expiry re-checked there: a pass interrupted between the two leaves a row whose prefix is
already empty, which the next pass finishes; the reverse order could orphan objects no row points
to. A job that is being retried at that moment (row locked by ingest) is skipped, and one that is
active again no longer matches. Chunks, events, deliveries and attempts go with the job row
(`ON DELETE CASCADE`).

Orphaned chunk objects: a job that failed or was cancelled while the chunker was cutting it has no
complete set of chunks (`chunks_total` unset; a retry drops the rows announced so far and chunks it
again), so chunk objects under its prefix belong to nothing. The chunker deletes them itself, but an
upload that outlived its cleanup may still land; once the job has been terminal for
`orphan_chunks_grace_seconds`, the prefix is emptied under the job's row lock and the timeline
records it (`{"orphan_chunk_objects_deleted": n}`), which also marks the job as
swept so the next pass does not list it again.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, not_, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.jobs import record_event
from stt_common.db.models import (
    TERMINAL_JOB_STATUSES,
    IdempotencyKey,
    Job,
    JobEvent,
    JobStatus,
    WebhookDelivery,
)
from stt_common.s3 import ObjectStore, chunks_prefix, job_prefix
from stt_maintenance.settings import MaintenanceSettings

_DELETE_BATCH = 5000
STAGE = "maintenance"
_SWEPT = "orphan_chunk_objects_deleted"


def _expired(settings: MaintenanceSettings) -> Any:
    finished = func.coalesce(Job.finished_at, Job.status_changed_at)
    own_deadline = finished + func.make_interval(0, 0, 0, 0, 0, 0, Job.delete_after_seconds)
    return and_(
        Job.status.in_([status.value for status in TERMINAL_JOB_STATUSES]),
        or_(
            finished < func.now() - timedelta(days=settings.retention_days),
            and_(Job.delete_after_seconds.is_not(None), own_deadline < func.now()),
        ),
    )


def _orphaned_chunks(settings: MaintenanceSettings) -> Any:
    """Failed or cancelled after the chunker started but before it finished (`chunks_total` unset:
    whatever chunks it announced are a partial set that a retry drops), not swept since it ended."""
    ended_at = Job.status_changed_at
    return and_(
        Job.status.in_([JobStatus.FAILED.value, JobStatus.CANCELLED.value]),
        ended_at < func.now() - timedelta(seconds=settings.orphan_chunks_grace_seconds),
        exists().where(JobEvent.job_id == Job.id, JobEvent.to_status == JobStatus.CHUNKING.value),
        Job.chunks_total.is_(None),
        not_(
            exists().where(
                JobEvent.job_id == Job.id, JobEvent.at >= ended_at, JobEvent.detail.has_key(_SWEPT)
            )
        ),
    )


class Retention:
    def __init__(
        self, settings: MaintenanceSettings, sessions: async_sessionmaker[AsyncSession], store: ObjectStore
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._store = store

    async def expired_jobs(self) -> list[uuid.UUID]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Job.id)
                .where(_expired(self._settings))
                .order_by(Job.finished_at)
                .limit(self._settings.maintenance_batch_size)
            )
            return list(rows)

    async def delete_job(self, job_id: uuid.UUID) -> int | None:
        """Delete one expired job; the number of objects deleted, or None if it was skipped."""
        async with self._sessions() as session:
            locked = await session.scalar(
                select(Job.id)
                .where(Job.id == job_id, _expired(self._settings))
                .with_for_update(skip_locked=True)
            )
            if locked is None:
                return None
            objects = await self._store.delete_prefix(job_prefix(job_id))
            await session.execute(delete(Job).where(Job.id == job_id))
            await session.commit()
        return objects

    async def orphaned_chunk_jobs(self) -> list[uuid.UUID]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Job.id)
                .where(_orphaned_chunks(self._settings))
                .order_by(Job.status_changed_at)
                .limit(self._settings.maintenance_batch_size)
            )
            return list(rows)

    async def sweep_orphaned_chunks(self, job_id: uuid.UUID) -> int | None:
        """Empty one job's chunk prefix; the number of objects deleted, or None if it was skipped
        (retried or swept meanwhile, or locked by a retry right now)."""
        async with self._sessions() as session:
            locked = await session.scalar(
                select(Job.id)
                .where(Job.id == job_id, _orphaned_chunks(self._settings))
                .with_for_update(skip_locked=True)
            )
            if locked is None:
                return None
            objects = await self._store.delete_prefix(chunks_prefix(job_id))
            record_event(session, job_id, stage=STAGE, detail={_SWEPT: objects})
            await session.commit()
        return objects

    async def expire_idempotency_keys(self) -> int:
        total = 0
        while True:
            async with self._sessions() as session:
                batch = (
                    select(IdempotencyKey.api_key_id, IdempotencyKey.key)
                    .where(IdempotencyKey.expires_at < func.now())
                    .limit(_DELETE_BATCH)
                )
                result = await session.execute(
                    delete(IdempotencyKey)
                    .where(tuple_(IdempotencyKey.api_key_id, IdempotencyKey.key).in_(batch))
                    .returning(IdempotencyKey.key)
                )
                count = len(result.all())
                await session.commit()
            total += count
            if count < _DELETE_BATCH:
                return total

    async def expire_deliveries(self) -> int:
        """Delivery rows (and their attempts) older than the retention, for jobs that live on
        (retried jobs keep their older events' rows otherwise)."""
        total = 0
        cutoff = func.now() - timedelta(days=self._settings.retention_days)
        while True:
            async with self._sessions() as session:
                batch = (
                    select(WebhookDelivery.id).where(WebhookDelivery.created_at < cutoff).limit(_DELETE_BATCH)
                )
                result = await session.execute(
                    delete(WebhookDelivery).where(WebhookDelivery.id.in_(batch)).returning(WebhookDelivery.id)
                )
                count = len(result.all())
                await session.commit()
            total += count
            if count < _DELETE_BATCH:
                return total
