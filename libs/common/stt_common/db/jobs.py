"""Conditional state transitions. Every stage changes job state only through here, so each change
is `UPDATE … WHERE status IN (…)` under a row lock and leaves one row in the job's timeline."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stt_common.db.models import Job, JobEvent, JobStatus


async def transition_job(
    session: AsyncSession,
    job_id: uuid.UUID,
    to_status: JobStatus,
    *,
    allowed_from: Iterable[JobStatus],
    stage: str,
    detail: dict[str, Any] | None = None,
    **values: Any,
) -> JobStatus | None:
    """Move a job to `to_status` if it is in one of `allowed_from`; returns the previous status,
    or None when the job is missing or elsewhere (a duplicate, a cancelled job, …). The caller commits."""
    current = await session.scalar(select(Job.status).where(Job.id == job_id).with_for_update())
    allowed = {JobStatus(s) for s in allowed_from}
    if current is None or JobStatus(current) not in allowed:
        return None
    now = func.now()
    changes: dict[str, Any] = {"status": to_status, "status_changed_at": now, **values}
    if to_status.terminal and "finished_at" not in values:
        changes["finished_at"] = now
    await session.execute(update(Job).where(Job.id == job_id).values(**changes))
    session.add(
        JobEvent(job_id=job_id, stage=stage, from_status=current, to_status=to_status, detail=detail or {})
    )
    return JobStatus(current)


def record_event(session: AsyncSession, job_id: uuid.UUID, *, stage: str, detail: dict[str, Any]) -> None:
    """A timeline entry that is not a status change (a chunk finished, a retry, a re-drive)."""
    session.add(JobEvent(job_id=job_id, stage=stage, detail=detail))
