"""URL ingest: where the download happens, and why.

Choice: **ingest downloads, in a background task of the process that accepted the request.** The
request does the cheap, decisive checks synchronously (URL syntax, scheme, userinfo, DNS resolution
and every address classified) and answers 202 with the job PENDING; the task then downloads through
`SafeFetcher` (every redirect hop checked again, connection pinned to the checked address, size and
time limits), sniffs the first bytes like an upload, streams the body to `jobs/{id}/original`, moves
the job to UPLOADED and produces `stt.jobs.submitted`. The chunker therefore only ever reads our own
S3 objects and needs no outbound Internet access (its NetworkPolicy stays closed), and the SSRF
checks live in one service, where the fetch happens.

A failed download ends the job as FAILED (`invalid_audio` for content that is no media, `timeout`
for a source that stalls, `unknown` otherwise, with the reason in `error_message`) and produces
`stt.jobs.finished`, so the client's webhook hears about it. If the process stops mid-download, the
task marks its job FAILED (`stalled`) on the way out; a crash leaves it PENDING, which the
maintenance job fails after its threshold. `POST /jobs/{id}/retry` on such a job downloads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common import metrics as common_metrics
from stt_common.db.jobs import transition_job
from stt_common.db.models import JobStatus
from stt_common.errors import ErrorCode
from stt_common.fetch import FetchError, SafeFetcher
from stt_common.logs import get_logger
from stt_common.messages import Topic
from stt_common.s3 import original_key
from stt_common.ssrf import UnsafeUrlError
from stt_ingest import metrics
from stt_ingest.events import Trigger
from stt_ingest.media import MediaStream, MediaTooLargeError
from stt_ingest.settings import IngestSettings
from stt_ingest.sniff import MediaError, sanitize_filename
from stt_ingest.store import IngestStore

log = get_logger(__name__)

STAGE = "ingest"


class UrlIngestor:
    def __init__(
        self,
        *,
        settings: IngestSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        store: IngestStore,
        trigger: Trigger,
        fetcher: SafeFetcher,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._store = store
        self._trigger = trigger
        self._fetcher = fetcher
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._stopping = False

    @property
    def running(self) -> int:
        return len(self._tasks)

    def start(self, job_id: uuid.UUID, url: str) -> None:
        if self._stopping:
            raise RuntimeError("ingest is shutting down")
        task = asyncio.create_task(self._run(job_id, url), name=f"fetch-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(functools.partial(self._forget, job_id))

    def _forget(self, job_id: uuid.UUID, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]

    def cancel(self, job_id: uuid.UUID) -> None:
        """Stop this process's download of a job (after the job was cancelled)."""
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()

    async def wait_idle(self, seconds: float) -> bool:
        """For tests and shutdown: wait until no download runs; False if some still run after `seconds`."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(list(self._tasks.values()), timeout=seconds)
        return not pending

    async def shutdown(self, grace_seconds: float) -> None:
        """Let running downloads finish within the grace period, then stop them (their jobs fail)."""
        self._stopping = True
        if await self.wait_idle(grace_seconds):
            return
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one download ----------------------------------------------------------------------------

    async def _run(self, job_id: uuid.UUID, url: str) -> None:
        with structlog.contextvars.bound_contextvars(job_id=str(job_id)):
            try:
                await self._download(job_id, url)
            except asyncio.CancelledError:
                # Cancelled by the client (the job is CANCELLED already, so this does nothing) or
                # by shutdown (the job fails as stalled rather than sitting PENDING).
                await asyncio.shield(
                    self._fail(
                        job_id,
                        ErrorCode.STALLED,
                        "The download was interrupted; retry the job.",
                        "interrupted",
                    )
                )
                raise
            except Exception:
                log.exception("url ingest failed unexpectedly")
                await self._fail(job_id, ErrorCode.UNKNOWN, "The download failed.", "error")

    async def _download(self, job_id: uuid.UUID, url: str) -> None:
        settings = self._settings
        key = original_key(job_id)
        try:
            async with (
                asyncio.timeout(settings.url_fetch_timeout_seconds),
                self._fetcher.open(url) as download,
            ):
                stream = MediaStream(
                    download.blocks(),
                    filename=download.filename,
                    require_extension=False,
                    max_bytes=settings.fetch_max_bytes,
                    hashed=False,
                )
                detected = await stream.prime()
                await self._store.upload_stream(key, stream.blocks(), content_type=detected.mime)
                filename = sanitize_filename(download.filename, fallback=f"download.{detected.family.value}")
                hops = download.hops
        except MediaError as exc:
            await self._fail(job_id, ErrorCode.INVALID_AUDIO, exc.message, exc.code)
            return
        except MediaTooLargeError as exc:
            await self._fail(
                job_id, ErrorCode.UNKNOWN, f"The file is larger than {exc.limit} bytes.", "too_large"
            )
            return
        except FetchError as exc:
            await self._fail(job_id, exc.job_code, exc.message, exc.code)
            return
        except UnsafeUrlError as exc:
            await self._fail(job_id, ErrorCode.UNKNOWN, exc.message, exc.code)
            return
        except TimeoutError:
            limit = settings.url_fetch_timeout_seconds
            await self._fail(
                job_id, ErrorCode.TIMEOUT, f"The download took longer than {limit:.0f} seconds.", "timeout"
            )
            return

        async with self._sessionmaker() as session, session.begin():
            previous = await transition_job(
                session,
                job_id,
                JobStatus.UPLOADED,
                allowed_from={JobStatus.PENDING},
                stage=STAGE,
                detail={"size_bytes": stream.size, "redirects": len(hops) - 1, "content_type": detected.mime},
                size_bytes=stream.size,
                content_type=detected.mime,
                original_filename=filename,
            )
        if previous is None:
            # Cancelled (or deleted) while downloading: the object is not wanted.
            with contextlib.suppress(Exception):
                await self._store.delete(key)
            metrics.URL_FETCHES.labels("discarded").inc()
            log.info("downloaded a job that is no longer pending; object discarded")
            return
        metrics.URL_FETCHES.labels("ok").inc()
        metrics.UPLOAD_BYTES.labels("url").inc(stream.size)
        log.info("url downloaded", size_bytes=stream.size, content_type=detected.mime)
        await self._trigger.trigger(Topic.JOBS_SUBMITTED, job_id)

    async def _fail(self, job_id: uuid.UUID, code: ErrorCode, message: str, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._store.delete(original_key(job_id))
        async with self._sessionmaker() as session, session.begin():
            previous = await transition_job(
                session,
                job_id,
                JobStatus.FAILED,
                allowed_from={JobStatus.PENDING},
                stage=STAGE,
                detail={"action": "download", "reason": reason},
                error_code=code.value,
                error_message=message,
            )
        metrics.URL_FETCHES.labels(reason if reason in _REASONS else "failed").inc()
        if previous is None:
            return
        common_metrics.JOBS_FINISHED.labels(JobStatus.FAILED.value, code.value).inc()
        log.info("url download failed", error_code=code.value, reason=reason)
        await self._trigger.trigger(Topic.JOBS_FINISHED, job_id)


_REASONS = frozenset(
    {
        "interrupted",
        "error",
        "too_large",
        "timeout",
        "source_timeout",
        "source_error",
        "source_unreachable",
        "source_http_error",
        "redirect_blocked",
        "too_many_redirects",
        "unsupported_media_type",
        "content_mismatch",
        "empty_file",
        "truncated_media",
    }
)
