"""Fan-out: 60 minutes of audio (12 chunks), a fake OpenAI-compatible provider with a fixed 2 s
latency per chunk, 1/2/4/8 transcriber processes. Measures the transcription phase (job events
TRANSCRIBING -> MERGING) and the speedup over one transcriber (target >= 3.3 at 4).

Each count runs on a stack of its own, so every consumer group starts empty, and the job is submitted
only once the group has settled (every member holds partitions, none twice, nothing moving): the
figure is the scale-out of transcription, not the broker's rebalancing. How long the group took to
settle is recorded beside it.

Writes bench/results/fanout.json. Run: `make bench-fanout`."""

from __future__ import annotations

import asyncio
import json
import time

from sqlalchemy import text

from bench._stack import bench_stack, write_result
from stt_common.db.models import JobStatus
from stt_devstack.harness import ServiceProcess, wait_until
from tests.fakes.openai_server import FakeOpenAIProcess
from tests.fixtures.audio import silence_wav

COUNTS = (1, 2, 4, 8)
LATENCY_SECONDS = 2.0
STALL_SECONDS = 180
PARTITIONS = 12  # of stt.chunks.ready (the default), and the hour's chunks: one per partition


async def transcription_seconds(bench, job_id) -> float:  # type: ignore[no-untyped-def]
    async with bench.sessions() as session:
        row = (
            await session.execute(
                text(
                    "SELECT max(at) FILTER (WHERE to_status = 'MERGING') - max(at) FILTER (WHERE to_status ="
                    " 'TRANSCRIBING') FROM job_events WHERE job_id = :id"
                ),
                {"id": job_id},
            )
        ).scalar_one()
    return float(row.total_seconds())


def partitions_held(transcriber: ServiceProcess) -> set[int]:
    """The partitions a transcriber holds, from its last 'partitions assigned' log line."""
    held: set[int] = set()
    for line in transcriber.log().splitlines():
        if '"partitions assigned"' in line:
            held = {int(name.rsplit(":", 1)[1]) for name in json.loads(line)["partitions"]}
    return held


async def wait_for_settled_group(transcribers: list[ServiceProcess]) -> float:
    """Wait until the members hold disjoint partitions that cover the topic and nothing has moved for
    a few seconds; returns how long that took. Raises AssertionError past STALL_SECONDS."""
    started = time.monotonic()
    last_change, last_holdings = started, None

    def settled() -> bool:
        nonlocal last_change, last_holdings
        holdings = [frozenset(partitions_held(t)) for t in transcribers]
        if holdings != last_holdings:
            last_change, last_holdings = time.monotonic(), holdings
        covered = set().union(*holdings)
        disjoint = sum(len(held) for held in holdings) == len(covered) == PARTITIONS
        return disjoint and all(holdings) and time.monotonic() - last_change >= 3

    await wait_until(settled, timeout=STALL_SECONDS, what="consumer group settled", interval=0.5)
    return time.monotonic() - started - 3


async def measure(count: int) -> dict[str, float | None]:
    """One transcriber count on a stack of its own: a fresh broker, so a fresh consumer group."""
    async with bench_stack() as bench:
        # Content does not matter to the fake provider; a silent hour cuts exactly every 300 s.
        audio = silence_wav(bench.work / "hour.wav", 3600.0)
        with FakeOpenAIProcess(latency=LATENCY_SECONDS) as fake:
            chunker, merger = bench.service("chunker"), bench.service("merger")
            transcribers = [
                bench.service(
                    "transcriber",
                    STT_LOG_LEVEL="INFO",
                    STT_OPENAI_BASE_URL=fake.base_url,
                    STT_OPENAI_API_KEY="bench",
                    STT_COVERAGE_RETRIES="0",
                )
                for _ in range(count)
            ]
            await asyncio.gather(*(service.ready() for service in (chunker, merger, *transcribers)))
            try:
                settle_seconds = await wait_for_settled_group(transcribers)
            except AssertionError:
                print(f"{count} transcriber(s): the consumer group did not settle within {STALL_SECONDS} s")
                return {"transcription_seconds": None, "group_settle_seconds": None}
            job_id = await bench.jobs.submit(audio, provider="openai")
            job = await bench.jobs.wait_terminal(job_id, timeout=STALL_SECONDS)
            assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
            assert job.chunks_total == PARTITIONS
            seconds = await transcription_seconds(bench, job_id)
            print(
                f"{count} transcriber(s): {seconds:.2f} s for {job.chunks_total} chunks"
                f" (group settled in {settle_seconds:.1f} s)"
            )
            return {
                "transcription_seconds": round(seconds, 2),
                "group_settle_seconds": round(settle_seconds, 1),
            }


async def main() -> None:
    results = {count: await measure(count) for count in COUNTS}
    one = results[1]["transcription_seconds"]
    write_result(
        "fanout",
        {
            "provider_latency_seconds": LATENCY_SECONDS,
            "chunks": PARTITIONS,
            "transcription_seconds": {str(k): v["transcription_seconds"] for k, v in results.items()},
            "speedup_over_one": {
                str(k): None
                if one is None or not v["transcription_seconds"]
                else round(one / v["transcription_seconds"], 2)
                for k, v in results.items()
            },
            "group_settle_seconds": {str(k): v["group_settle_seconds"] for k, v in results.items()},
            "target_speedup_at_4": 3.3,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
