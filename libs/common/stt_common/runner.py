"""The stage runner: the consumer loop every stage shares; the stage itself is only a handler.

* Offsets are committed only for messages whose handler finished (or that went to the DLQ),
  and only up to the lowest offset of the partition still running: a crash redelivers, never skips.
* At most `max_in_flight` messages are handled at once.
* A message that cannot be decoded is dead-lettered to `<topic>.dlq` with headers naming its
  origin and the error, then committed: one bad producer does not stop the stage.
* A handler that keeps failing (after `handler_attempts` tries) stops the stage without
  committing that message, so the orchestrator restarts it and the message comes back.
* SIGTERM/SIGINT stop fetching, let in-flight messages finish within `drain_timeout_seconds`,
  commit, leave the group, and exit; the commit and the leave get `CLOSE_TIMEOUT_SECONDS` each.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from pydantic import ValidationError

from stt_common import metrics
from stt_common.kafka import EventProducer, make_consumer
from stt_common.logs import get_logger
from stt_common.messages import EVENT_TYPE_OF_TOPIC, Envelope, Topic
from stt_common.ops import OpsServer, ReadinessCheck
from stt_common.settings import Settings

log = get_logger(__name__)

CLOSE_TIMEOUT_SECONDS = 5.0
"""How long shutdown waits for the broker to take the final commit, and again to leave the group."""


class Outcome(StrEnum):
    OK = "ok"
    DUPLICATE = "duplicate"  # already handled (redelivery, re-drive): counted and committed


Handler = Callable[[Envelope], Awaitable[Outcome]]


class InvalidMessageError(Exception):
    """A message that no retry can make valid."""


@dataclass
class OffsetTracker:
    """Which offsets of each partition are running, done or failed, and how far one may commit."""

    _states: dict[TopicPartition, dict[int, bool | None]] = field(default_factory=dict)
    _committed: dict[TopicPartition, int] = field(default_factory=dict)

    def start(self, tp: TopicPartition, offset: int) -> None:
        self._states.setdefault(tp, {})[offset] = None

    def finish(self, tp: TopicPartition, offset: int, *, ok: bool) -> None:
        states = self._states.get(tp)
        if states is not None and offset in states:
            states[offset] = ok

    def in_flight(self, tps: set[TopicPartition] | None = None) -> int:
        return sum(
            1
            for tp, states in self._states.items()
            if tps is None or tp in tps
            for state in states.values()
            if state is None
        )

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the next offset to consume after every finished message below it.

        Offsets start in increasing order per partition, so the dict is ordered by offset."""
        positions: dict[TopicPartition, int] = {}
        for tp, states in self._states.items():
            position = None
            for offset, state in list(states.items()):
                if state is not True:
                    break
                position = offset + 1
                del states[offset]
            if position is not None and position > self._committed.get(tp, -1):
                positions[tp] = position
        return positions

    def mark_committed(self, positions: dict[TopicPartition, int]) -> None:
        self._committed.update(positions)

    def forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._states.pop(tp, None)
            self._committed.pop(tp, None)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: StageRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner.release(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))


class StageRunner:
    """Consumes one topic with one handler. `run()` returns after a drain; raises if a handler failed."""

    def __init__(
        self,
        *,
        settings: Settings,
        stage: str,
        topic: Topic,
        handler: Handler,
        producer: EventProducer,
        group_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.topic = topic
        self._handler = handler
        self._producer = producer
        self._group_id = group_id or f"stt-{stage}"
        self._tracker = OffsetTracker()
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None
        self._heartbeat = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None
        self._running = False

    # -- control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to drain and return (signal handlers call this)."""
        if not self._stopping.is_set():
            log.info("stopping: draining in-flight messages", in_flight=len(self._tasks))
        self._stopping.set()

    def liveness(self) -> str | None:
        """None while the loop ticks; a reason otherwise (the loop is stuck or has ended)."""
        if not self._running:
            return "consumer loop is not running"
        age = time.monotonic() - self._heartbeat
        if age > self.settings.liveness_timeout_seconds:
            return f"consumer loop has not ticked for {age:.0f}s"
        return None

    async def kafka_ready(self) -> None:
        if self._consumer is None:
            raise RuntimeError("consumer not started")
        await self._consumer.topics()

    # -- loop -----------------------------------------------------------------------------------

    async def run(self) -> None:
        consumer = make_consumer(self.settings, group_id=self._group_id, client_id=f"stt-{self.stage}")
        consumer.subscribe([self.topic.value], listener=_Rebalance(self))
        self._consumer = consumer
        await consumer.start()
        self._running = True
        log.info("consuming", topic=self.topic.value, group=self._group_id)
        try:
            while not self._stopping.is_set():
                self._tick()
                free = self.settings.max_in_flight - len(self._tasks)
                # While full, pause fetching but keep polling: polling is what keeps us in the group.
                if free <= 0:
                    consumer.pause(*consumer.assignment())
                else:
                    consumer.resume(*consumer.paused())
                batch = await consumer.getmany(timeout_ms=500, max_records=max(free, 1))
                for tp, records in batch.items():
                    for record in records:
                        self._launch(tp, record)
                await self._commit()
            await self._drain(set(self._tasks))
            await self._within_close_timeout(self._commit(), step="final commit")
        finally:
            self._running = False
            for task in self._tasks:
                task.cancel()
            await self._within_close_timeout(consumer.stop(), step="leave group")
            self._consumer = None
        if self._failure is not None:
            raise RuntimeError(f"stage {self.stage} stopped: a handler kept failing") from self._failure

    @staticmethod
    async def _within_close_timeout(work: Awaitable[None], *, step: str) -> None:
        """Shutdown must not wait on a broker that does not answer (each request would otherwise
        wait out its request timeout, past Kubernetes' grace period): an unfinished commit only
        means redelivery, and the broker drops a member that never said goodbye after its session
        timeout."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await work
        except TimeoutError:
            log.warning(
                "kafka did not answer during shutdown; going anyway",
                step=step,
                timeout_s=CLOSE_TIMEOUT_SECONDS,
            )

    def _tick(self) -> None:
        self._heartbeat = time.monotonic()
        metrics.LOOP_HEARTBEAT.labels(self.stage).set(time.time())

    def _launch(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        self._tracker.start(tp, record.offset)
        task = asyncio.create_task(self._process(tp, record))
        self._tasks[task] = tp
        task.add_done_callback(self._tasks.pop)
        metrics.IN_FLIGHT.labels(self.stage).set(len(self._tasks))

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout_seconds)
        if pending:
            log.warning("drain timeout: abandoning messages, they will be redelivered", count=len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Before partitions move to another member: finish their messages and commit them."""
        await self._drain({task for task, tp in self._tasks.items() if tp in revoked})
        await self._commit()
        self._tracker.forget(revoked)

    async def _commit(self) -> None:
        positions = self._tracker.committable()
        if not positions or self._consumer is None:
            return
        await self._consumer.commit(dict(positions.items()))
        self._tracker.mark_committed(positions)

    # -- one message ----------------------------------------------------------------------------

    async def _process(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        started = time.perf_counter()
        ok = False
        try:
            with structlog.contextvars.bound_contextvars(
                topic=tp.topic, partition=tp.partition, offset=record.offset
            ):
                try:
                    envelope = self._decode(record)
                except InvalidMessageError as exc:
                    await self._dead_letter(record, exc)
                    ok = True
                    return
                with structlog.contextvars.bound_contextvars(
                    job_id=str(envelope.job_id),
                    chunk_index=envelope.chunk_index,
                    event_id=str(envelope.event_id),
                ):
                    ok = await self._handle(envelope)
        finally:
            self._tracker.finish(tp, record.offset, ok=ok)
            metrics.MESSAGE_SECONDS.labels(self.stage).observe(time.perf_counter() - started)
            metrics.IN_FLIGHT.labels(self.stage).set(max(len(self._tasks) - 1, 0))

    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> Envelope:
        try:
            envelope = Envelope.decode(record.value)
        except (ValidationError, ValueError) as exc:
            raise InvalidMessageError(f"undecodable message: {exc}") from exc
        expected = EVENT_TYPE_OF_TOPIC[self.topic]
        if envelope.type != expected:
            raise InvalidMessageError(f"message type {envelope.type!r} does not belong on {self.topic.value}")
        return envelope

    async def _handle(self, envelope: Envelope) -> bool:
        attempts = self.settings.handler_attempts
        for attempt in range(1, attempts + 1):
            try:
                outcome = await self._handler(envelope)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if attempt < attempts:
                    delay = min(2.0 ** (attempt - 1), 30.0)
                    metrics.MESSAGES.labels(self.stage, "retry").inc()
                    log.warning("handler failed, retrying", attempt=attempt, delay_s=delay, exc_info=True)
                    await asyncio.sleep(delay)
                    continue
                metrics.MESSAGES.labels(self.stage, "error").inc()
                log.error("handler failed for good: stopping the stage", attempts=attempts, exc_info=True)
                if self._failure is None:
                    self._failure = exc
                self.stop()
                return False
            metrics.MESSAGES.labels(self.stage, outcome.value).inc()
            log.info("handled", outcome=outcome.value)
            return True
        return False

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        headers = [
            ("dlq.original.topic", record.topic.encode()),
            ("dlq.original.partition", str(record.partition).encode()),
            ("dlq.original.offset", str(record.offset).encode()),
            ("dlq.error", str(error)[:1000].encode()),
            ("dlq.stage", self.stage.encode()),
        ]
        await self._producer.send_raw(self.topic.dlq, record.value, key=record.key, headers=headers)
        metrics.MESSAGES.labels(self.stage, "dlq").inc()
        log.warning("dead-lettered an invalid message", dlq=self.topic.dlq, error=str(error)[:300])


class BackgroundLoop(Protocol):
    """A loop a stage runs beside its consumer (the notifier's delivery loop): `serve_stage` starts
    `run()` with the stage, calls `stop()` on SIGTERM/SIGINT and when the consumer ends, then waits
    for `run()` to return (the loop drains its own work); `liveness()` joins the ops endpoint's."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...

    def liveness(self) -> str | None: ...


async def serve_stage(
    *,
    settings: Settings,
    stage: str,
    topic: Topic,
    make_handler: Callable[[EventProducer], Handler],
    readiness: dict[str, ReadinessCheck],
    group_id: str | None = None,
    background: Sequence[BackgroundLoop] = (),
) -> None:
    """Wire a stage: producer, runner, background loops, ops endpoint, signals. Each service's
    `main()` calls this."""
    async with EventProducer(settings, client_id=f"stt-{stage}") as producer:
        runner = StageRunner(
            settings=settings,
            stage=stage,
            topic=topic,
            handler=make_handler(producer),
            producer=producer,
            group_id=group_id,
        )

        def liveness() -> str | None:
            return runner.liveness() or next(
                (reason for reason in (each.liveness() for each in background) if reason), None
            )

        def stop() -> None:
            runner.stop()
            for each in background:
                each.stop()

        ops = OpsServer(
            host=settings.ops_host,
            port=settings.ops_port,
            liveness=liveness,
            readiness={**readiness, "kafka": runner.kafka_ready},
        )
        await ops.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        tasks = [asyncio.create_task(each.run()) for each in background]
        try:
            await runner.run()
        finally:
            for each in background:
                each.stop()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await ops.stop()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
