"""Job queries and actions: `/api/v1/jobs…`. Another key's job answers 404 everywhere."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, BeforeValidator

from stt_common.db.models import JobStatus
from stt_common.s3 import ObjectNotFoundError, result_key
from stt_ingest import jobs
from stt_ingest.auth import PrincipalDep
from stt_ingest.follow import SSE_MEDIA_TYPE, EventStreamResponse, Item, parse_last_event_id, wants_stream
from stt_ingest.problems import ApiProblem, problem_responses
from stt_ingest.routes.common import base_url
from stt_ingest.schemas import JobEvents, JobPage, JobView, ResultFormat
from stt_ingest.state import AppState, app_state

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


async def _state(request: Request) -> AppState:
    """`app_state` as a coroutine: FastAPI runs a plain-function dependency in its thread pool, a
    thread hand-off on every request (every poll) for what is an attribute read."""
    return app_state(request)


StateDep = Annotated[AppState, Depends(_state)]

_ISO_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_only(value: object) -> object:
    """Pydantic would also read `1700000000` or `0.5` as Unix timestamps; the API says ISO 8601."""
    if isinstance(value, str) and not _ISO_DATE_TIME.match(value):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-11-24T10:00:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    """UTC (no offset means UTC). `9999-12-31T23:59:59-23:59` parses but is past the last
    representable instant in UTC: an invalid filter (422), not a failing query (500)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is out of range") from exc


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_in_utc)]

RESULT_MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip",
    "vtt": "text/vtt; charset=utf-8",
}


@router.get(
    "",
    response_model=JobPage,
    summary="List your jobs, newest first",
    responses=problem_responses(400, 401, 422),
)
async def list_jobs(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    status: Annotated[
        list[JobStatus] | None, Query(description="Only jobs in these statuses (repeatable).")
    ] = None,
    created_after: Annotated[
        IsoDateTime | None, Query(description="Created at or after (ISO 8601; UTC when no offset).")
    ] = None,
    created_before: Annotated[
        IsoDateTime | None, Query(description="Created before (ISO 8601; UTC when no offset).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
) -> JobPage:
    base = base_url(request, state)
    filters = jobs.JobFilter(
        statuses=tuple(status or ()), created_after=created_after, created_before=created_before
    )
    items, next_cursor = await jobs.list_jobs(
        state, principal, filters=filters, limit=limit, cursor=cursor, base_url=base
    )
    next_url = None
    if next_cursor is not None:
        next_url = str(request.url.include_query_params(cursor=next_cursor))
        if state.settings.public_base_url:
            next_url = base + request.url.path + "?" + next_url.split("?", 1)[1]
    return JobPage(items=items, next_cursor=next_cursor, next=next_url)


@router.get(
    "/{job_id}",
    response_model=JobView,
    summary="A job: status, progress, error, timestamps, options and links",
    responses=problem_responses(401, 404, 422),
)
async def get_job(request: Request, state: StateDep, principal: PrincipalDep, job_id: uuid.UUID) -> JobView:
    return await jobs.load_view(state, principal, job_id, base_url(request, state))


EVENTS_DESCRIPTION = """
Every row of the job's timeline (status changes and chunk progress), oldest first, as JSON.

**Following**: with `follow=true` *and* `Accept: text/event-stream` the answer is a stream of
Server-Sent Events instead: `retry:` first, then one event per row, `id:` the row's id (increasing),
`event: status` (a status change) or `event: progress` (anything else), and `data:` the item as the
JSON timeline gives it; new rows as they are written; `: keep-alive` comments while nothing
happens. The stream closes after the terminal status (COMPLETED, FAILED or CANCELLED), or after the
server's maximum stream duration: reconnect then with `Last-Event-ID` (the last `id:` seen) to get
only the rows after it. A client that does not read its stream is disconnected. Without both, the
JSON timeline is the answer.
"""


@router.get(
    "/{job_id}/events",
    response_model=JobEvents,
    summary="A job's timeline: every status change, oldest first; or a live stream of it",
    description=EVENTS_DESCRIPTION,
    responses={
        200: {
            "description": "The timeline (JSON), or its live stream (Server-Sent Events).",
            "content": {SSE_MEDIA_TYPE: {"schema": {"type": "string"}}},
        },
        **problem_responses(401, 404, 422, 503),
    },
)
async def get_events(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    job_id: uuid.UUID,
    follow: Annotated[
        bool,
        Query(description="With `Accept: text/event-stream`: stream the timeline (SSE) until the job ends."),
    ] = False,
) -> JobEvents | Response:
    if not (follow and wants_stream(request.headers.get("accept"))):
        return await jobs.load_events(state, principal, job_id)
    settings = state.settings
    hub = state.follow
    after = parse_last_event_id(request.headers.get("last-event-id"))
    rows, ended = await jobs.load_event_rows(state, principal, job_id, after=after)
    if hub.full and not ended:
        raise ApiProblem(
            503,
            "too_many_streams",
            "Too many open streams here; poll or try again.",
            headers={"Retry-After": "5"},
        )
    backlog = [Item.from_row(row) for row in rows]
    follower = None if ended else hub.subscribe(job_id, backlog[-1].id if backlog else after)
    return EventStreamResponse(
        hub=hub,
        follower=follower,
        backlog=backlog,
        heartbeat=settings.follow_heartbeat_seconds,
        max_seconds=settings.follow_max_seconds,
        retry_ms=settings.follow_retry_ms,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/{job_id}/result",
    summary="Download the transcript",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The transcript, streamed.",
            "content": {
                media_type: {"schema": {"type": "object"} if fmt == "json" else {"type": "string"}}
                for fmt, media_type in RESULT_MEDIA_TYPES.items()
            },
        },
        **problem_responses(401, 404, 409, 422),
    },
)
async def get_result(
    state: StateDep,
    principal: PrincipalDep,
    job_id: uuid.UUID,
    fmt: Annotated[ResultFormat, Query(alias="format", description="json, txt, srt or vtt.")] = "json",
) -> StreamingResponse:
    async with state.sessionmaker() as session:
        job = await jobs.owned_job(session, principal, job_id)
    jobs.ensure_completed(job)
    try:
        reader = await state.store.open_read(result_key(job_id, fmt))
    except ObjectNotFoundError as exc:
        raise ApiProblem(404, "result_not_found", f"The {fmt} result of this job is missing.") from exc
    headers = {"Content-Disposition": f'inline; filename="transcript-{job_id}.{fmt}"'}
    if reader.content_length is not None:
        headers["Content-Length"] = str(reader.content_length)
    return StreamingResponse(reader.blocks(), media_type=RESULT_MEDIA_TYPES[fmt], headers=headers)


@router.post(
    "/{job_id}/cancel",
    response_model=JobView,
    summary="Cancel an active job",
    description="Any job not yet COMPLETED, FAILED or CANCELLED becomes CANCELLED (`error.code` "
    "`cancelled`); workers stop at their next check and the webhook is told. 409 for finished jobs.",
    responses=problem_responses(401, 404, 409, 422),
)
async def cancel_job(
    request: Request, state: StateDep, principal: PrincipalDep, job_id: uuid.UUID
) -> JobView:
    await jobs.cancel_job(state, principal, job_id)
    return await jobs.load_view(state, principal, job_id, base_url(request, state))


@router.post(
    "/{job_id}/retry",
    response_model=JobView,
    status_code=202,
    summary="Retry a FAILED or CANCELLED job",
    description="Resumes where the job stopped: only unfinished chunks are transcribed again. "
    "409 for jobs that are not FAILED or CANCELLED.",
    responses=problem_responses(401, 404, 409, 422),
)
async def retry_job(request: Request, state: StateDep, principal: PrincipalDep, job_id: uuid.UUID) -> JobView:
    await jobs.retry_job(state, principal, job_id)
    return await jobs.load_view(state, principal, job_id, base_url(request, state))


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a finished job: its files and its rows",
    responses=problem_responses(401, 404, 409, 422),
)
async def delete_job(state: StateDep, principal: PrincipalDep, job_id: uuid.UUID) -> Response:
    await jobs.delete_job(state, principal, job_id)
    return Response(status_code=204)
