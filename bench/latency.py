"""Time to transcript at the physical limit: 60 minutes of speech-like MP3 through the whole pipeline
(chunker, T transcribers, merger, notifier with a webhook) against a fake OpenAI-compatible provider
with a fixed latency per chunk, for T = 1, 2, 4, 8, 12, 16 transcriber processes.

Per run: the wall time from submission (the harness's `submitted` event, the job as ingest leaves it)
to COMPLETED, against the floor measured in the same run: a bare `ffmpeg -i in.mp3 -f null -` decode
of the file + one provider latency + the merge (MERGING -> COMPLETED on the job's timeline, the
merger's own time). Beside it the predicted curve decode + ceil(chunks / T) x latency + merge.
Target: wall <= 1.3 x floor once T >= the number of chunks.

One stack for every run: transcribers are added between counts and a job is submitted only once
their consumer group has settled (as in fanout.py; with T above the topic's 12 partitions the spare
members hold none). For the best run it prints where the time went, from the job's timeline, the
fake provider's request log, the first chunk's arrival in S3 and the webhook delivery.

Sizes (env): BENCH_LATENCY_AUDIO_MINUTES (60), BENCH_LATENCY_SECONDS (provider latency per chunk,
"2,10"), BENCH_LATENCY_COUNTS ("1,2,4,8,12,16"), BENCH_LATENCY_CHUNK_SECONDS (the jobs'
`chunk_seconds`, "300": the server's default), BENCH_LATENCY_PER_AUDIO_SECOND (provider seconds added
per second of audio, 0: a hosted model's time grows with the chunk, which a fixed latency hides when
chunk lengths are compared). The floor then counts the longest chunk's call. The MP3 is made once and
kept in bench/results/. Writes bench/results/latency.json. Run: `make bench-latency`."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from bench._stack import RESULTS, Bench, bench_stack, write_result
from bench.fanout import PARTITIONS, partitions_held
from stt_common.db.models import Job, JobEvent, JobStatus, WebhookDelivery
from stt_common.s3 import chunk_audio_key
from stt_devstack.harness import ServiceProcess, wait_until
from stt_ingest import keys
from tests.fakes.openai_server import FakeOpenAIProcess
from tests.fakes.webhook_receiver import serve_receiver
from tests.fixtures.audio import ESPEAK_VOICE, ESPEAK_WPM, espeak_wav, varied_sentences


def env_list(name: str, default: str) -> list[float]:
    return [float(value) for value in os.environ.get(name, default).split(",") if value.strip()]


AUDIO_MINUTES = env_list("BENCH_LATENCY_AUDIO_MINUTES", "60")[0]
LATENCIES = env_list("BENCH_LATENCY_SECONDS", "2,10")
COUNTS = [int(count) for count in env_list("BENCH_LATENCY_COUNTS", "1,2,4,8,12,16")]
CHUNK_SECONDS = env_list("BENCH_LATENCY_CHUNK_SECONDS", "300")
PER_AUDIO_SECOND = env_list("BENCH_LATENCY_PER_AUDIO_SECOND", "0")[0]
TARGET = 1.3
STALL_SECONDS = 600


def speech_mp3(minutes: float) -> Path:
    """`minutes` of espeak sentences (about 20 distinct minutes, looped) as a 64 kbit/s MP3, cached."""
    path = RESULTS / f"latency-speech-{minutes:g}min.mp3"
    if path.exists():
        return path
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stt-bench-latency-") as tmp:
        wav, partial = Path(tmp) / "speech.wav", Path(tmp) / "speech.mp3"
        espeak_wav(
            wav, varied_sentences(280), gap_seconds=0.8, voice=ESPEAK_VOICE, words_per_minute=ESPEAK_WPM
        )
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(wav),
             "-t", f"{minutes * 60:g}", "-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3", str(partial)],
            check=True,
        )  # fmt: skip
        partial.replace(path)
    return path


def bare_decode_seconds(mp3: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(mp3), "-f", "null", "-"], check=True)
    return time.perf_counter() - started


async def wait_settled(transcribers: list[ServiceProcess]) -> float:
    """fanout.wait_for_settled_group, but members beyond the topic's partitions may hold none: every
    member has joined (logged an assignment, if empty), the holdings are disjoint and cover the topic,
    min(T, partitions) members hold some, and nothing moved for 3 s."""
    started = time.monotonic()
    last_change, last_holdings = started, None

    def settled() -> bool:
        nonlocal last_change, last_holdings
        holdings = [frozenset(partitions_held(t)) for t in transcribers]
        if holdings != last_holdings:
            last_change, last_holdings = time.monotonic(), holdings
        covered = set().union(*holdings)
        disjoint = sum(len(held) for held in holdings) == len(covered) == PARTITIONS
        holding = sum(1 for held in holdings if held) == min(len(transcribers), PARTITIONS)
        joined = all('"partitions assigned"' in t.log() for t in transcribers)
        return joined and disjoint and holding and time.monotonic() - last_change >= 3

    await wait_until(settled, timeout=STALL_SECONDS, what="consumer group settled", interval=0.5)
    return time.monotonic() - started - 3


def assignments(transcribers: list[ServiceProcess]) -> int:
    return sum(t.log().count('"partitions assigned"') for t in transcribers)


async def first_chunk_in_storage(bench: Bench, job_id: uuid.UUID) -> float:
    """When chunk 0's audio appeared in S3 (polled), as a Unix time."""
    while not await bench.store.exists(chunk_audio_key(job_id, 0)):
        await asyncio.sleep(0.1)
    return time.time()


async def run_job(  # type: ignore[no-untyped-def]
    bench: Bench,
    mp3: Path,
    fake,
    transcribers,
    key_id: uuid.UUID,
    hook: str,
    latency: float,
    chunk_seconds: float,
) -> dict[str, Any]:
    fake.control.reset()
    fake.control.configure(latency=latency, latency_per_audio_second=PER_AUDIO_SECOND)
    decode = bare_decode_seconds(mp3)
    moves = assignments(transcribers)
    job_id = await bench.jobs.submit(
        mp3, provider="openai", api_key_id=key_id, options={"chunk_seconds": chunk_seconds}
    )
    async with bench.sessions() as session:  # ingest stores the job's webhook; the harness does not
        await session.execute(update(Job).where(Job.id == job_id).values(webhook_url=hook))
        await session.commit()
    chunk_zero = asyncio.create_task(first_chunk_in_storage(bench, job_id))
    job = await bench.jobs.wait_terminal(job_id, timeout=STALL_SECONDS)
    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)

    async def delivered() -> WebhookDelivery | None:
        async with bench.sessions() as session:
            row = await session.scalar(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        return row if row is not None and row.delivered_at is not None else None

    delivery = await wait_until(delivered, timeout=60, what="webhook delivered", interval=0.2)
    async with bench.sessions() as session:
        events = (
            await session.execute(
                select(JobEvent.at, JobEvent.stage, JobEvent.to_status, JobEvent.detail)
                .where(JobEvent.job_id == job_id)
                .order_by(JobEvent.at, JobEvent.id)
            )
        ).all()
    requests = fake.control.requests()
    calls = sorted(request.received_at for request in requests)
    longest_call = latency + PER_AUDIO_SECOND * max(request.audio_seconds or 0.0 for request in requests)
    chunk_cut = await asyncio.wait_for(chunk_zero, 5)

    origin = events[0].at.timestamp()  # the harness's `submitted` event
    status_at = {to_status: at.timestamp() - origin for at, _, to_status, _ in events if to_status}
    done = sorted(
        at.timestamp() - origin for at, _, to, detail in events if not to and "chunk_index" in detail
    )
    chunking = next(detail for _, _, to, detail in events if to == JobStatus.TRANSCRIBING)
    chunks = job.chunks_total or 0
    wall = status_at[JobStatus.COMPLETED]
    merge = wall - status_at[JobStatus.MERGING]
    floor = decode + longest_call + merge
    predicted = decode + math.ceil(chunks / len(transcribers)) * longest_call + merge
    marks = {
        "chunking_start": status_at[JobStatus.CHUNKING],
        "first_chunk_in_s3": chunk_cut - origin,
        "chunking_end_chunks_announced": status_at[JobStatus.TRANSCRIBING],
        "first_provider_call": calls[0] - origin if calls else None,
        "first_chunk_transcribed": done[0] if done else None,
        "last_provider_call": calls[-1] - origin if calls else None,
        "last_chunk_transcribed_merge_start": status_at[JobStatus.MERGING],
        "merge_end_completed": wall,
        "notifier_recorded_webhook": delivery.created_at.timestamp() - origin,
        "webhook_delivered": delivery.delivered_at.timestamp() - origin,
    }
    return {
        "transcribers": len(transcribers),
        "latency_seconds": latency,
        "latency_per_audio_second": PER_AUDIO_SECOND,
        "chunk_seconds": chunk_seconds,
        "longest_call_seconds": round(longest_call, 2),
        "chunks": chunks,
        "audio_seconds": round(job.duration_seconds or 0, 1),
        "wall_seconds": round(wall, 2),
        "bare_decode_seconds": round(decode, 2),
        "merge_seconds": round(merge, 2),
        "floor_seconds": round(floor, 2),
        "predicted_seconds": round(predicted, 2),
        "wall_over_floor": round(wall / floor, 2),
        "wall_over_predicted": round(wall / predicted, 2),
        "rebalances_during_run": assignments(transcribers) - moves,
        "provider_calls": len(calls),
        "chunker_steps_seconds": {
            k: chunking.get(k)
            for k in (
                "download_seconds",
                "decode_seconds",
                "upload_tail_seconds",
                "first_chunk_ready_seconds",
            )
        },
        "timeline_seconds": {k: None if v is None else round(v, 2) for k, v in marks.items()},
    }


def print_table(runs: list[dict[str, Any]]) -> None:
    print(
        f"{'T':>3} {'lat s':>5} {'chunk':>5} {'chunks':>6} {'call':>5} {'wall s':>7} {'decode':>6}"
        f" {'merge':>6} {'floor':>6}"
        f" {'pred.':>6} {'w/floor':>7} {'w/pred':>6} {'rebal':>5}"
    )
    for r in runs:
        print(
            f"{r['transcribers']:>3} {r['latency_seconds']:>5g} {r['chunk_seconds']:>5g} {r['chunks']:>6}"
            f" {r['longest_call_seconds']:>5.1f} {r['wall_seconds']:>7.2f}"
            f" {r['bare_decode_seconds']:>6.2f} {r['merge_seconds']:>6.2f} {r['floor_seconds']:>6.2f}"
            f" {r['predicted_seconds']:>6.2f} {r['wall_over_floor']:>7.2f} {r['wall_over_predicted']:>6.2f}"
            f" {r['rebalances_during_run']:>5}"
        )


def print_timeline(run: dict[str, Any]) -> None:
    print(
        f"\nwhere the time went (T={run['transcribers']}, {run['latency_seconds']:g} s per chunk),"
        " seconds after submission:"
    )
    for mark, seconds in run["timeline_seconds"].items():
        print(f"  {mark.replace('_', ' '):<36} {'-' if seconds is None else f'{seconds:8.2f}'}")
    print(f"  chunker steps: {run['chunker_steps_seconds']}")


async def main() -> None:
    mp3 = speech_mp3(AUDIO_MINUTES)
    runs: list[dict[str, Any]] = []
    settles: dict[str, float] = {}
    async with bench_stack() as bench, serve_receiver("127.0.0.1") as receiver:
        with FakeOpenAIProcess(latency=LATENCIES[0]) as fake:
            bench.env.update(STT_OPENAI_BASE_URL=fake.base_url, STT_OPENAI_API_KEY="bench")
            key = await keys.create_key(
                bench.sessions, name="latency", tenant="bench", rate_limit_per_minute=0
            )
            hook = receiver.hook("/latency", secret=key.webhook_secret)
            stages = [
                bench.service("chunker", STT_LOG_LEVEL="INFO"),
                bench.service("merger", STT_LOG_LEVEL="INFO"),
                bench.service("notifier", STT_LOG_LEVEL="INFO", STT_WEBHOOK_ALLOW_NETWORKS="127.0.0.1/32"),
            ]
            await asyncio.gather(*(stage.ready() for stage in stages))
            for stage in stages:
                await wait_until(
                    lambda stage=stage: "partitions assigned" in stage.log(),  # type: ignore[misc]
                    timeout=120,
                    what=f"{stage.name} assigned",
                )
            transcribers: list[ServiceProcess] = []
            for count in sorted(COUNTS):
                added = [
                    bench.service("transcriber", STT_LOG_LEVEL="INFO", STT_COVERAGE_RETRIES="0")
                    for _ in range(count - len(transcribers))
                ]
                await asyncio.gather(*(t.ready(timeout=300) for t in added))
                transcribers += added
                settles[str(count)] = round(await wait_settled(transcribers), 1)
                for latency in LATENCIES:
                    for chunk_seconds in CHUNK_SECONDS:
                        run = await run_job(
                            bench, mp3, fake, transcribers, key.id, hook, latency, chunk_seconds
                        )
                        runs.append(run)
                        print_table([run])
    best = min(runs, key=lambda r: r["wall_over_floor"])
    at_scale = [r for r in runs if r["transcribers"] >= r["chunks"]]
    write_result(
        "latency",
        {
            "audio_mp3": mp3.name,
            "mp3_bytes": mp3.stat().st_size,
            "group_settle_seconds": settles,
            "target_wall_over_floor_at_t_ge_chunks": TARGET,
            "target_met": bool(at_scale) and all(r["wall_over_floor"] <= TARGET for r in at_scale),
            "runs": runs,
            "best": {k: best[k] for k in ("transcribers", "latency_seconds", "wall_over_floor")},
        },
    )
    print()
    print_table(runs)
    print_timeline(best)
    print(f"latency: best wall/floor = {best['wall_over_floor']:.2f} at T={best['transcribers']}")


if __name__ == "__main__":
    asyncio.run(main())
