"""The chunker stage: original audio/video in S3 → normalised, planned, uploaded chunks + chunk rows.

Each chunk is announced as soon as it is in S3: its row is inserted (ON CONFLICT DO NOTHING) and
its `stt.chunks.ready` trigger produced while later audio is still being decoded, so transcribers
start on the first chunk seconds into a long recording. The job stays CHUNKING until the last chunk
is announced; `CHUNKING → TRANSCRIBING` (with `chunks_total`) then says the set is whole, and if the
transcribers already finished every chunk, the same transaction starts the merge.

Idempotent: chunk keys and windows are deterministic, and only the instance that wins
`CHUNKING → TRANSCRIBING` emits what is still owed. A redelivered trigger for a job already
TRANSCRIBING re-emits its pending chunks (the previous holder may have died between its commit and
its produce); transcribers ignore chunks that are taken or done.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_chunker.audio import (
    SAMPLE_RATE,
    normalise,
    normalised_seconds_written,
    quietest_point,
    wav_chunk_blocks,
)
from stt_chunker.plan import ChunkPlanner, ChunkWindow, chunk_seconds_within
from stt_chunker.settings import ChunkerSettings
from stt_common.db.jobs import transition_job
from stt_common.db.models import ApiKey, Chunk, ChunkStatus, Job, JobStatus
from stt_common.errors import ErrorCode, SttError
from stt_common.kafka import EventProducer
from stt_common.logs import get_logger
from stt_common.messages import Envelope, Topic
from stt_common.pipeline import emit_resume_triggers, fail_job, load_job, start_merge_if_transcribed
from stt_common.providers.catalogue import PROVIDERS
from stt_common.runner import Outcome
from stt_common.s3 import ObjectNotFoundError, ObjectStore, chunk_audio_key, chunks_prefix, original_key

STAGE = "chunker"
_PARALLEL_UPLOADS = 2
_DECODE_POLL_SECONDS = 0.05
# On the way out after an error, uploads already started are let finish (or fail) for this long
# before they are cancelled: a PUT cancelled after its body was sent may still be committed by the
# server after the client gave up, and then a cleanup that ran first would miss it.
_UPLOAD_SETTLE_SECONDS = 30.0
_UPLOAD_BLOCK_FRAMES = SAMPLE_RATE * 32  # 1 MiB of 16 kHz mono 16-bit per read
log = get_logger(__name__)


class _ChunkingFailed(Exception):
    """The media cannot be chunked (an SttError), with the chunk indices whose uploads had started."""

    def __init__(self, error: SttError, planned: list[int]) -> None:
        super().__init__(error.message)
        self.error = error
        self.planned = planned


async def _settle(uploads: list[asyncio.Task[None]], abandon: asyncio.Event) -> None:
    """Let uploads whose PUT has started finish (bounded); those not started yet do not start."""
    abandon.set()
    pending = [upload for upload in uploads if not upload.done()]
    if pending:
        await asyncio.wait(pending, timeout=_UPLOAD_SETTLE_SECONDS)


class ChunkerHandler:
    def __init__(
        self,
        settings: ChunkerSettings,
        sessions: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        producer: EventProducer,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._store = store
        self._producer = producer

    async def __call__(self, envelope: Envelope) -> Outcome:
        job = await load_job(self._sessions, envelope.job_id)
        if job is None:
            return Outcome.DUPLICATE  # deleted meanwhile
        if job.status == JobStatus.TRANSCRIBING:
            await emit_resume_triggers(self._sessions, self._producer, job, stage=STAGE)
            return Outcome.DUPLICATE
        if job.status not in (JobStatus.UPLOADED, JobStatus.CHUNKING):
            return Outcome.DUPLICATE  # cancelled, failed, or further along

        # UPLOADED → CHUNKING; a job already CHUNKING is one whose chunker died: chunk it again.
        async with self._sessions() as session:
            await transition_job(
                session,
                job.id,
                JobStatus.CHUNKING,
                allowed_from={JobStatus.UPLOADED},
                stage=STAGE,
                started_at=job.started_at or func.now(),
            )
            await session.commit()

        started = time.perf_counter()
        announced: dict[int, float] = {}  # chunk index → seconds after `started` its trigger went out

        async def announce(window: ChunkWindow) -> None:
            if await self._announce(job, window):
                announced[window.index] = round(time.perf_counter() - started, 3)

        with tempfile.TemporaryDirectory(prefix=f"chunk-{job.id}-", dir=self._settings.work_dir) as tmp:
            workdir = Path(tmp)
            try:
                windows, duration, timings = await self._split(job, workdir, announce)
            except _ChunkingFailed as failed:  # unreadable media, too long, or ffmpeg past its time limit
                exc = failed.error
                # Failed first, so transcribers of chunks already announced stop at their next check
                # instead of failing the job for a chunk object deleted under them.
                await fail_job(
                    self._sessions, self._producer, job.id, code=exc.code, message=exc.message, stage=STAGE
                )
                # Chunks cut before the decode failed (a recording over the length limit fails only at
                # the limit) would otherwise sit in storage until retention deletes the job. Every
                # planned key is deleted by name (the uploads have settled; a listing can lag a PUT
                # just committed), then whatever else the prefix holds. An upload that outlived the
                # settle time is left to the maintenance sweep of failed jobs' chunk objects.
                for index in failed.planned:
                    await self._store.delete(chunk_audio_key(job.id, index))
                await self._store.delete_prefix(chunks_prefix(job.id))
                return Outcome.OK
            except ObjectNotFoundError:
                await fail_job(
                    self._sessions,
                    self._producer,
                    job.id,
                    code=ErrorCode.INVALID_AUDIO,
                    message="the uploaded file is missing from storage; submit it again",
                    stage=STAGE,
                )
                return Outcome.OK

        async with self._sessions() as session:
            # The job's row lock first: a transcriber completing a chunk takes it too, so exactly one
            # of us sees the last chunk done with the job TRANSCRIBING (start_merge_if_transcribed).
            await session.execute(select(Job.id).where(Job.id == job.id).with_for_update())
            await session.execute(_chunk_rows(job.id, windows))
            won = await transition_job(
                session,
                job.id,
                JobStatus.TRANSCRIBING,
                allowed_from={JobStatus.CHUNKING},
                stage=STAGE,
                detail={
                    "chunks": len(windows),
                    "duration_seconds": round(duration, 3),
                    "chunking_seconds": round(time.perf_counter() - started, 3),
                    **timings,
                    **({"first_chunk_ready_seconds": min(announced.values())} if announced else {}),
                },
                chunks_total=len(windows),
                duration_seconds=duration,
            )
            merging = won is not None and await start_merge_if_transcribed(session, job.id, stage=STAGE)
            await session.commit()
        if won is None:
            return Outcome.DUPLICATE  # another instance finished first, or the job was cancelled
        if merging:  # the transcribers finished every chunk before the last one was announced
            await self._producer.trigger(Topic.JOBS_TRANSCRIBED, job.id, producer=STAGE)
            return Outcome.OK
        # Whatever was not announced by this run (chunks whose rows an earlier, dead run inserted;
        # in chained mode a chain that reached a chunk before its row existed). Announced chunks are
        # left out: a second trigger for a chunk being transcribed holds a transcriber until the
        # lease ends.
        job.chunks_total = len(windows)
        await emit_resume_triggers(self._sessions, self._producer, job, stage=STAGE, skip=set(announced))
        return Outcome.OK

    async def _announce(self, job: Job, window: ChunkWindow) -> bool:
        """Record an uploaded chunk and hand it to the transcribers now; True if its trigger went out.

        Only a row this run inserted is announced: one an earlier (dead) run inserted may be taken
        already, and a second trigger for a chunk being transcribed holds a transcriber until its
        lease ends; the final step emits what is still owed. In chained mode only the first chunk
        goes out here: each chunk's transcriber emits the next, and the final step mends a chain
        that reached a chunk before its row existed."""
        async with self._sessions() as session:
            inserted = (await session.execute(_chunk_rows(job.id, [window]).returning(Chunk.id))).first()
            await session.commit()
        if inserted is None or (job.context_mode == "chained" and window.index > 0):
            return False
        await self._producer.trigger(Topic.CHUNKS_READY, job.id, producer=STAGE, chunk_index=window.index)
        return True

    async def _max_audio_seconds(self, job: Job) -> float:
        """The job's key's own limit on recording length, else the service's."""
        if job.api_key_id is not None:
            async with self._sessions() as session:
                own = await session.scalar(
                    select(ApiKey.max_audio_seconds).where(ApiKey.id == job.api_key_id)
                )
            if own is not None:
                return own
        return self._settings.max_audio_seconds

    async def _split(
        self, job: Job, workdir: Path, announce: Callable[[ChunkWindow], Awaitable[None]]
    ) -> tuple[list[ChunkWindow], float, dict[str, float]]:
        """Download, then decode while planning, uploading and announcing chunks; returns the windows,
        the duration and step timings.

        The decode is the long step, so it is not waited for: every chunk whose boundaries are
        already certain (see ChunkPlanner) is cut from the growing WAV and uploaded while ffmpeg
        works on later audio. What remains after ffmpeg exits is the last chunk or two.
        """
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(step: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[f"{step}_seconds"] = round(now - clock, 3)
            clock = now

        original = workdir / "original"
        await self._store.download_file(original_key(job.id), original)
        lap("download")
        settings = self._settings
        wav = workdir / "audio.wav"
        limit = (
            PROVIDERS[job.provider].capabilities.max_chunk_seconds() if job.provider in PROVIDERS else None
        )
        # The job's own length (ingest checked it against the provider's limit), else the server's.
        planned = chunk_seconds_within(
            limit,
            chunk_seconds=float(job.options.get("chunk_seconds") or settings.chunk_seconds),
            overlap_seconds=settings.chunk_overlap_seconds,
            search_window_seconds=settings.chunk_search_window_seconds,
        )
        timings["chunk_seconds"] = planned
        planner = ChunkPlanner(
            chunk_seconds=planned,
            overlap_seconds=settings.chunk_overlap_seconds,
            search_window_seconds=settings.chunk_search_window_seconds,
            quietest=lambda start, end: quietest_point(wav, start, end),
        )
        windows: list[ChunkWindow] = []
        uploads: list[asyncio.Task[None]] = []
        limiter = asyncio.Semaphore(_PARALLEL_UPLOADS)
        abandon = asyncio.Event()

        def start_uploads(ready: list[ChunkWindow]) -> None:
            for window in ready:
                windows.append(window)
                uploads.append(
                    asyncio.create_task(self._upload_chunk(job.id, wav, window, limiter, abandon, announce))
                )

        decoding = asyncio.create_task(
            normalise(
                original,
                wav,
                timeout_s=settings.ffmpeg_timeout_seconds,
                max_duration_s=await self._max_audio_seconds(job),
            )
        )
        try:
            while not decoding.done():
                await asyncio.wait([decoding], timeout=_DECODE_POLL_SECONDS)
                if decoding.done():
                    break  # its result, or the error that explains everything else, is taken below
                for upload in uploads:
                    if upload.done():
                        upload.result()  # an upload that failed stops the job's chunking now
                available = normalised_seconds_written(wav)
                try:
                    ready = await asyncio.to_thread(planner.advance, available)
                except Exception:
                    if decoding.done():
                        # The decoder failed meanwhile and removed the WAV the planner was reading:
                        # its error (invalid audio, killed, ...) is the one that explains this.
                        decoding.result()
                    raise
                start_uploads(ready)
            duration = decoding.result()
            lap("decode")
            start_uploads(await asyncio.to_thread(planner.finish, duration))
            await asyncio.gather(*uploads)
            lap("upload_tail")
        except SttError as exc:
            # The job fails: its chunks must all be deleted, so none may still be on its way.
            # (Any other error retries the message, and the next attempt overwrites the same keys.)
            decoding.cancel()
            await _settle(uploads, abandon)
            raise _ChunkingFailed(exc, [window.index for window in windows]) from exc
        finally:
            for task in (decoding, *uploads):
                task.cancel()
            await asyncio.gather(decoding, *uploads, return_exceptions=True)
        log.info("chunked", chunks=len(windows), duration_s=round(duration, 1), **timings)
        return windows, duration, timings

    async def _upload_chunk(
        self,
        job_id: uuid.UUID,
        wav: Path,
        window: ChunkWindow,
        limiter: asyncio.Semaphore,
        abandon: asyncio.Event,
        announce: Callable[[ChunkWindow], Awaitable[None]],
    ) -> None:
        blocks = wav_chunk_blocks(wav, window.start, window.end, block_frames=_UPLOAD_BLOCK_FRAMES)

        async def read() -> AsyncIterator[bytes]:
            while (block := await asyncio.to_thread(next, blocks, None)) is not None:
                yield block

        # closing(): a cancelled upload closes the WAV at once instead of whenever it is collected.
        with contextlib.closing(blocks):
            async with limiter:
                if abandon.is_set():
                    return  # the chunking failed while this upload waited for its turn
                await self._store.upload_stream(
                    chunk_audio_key(job_id, window.index), read(), content_type="audio/wav"
                )
        await announce(window)


def _chunk_rows(job_id: uuid.UUID, windows: list[ChunkWindow]) -> Insert:
    """PENDING rows for chunks; those already there (announced earlier) are left as they are."""
    return (
        insert(Chunk)
        .values(
            [
                {
                    "job_id": job_id,
                    "chunk_index": w.index,
                    "start_seconds": w.start,
                    "end_seconds": w.end,
                    "status": ChunkStatus.PENDING,
                }
                for w in windows
            ]
        )
        .on_conflict_do_nothing(index_elements=["job_id", "chunk_index"])
    )
