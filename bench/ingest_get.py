"""200 concurrent clients polling `GET /api/v1/jobs/{id}` of a real ingest process for 20 s.

A few jobs (with chunks, so progress is computed) are entered directly in the database for one API
key; 200 client tasks loop over them, after a 2 s warm-up. GETs are not rate limited. Prints and
writes bench/results/ingest_get.json: requests per second, p50/p99/max latency of the answered
requests, errors (any non-200 answer or transport error), and ingest's CPU time and peak RSS over the
run. Client and server share this machine, so the figures are for the two together.

Connections: 200 in all, one per client (each task has its own httpx client limited to one
connection). One shared `httpx.AsyncClient` with a limit of 200 measures httpx's pool rather than
ingest: its pool bookkeeping grows with the number of connections (encode/httpx#3215); here it
reached about 50 requests/s with the client process at 100% of a core and ingest at 20%.
`BENCH_SHARED_CLIENT=1` runs that way, for comparison. `BENCH_CLIENTS` and `BENCH_SECONDS` override
the load. Run: `make bench-ingest-get` (or `PYTHONPATH=. .venv/bin/python -m bench.ingest_get`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from pathlib import Path

import httpx

from bench._stack import Bench, bench_stack, peak_rss_mb, write_result
from bench.ingest_upload import start_ingest
from stt_common.db.models import Chunk, ChunkStatus, Job, JobEvent, JobStatus
from stt_ingest import keys
from stt_ingest.settings import IngestSettings

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "200"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
WARMUP_SECONDS = 2.0
JOBS = 4


async def seed_jobs(bench: Bench, key_id: uuid.UUID) -> list[uuid.UUID]:
    """Jobs in the states a poller sees most: transcribing (with progress) and completed."""
    job_ids = []
    async with bench.sessions() as session, session.begin():
        for number in range(JOBS):
            job_id = uuid.uuid4()
            completed = number % 2 == 1
            session.add(
                Job(
                    id=job_id,
                    api_key_id=key_id,
                    status=JobStatus.COMPLETED if completed else JobStatus.TRANSCRIBING,
                    provider="local",
                    context_mode="parallel",
                    language="en",
                    options={"prompt": None, "vocabulary": [], "output": {}},
                    original_filename=f"meeting-{number}.wav",
                    content_type="audio/wav",
                    size_bytes=48_000_000,
                    duration_seconds=1500.0,
                    chunks_total=6,
                )
            )
            await session.flush()
            session.add(JobEvent(job_id=job_id, stage="bench", to_status=JobStatus.TRANSCRIBING, detail={}))
            for index in range(6):
                done = completed or index < 3
                session.add(
                    Chunk(
                        job_id=job_id,
                        chunk_index=index,
                        status=ChunkStatus.COMPLETED if done else ChunkStatus.PENDING,
                        start_seconds=index * 250.0,
                        end_seconds=index * 250.0 + 260,
                    )
                )
            job_ids.append(job_id)
    return job_ids


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    async with bench_stack() as bench:
        created = await keys.create_key(bench.sessions, name="bench get", tenant="bench")
        job_ids = await seed_jobs(bench, created.id)
        ingest, base_url = await start_ingest(bench, limit=500 * 1024 * 1024)
        assert ingest.proc is not None
        pid = ingest.proc.pid

        latencies: list[float] = []
        errors: dict[str, int] = {}
        measuring = False
        stop = False

        async def client_loop(client: httpx.AsyncClient, offset: int) -> None:
            number = offset
            while not stop:
                job_id = job_ids[number % len(job_ids)]
                number += 1
                started = time.perf_counter()
                try:
                    response = await client.get(f"/api/v1/jobs/{job_id}")
                    outcome = "ok" if response.status_code == 200 else f"http_{response.status_code}"
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                elapsed = time.perf_counter() - started
                if not measuring:
                    continue
                if outcome == "ok":
                    latencies.append(elapsed)
                else:
                    errors[outcome] = errors.get(outcome, 0) + 1

        def new_client(connections: int) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=base_url,
                headers={"X-API-Key": created.api_key},
                limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
                timeout=httpx.Timeout(30, pool=60),
            )

        async with contextlib.AsyncExitStack() as stack:
            if os.environ.get("BENCH_SHARED_CLIENT"):
                shared = await stack.enter_async_context(new_client(CLIENTS))
                clients = [shared] * CLIENTS
            else:
                clients = [await stack.enter_async_context(new_client(1)) for _ in range(CLIENTS)]
            tasks = [asyncio.create_task(client_loop(clients[n], n)) for n in range(CLIENTS)]
            await asyncio.sleep(WARMUP_SECONDS)
            measuring = True
            cpu_before = cpu_seconds(pid)
            started = time.perf_counter()
            await asyncio.sleep(SECONDS)
            measuring = False
            wall = time.perf_counter() - started
            cpu_used = cpu_seconds(pid) - cpu_before
            stop = True
            await asyncio.gather(*tasks)

        ordered = sorted(latencies)

        def percentile(share: float) -> float:
            return (
                ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000 if ordered else float("nan")
            )

        write_result(
            "ingest_get",
            {
                "clients": CLIENTS,
                "connections": CLIENTS,
                "shared_client": bool(os.environ.get("BENCH_SHARED_CLIENT")),
                "seconds": round(wall, 2),
                "jobs_polled": len(job_ids),
                "requests_ok": len(latencies),
                "requests_per_second": round(len(latencies) / wall, 1),
                "latency_ms_p50": round(percentile(0.50), 2),
                "latency_ms_p99": round(percentile(0.99), 2),
                "latency_ms_max": round(ordered[-1] * 1000, 2) if ordered else None,
                "latency_ms_mean": round(statistics.fmean(ordered) * 1000, 2) if ordered else None,
                "errors": sum(errors.values()),
                "errors_by_kind": errors,
                "ingest_cpu_seconds": round(cpu_used, 2),
                "ingest_cpu_share_of_one_core": round(cpu_used / wall, 2),
                "ingest_peak_rss_mb": round(peak_rss_mb(pid), 1),
                "ingest_db_pool_size": IngestSettings.model_fields["db_pool_size"].default,
            },
        )


if __name__ == "__main__":
    asyncio.run(main())
