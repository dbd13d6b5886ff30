"""Jobs, keys and clocks for the notifier and maintenance tests (also used by tests/e2e).

Jobs are written straight into the states the stages leave them in, and "time passes" by moving a
job's timestamps (and its timeline) into the past: the thresholds under test stay realistic (hours),
so nothing else in the shared test database is ever old enough to be touched by a maintenance pass.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Chunk, ChunkStatus, Job, JobEvent, JobStatus, WebhookDelivery
from stt_common.settings import Settings
from stt_ingest import keys

# Thresholds the tests run maintenance with: far beyond any job the rest of the suite leaves
# behind, so only jobs these tests age on purpose are stale.
STALE_SECONDS = 6 * 3600
AGED = timedelta(hours=7)
MAINTENANCE_ENV = {
    "STT_STALE_PENDING_SECONDS": str(STALE_SECONDS),
    "STT_STALE_UPLOADED_SECONDS": str(STALE_SECONDS),
    "STT_STALE_CHUNKING_SECONDS": str(STALE_SECONDS),
    "STT_STALE_TRANSCRIBING_SECONDS": str(STALE_SECONDS),
    "STT_STALE_MERGING_SECONDS": str(STALE_SECONDS),
    "STT_RENOTIFY_AFTER_SECONDS": str(STALE_SECONDS),
    "STT_ORPHAN_CHUNKS_GRACE_SECONDS": str(STALE_SECONDS),
}


@dataclass(frozen=True)
class Owner:
    key_id: uuid.UUID
    api_key: str
    webhook_secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


async def make_owner(sessions: async_sessionmaker[AsyncSession], name: str = "webhooks") -> Owner:
    created = await keys.create_key(sessions, name=name, tenant="tests", rate_limit_per_minute=0)
    return Owner(key_id=created.id, api_key=created.api_key, webhook_secret=created.webhook_secret)


def _now() -> datetime:
    return datetime.now(UTC)


class JobFactory:
    """Makes jobs and deletes every one of them (rows cascade) when the test ends."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.made: list[uuid.UUID] = []

    async def make(
        self,
        status: JobStatus,
        *,
        owner: Owner | None = None,
        webhook_url: str | None = None,
        age: timedelta = timedelta(0),
        chunks: Sequence[tuple[ChunkStatus, str | None]] = (),
        context_mode: str = "parallel",
        error_code: str | None = None,
        error_message: str | None = None,
        delete_after_seconds: int | None = None,
        terminal_transitions: int = 1,
    ) -> uuid.UUID:
        """A job in `status`, whose status (and timeline) last changed `age` ago. `chunks` are
        (status, lease) pairs, lease "live", "expired" or None."""
        job_id = uuid.uuid4()
        at = _now() - age
        terminal = JobStatus(status).terminal
        async with self.sessions() as session, session.begin():
            session.add(
                Job(
                    id=job_id,
                    api_key_id=owner.key_id if owner else None,
                    status=status,
                    provider="local",
                    context_mode=context_mode,
                    options={},
                    webhook_url=webhook_url,
                    error_code=error_code,
                    error_message=error_message,
                    delete_after_seconds=delete_after_seconds,
                    created_at=at - timedelta(seconds=30),
                    updated_at=at,
                    status_changed_at=at,
                    finished_at=at if terminal else None,
                    chunks_total=len(chunks) or None,
                )
            )
            await session.flush()
            session.add(
                JobEvent(job_id=job_id, at=at - timedelta(seconds=30), stage="test", to_status="PENDING")
            )
            if terminal:
                for n in range(terminal_transitions):
                    session.add(
                        JobEvent(
                            job_id=job_id,
                            at=at - timedelta(seconds=terminal_transitions - n),
                            stage="test",
                            from_status="MERGING",
                            to_status=status,
                        )
                    )
            elif status != JobStatus.PENDING:
                session.add(JobEvent(job_id=job_id, at=at, stage="test", to_status=status))
            for index, (chunk_status, lease) in enumerate(chunks):
                lease_at = None
                if lease == "live":
                    lease_at = _now() + timedelta(minutes=10)
                elif lease == "expired":
                    lease_at = _now() - timedelta(minutes=10)
                session.add(
                    Chunk(
                        job_id=job_id,
                        chunk_index=index,
                        status=chunk_status,
                        start_seconds=index * 290.0,
                        end_seconds=index * 290.0 + 300,
                        lease_expires_at=lease_at,
                    )
                )
        self.made.append(job_id)
        return job_id

    async def get(self, job_id: uuid.UUID) -> Job:
        async with self.sessions() as session:
            job = await session.scalar(select(Job).where(Job.id == job_id))
            assert job is not None, f"job {job_id} is gone"
            return job

    async def exists(self, job_id: uuid.UUID) -> bool:
        async with self.sessions() as session:
            return await session.scalar(select(func.count()).where(Job.id == job_id)) == 1

    async def events(self, job_id: uuid.UUID, stage: str | None = None) -> list[JobEvent]:
        async with self.sessions() as session:
            query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            if stage is not None:
                query = query.where(JobEvent.stage == stage)
            return list(await session.scalars(query))

    async def deliveries(self, job_id: uuid.UUID) -> list[WebhookDelivery]:
        async with self.sessions() as session:
            return list(
                await session.scalars(
                    select(WebhookDelivery)
                    .where(WebhookDelivery.job_id == job_id)
                    .order_by(WebhookDelivery.created_at)
                )
            )

    async def age_events(self, job_id: uuid.UUID, by: timedelta = AGED) -> None:
        """Time passes for this job: its timeline (maintenance rows included) moves `by` back."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(JobEvent).where(JobEvent.job_id == job_id).values(at=JobEvent.at - by)
            )

    async def age(self, job_id: uuid.UUID, by: timedelta = AGED) -> None:
        """Time passes for this job: its timestamps and its timeline move `by` into the past."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    created_at=Job.created_at - by,
                    status_changed_at=Job.status_changed_at - by,
                    finished_at=Job.finished_at - by,
                )
            )
            await session.execute(
                update(JobEvent).where(JobEvent.job_id == job_id).values(at=JobEvent.at - by)
            )

    async def set(self, job_id: uuid.UUID, **values: Any) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(update(Job).where(Job.id == job_id).values(**values))

    async def cleanup(self) -> None:
        if self.made:
            async with self.sessions() as session, session.begin():
                await session.execute(delete(Job).where(Job.id.in_(self.made)))


def with_overrides(settings: Settings, cls: type[Any], **overrides: Any) -> Any:
    """A service's settings pointing at the test stack."""
    values = {**settings.model_dump(), "development": True, "kafka_enable_idempotence": False}
    values.update(overrides)
    return cls(**values)
