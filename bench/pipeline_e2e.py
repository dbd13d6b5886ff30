"""20 minutes of speech end to end with the embedded `local` provider (one transcriber).

Prints and writes bench/results/pipeline_e2e.json: real-time factor (audio seconds / wall seconds)
and pipeline overhead = wall time minus summed provider time, as a share of wall time (target < 10 %).
Run: `make bench-pipeline` (or `.venv/bin/python -m bench.pipeline_e2e`)."""

from __future__ import annotations

import asyncio
import json
import time

from sqlalchemy import func, select

from bench._stack import bench_stack, write_result
from stt_chunker.audio import wav_duration
from stt_common.db.models import Chunk, JobEvent, JobStatus
from stt_common.s3 import chunk_result_key
from stt_devstack.harness import wait_until
from tests.fixtures.audio import ESPEAK_VOICE, ESPEAK_WPM, espeak_wav, varied_sentences


async def main() -> None:
    async with bench_stack() as bench:
        audio = bench.work / "twenty-minutes.wav"
        espeak_wav(
            audio, varied_sentences(280), gap_seconds=0.8, voice=ESPEAK_VOICE, words_per_minute=ESPEAK_WPM
        )
        seconds = wav_duration(audio)
        services = [
            bench.service(name, STT_LOG_LEVEL="INFO") for name in ("chunker", "transcriber", "merger")
        ]
        await asyncio.gather(*(service.ready() for service in services))
        # Measure a job arriving at a running pipeline: every stage's consumer group holds its topic.
        for service in services:
            await wait_until(
                lambda service=service: "partitions assigned" in service.log(),  # type: ignore[misc]
                timeout=60,
                what=f"{service.name} assigned",
            )

        started = time.perf_counter()
        job_id = await bench.jobs.submit(audio)
        job = await bench.jobs.wait_terminal(job_id, timeout=1800)
        wall = time.perf_counter() - started
        assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
        async with bench.sessions() as session:
            provider = float(
                await session.scalar(select(func.sum(Chunk.provider_seconds)).where(Chunk.job_id == job_id))
                or 0
            )
            events = (
                await session.execute(
                    select(JobEvent.at, JobEvent.stage, JobEvent.to_status, JobEvent.detail)
                    .where(JobEvent.job_id == job_id)
                    .order_by(JobEvent.at)
                )
            ).all()
        chunk_results = [
            json.loads(await bench.store.get_bytes(chunk_result_key(job_id, index)))
            for index in range(job.chunks_total or 0)
        ]
        write_result(
            "pipeline_e2e",
            {
                "audio_seconds": round(seconds, 1),
                "chunks": job.chunks_total,
                "transcribers": 1,
                "wall_seconds": round(wall, 2),
                "provider_seconds_total": round(provider, 2),
                "realtime_factor": round(seconds / wall, 2),
                "overhead_share_of_wall": round((wall - provider) / wall, 4),
                "target_overhead_share": 0.10,
                # Where the time went: each event of the job's timeline, seconds after the first ...
                "timeline": [
                    {
                        "after_seconds": round((at - events[0].at).total_seconds(), 2),
                        "stage": stage,
                        "event": to_status
                        or (f"chunk {detail['chunk_index']} done" if "chunk_index" in detail else None),
                    }
                    for at, stage, to_status, detail in events
                ],
                # ... and each chunk's time in the transcriber around its provider call.
                "chunk_overhead_seconds": [
                    round(result["wall_seconds"] - result["provider_seconds"], 2) for result in chunk_results
                ],
            },
        )


if __name__ == "__main__":
    asyncio.run(main())
