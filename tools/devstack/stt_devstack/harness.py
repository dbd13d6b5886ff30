"""Driving the pipeline from outside, for end-to-end tests and benchmarks: stages as real OS
processes (so they can be SIGKILLed for real) and jobs entered the way ingest leaves them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.jobs import record_event
from stt_common.db.models import TERMINAL_JOB_STATUSES, Job, JobStatus
from stt_common.kafka import EventProducer
from stt_common.messages import Topic
from stt_common.s3 import ObjectStore, original_key
from stt_devstack.procs import free_port

T = TypeVar("T")


async def wait_until(
    condition: Callable[[], Any | Awaitable[Any]], *, timeout: float, what: str, interval: float = 0.2
) -> Any:
    """Poll until `condition` is truthy; raise AssertionError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(interval)


class ServiceProcess:
    """One stage as its own OS process, with its own ops port and log file."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        module: str | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.module = module or f"stt_{name}"
        self.args = tuple(args)  # after `python -m module`, e.g. ("loop",) for maintenance
        self.ops_port = free_port()
        self.env = {**env, "STT_OPS_PORT": str(self.ops_port), "STT_SERVICE_NAME": name}
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    async def ready(self, timeout: float = 60) -> None:
        # Ingest answers /readyz on its API port (STT_HTTP_PORT); the workers on their ops port.
        port = self.env.get("STT_HTTP_PORT") or self.ops_port

        async def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=2)).is_success
            except httpx.HTTPError:
                return False

        await wait_until(answers, timeout=timeout, what=f"{self.name} ready")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def stop_services(services: Iterable[ServiceProcess], timeout: float = 30) -> None:
    """SIGTERM every service at once, give them `timeout` seconds together to drain and exit, then
    SIGKILL what is left. All at once: one by one, a slow drain would hold up the others' signals (and
    a test's time limit could end before the last is stopped, leaving it to take later tests' work)."""
    running = [s for s in services if s.proc is not None and s.proc.poll() is None]
    for service in running:
        assert service.proc is not None
        service.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service in running:
        assert service.proc is not None
        try:
            service.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait()


class Jobs:
    """Enter jobs as ingest leaves them (row UPLOADED, original in S3, trigger emitted) and watch them."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], store: ObjectStore, producer: EventProducer
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.submitted: list[uuid.UUID] = []
        self.producer = producer

    async def submit(
        self,
        audio: Path,
        *,
        provider: str = "local",
        context_mode: str = "parallel",
        language: str | None = None,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        job_id: uuid.UUID | None = None,
        api_key_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        job_id = job_id or uuid.uuid4()
        self.submitted.append(job_id)
        await self.store.upload_file(original_key(job_id), audio)
        async with self.sessions() as session:
            session.add(
                Job(
                    id=job_id,
                    api_key_id=api_key_id,
                    status=JobStatus.UPLOADED,
                    provider=provider,
                    context_mode=context_mode,
                    language=language,
                    model=model,
                    options=options or {},
                    original_filename=audio.name,
                    size_bytes=audio.stat().st_size,
                )
            )
            await session.flush()
            record_event(session, job_id, stage="harness", detail={"submitted": audio.name})
            await session.commit()
        await self.producer.trigger(Topic.JOBS_SUBMITTED, job_id, producer="harness")
        return job_id

    async def cancel_unfinished(self) -> int:
        """Cancel every job submitted here that has not ended: its queued chunks are then skipped by
        whichever transcriber meets them, instead of holding up the next test's jobs."""
        if not self.submitted:
            return 0
        async with self.sessions() as session, session.begin():
            cancelled = await session.execute(
                update(Job)
                .where(Job.id.in_(self.submitted), Job.status.not_in(list(TERMINAL_JOB_STATUSES)))
                .values(status=JobStatus.CANCELLED, error_code="cancelled", error_message="test ended")
                .returning(Job.id)
            )
            return len(cancelled.all())

    async def get(self, job_id: uuid.UUID) -> Job:
        async with self.sessions() as session:
            job = await session.scalar(select(Job).where(Job.id == job_id))
            assert job is not None
            return job

    async def wait_terminal(self, job_id: uuid.UUID, timeout: float = 300) -> Job:
        async def finished() -> Job | None:
            job = await self.get(job_id)
            return job if JobStatus(job.status) in TERMINAL_JOB_STATUSES else None

        result: Job = await wait_until(
            finished, timeout=timeout, what=f"job {job_id} to finish", interval=0.3
        )
        return result

    async def wait_status(self, job_id: uuid.UUID, status: JobStatus, timeout: float = 120) -> Job:
        async def reached() -> Job | None:
            job = await self.get(job_id)
            return job if job.status == status else None

        result: Job = await wait_until(reached, timeout=timeout, what=f"job {job_id} {status}", interval=0.3)
        return result
