"""Per-chunk fallback: a chunk whose provider fails after its retries with a failure another vendor may
not share is transcribed by the job's next provider; other failures end the chunk. Real Postgres, S3
and Kafka; the vendors are the fake OpenAI (primary) and the fake HiSpeech (fallback, text only)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import ChunkStatus, JobStatus
from stt_common.kafka import EventProducer
from stt_common.runner import Outcome
from stt_common.s3 import ObjectStore, chunk_result_key
from stt_common.settings import Settings
from stt_transcriber.handler import TranscriberHandler
from stt_transcriber.pool import ProviderPool
from stt_transcriber.settings import TranscriberSettings
from tests.fakes import hispeech_server, openai_server
from tests.fakes.hispeech_server import FakeHiSpeech
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.test_transcriber import CHUNK_SECONDS, chunk_wav, new_job, state, trigger

__all__ = ["chunk_wav"]  # a module fixture shared with test_transcriber

ATTEMPTS = 2


@pytest.fixture(scope="module")
def primary() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="primary-key") as server:
        yield server


@pytest.fixture(scope="module")
def fallback() -> Iterator[FakeHiSpeech]:
    with FakeHiSpeech(api_key="fallback-key") as server:
        yield server


@pytest.fixture
async def handler(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    primary: FakeOpenAI,
    fallback: FakeHiSpeech,
) -> AsyncIterator[TranscriberHandler]:
    primary.reset()
    fallback.reset()
    tx_settings = TranscriberSettings(
        **settings.model_dump(exclude={"service_name", "ops_port", "max_in_flight"}),
        openai_base_url=primary.base_url,
        openai_api_key="primary-key",
        hispeech_base_url=fallback.base_url,
        hispeech_api_key="fallback-key",
        provider_attempts=ATTEMPTS,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.05,
        provider_timeout_seconds=5,
        lease_seconds=5,
        lease_renew_seconds=1,
    )
    pool = ProviderPool(tx_settings)
    async with EventProducer(tx_settings, client_id="test-fallback") as producer:
        yield TranscriberHandler(tx_settings, sessionmaker_, store, producer, pool)
    await pool.aclose()


@pytest.mark.parametrize(
    "failure",
    [
        openai_server.Failure.server_error(503),
        openai_server.Failure.rate_limited(retry_after=0),
        openai_server.Failure.insufficient_quota(),
    ],
    ids=["unavailable", "rate_limited", "quota"],
)
async def test_a_chunk_falls_back_when_its_provider_is_down(
    handler: TranscriberHandler,
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    chunk_wav: Path,
    primary: FakeOpenAI,
    fallback: FakeHiSpeech,
    failure: openai_server.Failure,
) -> None:
    # A quota error is not retried (the account stays empty), the others are, up to ATTEMPTS.
    tries = 1 if failure.code == "insufficient_quota" else ATTEMPTS
    primary.fail(*[failure] * tries)
    job_id = await new_job(sessionmaker_, store, chunk_wav, {"fallback_providers": ["hispeech"]})
    assert await handler(trigger(job_id)) is Outcome.OK
    job, chunk = await state(sessionmaker_, job_id)
    assert chunk.status == ChunkStatus.COMPLETED
    assert job.status == JobStatus.MERGING
    document = json.loads(await store.get_bytes(chunk_result_key(job_id, 0)))
    assert document["provider"] == "hispeech"
    assert document["model"] == "model-01052025"
    [fell_back] = document["fallbacks"]
    assert fell_back["provider"] == "openai"
    assert fell_back["error_code"] in {"provider_unavailable", "rate_limited", "quota_exceeded"}
    # A text-only vendor: times estimated over the chunk's speech, the speaking-rate check applied.
    assert document["timestamps"] == "estimated"
    assert document["check"] == "words_per_speech_second"
    segments = document["transcript"]["segments"]
    assert segments
    assert all(s["estimated"] for s in segments)
    assert max(s["end"] for s in segments) <= CHUNK_SECONDS
    assert len(primary.requests()) == tries
    assert len(fallback.requests()) == 1


async def test_no_fallback_from_an_auth_error(
    handler: TranscriberHandler,
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    chunk_wav: Path,
    primary: FakeOpenAI,
    fallback: FakeHiSpeech,
) -> None:
    primary.fail(openai_server.Failure.unauthorized())
    job_id = await new_job(sessionmaker_, store, chunk_wav, {"fallback_providers": ["hispeech"]})
    assert await handler(trigger(job_id)) is Outcome.OK
    job, chunk = await state(sessionmaker_, job_id)
    assert chunk.status == ChunkStatus.FAILED
    assert job.status == JobStatus.FAILED
    assert job.error_code == "auth_error"
    assert fallback.requests() == []  # our key is wrong: another vendor would not fix that


async def test_when_every_provider_fails_the_error_names_each(
    handler: TranscriberHandler,
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    chunk_wav: Path,
    primary: FakeOpenAI,
    fallback: FakeHiSpeech,
) -> None:
    primary.fail(*[openai_server.Failure.server_error(502)] * ATTEMPTS)
    fallback.fail(*[hispeech_server.Failure.server_error(503)] * ATTEMPTS)
    job_id = await new_job(sessionmaker_, store, chunk_wav, {"fallback_providers": ["hispeech"]})
    assert await handler(trigger(job_id)) is Outcome.OK
    job, _ = await state(sessionmaker_, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error_code == "provider_unavailable"
    assert job.error_message is not None
    assert job.error_message.startswith("chunk 0 (hispeech): hispeech")
    assert "before, openai: provider_unavailable" in job.error_message


async def test_without_fallbacks_the_chunk_fails_as_before(
    handler: TranscriberHandler,
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    chunk_wav: Path,
    primary: FakeOpenAI,
    fallback: FakeHiSpeech,
) -> None:
    primary.fail(*[openai_server.Failure.server_error(503)] * ATTEMPTS)
    job_id = await new_job(sessionmaker_, store, chunk_wav, {"unused": uuid.uuid4().hex})
    assert await handler(trigger(job_id)) is Outcome.OK
    job, _ = await state(sessionmaker_, job_id)
    assert job.status == JobStatus.FAILED
    assert fallback.requests() == []
