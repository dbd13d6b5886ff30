"""End-to-end fixtures: the pipeline's stages as real processes against the session's real servers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from difflib import SequenceMatcher
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.kafka import EventProducer
from stt_common.s3 import ObjectStore
from stt_common.settings import Settings
from stt_devstack.harness import Jobs, ServiceProcess, stop_services
from stt_devstack.wer import normalise

__all__ = ["Jobs", "ServiceProcess", "unmatched_runs"]

StartService = Callable[..., Awaitable[ServiceProcess]]


@pytest.fixture
async def start_service(infra_env: dict[str, str], tmp_path: Path) -> AsyncIterator[StartService]:
    """`await start_service("transcriber", STT_X="y")` → a ready ServiceProcess, stopped after the test."""
    started: list[ServiceProcess] = []

    async def start(name: str, **overrides: str) -> ServiceProcess:
        env = {**os.environ, **infra_env, "STT_LOG_LEVEL": "INFO", **overrides}
        service = ServiceProcess(name, env, tmp_path).start()
        started.append(service)
        await service.ready()
        return service

    yield start
    stop_services(started)


@pytest.fixture(scope="module")
async def pipeline(
    infra_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, ServiceProcess]]:
    """Chunker, transcriber and merger with default chunking (180 s + 10 s overlap), shared by a
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
        name: ServiceProcess(name, env, log_dir).start() for name in ("chunker", "transcriber", "merger")
    }
    try:
        await asyncio.gather(*(service.ready() for service in services.values()))
        yield services
    finally:
        stop_services(services.values())


@pytest.fixture
async def jobs(
    settings: Settings, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> AsyncIterator[Jobs]:
    async with EventProducer(settings, client_id="e2e-test") as producer:
        jobs = Jobs(sessionmaker_, store, producer)
        yield jobs
        # A test's unfinished jobs (chunks no transcriber of its own took) must not become the next
        # module's backlog.
        await jobs.cancel_unfinished()


def unmatched_runs(reference: str, document: dict) -> list[tuple[float, int]]:  # type: ignore[type-arg]
    """(time in the result, length) of each run of words one side has and the other lacks."""
    timed = [
        (word["start"], token)
        for segment in document["segments"]
        for word in segment.get("words") or []
        for token in normalise(word["text"]).split()
    ]
    a, b = normalise(reference).split(), [token for _, token in timed]
    runs = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            runs.append((timed[min(j1, len(timed) - 1)][0], max(i2 - i1, j2 - j1)))
    return runs
