"""The transcriber and its vendor's budget: a chunk whose vendor stays busy (other replicas hold every
slot) is handed back to the queue instead of holding one of this replica's in-flight places, and is
transcribed once a slot is free. Real Postgres, S3, Kafka and Redis; the fake OpenAI as the vendor."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import ChunkStatus
from stt_common.kafka import EventProducer
from stt_common.messages import Envelope, Topic
from stt_common.runner import Outcome
from stt_common.s3 import ObjectStore, chunk_result_key
from stt_common.settings import Settings
from stt_transcriber.budget import VendorBudget
from stt_transcriber.handler import TranscriberHandler
from stt_transcriber.pool import ProviderPool
from stt_transcriber.settings import TranscriberSettings
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.test_transcriber import chunk_wav, fake, new_job, state, trigger

__all__ = ["chunk_wav", "fake"]  # module fixtures shared with test_transcriber


@pytest.fixture
def prefix() -> str:
    return f"test:budget:{uuid.uuid4().hex}:"


@pytest.fixture
async def budgets(settings: Settings, prefix: str) -> AsyncIterator[tuple[VendorBudget, VendorBudget]]:
    """This replica's budget and another replica's, one slot for openai between them."""
    ours, theirs = (
        VendorBudget(Redis.from_url(settings.redis_url), concurrency={"openai": 1}, prefix=prefix)
        for _ in range(2)
    )
    yield ours, theirs
    for budget in (ours, theirs):
        await budget.aclose()


@pytest.fixture
async def handler(
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    fake: FakeOpenAI,
    budgets: tuple[VendorBudget, VendorBudget],
) -> AsyncIterator[TranscriberHandler]:
    fake.reset()
    tx_settings = TranscriberSettings(
        **settings.model_dump(exclude={"service_name", "ops_port", "max_in_flight"}),
        openai_base_url=fake.base_url,
        openai_api_key="test-key",
        provider_timeout_seconds=5,
        lease_seconds=5,
        lease_renew_seconds=1,
        budget_patience_seconds=0.5,
    )
    pool = ProviderPool(tx_settings)
    async with EventProducer(tx_settings, client_id="test-transcriber-budget") as producer:
        yield TranscriberHandler(tx_settings, sessionmaker_, store, producer, pool, budgets[0])
    await pool.aclose()


@pytest.fixture
async def chunk_triggers(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    """A reader of the chunk topic from its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = consumer.partitions_for_topic(Topic.CHUNKS_READY) or set()
        assert partitions
        consumer.assign([TopicPartition(Topic.CHUNKS_READY, p) for p in partitions])
        await consumer.seek_to_end()
        yield consumer
    finally:
        await consumer.stop()


async def test_a_chunk_whose_vendor_stays_busy_goes_back_to_the_queue(
    handler: TranscriberHandler,
    budgets: tuple[VendorBudget, VendorBudget],
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    chunk_wav: Path,
    fake: FakeOpenAI,
    chunk_triggers: AIOKafkaConsumer,
) -> None:
    _, theirs = budgets
    job_id = await new_job(sessionmaker_, store, chunk_wav)
    async with theirs.slot("openai"):  # another replica's call holds the only slot
        assert await handler(trigger(job_id)) is Outcome.OK
        _, chunk = await state(sessionmaker_, job_id)
        assert chunk.status == ChunkStatus.PENDING
        assert chunk.attempts == 0  # handing back is not a try
        assert fake.requests() == []
        batches = await chunk_triggers.getmany(timeout_ms=10_000)
        again = [Envelope.decode(m.value) for ms in batches.values() for m in ms]
        assert [(e.job_id, e.chunk_index) for e in again] == [(job_id, 0)]
    # The slot is free: the re-sent trigger is transcribed.
    assert await handler(trigger(job_id)) is Outcome.OK
    _, chunk = await state(sessionmaker_, job_id)
    assert chunk.status == ChunkStatus.COMPLETED
    assert chunk.attempts == 1
    document = json.loads(await store.get_bytes(chunk_result_key(job_id, 0)))
    assert document["transcript"]["segments"]
    assert len(fake.requests()) == 1
