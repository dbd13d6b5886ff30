"""`POST /v1/audio/transcriptions` and `POST /v1/audio/translations`: the OpenAI Audio API in front of
the same pipeline, for clients written against it (the OpenAI SDKs, with `base_url` set here and
our API key as theirs).

A request is an upload to `POST /api/v1/transcribe` in another form: the same submission code
(limits, rate limit, sniffing, idempotency, tenant), a job like any other, and the answer is the
finished transcript in OpenAI's shape. The request waits for its job by following its timeline
(`FollowHub`, as the progress streams do) for up to `STT_OPENAI_WAIT_SECONDS`.

Retries. The OpenAI SDK retries 408, 409, 429, 5xx and broken connections by itself, sending the
same request again with no idempotency key (only `X-Stainless-Retry-Count`). So:

* Once a job exists, no answer invites a retry: each carries `x-should-retry: false` (the SDK obeys
  it before its status rules) and a `Location` naming the job. Past the wait the answer is 504
  (`job_not_finished`), and the job goes on. A failed job is 400 (its file is unusable) or 502.
* Answers given before any job exists (429 rate limited, 503) keep the SDK's retries: they are
  safe and `Retry-After` says when.
* A request identical to an earlier one of the same key (file, name, options) answers from the
  earlier job while it is not FAILED or CANCELLED (`submit.py`, `same_request_reuse`): a retry
  after a dropped connection, or the same request sent again after a 504, waits for the same job
  instead of transcribing the file twice. An explicit `Idempotency-Key` works as on `/api/v1`.
* The wait ends in time for the client: the SDK says when it gives up (`X-Stainless-Read-Timeout`,
  600 s by default), and a client timing out would retry.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from stt_common.db.models import JobStatus
from stt_common.errors import ErrorCode
from stt_common.logs import get_logger
from stt_common.pipeline import job_next_step
from stt_common.s3 import ObjectNotFoundError, result_key
from stt_ingest import idempotency, jobs
from stt_ingest.auth import Principal, PrincipalDep
from stt_ingest.follow import Follower
from stt_ingest.openai_compat import (
    DEFAULT_MODEL,
    GRANULARITIES,
    RESPONSE_FORMATS,
    AudioRequest,
    error_body,
    json_answer,
    text_answer,
    verbose_answer,
)
from stt_ingest.problems import ApiProblem
from stt_ingest.ratelimit import RateDecision
from stt_ingest.routes.common import StateDep, base_url
from stt_ingest.routes.submit import RateDep, run_submission
from stt_ingest.schemas import Task
from stt_ingest.sniff import EXTENSIONS
from stt_ingest.state import AppState
from stt_ingest.submit import Outcome, submit_upload

log = get_logger(__name__)

router = APIRouter(prefix="/v1/audio", tags=["openai"])

# How often a waiting request looks at its client (gone: stop waiting) while its job runs.
_CHECK_SECONDS = 1.0
# Answer this much before the client's own timeout (at most a fifth of it): the answer's reading
# of the result and the trip back take time too.
_CLIENT_MARGIN_SECONDS = 5.0
READ_TIMEOUT_HEADER = "x-stainless-read-timeout"
NO_RETRY = {"x-should-retry": "false"}
_TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"

# -- OpenAPI ------------------------------------------------------------------------------------

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string", "description": "What went wrong and what to do."},
                "type": {"type": "string", "example": "invalid_request_error"},
                "param": {"type": ["string", "null"], "description": "The form field at fault."},
                "code": {"type": ["string", "null"], "description": "Stable error code."},
            },
        }
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for status, description in (
        (400, "Invalid request (unknown model or field, unsupported file, bad value), or the job "
         "failed on its file (`x-should-retry: false`)"),
        (401, "No or unknown API key"),
        (404, "The job's result is missing"),
        (409, "The job was cancelled, or an Idempotency-Key is in use or its job deleted"),
        (413, "The file is too large"),
        (429, "Rate limited, or too many unfinished jobs (`Retry-After`); no job was created"),
        (502, "The job failed in the pipeline (`Location`, `x-should-retry: false`)"),
        (503, "A dependency is unavailable, or too many requests are waiting (`Retry-After`); no "
         "job was created"),
        (504, "The job is still running after the wait (`Location`, `x-should-retry: false`)"),
    )
}  # fmt: skip
_OK: dict[str, Any] = {
    "description": "The transcript: JSON for `json` and `verbose_json`, text for `text`, `srt`, `vtt`.",
    "headers": {"Location": {"description": "The job behind it.", "schema": {"type": "string"}}},
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["text"],
                "properties": {
                    "text": {"type": "string"},
                    "task": {"type": "string", "enum": ["transcribe", "translate"]},
                    "language": {"type": "string", "example": "english"},
                    "duration": {"type": "number"},
                    "segments": {"type": "array", "items": {"type": "object"}},
                    "words": {"type": "array", "items": {"type": "object"}},
                    "usage": {"type": "object"},
                },
            }
        },
        "text/plain": {"schema": {"type": "string"}},
    },
}


def _request_body(task: Task) -> dict[str, Any]:
    spoken = "The language spoken (ISO 639-1); detected when omitted."
    if task == "translate":
        spoken += " Not in OpenAI's translations API; the answer is English either way."
    properties: dict[str, Any] = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "The audio or video file; its name must end in an accepted extension ("
            + ", ".join(sorted(EXTENSIONS))
            + ") that matches its content.",
        },
        "model": {
            "type": "string",
            "maxLength": 200,
            "default": DEFAULT_MODEL,
            "description": "`whisper-1`: this server's default provider and model. A provider (`local`, "
            "`openai`, `gemini`, ...): its default model. `<provider>/<model>`: both, e.g. "
            "`local/base`. Others are refused (400 `model_not_found`).",
            "example": DEFAULT_MODEL,
        },
        "language": {"type": "string", "maxLength": 16, "description": spoken, "example": "en"},
        "prompt": {"type": "string", "maxLength": 4000, "description": "Text to guide the model."},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
        "temperature": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "Accepted for compatibility and echoed in `verbose_json` segments; the "
            "providers decode with their own settings.",
        },
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "enum": list(GRANULARITIES)},
            "description": "With `verbose_json`: `segment` (the default) and/or `word`.",
        },
    }
    schema = {"type": "object", "required": ["file"], "properties": properties}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


_IDEMPOTENCY_PARAMETER = {
    "name": idempotency.HEADER,
    "in": "header",
    "required": False,
    "description": "Optional, as on /api/v1: the same key with the same request answers from the "
    "same job. Without one, an identical request (same file, name and fields) does so anyway while "
    "its job is not FAILED or CANCELLED.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[\x21-\x7e]+$"},
}


def _openapi_extra(task: Task) -> dict[str, Any]:
    return {"requestBody": _request_body(task), "parameters": [_IDEMPOTENCY_PARAMETER]}


_DESCRIPTION = """
OpenAI's Audio API, served by this pipeline: point an OpenAI SDK's `base_url` at `<this server>/v1`
and give it your API key. The file becomes a job like `POST /api/v1/transcribe` makes (same limits,
rate limit and checks); the answer comes when the job is done, in OpenAI's shape for the
`response_format` asked for. Errors use OpenAI's envelope `{"error": {"message", "type", "param",
"code"}}`.

If the job takes longer than the server waits (`STT_OPENAI_WAIT_SECONDS`), the answer is a 504
naming the job (`Location: /api/v1/jobs/{id}`): it goes on, and the same request sent again (or
`GET /api/v1/jobs/{id}/result`) gets its transcript. Answers given once a job exists carry
`x-should-retry: false`, so the SDK does not start the work again by itself.
"""


# -- routes -------------------------------------------------------------------------------------


@router.post(
    "/transcriptions",
    summary="Transcribe audio (OpenAI-compatible)",
    description=_DESCRIPTION,
    response_class=Response,
    responses={200: _OK, **_ERRORS},
    openapi_extra=_openapi_extra("transcribe"),
)
async def create_transcription(
    request: Request, state: StateDep, principal: PrincipalDep, decision: RateDep
) -> Response:
    return await _answer(request, state, principal, decision, "transcribe")


@router.post(
    "/translations",
    summary="Translate audio into English (OpenAI-compatible)",
    description=_DESCRIPTION
    + "\nTranslation needs a provider that can (`local` with the multilingual model `base`, which "
    "`whisper-1` and `local` get when the server's default model is English-only); others are "
    "refused (400).",
    response_class=Response,
    responses={200: _OK, **_ERRORS},
    openapi_extra=_openapi_extra("translate"),
)
async def create_translation(
    request: Request, state: StateDep, principal: PrincipalDep, decision: RateDep
) -> Response:
    return await _answer(request, state, principal, decision, "translate")


async def _answer(
    request: Request, state: AppState, principal: Principal, decision: RateDecision | None, task: Task
) -> Response:
    if state.follow.full:
        # Refused before anything exists: the SDK may retry this one.
        raise ApiProblem(
            503,
            "too_many_waiting",
            "Too many requests are waiting for their jobs on this server; retry shortly, or submit "
            "with POST /api/v1/transcribe and follow the job instead.",
            headers={"Retry-After": "5"},
        )
    audio = AudioRequest(task=task, settings=state.settings)
    base = base_url(request, state)
    outcome = await run_submission(
        "upload",
        submit_upload(
            state,
            request,
            principal,
            idempotency.parse_key(request.headers.get(idempotency.HEADER)),
            base,
            read_options=audio.job_options,
            same_request_reuse=True,
        ),
    )
    job_id = outcome.body.job_id
    headers = _headers(outcome, decision)
    wait = wait_seconds(state.settings.openai_wait_seconds, request.headers.get(READ_TIMEOUT_HEADER))
    await _wait_for_end(state, principal, job_id, wait, request)
    async with state.sessionmaker() as session:
        job = await jobs.owned_job(session, principal, job_id)
    status = JobStatus(job.status)
    if status == JobStatus.COMPLETED:
        return await _transcript(state, job_id, audio, headers)
    headers.update(NO_RETRY)
    if status == JobStatus.FAILED:
        invalid = job.error_code == ErrorCode.INVALID_AUDIO
        code = 400 if invalid else 502
        message = (
            f"Job {job_id} failed ({job.error_code}): {job.error_message or 'no detail'}. "
            f"{job_next_step(job)} (Location: {outcome.location})"
        )
        return JSONResponse(
            error_body(code, message, f"job_{job.error_code}"), status_code=code, headers=headers
        )
    if status == JobStatus.CANCELLED:
        message = (
            f"Job {job_id} was cancelled. Send the request again to start a new job, or retry this one "
            f"with POST {outcome.location}/retry."
        )
        return JSONResponse(error_body(409, message, "job_cancelled"), status_code=409, headers=headers)
    message = (
        f"Job {job_id} is still {status.value} after {round(wait)} s, the longest this request waits "
        f"(STT_OPENAI_WAIT_SECONDS, less when the client gives up sooner). Nothing is lost: it goes "
        f"on. Send the same request again to wait "
        f"for the same job (it is not transcribed twice), or follow {outcome.location} and download "
        f"{outcome.location}/result?format=json once it is COMPLETED."
    )
    log.info("openai wait exceeded", job_id=str(job_id), status=status.value, waited_s=round(wait, 1))
    return JSONResponse(error_body(504, message, "job_not_finished"), status_code=504, headers=headers)


def _headers(outcome: Outcome, decision: RateDecision | None) -> dict[str, str]:
    headers = {"Location": outcome.location}
    if decision is not None:
        headers.update(decision.headers())
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return headers


def wait_seconds(setting: float, read_timeout: str | None) -> float:
    """The server's wait, cut to end before the client's own read timeout when it says one."""
    try:
        client = float(read_timeout) if read_timeout is not None else math.inf
    except ValueError:
        client = math.inf
    if not math.isfinite(client) or client <= 0:
        return setting
    return max(0.0, min(setting, client - min(_CLIENT_MARGIN_SECONDS, client / 5)))


async def _wait_for_end(
    state: AppState, principal: Principal, job_id: uuid.UUID, seconds: float, request: Request
) -> None:
    """Until the job has ended, `seconds` have passed, the client has gone or the server stops.

    The job's timeline comes from the process's `FollowHub` (its one poller serves every waiting
    request and progress stream); the status is read from the job itself afterwards."""
    rows, ended = await jobs.load_event_rows(state, principal, job_id)
    seen = rows[-1].id if rows else 0
    deadline = time.monotonic() + seconds
    hub = state.follow
    follower: Follower | None = None
    try:
        while not ended:
            left = deadline - time.monotonic()
            if left <= 0 or await request.is_disconnected():
                return
            if follower is None or follower.dropped.is_set():
                # First, or dropped for falling behind (hundreds of events in one poll): read what
                # was missed from the database, then follow again from there.
                if follower is not None:
                    hub.unsubscribe(follower)
                    rows, ended = await jobs.load_event_rows(state, principal, job_id, after=seen)
                    seen = rows[-1].id if rows else seen
                    if ended:
                        return
                follower = hub.subscribe(job_id, seen)
            try:
                async with asyncio.timeout(min(left, _CHECK_SECONDS)):
                    item = await follower.queue.get()
            except TimeoutError:
                continue
            if item is None:  # the server is shutting down: the job goes on elsewhere
                return
            seen = item.id
            ended = item.terminal
    except RuntimeError:  # the hub closed: shutting down
        return
    finally:
        if follower is not None:
            hub.unsubscribe(follower)


async def _transcript(
    state: AppState, job_id: uuid.UUID, audio: AudioRequest, headers: dict[str, str]
) -> Response:
    """The finished job's result, read as `GET /api/v1/jobs/{id}/result` reads it, in OpenAI's shape."""
    fmt = audio.response_format
    stored = fmt if fmt in ("srt", "vtt") else "json"
    try:
        if stored != "json":
            reader = await state.store.open_read(result_key(job_id, stored))
            return StreamingResponse(reader.blocks(), media_type=_TEXT_MEDIA_TYPE, headers=headers)
        document = json.loads(await state.store.get_bytes(result_key(job_id, "json")))
    except ObjectNotFoundError as exc:
        raise ApiProblem(
            404,
            "result_not_found",
            f"The {stored} result of job {job_id} is missing; retry the job with POST "
            f"{headers['Location']}/retry.",
            headers={**headers, **NO_RETRY},
        ) from exc
    if fmt == "text":
        return PlainTextResponse(text_answer(document), media_type=_TEXT_MEDIA_TYPE, headers=headers)
    answer = verbose_answer(document, audio) if fmt == "verbose_json" else json_answer(document)
    return JSONResponse(answer, headers=headers)
