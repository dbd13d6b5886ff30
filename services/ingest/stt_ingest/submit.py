"""Submissions: a streamed multipart upload, or a URL to download.

Upload, step by step (nothing is held whole in memory or written to local disk):

1. The form is read as a stream (`formdata.StreamingForm`). Text fields before the file are kept
   (small, bounded); at the file part its first bytes are sniffed and the extension checked, so a
   wrong file is refused (415/422) before anything is created.
2. The job row is inserted as PENDING (and an Idempotency-Key reserved) and committed.
3. The file streams into `jobs/{id}/original` through `IngestStore.upload_stream` (S3 multipart,
   two part buffers in memory: one filling while the other is sent). A running byte count stops
   it at `max_upload_bytes`: 413, the multipart upload is aborted and the object deleted. The
   request body as a whole is bounded too, and a Content-Length above the bound is refused before
   reading (a Content-Length that lies is harmless: only the running count matters).
4. Fields after the file are read; all options are validated.
5. PENDING → UPLOADED (conditional, with a timeline row), idempotency digest recorded, commit.
6. `stt.jobs.submitted` is produced, then 202 with the job id and `Location`. If the broker does not
   take the trigger, the answer is still 202: the object is stored and the job is durable in
   UPLOADED, where the maintenance re-drive finds it and re-emits the trigger (see `events.py`).

Any failure after step 2 deletes the object, the job row and the idempotency reservation: a refused
upload leaves nothing behind.

Callers with another form (the OpenAI-compatible `/v1/audio/*`) pass `read_options`, which turns
their fields into `JobOptions`, and may ask for `same_request_reuse`: without an `Idempotency-Key`,
an upload identical to an earlier one of the same key (same file bytes, name and options, within
`idempotency_ttl_seconds`) whose job is not FAILED or CANCELLED answers with that job instead of
making another. Clients that retry on their own (the OpenAI SDK retries timeouts and 5xx, and sends
no key) then never have one file transcribed twice. The check runs in step 5's transaction, through
a reservation named after the request's digest, so two identical uploads racing each other also
end with one job; the loser's object and row are removed like a refused upload's.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from stt_common.db.jobs import transition_job
from stt_common.db.models import IdempotencyKey, Job, JobEvent, JobStatus
from stt_common.logs import get_logger
from stt_common.messages import Topic
from stt_common.s3 import original_key
from stt_common.ssrf import UnsafeUrlError
from stt_ingest import idempotency, metrics
from stt_ingest.auth import Principal
from stt_ingest.formdata import ClientGoneError, Field, FilePart, FormError, StreamingForm
from stt_ingest.jobs import STAGE, job_links, owned_job
from stt_ingest.media import MediaStream, MediaTooLargeError
from stt_ingest.options import ResolvedOptions, options_from_form, request_hash, resolve_options
from stt_ingest.problems import ApiProblem
from stt_ingest.schemas import JobOptions, Submitted, UrlSubmission
from stt_ingest.sniff import MediaError, sanitize_filename
from stt_ingest.state import AppState

log = get_logger(__name__)

# Room for the multipart framing and the text fields on top of the file itself.
_FORM_OVERHEAD_BYTES = 64 * 1024
# Reservations of `same_request_reuse` are named this plus the request's digest. The space keeps them
# apart from every `Idempotency-Key` a client can send (visible ASCII only).
SAME_REQUEST_PREFIX = "same-request "
# Jobs a repeated request does not reuse: it gets a new job, as a retry after a failure should.
_NOT_REUSED = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})

OptionsReader = Callable[[Mapping[str, list[str]]], JobOptions]


@dataclass(frozen=True)
class Outcome:
    status_code: int
    body: Submitted
    location: str
    replayed: bool = False


def _media_problem(exc: MediaError) -> ApiProblem:
    # Empty or cut short: an acceptable type with unusable content. Anything else: the wrong type.
    status = 422 if exc.code in ("empty_file", "truncated_media") else 415
    return ApiProblem(status, exc.code, exc.message)


def _too_large(limit: int) -> ApiProblem:
    return ApiProblem(413, "payload_too_large", f"The file is larger than the limit of {limit} bytes.")


def _form_problem(exc: FormError) -> ApiProblem:
    return ApiProblem(exc.status, exc.code, exc.message)


def _outcome(
    base_url: str, job_id: uuid.UUID, status: JobStatus, *, code: int, replayed: bool = False
) -> Outcome:
    links = job_links(base_url, job_id, status)
    return Outcome(
        status_code=code,
        body=Submitted(job_id=job_id, status=status, links=links),
        location=links.self,
        replayed=replayed,
    )


async def _replay(
    state: AppState, principal: Principal, record: IdempotencyKey, digest: str, base_url: str
) -> Outcome:
    if record.request_hash != digest:
        raise idempotency.mismatch()
    if record.job_id is None:
        raise idempotency.job_gone()
    async with state.sessionmaker() as session:
        try:
            job = await owned_job(session, principal, record.job_id)
        except ApiProblem:
            raise idempotency.job_gone() from None
    return _outcome(base_url, job.id, JobStatus(job.status), code=202, replayed=True)


async def _existing_record(state: AppState, principal: Principal, key: str | None) -> IdempotencyKey | None:
    if key is None:
        return None
    async with state.sessionmaker() as session, session.begin():
        record = await idempotency.find(session, principal.key_id, key)  # a lapsed lease is gone
        if record is not None and record.request_hash == idempotency.PENDING:
            raise idempotency.in_progress()
    return record


def _new_job(job_id: uuid.UUID, principal: Principal, resolved: ResolvedOptions, **values: object) -> Job:
    return Job(
        id=job_id, api_key_id=principal.key_id, status=JobStatus.PENDING, **resolved.row_values(), **values
    )


def _created_event(job_id: uuid.UUID, kind: str) -> JobEvent:
    return JobEvent(
        job_id=job_id, stage=STAGE, from_status=None, to_status=JobStatus.PENDING, detail={"kind": kind}
    )


# -- upload -------------------------------------------------------------------------------------


class _Upload:
    def __init__(
        self,
        state: AppState,
        request: Request,
        principal: Principal,
        idem_key: str | None,
        read_options: OptionsReader = options_from_form,
        same_request_reuse: bool = False,
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.request = request
        self.principal = principal
        self.idem_key = idem_key
        self.read_options = read_options
        # An explicit key says which requests are the same; the content decides only without one.
        self.reuse = same_request_reuse and idem_key is None
        self.fields: dict[str, list[str]] = {}
        self.form = StreamingForm(
            request.stream(),
            request.headers.get("content-type"),
            max_fields=self.settings.max_form_fields,
            max_field_bytes=self.settings.max_field_bytes,
            max_bytes=self.body_limit,
            idle_timeout=self.settings.upload_idle_timeout_seconds,
        )

    @property
    def body_limit(self) -> int:
        settings = self.settings
        return (
            settings.max_upload_bytes
            + settings.max_form_fields * settings.max_field_bytes
            + _FORM_OVERHEAD_BYTES
        )

    def _add_field(self, item: Field) -> None:
        self.fields.setdefault(item.name, []).append(item.value)

    async def read_until_file(self) -> FilePart:
        while True:
            item = await self.form.next_item()
            if item is None:
                raise ApiProblem(422, "missing_file", "The form has no `file` part.")
            if isinstance(item, FilePart):
                if item.name != "file":
                    raise ApiProblem(
                        422,
                        "unexpected_file",
                        f"Only one file, in the `file` field, is accepted (got {item.name!r}).",
                    )
                return item
            self._add_field(item)

    async def read_rest(self) -> None:
        while (item := await self.form.next_item()) is not None:
            if isinstance(item, FilePart):
                raise ApiProblem(422, "unexpected_file", "Only one file, in the `file` field, is accepted.")
            self._add_field(item)

    def digest(self, filename: str, media: MediaStream) -> str:
        options = self.read_options(self.fields)
        dump = options.model_dump(mode="json")
        return request_hash({"kind": "upload", "options": dump, "filename": filename, "sha256": media.sha256})


async def submit_upload(
    state: AppState,
    request: Request,
    principal: Principal,
    idem_key: str | None,
    base_url: str,
    *,
    read_options: OptionsReader = options_from_form,
    same_request_reuse: bool = False,
) -> Outcome:
    if not _is_form(request):
        raise ApiProblem(
            415, "unsupported_content_type", "The body must be multipart/form-data with a `file` part."
        )
    try:
        upload = _Upload(state, request, principal, idem_key, read_options, same_request_reuse)
        content_length = request.headers.get("content-length", "")
        if content_length.isdigit() and int(content_length) > upload.body_limit:
            raise _too_large(state.settings.max_upload_bytes)
        return await _submit_upload(upload, base_url)
    except FormError as exc:
        raise _form_problem(exc) from exc
    except MediaError as exc:
        raise _media_problem(exc) from exc
    except MediaTooLargeError as exc:
        raise _too_large(exc.limit) from exc
    except ClientGoneError as exc:
        log.info("client went away during the upload")
        raise ApiProblem(400, "client_disconnected", "The request body was not received completely.") from exc


def _is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def _submit_upload(upload: _Upload, base_url: str) -> Outcome:
    state, principal, settings = upload.state, upload.principal, upload.settings
    record = await _existing_record(state, principal, upload.idem_key)
    part = await upload.read_until_file()
    filename = sanitize_filename(part.filename)
    media = MediaStream(
        upload.form.file_data(),
        filename=part.filename,
        require_extension=True,
        max_bytes=settings.max_upload_bytes,
        hashed=upload.idem_key is not None or upload.reuse,
    )

    if record is not None:
        # A repeat of an idempotent request: read (and hash) the body without storing anything.
        try:
            await media.consume()
        except MediaError:
            raise idempotency.mismatch() from None
        await upload.read_rest()
        return await _replay(state, principal, record, upload.digest(filename, media), base_url)

    early = resolve_options(upload.read_options(upload.fields), settings)  # fields sent before the file
    detected = await media.prime()
    job_id = uuid.uuid4()
    async with state.sessionmaker() as session, session.begin():
        session.add(
            _new_job(job_id, principal, early, original_filename=filename, content_type=detected.mime)
        )
        await session.flush()
        session.add(_created_event(job_id, "upload"))
        if upload.idem_key is not None and not await idempotency.reserve(
            session, principal.key_id, upload.idem_key, job_id=job_id, digest=idempotency.PENDING,
            ttl_seconds=int(idempotency.PENDING_LEASE.total_seconds()),
        ):  # fmt: skip
            raise idempotency.in_progress()
    try:
        async with idempotency.kept_alive(state.sessionmaker, principal.key_id, upload.idem_key):
            await state.store.upload_stream(original_key(job_id), media.blocks(), content_type=detected.mime)
            await upload.read_rest()
        resolved = resolve_options(upload.read_options(upload.fields), settings)
        async with state.sessionmaker() as session, session.begin():
            if upload.reuse:
                earlier = await _claim_same_request(
                    session,
                    principal,
                    job_id,
                    upload.digest(filename, media),
                    settings.idempotency_ttl_seconds,
                )
                if earlier is not None:
                    raise _SameRequestError(earlier)
            previous = await transition_job(
                session,
                job_id,
                JobStatus.UPLOADED,
                allowed_from={JobStatus.PENDING},
                stage=STAGE,
                detail={"size_bytes": media.size, "content_type": detected.mime},
                size_bytes=media.size,
                **resolved.row_values(),
            )
            if upload.idem_key is not None:
                await idempotency.settle(
                    session, principal.key_id, upload.idem_key, digest=upload.digest(filename, media),
                    ttl_seconds=settings.idempotency_ttl_seconds,
                )  # fmt: skip
    except _SameRequestError as same:
        await asyncio.shield(_discard(state, principal, job_id, upload.idem_key))
        log.info("same request as an earlier upload: its job answers", job_id=str(same.job_id))
        return await _earlier_job(state, principal, same.job_id, base_url)
    except BaseException:
        await asyncio.shield(_discard(state, principal, job_id, upload.idem_key))
        raise
    metrics.UPLOAD_BYTES.labels("upload").inc(media.size)
    if previous is None:
        # Cancelled while uploading: report where it stands, produce nothing.
        async with state.sessionmaker() as session:
            job = await owned_job(session, principal, job_id)
        return _outcome(base_url, job_id, JobStatus(job.status), code=202)
    log.info("upload stored", job_id=str(job_id), size_bytes=media.size, content_type=detected.mime)
    await state.trigger.trigger(Topic.JOBS_SUBMITTED, job_id)
    return _outcome(base_url, job_id, JobStatus.UPLOADED, code=202)


class _SameRequestError(Exception):
    """The upload repeats an earlier request whose job answers for it (rolls the new job back)."""

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(str(job_id))
        self.job_id = job_id


async def _claim_same_request(
    session: AsyncSession, principal: Principal, job_id: uuid.UUID, digest: str, ttl_seconds: int
) -> uuid.UUID | None:
    """Inside the transaction that makes `job_id` UPLOADED: None when this request is new (it is
    recorded for the ones after it), else the job of the earlier identical request."""
    key = SAME_REQUEST_PREFIX + digest
    record = await idempotency.find(session, principal.key_id, key)
    if record is not None:
        earlier = await session.get(Job, record.job_id) if record.job_id is not None else None
        if (
            earlier is not None
            and earlier.api_key_id == principal.key_id
            and earlier.status not in _NOT_REUSED
        ):
            return earlier.id
        await idempotency.release(session, principal.key_id, key)  # failed, cancelled or deleted
    if await idempotency.reserve(
        session, principal.key_id, key, job_id=job_id, digest=digest, ttl_seconds=ttl_seconds
    ):
        return None
    # An identical request reserved it meanwhile (the insert waited for its commit): its job answers.
    record = await idempotency.find(session, principal.key_id, key)
    return record.job_id if record is not None else None


async def _earlier_job(state: AppState, principal: Principal, job_id: uuid.UUID, base_url: str) -> Outcome:
    async with state.sessionmaker() as session:
        job = await owned_job(session, principal, job_id)
    return _outcome(base_url, job.id, JobStatus(job.status), code=202, replayed=True)


async def _discard(state: AppState, principal: Principal, job_id: uuid.UUID, idem_key: str | None) -> None:
    """Undo a refused or broken upload: object, job row (with its events), reservation."""
    with contextlib.suppress(Exception):
        await state.store.delete(original_key(job_id))
    try:
        async with state.sessionmaker() as session, session.begin():
            await session.execute(delete(Job).where(Job.id == job_id, Job.status == JobStatus.PENDING))
            if idem_key is not None:
                await idempotency.release(session, principal.key_id, idem_key)
    except Exception:
        log.exception("could not remove the job of a refused upload", job_id=str(job_id))


# -- URL ----------------------------------------------------------------------------------------


async def submit_url(
    state: AppState, principal: Principal, body: UrlSubmission, idem_key: str | None, base_url: str
) -> Outcome:
    settings = state.settings
    digest = request_hash({"kind": "url", "request": body.model_dump(mode="json")})
    record = await _existing_record(state, principal, idem_key)
    if record is not None:
        return await _replay(state, principal, record, digest, base_url)
    resolved = resolve_options(JobOptions.model_validate(body.model_dump(exclude={"url"})), settings)
    try:
        target = await state.fetcher.check(body.url)
    except UnsafeUrlError as exc:
        raise ApiProblem(422, exc.code, exc.message) from exc

    job_id = uuid.uuid4()
    try:
        async with state.sessionmaker() as session, session.begin():
            session.add(_new_job(job_id, principal, resolved, source_url=target.url))
            await session.flush()
            session.add(_created_event(job_id, "url"))
            if idem_key is not None and not await idempotency.reserve(
                session, principal.key_id, idem_key, job_id=job_id, digest=digest,
                ttl_seconds=settings.idempotency_ttl_seconds,
            ):  # fmt: skip
                raise _KeyTakenError
    except _KeyTakenError:
        # Lost a race with a concurrent request using the same key: answer as its repeat.
        record = await _existing_record(state, principal, idem_key)
        if record is None:
            raise idempotency.in_progress() from None
        return await _replay(state, principal, record, digest, base_url)
    state.ingestor.start(job_id, target.url)
    log.info("url job accepted", job_id=str(job_id))
    return _outcome(base_url, job_id, JobStatus.PENDING, code=202)


class _KeyTakenError(Exception):
    """The Idempotency-Key was reserved by a concurrent request (rolls the job back)."""
