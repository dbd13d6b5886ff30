"""Helpers shared by the load benchmarks (storm, backlog, limiter): ingest processes, uploads through
the API, waiting for many jobs, percentiles and per-stage peak RSS."""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import httpx
from sqlalchemy import func, select

from bench._stack import Bench, peak_rss_mb
from stt_common.db.models import TERMINAL_JOB_STATUSES, Job
from stt_devstack.harness import ServiceProcess
from stt_devstack.procs import free_port


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


async def start_ingest(bench: Bench, **overrides: str) -> tuple[ServiceProcess, str]:
    """One ingest process on a free port of 127.0.0.1, ready; returns it and its base URL."""
    port = free_port()
    ingest = bench.service("ingest", STT_HTTP_HOST="127.0.0.1", STT_HTTP_PORT=str(port), **overrides)
    await ingest.ready()
    return ingest, f"http://127.0.0.1:{port}"


async def upload(
    client: httpx.AsyncClient, base_url: str, api_key: str, path: Path, **fields: str
) -> tuple[int, float, uuid.UUID | None]:
    """`POST /api/v1/transcribe` of one file: (status code, seconds, job id when accepted)."""
    started = time.perf_counter()
    with path.open("rb") as handle:
        response = await client.post(
            f"{base_url}/api/v1/transcribe",
            headers={"X-API-Key": api_key},
            data=fields,
            files={"file": (path.name, handle, "audio/wav")},
        )
    seconds = time.perf_counter() - started
    job_id = uuid.UUID(response.json()["job_id"]) if response.status_code == 202 else None
    return response.status_code, seconds, job_id


async def job_statuses(bench: Bench, job_ids: Iterable[uuid.UUID]) -> Counter[str]:
    ids = list(job_ids)
    async with bench.sessions() as session:
        rows = await session.execute(
            select(Job.status, func.count()).where(Job.id.in_(ids)).group_by(Job.status)
        )
    return Counter({status: count for status, count in rows.all()})


async def wait_all_terminal(bench: Bench, job_ids: list[uuid.UUID], stall_seconds: float) -> Counter[str]:
    """Poll until every job has ended, or until none has ended for `stall_seconds`; the final counts
    by status either way."""
    done, last_progress = -1, time.monotonic()
    while True:
        counts = await job_statuses(bench, job_ids)
        ended = sum(n for status, n in counts.items() if status in TERMINAL_JOB_STATUSES)
        if ended == len(job_ids):
            return counts
        if ended != done:
            done, last_progress = ended, time.monotonic()
        elif time.monotonic() - last_progress > stall_seconds:
            print(f"stalled: {ended}/{len(job_ids)} ended, no progress for {stall_seconds} s: {dict(counts)}")
            return counts
        await asyncio.sleep(1)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def peak_rss(services: Iterable[ServiceProcess]) -> dict[str, float]:
    """VmHWM in MB of every live service, named `<stage>`, or `<stage>-<n>` when there are several."""
    live = [s for s in services if s.proc is not None and s.proc.poll() is None]
    totals = Counter(s.name for s in live)
    seen: Counter[str] = Counter()
    peaks: dict[str, float] = {}
    for service in live:
        assert service.proc is not None
        seen[service.name] += 1
        name = service.name if totals[service.name] == 1 else f"{service.name}-{seen[service.name]}"
        peaks[name] = round(peak_rss_mb(service.proc.pid), 1)
    return peaks
