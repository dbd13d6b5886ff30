"""The merger stage: per-chunk JSON → one transcript (JSON, TXT, SRT, VTT) → COMPLETED → finished.

Outputs go to deterministic keys, and `MERGING → COMPLETED` is conditional, so a redelivered
trigger rewrites identical files and cannot complete a job twice (or a cancelled one at all).
A redelivered trigger for a job already finished re-emits `finished`, in case the previous holder
died between its commit and its produce; the notifier de-duplicates by event id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Histogram
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common import metrics
from stt_common.db.jobs import transition_job
from stt_common.db.models import Chunk, Job, JobStatus
from stt_common.errors import ErrorCode
from stt_common.kafka import EventProducer
from stt_common.messages import Envelope, Topic
from stt_common.pipeline import fail_job, load_job, load_language_pin
from stt_common.runner import Outcome
from stt_common.s3 import ObjectNotFoundError, ObjectStore, chunk_result_key, result_key
from stt_common.transcript import ChunkTranscript, Segment
from stt_merger.formats import to_srt, to_txt, to_vtt
from stt_merger.merge import ChunkInput, merge_chunks

STAGE = "merger"

JOB_SECONDS = Histogram(
    "stt_job_duration_seconds",
    "Submission to completion, per completed job.",
    buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
REALTIME_FACTOR = Histogram(
    "stt_job_realtime_factor",
    "Audio seconds per second of processing (submission to completion), per completed job.",
    buckets=(0.5, 1, 2, 5, 10, 20, 50, 100),
)

_CONTENT_TYPES = {
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


class MergerHandler:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], store: ObjectStore, producer: EventProducer
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._producer = producer

    async def __call__(self, envelope: Envelope) -> Outcome:
        job = await load_job(self._sessions, envelope.job_id)
        if job is None:
            return Outcome.DUPLICATE
        if JobStatus(job.status).terminal:
            await self._emit_finished(job)
            return Outcome.DUPLICATE
        if job.status != JobStatus.MERGING:
            return Outcome.DUPLICATE

        try:
            document = await self._merge(job)
        except (ObjectNotFoundError, ValidationError, KeyError, json.JSONDecodeError) as exc:
            # A chunk result that is missing or unreadable will not get better by redelivery.
            await fail_job(
                self._sessions,
                self._producer,
                job.id,
                code=ErrorCode.UNKNOWN,
                message=f"could not merge the chunk results ({type(exc).__name__}: {exc}); retry the job",
                stage=STAGE,
            )
            return Outcome.OK
        for fmt, body in _renderings(document).items():
            await self._store.put_bytes(result_key(job.id, fmt), body, content_type=_CONTENT_TYPES[fmt])

        async with self._sessions() as session:
            won = await transition_job(
                session,
                job.id,
                JobStatus.COMPLETED,
                allowed_from={JobStatus.MERGING},
                stage=STAGE,
                detail={
                    "segments": len(document["segments"]),
                    "warnings": len(document["quality"]["warnings"]),
                },
            )
            await session.commit()
        if won is None:
            return Outcome.DUPLICATE  # cancelled while merging, or another merger won
        self._observe(job)
        await self._emit_finished(job)
        return Outcome.OK

    async def _merge(self, job: Job) -> dict[str, Any]:
        async with self._sessions() as session:
            chunks = list(
                await session.scalars(select(Chunk).where(Chunk.job_id == job.id).order_by(Chunk.chunk_index))
            )
            pinned = await load_language_pin(session, job.id)
        documents = [
            json.loads(await self._store.get_bytes(chunk_result_key(job.id, chunk.chunk_index)))
            for chunk in chunks
        ]
        return result_document(job, chunks, documents, pinned)

    def _observe(self, job: Job) -> None:
        metrics.JOBS_FINISHED.labels(JobStatus.COMPLETED.value, "").inc()
        elapsed = (datetime.now(UTC) - job.created_at).total_seconds()
        JOB_SECONDS.observe(elapsed)
        if job.duration_seconds and elapsed > 0:
            REALTIME_FACTOR.observe(job.duration_seconds / elapsed)

    async def _emit_finished(self, job: Job) -> None:
        await self._producer.trigger(Topic.JOBS_FINISHED, job.id, producer=STAGE)


def result_document(
    job: Job,
    chunks: Sequence[Chunk],
    documents: Sequence[dict[str, Any]],
    pinned: tuple[str, float] | None,
) -> dict[str, Any]:
    """The job's result JSON from its chunk rows, their saved documents (same order) and the language
    pinned for it, if any."""
    inputs: list[ChunkInput] = []
    reports: list[dict[str, Any]] = []
    for chunk, saved in zip(chunks, documents, strict=True):
        transcript = ChunkTranscript.model_validate(saved["transcript"])
        inputs.append(
            ChunkInput(
                index=chunk.chunk_index,
                start_seconds=chunk.start_seconds,
                end_seconds=chunk.end_seconds,
                transcript=transcript,
            )
        )
        reports.append(
            {
                "index": chunk.chunk_index,
                "start_seconds": chunk.start_seconds,
                "end_seconds": chunk.end_seconds,
                # Who transcribed the chunk: the job's provider, or a fallback after it failed.
                "provider": saved.get("provider", transcript.provider),
                "model": saved.get("model", transcript.model),
                "fallbacks": saved.get("fallbacks", []),
                "provider_seconds": saved.get("provider_seconds"),
                "tries": len(saved.get("tries", [])),
                "provider_calls": sum(len(t.get("calls", [])) for t in saved.get("tries", [])),
                # Documents written before text-only providers lack these keys: provider times,
                # coverage checked.
                "timestamps": saved.get("timestamps")
                or ("estimated" if any(s.estimated for s in transcript.segments) else "provider"),
                "check": saved.get("check", "coverage"),
                "words_per_speech_second": saved.get("words_per_speech_second"),
                "coverage_gaps": saved.get("coverage_gaps", []),
                "repairs": [
                    {k: v for k, v in repair.items() if k != "calls"} for repair in saved.get("repairs", [])
                ],
                "warnings": saved.get("warnings", []),
            }
        )
    merged = merge_chunks(inputs)
    first = inputs[0].transcript if inputs else None
    translated = (job.options or {}).get("task") == "translate"
    timestamps = _one_or_mixed([r["timestamps"] for r in reports], "provider")
    return {
        "job_id": str(job.id),
        "text": merged.text,
        # The text's language: English for a translation (whatever was spoken); else named by the
        # job, else detected once and pinned for every chunk, else the provider's.
        "language": "en"
        if translated
        else (pinned[0] if pinned else None) or job.language or merged.language,
        "language_probability": pinned[1] if pinned and not translated else None,
        "duration_seconds": job.duration_seconds,
        "provider": job.provider,
        "model": (first.model if first else None) or job.model,
        # Some or all times were estimated from the audio's speech energy (a text-only provider):
        # good enough to find a passage, not to time subtitles to the word.
        "timestamps_estimated": timestamps != "provider",
        # exclude_defaults: "estimated" appears only on the segments whose times were estimated.
        "segments": [segment.model_dump(mode="json", exclude_defaults=True) for segment in merged.segments],
        "chunks": reports,
        "quality": {
            "timestamps": timestamps,
            # "coverage": speech left untranscribed, found by times; "words_per_speech_second":
            # the speaking rate, for estimated times (which cover all speech by construction).
            "check": _one_or_mixed([r["check"] for r in reports], "coverage"),
            "words_per_speech_second": {
                r["index"]: r["words_per_speech_second"]
                for r in reports
                if r["words_per_speech_second"] is not None
            },
            "coverage_gaps": {r["index"]: r["coverage_gaps"] for r in reports if r["coverage_gaps"]},
            "merge_decisions": [decision.model_dump(mode="json") for decision in merged.decisions],
            "retries": sum(max(r["provider_calls"] - 1, 0) for r in reports),
            # Chunks a fallback provider transcribed, and why the ones before it failed.
            "fallbacks": [
                {"chunk": r["index"], "provider": r["provider"], "failed": r["fallbacks"]}
                for r in reports
                if r["fallbacks"]
            ],
            # Windows the transcriber's guard decoded again (times in the recording's clock).
            "redecodes": [
                {
                    **repair,
                    "chunk": r["index"],
                    "start_seconds": round(r["start_seconds"] + repair["start_seconds"], 2),
                    "end_seconds": round(r["start_seconds"] + repair["end_seconds"], 2),
                }
                for r in reports
                for repair in r["repairs"]
            ],
            "low_confidence_share": low_confidence_share(merged.segments),
            "loops_suppressed": sum(
                1 for r in reports for repair in r["repairs"] if repair["reason"] == "loop"
            ),
            "warnings": [w for r in reports for w in r["warnings"]],
        },
    }


def _one_or_mixed(values: list[str], default: str) -> str:
    """The value every chunk shares, "mixed" when they differ, ``default`` without chunks."""
    distinct = set(values)
    if not distinct:
        return default
    return distinct.pop() if len(distinct) == 1 else "mixed"


# Whisper's own line between a window it trusts and one it would decode again (`log_prob_threshold`).
LOW_CONFIDENCE_LOGPROB = -1.0


def low_confidence_share(segments: list[Segment]) -> float | None:
    """Share of the transcribed time in segments whose mean token log-probability is below
    LOW_CONFIDENCE_LOGPROB; None when the provider gives no confidences."""
    scored = [s for s in segments if s.avg_logprob is not None and s.end > s.start]
    total = sum(s.end - s.start for s in scored)
    if not total:
        return None
    low = sum(s.end - s.start for s in scored if (s.avg_logprob or 0.0) < LOW_CONFIDENCE_LOGPROB)
    return round(low / total, 4)


def _renderings(document: dict[str, Any]) -> dict[str, bytes]:
    segments = [Segment.model_validate(s) for s in document["segments"]]
    return {
        "json": json.dumps(document, ensure_ascii=False, indent=1).encode(),
        "txt": to_txt(segments).encode(),
        "srt": to_srt(segments).encode(),
        "vtt": to_vtt(segments).encode(),
    }
