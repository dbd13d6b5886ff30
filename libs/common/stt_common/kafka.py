"""Kafka plumbing: the producer every stage emits with, consumer and admin factories, topic set-up.

Delivery is at-least-once by design; nothing here relies on broker transactions.
"""

from __future__ import annotations

import uuid
import zlib
from types import TracebackType
from typing import Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stt_common.messages import Envelope, Topic
from stt_common.settings import Settings


class EventProducer:
    """Emits envelopes with `acks=all`; `send` returns once the broker has the message."""

    def __init__(self, settings: Settings, *, client_id: str) -> None:
        self._producer = AIOKafkaProducer(
            client_id=client_id,
            acks="all",
            enable_idempotence=settings.kafka_enable_idempotence,
            linger_ms=5,
            **settings.kafka_common_kwargs(),
        )

    async def __aenter__(self) -> Self:
        await self._producer.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._producer.stop()

    async def trigger(
        self, topic: Topic, job_id: uuid.UUID, *, producer: str, chunk_index: int | None = None
    ) -> None:
        """Produce `topic`'s trigger for a job (or one of its chunks), from stage `producer`."""
        await self.emit(topic, Envelope.for_topic(topic, job_id, producer=producer, chunk_index=chunk_index))

    async def emit(self, topic: Topic, envelope: Envelope) -> None:
        partition = await self._partition(topic, envelope)
        await self._producer.send_and_wait(
            topic.value, envelope.encode(), key=envelope.key(), partition=partition
        )

    async def _partition(self, topic: Topic, envelope: Envelope) -> int | None:
        """Chunks of one job go to consecutive partitions (from a per-job start), not by key hash:
        hashing `job:index` clusters a job's chunks on a few partitions by chance, which leaves
        replicas idle while others queue. Deterministic, so a re-emitted chunk lands where the first
        one did. Everything else uses the key (the default partitioner)."""
        if envelope.chunk_index is None:
            return None
        partitions = sorted(await self._producer.partitions_for(topic.value))
        start = zlib.crc32(str(envelope.job_id).encode())
        return int(partitions[(start + envelope.chunk_index) % len(partitions)])

    async def send_raw(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """For dead-lettering: the original bytes, untouched, plus headers that say where they came from."""
        await self._producer.send_and_wait(topic, value, key=key, headers=headers)


def make_consumer(settings: Settings, *, group_id: str, client_id: str) -> AIOKafkaConsumer:
    """A consumer that never commits on its own: the runner commits after the handler succeeded.
    The caller subscribes (with its rebalance listener)."""
    return AIOKafkaConsumer(
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # The runner polls continuously (pausing partitions while it is full), so a short poll
        # interval is safe; it is also the rebalance timeout, which decides how fast a group heals.
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 4, 500),
        **settings.kafka_common_kwargs(),
    )


def partitions_for(settings: Settings, topic: str) -> int:
    if topic.startswith(Topic.CHUNKS_READY.value):
        return settings.chunks_topic_partitions
    return settings.topic_partitions


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every pipeline topic and its DLQ if missing; returns the names it created.

    Existing topics are listed first because some brokers report "already exists" only inside
    the response, which aiokafka does not raise."""
    wanted = [name for topic in Topic for name in (topic.value, topic.dlq)]
    admin = AIOKafkaAdminClient(**settings.kafka_common_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=partitions_for(settings, name),
                        replication_factor=settings.topic_replication_factor,
                    )
                    for name in missing
                ]
            )
        return missing
    finally:
        await admin.close()
