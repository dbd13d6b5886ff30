"""200 concurrent clients polling `GET /api/v1/jobs/{id}` of a real ingest process for 20 s.

A few jobs (with chunks, so progress is computed) are entered directly in the database for one API
key; 200 client tasks loop over them, after a 2 s warm-up, each sending its next request as soon as
the last is answered (closed loop: the latency is then mostly the time a request waits behind the
others, 200 / requests per second). GETs are not rate limited. Prints and writes
bench/results/ingest_get.json: requests per second, p50/p99/max latency of the answered requests,
errors (any non-200 answer or transport error), and ingest's CPU time and peak RSS over the run.
Client and server share this machine, so the figures are for the two together.

Clients: 200 connections, one per client task. By default each is a bare HTTP/1.1 keep-alive
connection (`RawConnection`: the request written whole, the answer read by its Content-Length, about
0.1 ms of client CPU per request) so that the load generator is not what is measured: with an
`httpx.AsyncClient` per task (`BENCH_CLIENT=httpx`, what this bench used before) the client process
took a whole vCPU at about 240 requests/s while ingest used two thirds of the other, on this 2-vCPU
machine. One shared `httpx.AsyncClient` with a limit of 200 measures httpx's pool rather than
ingest: its pool bookkeeping grows with the number of connections (encode/httpx#3215); there it
reached about 50 requests/s with the client process at 100% of a core and ingest at 20%.
`BENCH_SHARED_CLIENT=1` runs that way, for comparison. `BENCH_CLIENTS` and `BENCH_SECONDS` override
the load; `BENCH_POLL_INTERVAL` (seconds, default 0) makes each client wait that long between its
polls, as real pollers do. Run: `make bench-ingest-get` (or `PYTHONPATH=. .venv/bin/python -m
bench.ingest_get`; `STT_BENCH_PORT_BASE` moves the stack's ports).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from bench._stack import Bench, bench_stack, peak_rss_mb, write_result
from bench.ingest_upload import start_ingest
from stt_common.db.models import Chunk, ChunkStatus, Job, JobEvent, JobStatus
from stt_ingest import keys
from stt_ingest.settings import IngestSettings

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "200"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
POLL_INTERVAL = float(os.environ.get("BENCH_POLL_INTERVAL", "0"))
# raw (default), httpx (a client per task) or httpx-shared (one client for all: BENCH_SHARED_CLIENT=1)
CLIENT_KIND = os.environ.get("BENCH_CLIENT", "raw")
if os.environ.get("BENCH_SHARED_CLIENT"):
    CLIENT_KIND = "httpx-shared"
WARMUP_SECONDS = 2.0
JOBS = 4


class Getter(Protocol):
    async def status_of(self, path: str) -> int: ...


class RawConnection:
    """One HTTP/1.1 keep-alive connection that sends GETs and reads each answer by its
    Content-Length (ingest always sends one for JSON): a load generator that costs little CPU."""

    def __init__(self, base_url: str, api_key: str) -> None:
        parts = urlsplit(base_url)
        assert parts.hostname is not None
        assert parts.port is not None
        self.host, self.port = parts.hostname, parts.port
        self.headers = f"Host: {parts.netloc}\r\nX-API-Key: {api_key}\r\nAccept: application/json\r\n\r\n"
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def status_of(self, path: str) -> int:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        try:
            writer.write(f"GET {path} HTTP/1.1\r\n{self.headers}".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            await self.close()
            raise
        return status

    async def close(self) -> None:
        if self.streams is not None:
            writer = self.streams[1]
            self.streams = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class HttpxGetter:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def status_of(self, path: str) -> int:
        return (await self.client.get(path)).status_code


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

        async def client_loop(client: Getter, offset: int) -> None:
            number = offset
            if POLL_INTERVAL:  # spread the pollers' phases over one interval
                await asyncio.sleep(POLL_INTERVAL * offset / CLIENTS)
            while not stop:
                job_id = job_ids[number % len(job_ids)]
                number += 1
                started = time.perf_counter()
                try:
                    status = await client.status_of(f"/api/v1/jobs/{job_id}")
                    outcome = "ok" if status == 200 else f"http_{status}"
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    outcome = type(exc).__name__
                elapsed = time.perf_counter() - started
                if measuring:
                    if outcome == "ok":
                        latencies.append(elapsed)
                    else:
                        errors[outcome] = errors.get(outcome, 0) + 1
                if POLL_INTERVAL:
                    await asyncio.sleep(POLL_INTERVAL)

        def new_client(connections: int) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=base_url,
                headers={"X-API-Key": created.api_key},
                limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
                timeout=httpx.Timeout(30, pool=60),
            )

        async with contextlib.AsyncExitStack() as stack:
            clients: list[Getter]
            if CLIENT_KIND == "httpx-shared":
                shared = HttpxGetter(await stack.enter_async_context(new_client(CLIENTS)))
                clients = [shared] * CLIENTS
            elif CLIENT_KIND == "httpx":
                clients = [
                    HttpxGetter(await stack.enter_async_context(new_client(1))) for _ in range(CLIENTS)
                ]
            else:
                raw = [RawConnection(base_url, created.api_key) for _ in range(CLIENTS)]
                for connection in raw:
                    stack.push_async_callback(connection.close)
                clients = list(raw)
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
                "client": CLIENT_KIND,
                "poll_interval_seconds": POLL_INTERVAL,
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
                # Less sensitive than latency to what else the machine runs meanwhile.
                "ingest_cpu_ms_per_request": round(cpu_used * 1000 / max(len(latencies), 1), 2),
                "ingest_peak_rss_mb": round(peak_rss_mb(pid), 1),
                "ingest_db_pool_size": IngestSettings.model_fields["db_pool_size"].default,
            },
        )


if __name__ == "__main__":
    asyncio.run(main())
