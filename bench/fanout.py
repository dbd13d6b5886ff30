"""Fan-out: 60 minutes of audio (12 chunks), a fake OpenAI-compatible provider with a fixed 2 s
latency per chunk, 1/2/4/8 transcriber processes. Measures the transcription phase (job events
TRANSCRIBING -> MERGING) and the speedup over one transcriber (target >= 3.3 at 4).

Writes bench/results/fanout.json. Run: `make bench-fanout`."""

from __future__ import annotations

import asyncio
import signal

from sqlalchemy import text

from bench._stack import bench_stack, write_result
from stt_common.db.models import JobStatus
from tests.fakes.openai_server import FakeOpenAIProcess
from tests.fixtures.audio import silence_wav

COUNTS = (1, 2, 4, 8)
LATENCY_SECONDS = 2.0
STALL_SECONDS = 180


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


async def main() -> None:
    results: dict[int, float | None] = {}
    async with bench_stack() as bench:
        # Content does not matter to the fake provider; a silent hour cuts exactly every 300 s.
        audio = silence_wav(bench.work / "hour.wav", 3600.0)
        with FakeOpenAIProcess(latency=LATENCY_SECONDS) as fake:
            chunker, merger = bench.service("chunker"), bench.service("merger")
            await asyncio.gather(chunker.ready(), merger.ready())
            for count in COUNTS:
                transcribers = [
                    bench.service(
                        "transcriber",
                        STT_OPENAI_BASE_URL=fake.base_url,
                        STT_OPENAI_API_KEY="bench",
                        STT_COVERAGE_RETRIES="0",
                    )
                    for _ in range(count)
                ]
                await asyncio.gather(*(t.ready() for t in transcribers))
                await asyncio.sleep(12)  # let the group settle: every member holds partitions
                job_id = await bench.jobs.submit(audio, provider="openai")
                try:
                    job = await bench.jobs.wait_terminal(job_id, timeout=STALL_SECONDS)
                except AssertionError:
                    # Seen with 8 members on the local Kafka-protocol broker: the group never settles.
                    print(
                        f"{count} transcriber(s): no progress within {STALL_SECONDS} s (group did not settle)"
                    )
                    results[count] = None
                else:
                    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
                    results[count] = await transcription_seconds(bench, job_id)
                    print(f"{count} transcriber(s): {results[count]:.2f} s for {job.chunks_total} chunks")
                for transcriber in transcribers:
                    transcriber.kill(signal.SIGTERM)
                    bench.started.remove(transcriber)
    write_result(
        "fanout",
        {
            "provider_latency_seconds": LATENCY_SECONDS,
            "chunks": 12,
            "transcription_seconds": {str(k): None if v is None else round(v, 2) for k, v in results.items()},
            "speedup_over_one": {
                str(k): None if v is None or results[1] is None else round(results[1] / v, 2)
                for k, v in results.items()
            },
            "target_speedup_at_4": 3.3,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
