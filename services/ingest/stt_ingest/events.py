"""Kafka triggers from ingest, and the broker's readiness check.

The producer is started lazily and re-created after a failed start, so ingest keeps accepting
uploads while the broker is away: a submission whose trigger cannot be produced within
`trigger_timeout_seconds` is still answered 202 (its object is stored and its row is durable in
UPLOADED), and the error is logged and counted. The maintenance re-drive re-emits the trigger of
every job that sits in UPLOADED (or another non-terminal status) longer than its threshold, and its
handlers are idempotent, so the job is not lost and is not processed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient

from stt_common.kafka import EventProducer
from stt_common.logs import get_logger
from stt_common.messages import Envelope, Topic
from stt_ingest import metrics
from stt_ingest.settings import IngestSettings

log = get_logger(__name__)

PRODUCER_NAME = "ingest"
# After a failed producer start, requests fail fast for this long instead of each waiting out
# the trigger timeout against a broker that is known to be away.
_START_BACKOFF_SECONDS = 5.0


class Trigger:
    def __init__(self, settings: IngestSettings) -> None:
        self._settings = settings
        self._producer: EventProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()
        self._failed_start_at: float | None = None

    async def _ensure_producer(self) -> EventProducer:
        async with self._lock:
            if self._producer is not None:
                return self._producer
            if (
                self._failed_start_at is not None
                and time.monotonic() - self._failed_start_at < _START_BACKOFF_SECONDS
            ):
                raise ConnectionError("the broker was unreachable moments ago")
            producer = EventProducer(self._settings, client_id="stt-ingest")
            try:
                await producer.__aenter__()
            except BaseException:
                self._failed_start_at = time.monotonic()
                with contextlib.suppress(Exception):
                    await producer.__aexit__(None, None, None)
                raise
            self._failed_start_at = None
            self._producer = producer
            return producer

    async def emit(self, topic: Topic, envelope: Envelope) -> bool:
        """Produce one trigger; False (logged, counted) when the broker did not take it in time."""
        try:
            async with asyncio.timeout(self._settings.trigger_timeout_seconds):
                producer = await self._ensure_producer()
                await producer.emit(topic, envelope)
        except Exception as exc:
            metrics.TRIGGERS.labels(topic.value, "failed").inc()
            log.error(
                "trigger not produced; the maintenance re-drive will re-emit it",
                topic=topic.value,
                job_id=str(envelope.job_id),
                chunk_index=envelope.chunk_index,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            return False
        metrics.TRIGGERS.labels(topic.value, "ok").inc()
        return True

    async def trigger(self, topic: Topic, job_id: uuid.UUID, chunk_index: int | None = None) -> bool:
        """`topic`'s trigger for a job (or one of its chunks); False as `emit`."""
        envelope = Envelope.for_topic(topic, job_id, producer=PRODUCER_NAME, chunk_index=chunk_index)
        return await self.emit(topic, envelope)

    async def trigger_all(self, triggers: Sequence[tuple[Topic, int | None]], job_id: uuid.UUID) -> bool:
        results = await asyncio.gather(*(self.trigger(topic, job_id, index) for topic, index in triggers))
        return all(results)

    async def ping(self) -> None:
        """Readiness: the broker answers a metadata request."""
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self._settings.kafka_common_kwargs(), client_id="stt-ingest-ready")
            try:
                await admin.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await admin.close()
                raise
            self._admin = admin
        try:
            await self._admin.list_topics()
        except BaseException:
            admin, self._admin = self._admin, None
            with contextlib.suppress(Exception):
                await admin.close()
            raise

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await producer.__aexit__(None, None, None)
        if self._admin is not None:
            admin, self._admin = self._admin, None
            with contextlib.suppress(Exception):
                await admin.close()
