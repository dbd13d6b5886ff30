"""The notifier's consumer: one `stt.jobs.finished` trigger → at most one webhook delivery row.

No HTTP happens here. The handler records the event (`webhook_deliveries`, status PENDING, due now)
and commits; the delivery loop (`loop.py`) sends it. The event id is derived from the job and its
terminal transition, so every duplicate of the trigger (merger redelivery, maintenance re-drive,
cancel racing a failure) collides on the unique `event_id` and adds nothing:

    evt_<job id hex>_<status>_<n>      n = how many terminal transitions the job has had

`n` makes a job that is retried and finishes again a new event (with its own delivery), while
every trigger about the same terminal transition names the same one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import (
    TERMINAL_JOB_STATUSES,
    DeliveryStatus,
    Job,
    JobEvent,
    JobStatus,
    WebhookDelivery,
)
from stt_common.logs import get_logger
from stt_common.messages import Envelope
from stt_common.pipeline import job_next_step, same_bytes_would_fail
from stt_common.runner import Outcome
from stt_notifier.settings import NotifierSettings

STAGE = "notifier"
log = get_logger(__name__)

EVENT_TYPES: dict[JobStatus, str] = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}

WEBHOOK_EVENTS = Counter(
    "stt_webhook_events_total",
    "Finished-job triggers seen by the notifier, by what became of them "
    "(created, duplicate, no_webhook, not_finished).",
    ["outcome"],
)


def event_id_for(job_id: uuid.UUID, status: JobStatus, generation: int) -> str:
    return f"evt_{job_id.hex}_{status.value.lower()}_{max(generation, 1)}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def build_payload(job: Job, status: JobStatus, public_base_url: str | None) -> dict[str, Any]:
    """`{type, job_id, status, error?, result_url?, created_at, finished_at}`."""
    payload: dict[str, Any] = {
        "type": EVENT_TYPES[status],
        "job_id": str(job.id),
        "status": status.value,
        "created_at": _iso(job.created_at),
        "finished_at": _iso(job.finished_at or job.status_changed_at),
    }
    if job.error_code:
        payload["error"] = {
            "code": job.error_code,
            "message": job.error_message,
            "next_step": job_next_step(job),
            "retryable": not same_bytes_would_fail(job),
        }
    if status == JobStatus.COMPLETED and public_base_url:
        payload["result_url"] = f"{public_base_url}/api/v1/jobs/{job.id}/result"
    return payload


async def terminal_generation(session: AsyncSession, job_id: uuid.UUID) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(JobEvent)
        .where(
            JobEvent.job_id == job_id,
            JobEvent.to_status.in_([status.value for status in TERMINAL_JOB_STATUSES]),
        )
    )
    return int(count or 0)


class NotifierHandler:
    def __init__(
        self,
        settings: NotifierSettings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        on_created: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._on_created = on_created

    async def __call__(self, envelope: Envelope) -> Outcome:
        async with self._sessions() as session:
            job = await session.scalar(select(Job).where(Job.id == envelope.job_id))
            if job is None:
                WEBHOOK_EVENTS.labels("not_finished").inc()
                return Outcome.DUPLICATE  # deleted meanwhile
            status = JobStatus(job.status)
            if not status.terminal:
                # Retried since: its next terminal transition brings a trigger of its own.
                WEBHOOK_EVENTS.labels("not_finished").inc()
                return Outcome.DUPLICATE
            if not job.webhook_url or job.api_key_id is None:
                WEBHOOK_EVENTS.labels("no_webhook").inc()
                return Outcome.OK
            generation = await terminal_generation(session, job.id)
            event_id = event_id_for(job.id, status, generation)
            created = (
                await session.execute(
                    insert(WebhookDelivery)
                    .values(
                        id=uuid.uuid4(),
                        job_id=job.id,
                        event_id=event_id,
                        event_type=EVENT_TYPES[status],
                        url=job.webhook_url,
                        payload=build_payload(job, status, self._settings.public_base_url),
                        status=DeliveryStatus.PENDING,
                        attempts=0,
                        next_attempt_at=func.now(),
                    )
                    .on_conflict_do_nothing(index_elements=["event_id"])
                    .returning(WebhookDelivery.id)
                )
            ).first()
            await session.commit()
        if created is None:
            WEBHOOK_EVENTS.labels("duplicate").inc()
            log.info("webhook event already recorded", event_id=event_id)
            return Outcome.DUPLICATE
        WEBHOOK_EVENTS.labels("created").inc()
        log.info("webhook event recorded", event_id=event_id, event_type=EVENT_TYPES[status])
        if self._on_created is not None:
            self._on_created()
        return Outcome.OK
