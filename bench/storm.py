"""Submission storm: 1,000 short WAV uploads from 50 concurrent HTTP clients over 5 API keys (their
rate limits raised) into one ingest process, the whole pipeline running (ingest, chunker, transcriber,
merger, notifier as processes) against a zero-latency fake OpenAI on 127.0.0.1.

Prints and writes bench/results/storm.json: accepted submissions per second, p50/p99 submit latency,
responses by status (anything but 202 and 429 is an error), whether every accepted job completed (and
how long the pipeline took to finish them all), and the peak RSS (VmHWM) of each stage process.
Sizes: BENCH_STORM_JOBS (1000), BENCH_STORM_CLIENTS (50), BENCH_STORM_KEYS (5),
BENCH_STORM_KEY_LIMIT (per-minute limit of each key, 100000). Run: `make bench-storm`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import httpx
from sqlalchemy import func, select

from bench._load import env_int, peak_rss, percentile, start_ingest, upload, wait_all_terminal
from bench._stack import bench_stack, write_result
from stt_common.db.models import Job, JobStatus
from stt_devstack.harness import wait_until
from stt_ingest import keys
from tests.fakes.openai_server import FakeOpenAIProcess
from tests.fixtures.audio import silence_wav

JOBS = env_int("BENCH_STORM_JOBS", 1000)
CLIENTS = env_int("BENCH_STORM_CLIENTS", 50)
KEYS = env_int("BENCH_STORM_KEYS", 5)
KEY_LIMIT = env_int("BENCH_STORM_KEY_LIMIT", 100_000)
AUDIO_SECONDS = 5.0
STALL_SECONDS = 180


async def main() -> None:
    async with bench_stack() as bench:
        audio = silence_wav(bench.work / "short.wav", AUDIO_SECONDS)
        with FakeOpenAIProcess(latency=0.0) as fake:
            # Every stage started from here on sees the fake vendor.
            bench.env.update(STT_OPENAI_BASE_URL=fake.base_url, STT_OPENAI_API_KEY="bench")
            api_keys = [
                (
                    await keys.create_key(
                        bench.sessions, name=f"storm {n}", tenant="bench", rate_limit_per_minute=KEY_LIMIT
                    )
                ).api_key
                for n in range(KEYS)
            ]
            workers = [
                bench.service(name, STT_LOG_LEVEL="INFO", STT_COVERAGE_RETRIES="0")
                for name in ("chunker", "transcriber", "merger", "notifier")
            ]
            # Each key holds up to jobs / keys unfinished jobs at once: lift the cap on active jobs.
            ingest, base_url = await start_ingest(bench, STT_MAX_ACTIVE_JOBS_PER_KEY="0")
            await asyncio.gather(*(worker.ready() for worker in workers))
            for worker in workers[:3]:  # the stages that consume job topics: wait for their partitions
                await wait_until(
                    lambda worker=worker: "partitions assigned" in worker.log(),  # type: ignore[misc]
                    timeout=120,
                    what=f"{worker.name} assigned",
                )

            statuses: Counter[str] = Counter()
            latencies: list[float] = []
            accepted: list[uuid.UUID] = []
            numbers = iter(range(JOBS))

            async def client() -> None:
                async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10)) as http:
                    for number in numbers:
                        try:
                            status, seconds, job_id = await upload(
                                http, base_url, api_keys[number % KEYS], audio, provider="openai"
                            )
                        except httpx.HTTPError as exc:
                            statuses[type(exc).__name__] += 1
                            continue
                        statuses[str(status)] += 1
                        if job_id is not None:
                            latencies.append(seconds)
                            accepted.append(job_id)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(CLIENTS)))
            submit_seconds = time.perf_counter() - started
            print(f"submitted {JOBS} in {submit_seconds:.1f} s: {dict(statuses)}; waiting for the jobs")

            counts = await wait_all_terminal(bench, accepted, STALL_SECONDS)
            async with bench.sessions() as session:
                first, last = (
                    await session.execute(
                        select(func.min(Job.created_at), func.max(Job.finished_at)).where(
                            Job.id.in_(accepted)
                        )
                    )
                ).one()
            peaks = peak_rss([ingest, *workers])
            completed = counts.get(JobStatus.COMPLETED, 0)
            pipeline_seconds = (last - first).total_seconds() if last else None
            completed_rate = round(completed / pipeline_seconds, 2) if pipeline_seconds else None

            def latency_ms(q: float) -> float | None:
                return round(percentile(latencies, q) * 1000, 1) if latencies else None

            errors = sum(n for status, n in statuses.items() if status not in ("202", "429"))
            write_result(
                "storm",
                {
                    "jobs": JOBS,
                    "clients": CLIENTS,
                    "api_keys": KEYS,
                    "key_rate_limit_per_minute": KEY_LIMIT,
                    "audio_seconds": AUDIO_SECONDS,
                    "provider": "openai (fake, zero latency)",
                    "submit_seconds": round(submit_seconds, 2),
                    "accepted": len(accepted),
                    "accepted_per_second": round(len(accepted) / submit_seconds, 1),
                    "submit_latency_p50_ms": latency_ms(50),
                    "submit_latency_p99_ms": latency_ms(99),
                    "submit_latency_max_ms": latency_ms(100),
                    "responses_by_status": dict(statuses),
                    "errors": errors,
                    "jobs_by_final_status": dict(counts),
                    "all_accepted_completed": completed == len(accepted),
                    "first_submit_to_last_completion_seconds": round(pipeline_seconds or 0, 1),
                    "completed_per_second": completed_rate,
                    "peak_rss_mb": peaks,
                },
            )


if __name__ == "__main__":
    asyncio.run(main())
