"""`POST /api/v1/transcribe` (multipart upload) and `POST /api/v1/transcribe/url`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy import func, select

from stt_common.db.models import ACTIVE_JOB_STATUSES, Job
from stt_common.logs import get_logger
from stt_ingest import idempotency, metrics
from stt_ingest.auth import PrincipalDep
from stt_ingest.problems import ApiProblem, problem_responses
from stt_ingest.ratelimit import RateDecision
from stt_ingest.routes.common import StateDep, base_url
from stt_ingest.schemas import NO_NUL, Submitted, UrlSubmission
from stt_ingest.sniff import EXTENSIONS
from stt_ingest.submit import Outcome, submit_upload, submit_url

log = get_logger(__name__)

router = APIRouter(prefix="/api/v1", tags=["submit"])
UPLOAD_PATH = "/api/v1/transcribe"
URL_PATH = "/api/v1/transcribe/url"


async def submission_rate_limit(
    request: Request, state: StateDep, principal: PrincipalDep
) -> RateDecision | None:
    """Per-key limits on submissions, checked before any byte of the body is read: the rate (the
    key's own limit, else the service default; 0 = none), then the unfinished jobs it may hold."""
    limit = principal.rate_limit_per_minute
    if limit is None:
        limit = state.settings.rate_limit_per_minute
    try:
        decision = await state.limiter.hit(str(principal.key_id), limit)
    except RedisError as exc:
        log.error("rate limiter unavailable", error=type(exc).__name__)
        raise ApiProblem(
            503, "rate_limiter_unavailable", "Try again shortly.", headers={"Retry-After": "5"}
        ) from exc
    if decision is not None and not decision.allowed:
        metrics.RATE_LIMITED.inc()
        raise ApiProblem(
            429,
            "rate_limited",
            f"At most {decision.limit} submissions per {decision.window_seconds} seconds; "
            f"retry in {decision.reset_seconds} s.",
            headers=decision.headers(),
        )
    # Every other submission route (the OpenAI-compatible ones too) is an upload.
    await _refuse_beyond_active_jobs(state, principal, "url" if request.url.path == URL_PATH else "upload")
    return decision


async def _refuse_beyond_active_jobs(state: StateDep, principal: PrincipalDep, kind: str) -> None:
    """Work is served first come, first served across keys: capping each key's unfinished jobs
    bounds how long one key's backlog can keep another key's jobs waiting. A soft cap: submissions
    racing each other may pass it by their number."""
    limit = state.settings.max_active_jobs_per_key
    if not limit:
        return
    async with state.sessionmaker() as session:
        active = await session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.api_key_id == principal.key_id, Job.status.in_(list(ACTIVE_JOB_STATUSES)))
        )
    if (active or 0) >= limit:
        metrics.SUBMISSIONS.labels(kind, "too_many_active_jobs").inc()
        raise ApiProblem(
            429,
            "too_many_active_jobs",
            f"This key has {active} unfinished jobs, the most it may have at once ({limit}); submit "
            "more as they finish (or cancel some), or ask the operator to raise "
            "STT_MAX_ACTIVE_JOBS_PER_KEY.",
            headers={"Retry-After": "30"},
        )


RateDep = Annotated[RateDecision | None, Depends(submission_rate_limit)]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        description="Makes the submission safe to retry: the same key with the same body returns the "
        "original job; with a different body, 422. Kept for 24 hours. 1-255 visible ASCII "
        "characters (400 otherwise).",
        # Documented only: `idempotency.parse_key` checks it, so that every bad key is the same 400.
        json_schema_extra={"minLength": 1, "maxLength": 255, "pattern": r"^[\x21-\x7e]+$"},
    ),
]


def _respond(outcome: Outcome, decision: RateDecision | None) -> JSONResponse:
    headers = {"Location": outcome.location}
    if decision is not None:
        headers.update(decision.headers())
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        outcome.body.model_dump(mode="json"), status_code=outcome.status_code, headers=headers
    )


_SUBMIT_ERRORS = problem_responses(400, 401, 409, 413, 415, 422, 429, 503)

_UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "The media file. Its name must end in an accepted extension ("
                        + ", ".join(sorted(EXTENSIONS))
                        + ") that matches its content.",
                    },
                    "language": {"type": "string", "maxLength": 16, "example": "en"},
                    "provider": {"type": "string", "maxLength": 64, "example": "local"},
                    "model": {"type": "string", "maxLength": 200},
                    "context_mode": {"type": "string", "enum": ["parallel", "chained"]},
                    "task": {
                        "type": "string",
                        "enum": ["transcribe", "translate"],
                        "description": "`translate`: English text whatever the language spoken "
                        "(`local` with model `base` only; others are refused with 422).",
                    },
                    "webhook_url": {
                        "type": "string",
                        "maxLength": 2048,
                        "example": "https://hooks.example.com/stt",
                    },
                    "prompt": {"type": "string", "maxLength": 4000, "pattern": NO_NUL},
                    "vocabulary": {
                        "type": "array",
                        "items": {"type": "string", "pattern": NO_NUL},
                        "description": "Repeat the field once per term.",
                    },
                    "output": {
                        "type": "string",
                        "description": 'JSON object of output options, e.g. {"word_timestamps": true}.',
                        "example": '{"word_timestamps": true}',
                    },
                    "delete_after_seconds": {"type": "integer", "minimum": 60},
                },
            },
            "encoding": {
                "file": {
                    "contentType": "audio/*, video/*, application/octet-stream",
                    "headers": {
                        "Content-Disposition": {
                            "description": "The part's file name: its extension must be accepted and "
                            "agree with the content.",
                            "schema": {
                                "type": "string",
                                "example": 'form-data; name="file"; filename="interview.wav"',
                            },
                        }
                    },
                }
            },
        }
    },
}


@router.post(
    "/transcribe",
    status_code=202,
    response_model=Submitted,
    summary="Upload a media file to transcribe",
    description="Streams the file to object storage (never buffered whole), checks its magic bytes "
    "and size on the way, and answers 202 with the job id once the file is stored and the job queued. "
    "Put text fields before the file so invalid options are refused before the upload.",
    responses={**_SUBMIT_ERRORS, 202: {"headers": {"Location": {"schema": {"type": "string"}}}}},
    openapi_extra={"requestBody": _UPLOAD_BODY},
)
async def transcribe_upload(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    decision: RateDep,
    idempotency_key: IdempotencyHeader = None,
) -> JSONResponse:
    outcome = await run_submission(
        "upload",
        submit_upload(
            state, request, principal, idempotency.parse_key(idempotency_key), base_url(request, state)
        ),
    )
    return _respond(outcome, decision)


@router.post(
    "/transcribe/url",
    status_code=202,
    response_model=Submitted,
    summary="Transcribe a media file from a URL",
    description="Checks the URL (http/https only, no credentials, every resolved address public) and "
    "answers 202 with the job PENDING; the file is then downloaded in the background with the same "
    "checks at every redirect, streamed to storage with size/time limits and magic-byte sniffing.",
    responses={**_SUBMIT_ERRORS, 202: {"headers": {"Location": {"schema": {"type": "string"}}}}},
)
async def transcribe_url(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    decision: RateDep,
    body: Annotated[UrlSubmission, Body()],
    idempotency_key: IdempotencyHeader = None,
) -> JSONResponse:
    outcome = await run_submission(
        "url",
        submit_url(state, principal, body, idempotency.parse_key(idempotency_key), base_url(request, state)),
    )
    return _respond(outcome, decision)


async def run_submission(kind: str, work: Awaitable[Outcome]) -> Outcome:
    """Await a submission, counting it (accepted, replayed, or refused and why)."""
    try:
        outcome = await work
    except ApiProblem as problem:
        metrics.SUBMISSIONS.labels(kind, problem.code).inc()
        raise
    metrics.SUBMISSIONS.labels(kind, "replayed" if outcome.replayed else "accepted").inc()
    return outcome
