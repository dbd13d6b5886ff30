"""1,000 concurrent Server-Sent Events followers (`GET /api/v1/jobs/{id}/events?follow=true`) held by
ONE ingest process, fed by its one shared poller (`stt_ingest.follow.FollowHub`).

Jobs (BENCH_FOLLOW_JOBS, 50) are entered directly in the database for one API key; BENCH_FOLLOWERS
(1000) streams are opened over them (20 per job), each a bare HTTP/1.1 connection read as chunked
SSE, so the client process stays small next to the 1,000 streams it holds. Then, with every stream
open and nothing else happening, BENCH_FOLLOW_HOLD_SECONDS (10) of quiet; then three rounds of
changes written as the stages write them (`transition_job` / `record_event`, one transaction per
job, BENCH_FOLLOW_GAP_SECONDS (3) apart): a progress row, MERGING, and COMPLETED, the terminal status
after which every stream must close.

Prints and writes bench/results/follow.json:

* ingest's RSS idle (after a warm-up, before any stream), while holding the streams (sampled), after
  they closed, and its peak (VmHWM); the growth per stream; ingest's open file descriptors;
* the poller's query rate while the streams are held: scans of `job_events` per second (only the
  poller reads that table then; Postgres's own statistics, `pg_stat_user_tables`) and the database's
  transactions per second, against one query per STT_FOLLOW_POLL_INTERVAL_SECONDS by design;
* the time from a change's commit to its arrival at each follower of its job: p50 and p99 over every
  delivery, and per round p50, p99, max and the spread from the first follower reached to the last
  (how many were reached). A change waits for the poller's next read (up to one interval, so the
  rounds differ by where they fell in it); the spread is the fan-out to 1,000 followers;
* whether every stream got the terminal event and was then closed by the server (the chunked body
  ended), and the ingest CPU used while holding.

Connections: 1,000 sockets on each side; the file descriptor soft limit is raised to the hard one for
this process and the ingest it starts (each stream is one descriptor in ingest, one here). Ingest is
run with its defaults (the STT_FOLLOW_* settings are recorded in the result). Run: `make bench-follow`
(or `PYTHONPATH=. .venv/bin/python -m bench.follow`; `STT_BENCH_PORT_BASE` moves the stack's ports).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import text

from bench._load import env_int, percentile, start_ingest
from bench._stack import Bench, bench_stack, peak_rss_mb, write_result
from bench.ingest_get import cpu_seconds
from stt_common.db.jobs import record_event, transition_job
from stt_common.db.models import ACTIVE_JOB_STATUSES, Job, JobEvent, JobStatus
from stt_ingest import keys
from stt_ingest.settings import IngestSettings

FOLLOWERS = env_int("BENCH_FOLLOWERS", 1000)
JOBS = env_int("BENCH_FOLLOW_JOBS", 50)
HOLD_SECONDS = float(os.environ.get("BENCH_FOLLOW_HOLD_SECONDS", "10"))
GAP_SECONDS = float(os.environ.get("BENCH_FOLLOW_GAP_SECONDS", "3"))
OPEN_BATCH = 100  # streams opened at once: a realistic ramp, not 1,000 SYNs in one instant
CLOSE_TIMEOUT = 30.0
STATS_SETTLE_SECONDS = 11.0
PROGRESS_ROUNDS = env_int("BENCH_FOLLOW_PROGRESS_ROUNDS", 3)
ROUNDS: tuple[str | JobStatus, ...] = (
    *("progress",) * PROGRESS_ROUNDS,
    JobStatus.MERGING,
    JobStatus.COMPLETED,
)
_DEFAULT_INTERVAL = IngestSettings.model_fields["follow_poll_interval_seconds"].default
POLL_INTERVAL = float(os.environ.get("STT_FOLLOW_POLL_INTERVAL_SECONDS", _DEFAULT_INTERVAL))
FOLLOW_SETTINGS = (
    "follow_poll_interval_seconds",
    "follow_heartbeat_seconds",
    "follow_max_seconds",
    "follow_queue_size",
    "follow_max_streams",
)


@dataclass
class Stream:
    """One follower: a raw connection reading the chunked SSE body, noting when each event came."""

    job_id: uuid.UUID
    status: int = 0
    arrivals: dict[int, float] = field(default_factory=dict)  # event id -> perf_counter on arrival
    kinds: dict[int, str] = field(default_factory=dict)  # event id -> `event:` name
    terminal: bool = False
    closed_by_server: bool = False
    error: str | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, host: str, port: int, netloc: str, api_key: str) -> None:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET /api/v1/jobs/{self.job_id}/events?follow=true HTTP/1.1\r\nHost: {netloc}\r\n"
                f"X-API-Key: {api_key}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            self.status = int(head.split(" ", 2)[1])
            if self.status != 200 or "transfer-encoding: chunked" not in head:
                self.error = f"http_{self.status}"
                return
            buffer = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:  # the server ended the body
                    await reader.readuntil(b"\r\n")
                    self.closed_by_server = True
                    return
                buffer += (await reader.readexactly(size + 2))[:-2]
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._event(block.decode(), time.perf_counter())
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.error = type(exc).__name__
        finally:
            self.opened.set()
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    def _event(self, block: str, arrived: float) -> None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = value
        if "retry" in fields:  # the stream's first block: the backlog follows
            return
        if "id" not in fields:  # `: keep-alive`
            return
        event_id = int(fields["id"])
        self.arrivals[event_id] = arrived
        self.kinds[event_id] = fields.get("event", "")
        if json.loads(fields["data"]).get("to_status") in {"COMPLETED", "FAILED", "CANCELLED"}:
            self.terminal = True
        self.opened.set()  # the backlog's row arrived: this stream is subscribed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Soft limit up to the hard one (inherited by the ingest started after): each stream is a
    descriptor on each side, and 1,024 (a common default) is below what 1,000 streams need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        raise SystemExit(f"the file descriptor limit ({soft}) is below the {needed} this bench needs")
    return soft, hard


async def seed_jobs(bench: Bench, key_id: uuid.UUID) -> list[uuid.UUID]:
    """Jobs being transcribed, each with its first timeline row (the backlog a new stream gets)."""
    job_ids = [uuid.uuid4() for _ in range(JOBS)]
    async with bench.sessions() as session, session.begin():
        for number, job_id in enumerate(job_ids):
            session.add(
                Job(
                    id=job_id,
                    api_key_id=key_id,
                    status=JobStatus.TRANSCRIBING,
                    provider="local",
                    context_mode="parallel",
                    options={},
                    original_filename=f"call-{number}.wav",
                    chunks_total=4,
                )
            )
        await session.flush()
        for job_id in job_ids:
            session.add(JobEvent(job_id=job_id, stage="bench", to_status=JobStatus.TRANSCRIBING, detail={}))
    return job_ids


async def seed_warm_job(bench: Bench, key_id: uuid.UUID) -> uuid.UUID:
    job_id = uuid.uuid4()
    async with bench.sessions() as session, session.begin():
        session.add(
            Job(id=job_id, api_key_id=key_id, status=JobStatus.COMPLETED, provider="local", options={})
        )
        await session.flush()
        session.add(JobEvent(job_id=job_id, stage="bench", to_status=JobStatus.COMPLETED, detail={}))
    return job_id


async def change(bench: Bench, job_id: uuid.UUID, step: str | JobStatus) -> float:
    """One change as a stage writes it; returns the time just before its commit (from then on the
    row can be read, so arrival minus this is the whole delay a follower sees)."""
    async with bench.sessions() as session:
        if isinstance(step, JobStatus):
            previous = await transition_job(
                session, job_id, step, allowed_from=ACTIVE_JOB_STATUSES, stage="bench", detail={}
            )
            assert previous is not None, f"job {job_id} was not active"
        else:
            record_event(session, job_id, stage="bench", detail={"chunk": 0, "status": "COMPLETED"})
        await session.flush()
        committing = time.perf_counter()
        await session.commit()
    return committing


async def stats(bench: Bench) -> tuple[int, int]:
    """Scans of job_events (index and sequential) and transactions of this database, so far."""
    async with bench.sessions() as session:
        scans = await session.scalar(
            text(
                "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                "WHERE relname = 'job_events'"
            )
        )
        xacts = await session.scalar(
            text(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            )
        )
    return int(scans or 0), int(xacts or 0)


async def main() -> None:
    fd_soft, fd_hard = raise_fd_limit(FOLLOWERS + 200)
    async with bench_stack() as bench:
        created = await keys.create_key(bench.sessions, name="bench follow", tenant="bench")
        job_ids = await seed_jobs(bench, created.id)
        ingest, base_url = await start_ingest(bench)
        assert ingest.proc is not None
        pid = ingest.proc.pid
        parts = urlsplit(base_url)
        assert parts.hostname is not None
        assert parts.port is not None
        host, port, netloc = parts.hostname, parts.port, parts.netloc

        # Warm-up: one stream opened and ended (a terminal job), so lazy imports and the first
        # connections are in the idle figure and not counted as the streams' memory.
        warm_job = await seed_warm_job(bench, created.id)
        warm = Stream(warm_job)
        await asyncio.wait_for(warm.run(host, port, netloc, created.api_key), 30)
        assert warm.terminal, f"warm-up stream: {warm.error}"
        await asyncio.sleep(1)
        rss_idle = rss_mb(pid)
        fds_idle = open_fds(pid)

        streams = [Stream(job_ids[n % len(job_ids)]) for n in range(FOLLOWERS)]
        tasks: list[asyncio.Task[None]] = []
        opening = time.perf_counter()
        for start in range(0, FOLLOWERS, OPEN_BATCH):
            batch = streams[start : start + OPEN_BATCH]
            tasks += [
                asyncio.create_task(stream.run(host, port, netloc, created.api_key)) for stream in batch
            ]
            await asyncio.gather(*(asyncio.wait_for(stream.opened.wait(), 60) for stream in batch))
        open_seconds = time.perf_counter() - opening
        failed_to_open = [stream.error for stream in streams if stream.error or not stream.arrivals]
        if failed_to_open:
            print(f"{len(failed_to_open)} streams did not open: {sorted(set(map(str, failed_to_open)))}")

        # Quiet hold: every stream open, nothing written. Only the poller reads job_events now.
        samples: list[float] = []
        # Postgres flushes a backend's statistics at most once a second, and an idle backend's within
        # 10 s: the opening's scans must all be counted before the window starts.
        await asyncio.sleep(STATS_SETTLE_SECONDS)
        scans_before, xacts_before = await stats(bench)
        cpu_before = cpu_seconds(pid)
        held_from = time.perf_counter()
        while time.perf_counter() - held_from < HOLD_SECONDS:
            samples.append(rss_mb(pid))
            await asyncio.sleep(0.5)
        held = time.perf_counter() - held_from
        cpu_holding = cpu_seconds(pid) - cpu_before
        scans_after, xacts_after = await stats(bench)
        fds_holding = open_fds(pid)

        # Rounds of changes: each job's change in its own transaction, as the stages write them.
        rounds: list[dict[str, Any]] = []
        every_delay: list[float] = []
        for step in ROUNDS:
            known = {stream_id for stream in streams for stream_id in stream.arrivals}
            committed = {job_id: await change(bench, job_id, step) for job_id in job_ids}
            await asyncio.sleep(GAP_SECONDS)
            samples.append(rss_mb(pid))
            delays: list[float] = []
            reached = 0
            for stream in streams:
                new = [event_id for event_id in stream.arrivals if event_id not in known]
                if new:
                    reached += 1
                    delays.append(stream.arrivals[min(new)] - committed[stream.job_id])
            every_delay += delays
            rounds.append(
                {
                    "change": step if isinstance(step, str) else step.value,
                    "followers_reached": reached,
                    "delay_ms_p50": round(percentile(delays, 50) * 1000, 1) if delays else None,
                    "delay_ms_p99": round(percentile(delays, 99) * 1000, 1) if delays else None,
                    "delay_ms_max": round(max(delays) * 1000, 1) if delays else None,
                    # From the first follower reached to the last: the fan-out, without the wait for
                    # the next poll (which every follower of the round shares).
                    "spread_ms": round((max(delays) - min(delays)) * 1000, 1) if delays else None,
                }
            )

        closing = time.perf_counter()
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
        for task in pending:
            task.cancel()
        close_seconds = time.perf_counter() - closing
        await asyncio.sleep(1)
        rss_after = rss_mb(pid)
        holding_peak = max(samples)

        write_result(
            "follow",
            {
                "followers": FOLLOWERS,
                "jobs": JOBS,
                "streams_opened": FOLLOWERS - len(failed_to_open),
                "open_seconds": round(open_seconds, 2),
                "ingest_rss_mb_idle": round(rss_idle, 1),
                "ingest_rss_mb_holding_max": round(holding_peak, 1),
                "ingest_rss_mb_after_close": round(rss_after, 1),
                "ingest_peak_rss_mb": round(peak_rss_mb(pid), 1),
                "ingest_rss_kb_per_stream": round((holding_peak - rss_idle) * 1024 / FOLLOWERS, 1),
                "ingest_open_fds_idle": fds_idle,
                "ingest_open_fds_holding": fds_holding,
                "fd_limit_soft_hard": [fd_soft, fd_hard],
                "hold_seconds": round(held, 1),
                "ingest_cpu_share_of_one_core_holding": round(cpu_holding / held, 3),
                "poller_job_events_scans_per_second": round((scans_after - scans_before) / held, 2),
                "poller_queries_per_second_by_design": round(1 / POLL_INTERVAL, 2),
                "database_transactions_per_second_holding": round((xacts_after - xacts_before) / held, 2),
                "delay_ms_p50": round(percentile(every_delay, 50) * 1000, 1) if every_delay else None,
                "delay_ms_p99": round(percentile(every_delay, 99) * 1000, 1) if every_delay else None,
                "rounds": rounds,
                "streams_with_terminal_event": sum(stream.terminal for stream in streams),
                "streams_closed_by_server": sum(stream.closed_by_server for stream in streams),
                "close_seconds": round(close_seconds, 2),
                "stream_errors": sorted({stream.error for stream in streams if stream.error}),
                "settings": {
                    name: os.environ.get(f"STT_{name.upper()}", IngestSettings.model_fields[name].default)
                    for name in FOLLOW_SETTINGS
                },
            },
        )


if __name__ == "__main__":
    asyncio.run(main())
