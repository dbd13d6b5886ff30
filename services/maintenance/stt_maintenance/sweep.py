"""One maintenance pass under a Postgres advisory lock: stale jobs, lost notifications, orphaned chunk
objects, retention.

The lock (`pg_try_advisory_lock`, session level, on a connection held for the pass) makes a second
concurrent pass (an overlapping CronJob run, `make up`'s loop next to a manual `run`) return at once
without doing anything; if the process dies, its connection closes and the lock goes with it.
Every step is idempotent and checks `stopping` between jobs, so a pass can be interrupted anywhere
and the next one picks up where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from stt_common.kafka import EventProducer
from stt_common.logs import get_logger
from stt_common.s3 import ObjectStore
from stt_maintenance import report
from stt_maintenance.report import Summary
from stt_maintenance.retention import Retention
from stt_maintenance.settings import MaintenanceSettings
from stt_maintenance.stale import StaleJobs, renotify, unnotified_query

log = get_logger(__name__)


@contextlib.asynccontextmanager
async def advisory_lock(engine: AsyncEngine, key: int) -> AsyncIterator[bool]:
    """Yields whether this process holds the maintenance lock (held until the block ends)."""
    conn = await engine.connect()
    try:
        held = bool(await conn.scalar(select(func.pg_try_advisory_lock(key))))
        await conn.commit()
        try:
            yield held
        finally:
            if held:
                try:
                    await conn.scalar(select(func.pg_advisory_unlock(key)))
                    await conn.commit()
                except BaseException:
                    # Never return a connection that may still hold the lock to the pool.
                    await conn.invalidate()
                    raise
    finally:
        await conn.close()


class Maintenance:
    def __init__(
        self,
        settings: MaintenanceSettings,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        producer: EventProducer,
        *,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._sessions = sessions
        self._producer = producer
        self._stale = StaleJobs(settings, sessions, producer)
        self._retention = Retention(settings, sessions, store)
        self.stopping = stopping or asyncio.Event()

    async def run_pass(self) -> Summary | None:
        """One pass; None when another pass holds the lock."""
        started = time.perf_counter()
        async with advisory_lock(self._engine, self._settings.maintenance_lock_id) as held:
            if not held:
                report.RUNS.labels("skipped").inc()
                return None
            summary = Summary()
            for step in (self._stale_jobs, self._renotify, self._orphaned_chunks, self._retention_step):
                if self.stopping.is_set():
                    break
                try:
                    await step(summary)
                except Exception:
                    summary.errors += 1
                    report.ERRORS.inc()
                    log.error("maintenance step failed", step=step.__name__, exc_info=True)
            summary.interrupted = self.stopping.is_set()
        report.RUN_SECONDS.observe(time.perf_counter() - started)
        if summary.interrupted:
            report.RUNS.labels("interrupted").inc()
        elif summary.errors:
            report.RUNS.labels("error").inc()
        else:
            report.RUNS.labels("ok").inc()
            report.LAST_SUCCESS.set(time.time())
        return summary

    def _failed_one(self, summary: Summary, what: str, job_id: object) -> None:
        summary.errors += 1
        report.ERRORS.inc()
        log.error(
            "maintenance step failed for a job; the next pass retries",
            what=what,
            job_id=str(job_id),
            exc_info=True,
        )

    async def _stale_jobs(self, summary: Summary) -> None:
        for job_id, status in await self._stale.candidates():
            if self.stopping.is_set():
                return
            try:
                outcome = await self._stale.handle(job_id, status)
            except Exception:
                self._failed_one(summary, "re-drive", job_id)
                continue
            if outcome == "redriven":
                summary.redriven += 1
                report.REDRIVEN.labels(status.value).inc()
            elif outcome == "failed":
                summary.failed_stalled += 1
                report.FAILED_STALLED.labels(status.value).inc()

    async def _renotify(self, summary: Summary) -> None:
        async with self._sessions() as session:
            job_ids = list(await session.scalars(unnotified_query(self._settings)))
        for job_id in job_ids:
            if self.stopping.is_set():
                return
            try:
                await renotify(self._sessions, self._producer, job_id)
            except Exception:
                self._failed_one(summary, "re-notify", job_id)
                continue
            summary.renotified += 1
            report.RENOTIFIED.inc()

    async def _orphaned_chunks(self, summary: Summary) -> None:
        for job_id in await self._retention.orphaned_chunk_jobs():
            if self.stopping.is_set():
                return
            try:
                objects = await self._retention.sweep_orphaned_chunks(job_id)
            except Exception:
                self._failed_one(summary, "sweep chunks", job_id)
                continue
            if objects:
                summary.orphan_chunk_objects += objects
                report.ORPHAN_CHUNK_OBJECTS.inc(objects)
                log.info("deleted orphaned chunk objects", job_id=str(job_id), objects=objects)

    async def _retention_step(self, summary: Summary) -> None:
        # Batch after batch until none is left (or a batch deletes nothing: all skipped or failing,
        # left for the next pass).
        while not self.stopping.is_set():
            batch = await self._retention.expired_jobs()
            deleted = 0
            for job_id in batch:
                if self.stopping.is_set():
                    return
                try:
                    objects = await self._retention.delete_job(job_id)
                except Exception:
                    self._failed_one(summary, "delete", job_id)
                    continue
                if objects is None:
                    continue
                deleted += 1
                summary.deleted_jobs += 1
                summary.deleted_objects += objects
                report.DELETED_JOBS.inc()
                report.DELETED_OBJECTS.inc(objects)
            if deleted == 0 or len(batch) < self._settings.maintenance_batch_size:
                break
        if self.stopping.is_set():
            return
        summary.expired_keys += await self._retention.expire_idempotency_keys()
        report.EXPIRED_KEYS.inc(summary.expired_keys)
        summary.expired_deliveries += await self._retention.expire_deliveries()
        report.EXPIRED_DELIVERIES.inc(summary.expired_deliveries)
