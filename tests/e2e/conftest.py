"""End-to-end fixtures: the pipeline's stages as real processes against the session's real servers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.jobs import record_event
from stt_common.db.models import TERMINAL_JOB_STATUSES, Job, JobStatus
from stt_common.kafka import EventProducer
from stt_common.messages import Envelope, Topic
from stt_common.s3 import ObjectStore, original_key
from stt_common.settings import Settings
from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """One stage as its own OS process, so tests can SIGTERM or SIGKILL it for real."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.module = module
        self.ops_port = free_port()
        self.env = {**env, "STT_OPS_PORT": str(self.ops_port), "STT_SERVICE_NAME": name}
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        return self

    async def ready(self, timeout: float = 60) -> None:
        async def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                async with httpx.AsyncClient() as client:
                    return (
                        await client.get(f"http://127.0.0.1:{self.ops_port}/readyz", timeout=2)
                    ).is_success
            except httpx.HTTPError:
                return False

        await wait_until(answers, timeout=timeout, what=f"{self.name} ready")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


StartService = Callable[..., "asyncio.Future[ServiceProcess]"]


@pytest.fixture
async def start_service(infra_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """`await start_service("transcriber", STT_X="y")` → a ready ServiceProcess, killed after the test."""
    started: list[ServiceProcess] = []

    async def start(name: str, **overrides: str) -> ServiceProcess:
        env = {**os.environ, **infra_env, "STT_LOG_LEVEL": "INFO", **overrides}
        service = ServiceProcess(name, f"stt_{name}", env, tmp_path).start()
        started.append(service)
        await service.ready()
        return service

    yield start
    for service in started:
        service.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
async def pipeline(
    infra_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, ServiceProcess]]:
    """Chunker, transcriber and merger with default chunking (300 s + 10 s overlap), shared by a
    module's tests. Leases are short so a killed transcriber's chunk is reclaimed quickly."""
    log_dir = tmp_path_factory.mktemp("pipeline")
    env = {
        **os.environ,
        **infra_env,
        "STT_LOG_LEVEL": "INFO",
        "STT_LEASE_SECONDS": "12",
        "STT_LEASE_RENEW_SECONDS": "3",
    }
    services = {
        name: ServiceProcess(name, f"stt_{name}", env, log_dir).start()
        for name in ("chunker", "transcriber", "merger")
    }
    try:
        await asyncio.gather(*(service.ready() for service in services.values()))
        yield services
    finally:
        for service in services.values():
            service.kill(signal.SIGTERM)


class Jobs:
    """Submit jobs straight into the pipeline (row + object + trigger) and watch them."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], store: ObjectStore, producer: EventProducer
    ):
        self.sessions = sessions
        self.store = store
        self.producer = producer

    async def submit(
        self,
        audio: Path,
        *,
        provider: str = "local",
        context_mode: str = "parallel",
        language: str | None = None,
    ) -> uuid.UUID:
        job_id = uuid.uuid4()
        await self.store.upload_file(original_key(job_id), audio)
        async with self.sessions() as session:
            session.add(
                Job(
                    id=job_id,
                    status=JobStatus.UPLOADED,
                    provider=provider,
                    context_mode=context_mode,
                    language=language,
                    original_filename=audio.name,
                    size_bytes=audio.stat().st_size,
                )
            )
            await session.flush()
            record_event(session, job_id, stage="test", detail={"submitted": audio.name})
            await session.commit()
        await self.producer.emit(
            Topic.JOBS_SUBMITTED, Envelope.for_topic(Topic.JOBS_SUBMITTED, job_id, producer="test")
        )
        return job_id

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
            finished, timeout=timeout, what=f"job {job_id} to finish", interval=0.5
        )
        return result

    async def wait_status(self, job_id: uuid.UUID, status: JobStatus, timeout: float = 120) -> Job:
        async def reached() -> Job | None:
            job = await self.get(job_id)
            return job if job.status == status else None

        result: Job = await wait_until(reached, timeout=timeout, what=f"job {job_id} {status}", interval=0.3)
        return result


@pytest.fixture
async def jobs(
    settings: Settings, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> AsyncIterator[Jobs]:
    async with EventProducer(settings, client_id="e2e-test") as producer:
        yield Jobs(sessionmaker_, store, producer)
