"""The stage runner against a real Kafka-protocol broker, with real processes and real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stt_common.messages import Envelope, Topic
from stt_common.runner import CLOSE_TIMEOUT_SECONDS
from tests.helpers import broker_processes, free_port, wait_until

SAMPLE = Path(__file__).with_name("sample_stage.py")
ROOT = Path(__file__).resolve().parents[2]


class SampleStage:
    def __init__(self, bootstrap: str, tmp_path: Path, group: str, **env: str) -> None:
        self.log = tmp_path / "handled.log"
        self.stdout = tmp_path / f"stage-{uuid.uuid4().hex[:6]}.out"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "STT_DEVELOPMENT": "true",
            "STT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STT_KAFKA_ENABLE_IDEMPOTENCE": "false",
            "STT_OPS_PORT": str(free_port()),
            "STT_HANDLER_ATTEMPTS": "1",
            "SAMPLE_LOG": str(self.log),
            "SAMPLE_GROUP": group,
            **env,
        }
        with self.stdout.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(SAMPLE)], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def lines(self, event: str) -> list[str]:
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text().splitlines() if f" {event} " in line]

    def assigned(self) -> set[int]:
        """Partitions this process holds, from its last 'partitions assigned' log line."""
        partitions: set[int] = set()
        for line in self.stdout.read_text().splitlines():
            if '"partitions assigned"' in line:
                partitions = {int(p.split(":")[1]) for p in json.loads(line)["partitions"]}
            if '"stopping' in line:
                partitions = set()
        return partitions

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def stages(fresh_kafka: str, tmp_path: Path) -> Iterator[list[SampleStage]]:
    started: list[SampleStage] = []
    yield started
    for stage in started:
        stage.stop()


async def produce(bootstrap: str, *messages: tuple[bytes | None, bytes]) -> list[tuple[int, int]]:
    """Send (key, value) pairs; returns (partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        placed = []
        for key, value in messages:
            meta = await producer.send_and_wait(Topic.CHUNKS_READY.value, value, key=key)
            placed.append((meta.partition, meta.offset))
        return placed
    finally:
        await producer.stop()


def envelope(job_id: uuid.UUID, chunk_index: int) -> tuple[bytes, bytes]:
    env = Envelope.for_topic(Topic.CHUNKS_READY, job_id, producer="test", chunk_index=chunk_index)
    return env.key(), env.encode()


async def committed(bootstrap: str, group: str, partition: int) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        result: int | None = await consumer.committed(TopicPartition(Topic.CHUNKS_READY.value, partition))
        return result
    finally:
        await consumer.stop()


async def test_failing_handler_stops_the_stage_and_the_message_is_redelivered(
    fresh_kafka: str, tmp_path: Path, stages: list[SampleStage]
) -> None:
    job = uuid.uuid4()
    await produce(fresh_kafka, envelope(job, 2))
    failing = SampleStage(fresh_kafka, tmp_path, "g-fail", SAMPLE_FAIL="1")
    stages.append(failing)
    assert await asyncio.to_thread(failing.proc.wait, 60) == 1
    assert failing.lines("start")
    assert not failing.lines("done")

    healthy = SampleStage(fresh_kafka, tmp_path, "g-fail")
    stages.append(healthy)
    await wait_until(lambda: healthy.lines("done"), timeout=40, what="redelivered message handled")
    assert healthy.lines("done") == [f"{healthy.proc.pid} done {job}:2"]


async def test_garbage_goes_to_the_dlq_with_its_origin_and_the_stage_keeps_going(
    fresh_kafka: str, tmp_path: Path, stages: list[SampleStage]
) -> None:
    job = uuid.uuid4()
    wrong_type = Envelope.for_topic(Topic.JOBS_SUBMITTED, job, producer="test").encode()
    placed = await produce(fresh_kafka, (b"k1", b"\x00\xffnot json"), (b"k2", wrong_type), envelope(job, 0))
    stage = SampleStage(fresh_kafka, tmp_path, "g-dlq")
    stages.append(stage)
    await wait_until(lambda: stage.lines("done"), timeout=40, what="good message after garbage")

    consumer = AIOKafkaConsumer(
        Topic.CHUNKS_READY.dlq, bootstrap_servers=fresh_kafka, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        records = []
        deadline = time.monotonic() + 20
        while len(records) < 2 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            records.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    origin = dict(zip([b"\x00\xffnot json", wrong_type], placed, strict=False))
    assert sorted(r.value for r in records) == sorted(origin)
    for record in records:
        partition, offset = origin[record.value]
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["dlq.original.topic"] == Topic.CHUNKS_READY.value
        assert headers["dlq.original.partition"] == str(partition)
        assert headers["dlq.original.offset"] == str(offset)
        assert headers["dlq.error"]
    assert stage.proc.poll() is None  # still running


async def test_sigterm_drains_the_in_flight_message_and_commits_it(
    fresh_kafka: str, tmp_path: Path, stages: list[SampleStage]
) -> None:
    job = uuid.uuid4()
    [(partition, offset)] = await produce(fresh_kafka, envelope(job, 1))
    stage = SampleStage(fresh_kafka, tmp_path, "g-drain", SAMPLE_SLOW_SECONDS="3")
    stages.append(stage)
    await wait_until(lambda: stage.lines("start"), timeout=40, what="slow handler started")
    stage.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(stage.proc.wait, 30) == 0
    assert stage.lines("done") == [f"{stage.proc.pid} done {job}:1"]
    assert await committed(fresh_kafka, "g-drain", partition) == offset + 1

    # A restarted stage does not see the drained message again.
    again = SampleStage(fresh_kafka, tmp_path, "g-drain")
    stages.append(again)
    other = uuid.uuid4()
    await produce(fresh_kafka, envelope(other, 0))
    await wait_until(lambda: any(str(other) in line for line in again.lines("done")), timeout=40, what="next")
    assert [line for line in again.lines("start") if str(job) in line] == [f"{stage.proc.pid} start {job}:1"]


async def test_sigterm_exits_promptly_when_the_broker_stops_answering(
    fresh_kafka: str, tmp_path: Path, stages: list[SampleStage]
) -> None:
    """Shutdown does not wait out Kafka's request timeout (40 s, past a pod's grace period) when the
    broker does not answer the final commit or the LeaveGroup."""
    first = SampleStage(fresh_kafka, tmp_path, "g-frozen")
    stages.append(first)
    await wait_until(first.assigned, timeout=40, what="first member assigned")
    # A second member makes the group rebalance: a member only says goodbye (LeaveGroup) once its
    # generation is past the first, which is 0 on this broker.
    second = SampleStage(fresh_kafka, tmp_path, "g-frozen")
    stages.append(second)
    await wait_until(
        lambda: len(first.assigned()) + len(second.assigned()) == 12 and second.assigned(),
        timeout=60,
        what="partitions split between the two",
    )
    broker = broker_processes[fresh_kafka]
    broker.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.proc.wait, 30) == 0
        took = time.monotonic() - started
    finally:
        broker.send_signal(signal.SIGCONT)
    assert "kafka did not answer during shutdown" in first.stdout.read_text()
    assert took < 2 * CLOSE_TIMEOUT_SECONDS + 10, took


async def test_two_instances_split_the_partitions_and_handle_each_message_once(
    fresh_kafka: str, tmp_path: Path, stages: list[SampleStage]
) -> None:
    first = SampleStage(fresh_kafka, tmp_path, "g-split")
    second = SampleStage(fresh_kafka, tmp_path, "g-split")
    stages.extend([first, second])

    def split() -> bool:
        a, b = first.assigned(), second.assigned()
        return bool(a) and bool(b) and not (a & b) and len(a | b) == 12

    await wait_until(split, timeout=60, what="both instances hold partitions")
    jobs = [uuid.uuid4() for _ in range(24)]
    await produce(fresh_kafka, *(envelope(job, 0) for job in jobs))
    await wait_until(lambda: len(first.lines("done")) == 24, timeout=60, what="all 24 handled")
    done = first.lines("done")  # both processes append to the same log file
    assert sorted(line.split()[2] for line in done) == sorted(f"{job}:0" for job in jobs)
    assert {line.split()[0] for line in done} == {str(first.proc.pid), str(second.proc.pid)}
