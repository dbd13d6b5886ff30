"""A vendor's budget holds across transcriber replicas: two transcriber processes, each allowed four
chunks at once, share `STT_PROVIDER_CONCURRENCY={"hispeech": 2}` through Redis, and the fake vendor
never sees more than two requests at a time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stt_common.db.models import JobStatus
from stt_devstack.harness import Jobs, ServiceProcess, stop_services
from tests.fakes.hispeech_server import FakeHiSpeech
from tests.fixtures.audio import sine_wav

pytestmark = pytest.mark.slow

KEY = "hispeech-budget-key"
BUDGET = 2


@pytest.fixture(scope="module")
def vendor() -> Iterator[FakeHiSpeech]:
    # Slow enough that, unbudgeted, the replicas' chunks would overlap at the vendor.
    with FakeHiSpeech(api_key=KEY, latency=1.0) as fake:
        yield fake


@pytest.fixture(scope="module")
async def two_transcribers(
    infra_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, vendor: FakeHiSpeech
) -> AsyncIterator[list[ServiceProcess]]:
    log_dir = tmp_path_factory.mktemp("budget")
    env = {
        **os.environ,
        **infra_env,
        "STT_LOG_LEVEL": "INFO",
        "STT_CHUNK_SECONDS": "30",
        "STT_HISPEECH_API_KEY": KEY,
        "STT_HISPEECH_BASE_URL": vendor.base_url,
        "STT_PROVIDER_CONCURRENCY": f'{{"hispeech": {BUDGET}}}',
        "STT_MAX_IN_FLIGHT": "4",
    }
    services = [
        ServiceProcess(name, env, log_dir).start()
        for name in ("chunker", "merger", "transcriber", "transcriber")
    ]
    try:
        await asyncio.gather(*(service.ready() for service in services))
        yield services
    finally:
        stop_services(services)


async def test_two_replicas_never_exceed_the_vendors_concurrency(
    two_transcribers: list[ServiceProcess], jobs: Jobs, vendor: FakeHiSpeech, tmp_path: Path
) -> None:
    # Two recordings of ten 30 s chunks each, at once: twenty chunks for eight in-flight places.
    audio = sine_wav(tmp_path / "tone.wav", 300.0)
    job_ids = [await jobs.submit(audio, provider="hispeech") for _ in range(2)]
    for job_id in job_ids:
        job = await jobs.wait_terminal(job_id, timeout=300)
        assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
    served = vendor.requests()
    assert len(served) >= 2 * 9  # every chunk of both jobs reached the vendor
    assert vendor.max_in_flight <= BUDGET
