"""Backlog drain: 200 short jobs entered and chunked while no transcriber runs, then drained by 1, 2
and 4 transcriber processes (each count on a stack of its own) against a fake OpenAI with a fixed
200 ms latency per call.

The jobs come from two API keys: a big key's 150 jobs first, then a small key's 5, then the big key's
remaining 45. Prints and writes bench/results/backlog.json, per count: drain time (transcribers
started -> last job completed), jobs/s and chunks/s, the longest wait of any job (created ->
finished), and fairness: when the small key's jobs finished, as a fraction of the drain time (a FIFO
pipeline finishes them at about (150 + 5) / 200 = 0.78; a fair one near 0). The transcribers start
all at once on the backlog, so the drain includes their start-up and the consumer group's rebalance;
"steady" figures count from the first completion instead, and share_of_steady is the fraction of
that window.
Sizes: BENCH_BACKLOG_JOBS (200), BENCH_BACKLOG_BIG_FIRST (150), BENCH_BACKLOG_SMALL (5),
BENCH_BACKLOG_COUNTS ("1,2,4"), BENCH_BACKLOG_LATENCY_MS (200). Run: `make bench-backlog`."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from bench._load import env_int, job_statuses, wait_all_terminal
from bench._stack import bench_stack, write_result
from stt_common.db.models import Job, JobStatus
from stt_devstack.harness import wait_until
from stt_ingest import keys
from tests.fakes.openai_server import FakeOpenAIProcess
from tests.fixtures.audio import silence_wav

JOBS = env_int("BENCH_BACKLOG_JOBS", 200)
BIG_FIRST = env_int("BENCH_BACKLOG_BIG_FIRST", 150)
SMALL = env_int("BENCH_BACKLOG_SMALL", 5)
COUNTS = tuple(int(n) for n in os.environ.get("BENCH_BACKLOG_COUNTS", "1,2,4").split(","))
LATENCY_SECONDS = env_int("BENCH_BACKLOG_LATENCY_MS", 200) / 1000
AUDIO_SECONDS = 5.0
STALL_SECONDS = 180


async def measure(count: int) -> dict[str, Any]:
    async with bench_stack() as bench:
        audio = silence_wav(bench.work / "short.wav", AUDIO_SECONDS)
        with FakeOpenAIProcess(latency=LATENCY_SECONDS) as fake:
            bench.env.update(STT_OPENAI_BASE_URL=fake.base_url, STT_OPENAI_API_KEY="bench")
            big, small = [
                (await keys.create_key(bench.sessions, name=name, tenant=name)).id
                for name in ("big", "small")
            ]
            # The chunker may take two jobs at once: it only builds the backlog, it is not measured.
            stages = [bench.service("chunker", STT_LOG_LEVEL="INFO", STT_MAX_IN_FLIGHT="2")]
            stages.append(bench.service("merger", STT_LOG_LEVEL="INFO"))
            await asyncio.gather(*(stage.ready() for stage in stages))
            for stage in stages:
                await wait_until(
                    lambda stage=stage: "partitions assigned" in stage.log(),  # type: ignore[misc]
                    timeout=120,
                    what=f"{stage.name} assigned",
                )

            order = [big] * BIG_FIRST + [small] * SMALL + [big] * (JOBS - BIG_FIRST - SMALL)
            owner: dict[uuid.UUID, uuid.UUID] = {}
            for key_id in order:
                owner[await bench.jobs.submit(audio, provider="openai", api_key_id=key_id)] = key_id
            job_ids = list(owner)

            async def chunked() -> bool:
                counts = await job_statuses(bench, job_ids)
                return counts.get(JobStatus.TRANSCRIBING, 0) == len(job_ids)

            await wait_until(chunked, timeout=JOBS * 3 + 60, what="every job chunked", interval=1)

            started = datetime.now(UTC)
            for _ in range(count):
                bench.service("transcriber", STT_COVERAGE_RETRIES="0")
            counts = await wait_all_terminal(bench, job_ids, STALL_SECONDS)
            async with bench.sessions() as session:
                rows = (
                    await session.execute(
                        select(Job.id, Job.created_at, Job.finished_at).where(Job.id.in_(job_ids))
                    )
                ).all()
                chunks = await session.scalar(select(func.sum(Job.chunks_total)).where(Job.id.in_(job_ids)))

        finished = {row.id: (row.finished_at - started).total_seconds() for row in rows if row.finished_at}
        drain, first = max(finished.values()), min(finished.values())
        steady = drain - first
        small_done = sorted(seconds for job_id, seconds in finished.items() if owner[job_id] == small)
        small_last = max(small_done, default=drain)  # an unfinished small-key job counts as last
        result = {
            "jobs_by_final_status": dict(counts),
            "chunks": chunks,
            "drain_seconds": round(drain, 2),
            "first_completion_seconds": round(first, 2),
            "jobs_per_second": round(len(finished) / drain, 2),
            "chunks_per_second": round((chunks or 0) / drain, 2),
            "max_job_wait_seconds": round(
                max((row.finished_at - row.created_at).total_seconds() for row in rows if row.finished_at), 1
            ),
            # From the first completion on: the drain proper, without the transcribers' start-up.
            "steady_seconds": round(steady, 2),
            "steady_jobs_per_second": round((len(finished) - 1) / steady, 2) if steady else None,
            "small_key_done_seconds": [round(s, 2) for s in small_done],
            "small_key_last_done_share_of_drain": round(small_last / drain, 3),
            "small_key_last_done_share_of_steady": round((small_last - first) / max(steady, 1e-9), 3),
        }
        print(
            f"{count} transcriber(s): {result['drain_seconds']} s, {result['jobs_per_second']} jobs/s, "
            f"steady {result['steady_jobs_per_second']} jobs/s; small key's last job at "
            f"{result['small_key_last_done_share_of_steady']} of the steady drain"
        )
        return result


async def main() -> None:
    results = {str(count): await measure(count) for count in COUNTS}
    write_result(
        "backlog",
        {
            "jobs": JOBS,
            "submission_order": f"big key {BIG_FIRST}, small key {SMALL}, big key {JOBS - BIG_FIRST - SMALL}",
            "provider_latency_seconds": LATENCY_SECONDS,
            "audio_seconds": AUDIO_SECONDS,
            "fifo_expected_small_key_share": round((BIG_FIRST + SMALL) / JOBS, 3),
            "by_transcriber_count": results,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
