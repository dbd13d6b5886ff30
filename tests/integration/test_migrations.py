"""Alembic migrations up and down on a real PostgreSQL, and the constraints they create."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from stt_common.db import migrate
from stt_common.db.jobs import transition_job
from stt_common.db.models import Chunk, Job, JobEvent, JobStatus

TABLES = {
    "jobs",
    "chunks",
    "job_events",
    "api_keys",
    "idempotency_keys",
    "webhook_deliveries",
    "webhook_attempts",
}


async def tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            return {row[0] for row in rows} - {"alembic_version"}
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(scratch_database: str) -> None:
    await asyncio.to_thread(migrate.upgrade, scratch_database)
    assert await tables(scratch_database) == TABLES
    await asyncio.to_thread(migrate.downgrade, scratch_database)
    assert await tables(scratch_database) == set()
    await asyncio.to_thread(migrate.upgrade, scratch_database)
    assert await tables(scratch_database) == TABLES


async def test_chunk_index_is_unique_per_job(sessionmaker_) -> None:  # type: ignore[no-untyped-def]
    async with sessionmaker_() as session:
        job = Job(provider="local")
        session.add(job)
        await session.flush()
        session.add(Chunk(job_id=job.id, chunk_index=0, start_seconds=0, end_seconds=10))
        await session.commit()
        session.add(Chunk(job_id=job.id, chunk_index=0, start_seconds=0, end_seconds=10))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_transitions_are_conditional_and_leave_a_timeline(sessionmaker_) -> None:  # type: ignore[no-untyped-def]
    async with sessionmaker_() as session:
        job = Job(provider="local", status=JobStatus.UPLOADED)
        session.add(job)
        await session.commit()
        job_id = job.id

    async def move(to: JobStatus, allowed: set[JobStatus]) -> JobStatus | None:
        async with sessionmaker_() as session:
            previous = await transition_job(session, job_id, to, allowed_from=allowed, stage="test")
            await session.commit()
            return previous

    assert await move(JobStatus.CHUNKING, {JobStatus.UPLOADED}) is JobStatus.UPLOADED
    assert await move(JobStatus.CHUNKING, {JobStatus.UPLOADED}) is None  # a duplicate does nothing
    assert await move(JobStatus.CANCELLED, {JobStatus.CHUNKING}) is JobStatus.CHUNKING
    assert await move(JobStatus.COMPLETED, {JobStatus.MERGING}) is None  # cancelled never completes
    assert await move(JobStatus.CHUNKING, {JobStatus.UPLOADED}) is None
    async with sessionmaker_() as session:
        events = (
            await session.execute(
                text("SELECT from_status, to_status FROM job_events WHERE job_id = :id ORDER BY id"),
                {"id": job_id},
            )
        ).all()
        finished = await session.scalar(text("SELECT finished_at FROM jobs WHERE id = :id"), {"id": job_id})
    assert [tuple(row) for row in events] == [("UPLOADED", "CHUNKING"), ("CHUNKING", "CANCELLED")]
    assert finished is not None
    assert await move(JobStatus.CHUNKING, {JobStatus.UPLOADED}) is None
    async with sessionmaker_() as session:
        assert (
            await transition_job(
                session, uuid.uuid4(), JobStatus.CHUNKING, allowed_from={JobStatus.UPLOADED}, stage="test"
            )
            is None
        )
    assert JobEvent.__tablename__ == "job_events"
