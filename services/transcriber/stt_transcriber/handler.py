"""The transcriber stage: one chunk → provider → per-chunk JSON in S3; the last chunk starts the merge.

Claiming is conditional (PENDING, or PROCESSING whose lease expired because its holder died), the
fan-in is serialised by a lock on the job row, and a redelivered trigger for a finished chunk
re-emits whatever should have followed it — so killing a transcriber anywhere loses nothing and
duplicates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.jobs import record_event
from stt_common.db.models import Chunk, ChunkStatus, Job, JobStatus
from stt_common.errors import CancelledJobError, ErrorCode, SttError, classify, is_transient
from stt_common.kafka import EventProducer
from stt_common.logs import get_logger
from stt_common.messages import Envelope, Topic
from stt_common.pipeline import (
    LANGUAGE_PIN,
    fail_job,
    load_job,
    load_language_pin,
    start_merge_if_transcribed,
)
from stt_common.providers import LanguageDetector, Provider, ProviderRequest, local_models
from stt_common.providers.catalogue import provider_info
from stt_common.runner import Outcome
from stt_common.s3 import ObjectNotFoundError, ObjectStore, chunk_audio_key, chunk_result_key
from stt_common.transcript import ChunkTranscript, Segment
from stt_transcriber import guard, timing
from stt_transcriber.budget import BudgetBusy, VendorBudget
from stt_transcriber.coverage import speech_gaps, speech_mask
from stt_transcriber.pool import ProviderPool
from stt_transcriber.settings import TranscriberSettings

STAGE = "transcriber"
log = get_logger(__name__)

PROVIDER_SECONDS = Histogram(
    "stt_provider_call_seconds",
    "Latency of one provider call.",
    ["provider"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
PROVIDER_ERRORS = Counter("stt_provider_errors_total", "Failed provider calls.", ["provider", "error_code"])
CHUNK_RETRIES = Counter("stt_chunk_retries_total", "Extra provider tries of a chunk.", ["provider", "reason"])
COVERAGE_GAPS = Counter(
    "stt_coverage_gaps_total", "Chunks left with a speech gap after all tries.", ["provider"]
)
REDECODES = Counter(
    "stt_redecodes_total",
    "Windows of a chunk decoded again by the repetition/silence guard, by reason and whether the new "
    "text was clean (fixed) or had to be collapsed or dropped.",
    ["provider", "reason", "result"],
)

FALLBACKS = Counter(
    "stt_provider_fallbacks_total",
    "Chunks moved to a job's next provider, by the provider that failed, the one tried next and why.",
    ["provider", "fallback", "error_code"],
)
DEFERRALS = Counter(
    "stt_chunks_deferred_total",
    "Chunks handed back to the queue because their vendor's budget stayed full (other replicas' calls).",
    ["provider"],
)
# Failures another vendor may not share. Not auth_error (our configuration) nor invalid_audio (the
# audio's fault, whoever transcribes it).
FALLBACK_ERRORS = frozenset(
    {ErrorCode.RATE_LIMITED, ErrorCode.QUOTA_EXCEEDED, ErrorCode.PROVIDER_UNAVAILABLE, ErrorCode.TIMEOUT}
)

# A chunk is claimable as soon as the chunker has announced it (its job is still CHUNKING while
# later chunks are cut), so the first transcription starts while the recording is still decoding.
_CLAIM = text(
    """
    UPDATE chunks SET status = 'PROCESSING', attempts = attempts + 1, updated_at = now(),
           lease_expires_at = now() + make_interval(secs => :lease)
    WHERE job_id = :job_id AND chunk_index = :index
      AND (status = 'PENDING' OR (status = 'PROCESSING' AND lease_expires_at < now()))
      AND EXISTS (SELECT 1 FROM jobs WHERE id = :job_id AND status IN ('CHUNKING', 'TRANSCRIBING'))
    RETURNING start_seconds, end_seconds, attempts
    """
)


_RENEW = text(
    """
    UPDATE chunks SET lease_expires_at = now() + make_interval(secs => :lease)
    WHERE job_id = :job_id AND chunk_index = :index AND status = 'PROCESSING'
    """
)


@dataclass(frozen=True)
class ClaimedChunk:
    job: Job
    index: int
    start: float
    end: float
    attempt: int


class TranscriberHandler:
    def __init__(
        self,
        settings: TranscriberSettings,
        sessions: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        producer: EventProducer,
        providers: ProviderPool,
        budget: VendorBudget | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._store = store
        self._producer = producer
        self._providers = providers
        self._budget = budget  # None: no vendor limits (tests, and deployments that set none)

    async def __call__(self, envelope: Envelope) -> Outcome:
        assert envelope.chunk_index is not None  # guaranteed by the envelope's validator
        index = envelope.chunk_index
        deadline = time.monotonic() + self._settings.lease_seconds + 10
        while True:
            job = await load_job(self._sessions, envelope.job_id)
            if job is None or JobStatus(job.status).terminal:
                return Outcome.DUPLICATE  # deleted, cancelled or failed: leave the chunk alone
            claimed = await self._claim(job, index)
            if claimed is not None:
                return await self._transcribe(claimed)
            chunk = await self._chunk(job.id, index)
            if chunk is None or chunk.status == ChunkStatus.FAILED:
                return Outcome.DUPLICATE
            if chunk.status == ChunkStatus.COMPLETED:
                await self._emit_followers(job, index, merging=job.status == JobStatus.MERGING)
                return Outcome.DUPLICATE
            # PROCESSING under a live lease: a duplicate trigger, or a holder that just died.
            # Wait for the lease to end either way, so a dead holder's chunk is not stranded.
            if time.monotonic() > deadline:
                return Outcome.DUPLICATE
            await asyncio.sleep(min(2.0, self._settings.lease_seconds / 4))

    # -- claim and lease ------------------------------------------------------------------------

    async def _claim(self, job: Job, index: int) -> ClaimedChunk | None:
        async with self._sessions() as session:
            row = (
                await session.execute(
                    _CLAIM, {"job_id": job.id, "index": index, "lease": self._settings.lease_seconds}
                )
            ).first()
            await session.commit()
        if row is None:
            return None
        return ClaimedChunk(
            job=job, index=index, start=row.start_seconds, end=row.end_seconds, attempt=row.attempts
        )

    async def _chunk(self, job_id: uuid.UUID, index: int) -> Chunk | None:
        async with self._sessions() as session:
            chunk: Chunk | None = await session.scalar(
                select(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_index == index)
            )
            return chunk

    @contextlib.asynccontextmanager
    async def _lease(self, job_id: uuid.UUID, index: int) -> AsyncIterator[None]:
        async def renew() -> None:
            while True:
                await asyncio.sleep(self._settings.lease_renew_seconds)
                async with self._sessions() as session:
                    await session.execute(
                        _RENEW, {"job_id": job_id, "index": index, "lease": self._settings.lease_seconds}
                    )
                    await session.commit()

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the work -------------------------------------------------------------------------------

    async def _transcribe(self, chunk: ClaimedChunk) -> Outcome:
        job = chunk.job
        provider = self._providers.get(job.provider)
        duration = chunk.end - chunk.start
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(
            prefix=f"tx-{job.id}-{chunk.index}-", dir=self._settings.work_dir
        ) as tmp:
            audio = Path(tmp) / "chunk.wav"
            async with self._lease(job.id, chunk.index):
                try:
                    await self._store.download_file(chunk_audio_key(job.id, chunk.index), audio)
                    context = await self._context(job, chunk.index)
                    language = await self._language(job, chunk.index, audio, provider)
                except ObjectNotFoundError as exc:
                    # Deleted under us (or never written): no retry can bring it back.
                    message = f"chunk {chunk.index}: {exc} is missing from storage; retry the job"
                    await self._fail_chunk(job.id, chunk.index, ErrorCode.UNKNOWN, message)
                    await fail_job(
                        self._sessions,
                        self._producer,
                        job.id,
                        code=ErrorCode.UNKNOWN,
                        message=message,
                        stage=STAGE,
                    )
                    return Outcome.OK
                request = ProviderRequest(
                    language=language,
                    model=job.model,
                    prompt=job_prompt(job.options or {}),
                    context_segments=context,
                    options=dict(job.options or {}),
                    # Stored only for translate jobs (ingest checked the provider can translate).
                    task="translate" if (job.options or {}).get("task") == "translate" else "transcribe",
                )
                try:
                    result, report = await self._with_fallback(job, audio, request, duration)
                except CancelledJobError:
                    await self._release(job.id, chunk.index)
                    return Outcome.OK
                except BudgetBusy as busy:
                    # The vendor's budget is taken by other replicas' calls: give the chunk back to
                    # the queue instead of holding one of this replica's in-flight places (which
                    # another provider's chunk can use meanwhile). Its trigger goes to the end of the
                    # partition; the release keeps `attempts` a count of real tries.
                    DEFERRALS.labels(busy.provider).inc()
                    log.info("vendor budget busy, chunk handed back", provider=busy.provider)
                    await self._release(job.id, chunk.index, tried=False)
                    await self._producer.trigger(
                        Topic.CHUNKS_READY, job.id, producer=STAGE, chunk_index=chunk.index
                    )
                    return Outcome.OK
                except _ChunkFailed as failed:
                    cause = failed.cause
                    code = classify(cause)
                    message = error_text(cause)
                    log.warning("chunk failed for good", error_code=code.value, error=message[:300])
                    await self._fail_chunk(job.id, chunk.index, code, message)
                    tried = "".join(f"; before, {f['provider']}: {f['error_code']}" for f in failed.fallbacks)
                    await fail_job(
                        self._sessions,
                        self._producer,
                        job.id,
                        code=code,
                        message=f"chunk {chunk.index} ({failed.provider}): {message}{tried}",
                        stage=STAGE,
                    )
                    return Outcome.OK
        provider_seconds = report["provider_seconds"]
        document = {
            "job_id": str(job.id),
            "chunk_index": chunk.index,
            "start_seconds": chunk.start,
            "end_seconds": chunk.end,
            "delivery_attempt": chunk.attempt,
            "wall_seconds": round(time.perf_counter() - started, 3),
            "context_text": " ".join(segment.text for segment in request.context_segments),
            **report,
            "transcript": result.model_dump(mode="json"),
        }
        await self._store.put_bytes(
            chunk_result_key(job.id, chunk.index),
            json.dumps(document, ensure_ascii=False).encode(),
            content_type="application/json",
        )
        merging = await self._complete(job, chunk.index, provider_seconds)
        if merging is None:
            return Outcome.DUPLICATE
        await self._emit_followers(job, chunk.index, merging=merging)
        return Outcome.OK

    async def _language(self, job: Job, index: int, audio: Path, provider: Provider) -> str | None:
        """The job's language; with none given, the one detected once on the first chunk and pinned in
        the job's timeline, so that no chunk is transcribed in another language than the rest.

        Every transcriber that finds no pin detects it on chunk 0 (the same audio, so the same answer)
        and the first to write it wins: a pin is never changed. Providers that cannot detect a
        language apart from transcribing (remote vendors) get none and detect it themselves."""
        if job.language:
            return job.language
        if not isinstance(provider, LanguageDetector):
            return None
        async with self._sessions() as session:
            pinned = await load_language_pin(session, job.id)
        if pinned is not None:
            return pinned[0]
        with tempfile.TemporaryDirectory(dir=self._settings.work_dir) as tmp:
            first = audio
            if index != 0:
                first = Path(tmp) / "chunk0.wav"
                await self._store.download_file(chunk_audio_key(job.id, 0), first)
            detected = await provider.detect_language(first, job.model)
        if detected is None:
            return None
        async with self._sessions() as session:
            await session.execute(select(Job.id).where(Job.id == job.id).with_for_update())
            pinned = await load_language_pin(session, job.id)
            if pinned is None:
                code, probability = detected
                record_event(
                    session,
                    job.id,
                    stage=STAGE,
                    detail={
                        LANGUAGE_PIN: code,
                        "language_probability": round(probability, 3),
                        "chunk_index": 0,
                    },
                )
                pinned = detected
            await session.commit()
        log.info("language pinned", language=pinned[0], probability=round(pinned[1], 3))
        return pinned[0]

    async def _context(self, job: Job, index: int) -> list[Segment]:
        if job.context_mode != "chained" or index == 0 or self._settings.context_segments == 0:
            return []
        previous = json.loads(await self._store.get_bytes(chunk_result_key(job.id, index - 1)))
        transcript = ChunkTranscript.model_validate(previous["transcript"])
        return transcript.segments[-self._settings.context_segments :]

    async def _with_fallback(
        self, job: Job, audio: Path, request: ProviderRequest, duration: float
    ) -> tuple[ChunkTranscript, dict[str, Any]]:
        """The job's provider, then each of its `fallback_providers` in order, for as long as the
        failure is one another vendor may not have (rate limits, quota, outages, timeouts). An auth
        error or audio the vendor refused ends the chunk: another vendor would not fix the first, and
        the second is the audio's fault."""
        names = [job.provider, *fallback_providers(job.options or {})]
        fallbacks: list[dict[str, Any]] = []
        for position, name in enumerate(names):
            provider = self._providers.get(name)
            # The job's model names a model of its own provider; a fallback uses its default (for
            # `local`, the one that speaks the job's language).
            model = local_models.model_for_job(None, request.language, self._settings.local_model)
            fallback_model = model if name == "local" else None
            attempt = request if position == 0 else replace(request, model=fallback_model)
            try:
                result, report = await self._best_attempt(provider, audio, attempt, job.id, duration)
            except (CancelledJobError, BudgetBusy):
                raise
            except Exception as exc:
                code = classify(exc)
                if code not in FALLBACK_ERRORS or position == len(names) - 1:
                    raise _ChunkFailed(name, exc, fallbacks) from exc
                FALLBACKS.labels(name, names[position + 1], code.value).inc()
                log.warning(
                    "provider failed for this chunk, falling back",
                    provider=name,
                    fallback=names[position + 1],
                    error_code=code.value,
                )
                fallbacks.append({"provider": name, "error_code": code.value, "error": error_text(exc)[:300]})
                continue
            return result, {**report, "model": result.model, "fallbacks": fallbacks}
        raise AssertionError("unreachable: the loop returns or raises")

    async def _best_attempt(
        self, provider: Provider, audio: Path, request: ProviderRequest, job_id: uuid.UUID, duration: float
    ) -> tuple[ChunkTranscript, dict[str, Any]]:
        """Call the provider; retry when speech is left untranscribed; keep the best try."""
        mask = await asyncio.to_thread(speech_mask, audio)
        if provider_info(provider.name).capabilities.timestamps == "none":
            return await self._text_only_attempt(provider, audio, request, job_id, duration, mask)
        best: tuple[ChunkTranscript, list[tuple[float, float]]] | None = None
        tries: list[dict[str, Any]] = []
        provider_seconds = 0.0
        for coverage_try in range(1 + self._settings.coverage_retries):
            if coverage_try:
                CHUNK_RETRIES.labels(provider.name, "coverage").inc()
            result, calls = await self._call_with_retries(provider, audio, request, job_id)
            provider_seconds += sum(call["seconds"] for call in calls)
            gaps = speech_gaps(result, mask, min_gap_seconds=self._settings.coverage_gap_seconds)
            tries.append({"calls": calls, "coverage_gaps": gaps, "segments": len(result.segments)})
            if best is None or _gap_total(gaps) < _gap_total(best[1]):
                best = (result, gaps)
            if not gaps:
                break
        assert best is not None
        warnings = []
        if best[1]:
            COVERAGE_GAPS.labels(provider.name).inc()
            warnings.append(f"speech left untranscribed after {len(tries)} tries: {best[1]}")
        result, repairs = await self._repair(provider, audio, request, job_id, best[0], mask)
        provider_seconds += sum(call["seconds"] for repair in repairs for call in repair["calls"])
        return result, {
            "provider": provider.name,
            "provider_seconds": round(provider_seconds, 3),
            "tries": tries,
            "coverage_gaps": best[1],
            "repairs": repairs,
            "warnings": warnings,
        }

    async def _text_only_attempt(
        self,
        provider: Provider,
        audio: Path,
        request: ProviderRequest,
        job_id: uuid.UUID,
        duration: float,
        mask: Any,
    ) -> tuple[ChunkTranscript, dict[str, Any]]:
        """A provider that returns text without times: one call, times estimated from the chunk's
        speech, and the speaking-rate check instead of coverage (which needs times)."""
        result, calls = await self._call_with_retries(provider, audio, request, job_id)
        result = timing.estimate_times(result, mask, duration)
        warning = timing.sanity_check(result, mask)
        return result, {
            "provider": provider.name,
            "provider_seconds": round(sum(call["seconds"] for call in calls), 3),
            "tries": [{"calls": calls, "segments": len(result.segments)}],
            "coverage_gaps": [],
            "repairs": [],
            "warnings": [warning] if warning else [],
            **timing.estimated_report(result, mask),
        }

    async def _repair(
        self,
        provider: Provider,
        audio: Path,
        request: ProviderRequest,
        job_id: uuid.UUID,
        result: ChunkTranscript,
        mask: Any,
    ) -> tuple[ChunkTranscript, list[dict[str, Any]]]:
        """Decode every window the guard suspects (a repetition loop, text in silence) again, and splice
        the new text in; a window that still loops is collapsed, text in silence that the VAD also finds
        empty is dropped. Returns the repaired transcript and what was done, window by window."""
        segments = list(result.segments)
        repairs: list[dict[str, Any]] = []
        for suspect in reversed(guard.suspects(segments, mask)):  # from the end: indices stay valid
            start, end = suspect.window(segments)
            before = " ".join(s.text.strip() for s in segments[suspect.first : suspect.last + 1])
            options = (
                guard.SILENCE_REDECODE_OPTIONS if suspect.reason == "silence" else guard.REDECODE_OPTIONS
            )
            again = replace(request, prompt=None, context_segments=[], options={**request.options, **options})
            with tempfile.TemporaryDirectory(dir=self._settings.work_dir) as tmp:
                window = Path(tmp) / "window.wav"
                await asyncio.to_thread(guard.cut_wav, audio, start, end, window)
                redone, calls = await self._call_with_retries(provider, window, again, job_id)
            new = [guard.shifted(segment, start) for segment in redone.segments]
            outcome = "fixed"
            if guard.loops(new):
                new, outcome = guard.collapse_loop(new), "collapsed"
            elif suspect.reason == "silence" and not new:
                outcome = "dropped"
            segments[suspect.first : suspect.last + 1] = new
            REDECODES.labels(provider.name, suspect.reason, outcome).inc()
            after = " ".join(s.text.strip() for s in new)
            log.info("window decoded again", reason=suspect.reason, start_s=start, end_s=end, result=outcome)
            repairs.insert(
                0,
                {
                    "reason": suspect.reason,
                    "start_seconds": round(start, 2),
                    "end_seconds": round(end, 2),
                    "result": outcome,
                    "before": before[:500],
                    "after": after[:500],
                    "calls": calls,
                },
            )
        return result.model_copy(update={"segments": segments}), repairs

    async def _call_with_retries(
        self, provider: Provider, audio: Path, request: ProviderRequest, job_id: uuid.UUID
    ) -> tuple[ChunkTranscript, list[dict[str, Any]]]:
        settings = self._settings
        calls: list[dict[str, Any]] = []
        for attempt in range(1, settings.provider_attempts + 1):
            if attempt > 1:
                await self._check_not_cancelled(job_id)
            started = time.perf_counter()
            try:
                # The vendor's budget (shared by every replica) is waited for outside the call's
                # timeout: waiting for a slot is not the vendor being slow. Each try takes a slot, so
                # retries count against the budget and backoff sleeps hold none.
                async with self._budget_slot(provider.name):
                    started = time.perf_counter()
                    result = await asyncio.wait_for(
                        provider.transcribe(audio, request), settings.provider_timeout_seconds
                    )
            except BudgetBusy:
                raise
            except Exception as exc:
                seconds = time.perf_counter() - started
                code = classify(exc)
                PROVIDER_ERRORS.labels(provider.name, code.value).inc()
                calls.append(
                    {"seconds": round(seconds, 3), "error_code": code.value, "error": str(exc)[:300]}
                )
                if not is_transient(exc) or attempt == settings.provider_attempts:
                    raise
                delay = _backoff(attempt, settings.backoff_base_seconds, settings.backoff_max_seconds)
                if isinstance(exc, SttError) and exc.retry_after is not None:
                    delay = min(max(delay, exc.retry_after), settings.backoff_max_seconds)
                CHUNK_RETRIES.labels(provider.name, code.value).inc()
                log.info(
                    "provider call failed, retrying", error_code=code.value, attempt=attempt, delay_s=delay
                )
                await asyncio.sleep(delay)
                continue
            seconds = time.perf_counter() - started
            PROVIDER_SECONDS.labels(provider.name).observe(seconds)
            calls.append({"seconds": round(seconds, 3)})
            return result, calls
        raise AssertionError("unreachable")

    def _budget_slot(self, provider: str) -> contextlib.AbstractAsyncContextManager[float]:
        if self._budget is None:
            return contextlib.nullcontext(0.0)
        return self._budget.slot(provider, patience=self._settings.budget_patience_seconds)

    async def _check_not_cancelled(self, job_id: uuid.UUID) -> None:
        job = await load_job(self._sessions, job_id)
        if job is None or job.status not in (JobStatus.CHUNKING, JobStatus.TRANSCRIBING):
            raise CancelledJobError("the job was cancelled, deleted or failed while this chunk was retried")

    # -- finishing ------------------------------------------------------------------------------

    async def _complete(self, job: Job, index: int, provider_seconds: float) -> bool | None:
        """Mark the chunk done; the completion that leaves no chunk unfinished moves the job to MERGING.

        Returns whether this call started the merge, or None if the chunk was not ours any more."""
        async with self._sessions() as session:
            # The job row lock serialises completions of one job, so exactly one sees "none left".
            await session.execute(select(Job.id).where(Job.id == job.id).with_for_update())
            done = await session.execute(
                update(Chunk)
                .where(
                    Chunk.job_id == job.id, Chunk.chunk_index == index, Chunk.status == ChunkStatus.PROCESSING
                )
                .values(
                    status=ChunkStatus.COMPLETED, provider_seconds=provider_seconds, lease_expires_at=None
                )
                .returning(Chunk.id)
            )
            if done.first() is None:
                await session.rollback()
                return None
            record_event(
                session,
                job.id,
                stage=STAGE,
                detail={"chunk_index": index, "provider_seconds": provider_seconds},
            )
            merging = await start_merge_if_transcribed(session, job.id, stage=STAGE)
            await session.commit()
        return merging

    async def _emit_followers(self, job: Job, index: int, *, merging: bool) -> None:
        if merging:
            await self._producer.trigger(Topic.JOBS_TRANSCRIBED, job.id, producer=STAGE)
            return
        if job.context_mode == "chained":
            following = await self._chunk(job.id, index + 1)
            if following is not None and following.status == ChunkStatus.PENDING:
                await self._producer.trigger(
                    Topic.CHUNKS_READY, job.id, producer=STAGE, chunk_index=index + 1
                )

    async def _release(self, job_id: uuid.UUID, index: int, *, tried: bool = True) -> None:
        """Give a claimed chunk back (PENDING); `tried=False` when it goes back for want of a vendor
        slot, which does not count as a try."""
        async with self._sessions() as session:
            await session.execute(
                update(Chunk)
                .where(
                    Chunk.job_id == job_id, Chunk.chunk_index == index, Chunk.status == ChunkStatus.PROCESSING
                )
                .values(
                    status=ChunkStatus.PENDING,
                    lease_expires_at=None,
                    attempts=Chunk.attempts if tried else Chunk.attempts - 1,
                )
            )
            await session.commit()

    async def _fail_chunk(self, job_id: uuid.UUID, index: int, code: ErrorCode, message: str) -> None:
        async with self._sessions() as session:
            await session.execute(
                update(Chunk)
                .where(Chunk.job_id == job_id, Chunk.chunk_index == index)
                .values(
                    status=ChunkStatus.FAILED,
                    error_code=code.value,
                    error_message=message[:2000],
                    lease_expires_at=None,
                )
            )
            await session.commit()


class _ChunkFailed(Exception):
    """Every provider tried for a chunk failed; `cause` is the last one's error."""

    def __init__(self, provider: str, cause: Exception, fallbacks: list[dict[str, Any]]) -> None:
        super().__init__(provider)
        self.provider, self.cause, self.fallbacks = provider, cause, fallbacks


def error_text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, SttError) else f"{type(exc).__name__}: {exc}"


def fallback_providers(options: dict[str, Any]) -> list[str]:
    """The job's `fallback_providers` option (ingest checked them at submission)."""
    return [str(name) for name in options.get("fallback_providers") or []]


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def _gap_total(gaps: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in gaps)


def job_prompt(options: dict[str, Any]) -> str | None:
    """The job's prompt followed by its vocabulary ("Yerevan, Kafka."): prompt-driven providers (local,
    openai, gemini) spell the terms as given; elevenlabs sends the vocabulary as keyterms instead."""
    prompt = str(options.get("prompt") or "").strip()
    terms = [str(t).strip() for t in options.get("vocabulary") or [] if str(t).strip()]
    vocabulary = ", ".join(dict.fromkeys(terms)) + "." if terms else ""
    return " ".join(part for part in (prompt, vocabulary) if part) or None
