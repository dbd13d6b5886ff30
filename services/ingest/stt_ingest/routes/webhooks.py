"""A job's webhook deliveries: `GET /api/v1/jobs/{id}/webhooks` and `POST …/webhooks/redeliver`.

Same rules as every job route: the caller's key must own the job, else 404. The notifier writes
the rows (one per event, every attempt recorded); these routes read them and reset them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stt_common.db.models import DeliveryStatus, JobStatus, WebhookAttempt, WebhookDelivery
from stt_common.messages import Topic
from stt_ingest import jobs
from stt_ingest.auth import Principal, PrincipalDep
from stt_ingest.problems import ApiProblem, problem_responses
from stt_ingest.routes.common import StateDep

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

JobIdPath = Annotated[uuid.UUID, Path(description="The job's id.")]
_EVENT_EXAMPLE = "evt_6b4f5f469f0a4a539c460d5f0d0b6f7e_completed_1"


class WebhookAttemptView(BaseModel):
    attempted_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came back.")
    latency_ms: float | None
    error: str | None = Field(
        description="Why the attempt did not succeed (HTTP status, timeout, refused URL…)."
    )


class WebhookDeliveryView(BaseModel):
    id: uuid.UUID
    event_id: str = Field(description="The `webhook-id` header: the same on every attempt and redelivery.")
    event_type: str = Field(description="`job.completed`, `job.failed` or `job.cancelled`.")
    url: str
    status: DeliveryStatus = Field(
        description="PENDING (due at `next_attempt_at`), SUCCEEDED (a 2xx came back) or FAILED "
        "(410, a refused URL, or every retry spent)."
    )
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_count: int
    attempts: list[WebhookAttemptView] = Field(description="Every attempt, oldest first.")


class JobWebhooks(BaseModel):
    job_id: uuid.UUID
    items: list[WebhookDeliveryView] = Field(description="One per event, oldest first.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "6b4f5f46-9f0a-4a53-9c46-0d5f0d0b6f7e",
                    "items": [
                        {
                            "id": "0f8d2b1c-3a41-4e5e-9d55-6f7a8b9c0d1e",
                            "event_id": _EVENT_EXAMPLE,
                            "event_type": "job.completed",
                            "url": "https://hooks.example.com/stt",
                            "status": "SUCCEEDED",
                            "next_attempt_at": None,
                            "created_at": "2026-11-24T10:05:00Z",
                            "delivered_at": "2026-11-24T10:05:31Z",
                            "attempt_count": 2,
                            "attempts": [
                                {
                                    "attempted_at": "2026-11-24T10:05:00Z",
                                    "status_code": 503,
                                    "latency_ms": 41.2,
                                    "error": "HTTP 503",
                                },
                                {
                                    "attempted_at": "2026-11-24T10:05:31Z",
                                    "status_code": 200,
                                    "latency_ms": 38.9,
                                    "error": None,
                                },
                            ],
                        }
                    ],
                }
            ]
        }
    )


async def _views(session: AsyncSession, job_id: uuid.UUID) -> list[WebhookDeliveryView]:
    deliveries = list(
        await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        )
    )
    attempts: dict[uuid.UUID, list[WebhookAttemptView]] = {delivery.id: [] for delivery in deliveries}
    if deliveries:
        rows = await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
        )
        for row in rows:
            attempts[row.delivery_id].append(
                WebhookAttemptView(
                    attempted_at=row.attempted_at,
                    status_code=row.status_code,
                    latency_ms=row.latency_ms,
                    error=row.error,
                )
            )
    return [
        WebhookDeliveryView(
            id=delivery.id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            url=delivery.url,
            status=DeliveryStatus(delivery.status),
            next_attempt_at=delivery.next_attempt_at,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
            attempt_count=len(attempts[delivery.id]),
            attempts=attempts[delivery.id],
        )
        for delivery in deliveries
    ]


async def _load(session: AsyncSession, principal: Principal, job_id: uuid.UUID) -> JobWebhooks:
    await jobs.owned_job(session, principal, job_id)
    return JobWebhooks(job_id=job_id, items=await _views(session, job_id))


@router.get(
    "/{job_id}/webhooks",
    response_model=JobWebhooks,
    summary="A job's webhook deliveries, with every attempt",
    description="One delivery per event (the job completed, failed or was cancelled), each with its "
    "attempts: time, HTTP status, latency and error.",
    responses=problem_responses(401, 404, 422),
)
async def list_webhooks(state: StateDep, principal: PrincipalDep, job_id: JobIdPath) -> JobWebhooks:
    async with state.sessionmaker() as session:
        return await _load(session, principal, job_id)


@router.post(
    "/{job_id}/webhooks/redeliver",
    response_model=JobWebhooks,
    status_code=202,
    summary="Send the job's latest webhook event again",
    description="The latest delivery goes back to PENDING, due now, with a fresh retry schedule and "
    "the same event id (`webhook-id`), so receivers that already have it can de-duplicate. A job "
    "that has no delivery yet gets its event created by the notifier. 409 for active jobs and "
    "jobs without a webhook URL.",
    responses=problem_responses(401, 404, 409, 422, 503),
)
async def redeliver_webhook(state: StateDep, principal: PrincipalDep, job_id: JobIdPath) -> JobWebhooks:
    async with state.sessionmaker() as session, session.begin():
        job = await jobs.owned_job(session, principal, job_id)
        if not JobStatus(job.status).terminal:
            raise ApiProblem(
                409,
                "job_not_finished",
                f"The job is {job.status}; webhooks are sent when it completes, fails or is cancelled.",
            )
        if not job.webhook_url:
            raise ApiProblem(409, "no_webhook_url", "The job was submitted without a webhook_url.")
        latest = await session.scalar(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
            .limit(1)
            .with_for_update()
        )
        if latest is not None:
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == latest)
                .values(
                    status=DeliveryStatus.PENDING,
                    attempts=0,
                    next_attempt_at=func.now(),
                    delivered_at=None,
                )
            )
    if latest is None:
        # No event yet (the notifier has not seen the job, or retention removed the row): the
        # notifier creates it from the trigger, with the event id it would have used anyway.
        emitted = await state.trigger.trigger(Topic.JOBS_FINISHED, job_id)
        if not emitted:
            raise ApiProblem(503, "trigger_unavailable", "The event could not be queued; try again shortly.")
    async with state.sessionmaker() as session:
        return await _load(session, principal, job_id)
