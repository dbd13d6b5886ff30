"""The chunker on a 60-minute MP3: wall time against what it cannot avoid, a bare
`ffmpeg -i in.mp3 -f null -` decode of the same file plus a direct S3 put of the same bytes (the
decoded WAV as one object; target wall <= 1.2x their sum), the time to its first `stt.chunks.ready`
against ffmpeg decoding the first chunk's audio alone (target <= that + 1 s), and the chunker
process's peak RSS (target < 200 MB).

The same job runs three times; each run records the handler's steps (download, decode while planning
and uploading, then the chunks left when ffmpeg exits) and the CPU seconds of the chunker, its ffmpeg
and the S3 server, which on a small machine competes with them for the same cores.

Writes bench/results/chunker.json. Run: `make bench-chunker`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path

from sqlalchemy import text

from bench._stack import bench_stack, peak_rss_mb, write_result
from stt_chunker.settings import ChunkerSettings
from stt_common.db.models import JobStatus
from stt_devstack.harness import wait_until
from tests.fixtures.audio import ESPEAK_VOICE, ESPEAK_WPM, espeak_wav, to_format, varied_sentences

RUNS = 3
STEPS = ("download_seconds", "decode_seconds", "upload_tail_seconds", "first_chunk_ready_seconds")
# What the planner needs decoded before it may cut chunk 0 (the chunker's defaults): the chunk, half
# the search window and half the overlap.
_DEFAULTS = ChunkerSettings()
FIRST_CHUNK_AUDIO_SECONDS = (
    _DEFAULTS.chunk_seconds + _DEFAULTS.chunk_search_window_seconds / 2 + _DEFAULTS.chunk_overlap_seconds / 2
)


def children_peak_rss_mb(pid: int, stop: threading.Event, peak: list[float]) -> None:
    """Sample the RSS of the chunker's child processes (ffmpeg) while it works."""
    while not stop.is_set():
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            for child in task.read_text().split():
                try:
                    status = Path(f"/proc/{child}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        peak[0] = max(peak[0], int(line.split()[1]) / 1024)
        time.sleep(0.05)


async def main() -> None:
    async with bench_stack() as bench:
        wav = bench.work / "hour.wav"
        sentences = varied_sentences(280)
        espeak_wav(wav, sentences * 3, gap_seconds=0.8, voice=ESPEAK_VOICE, words_per_minute=ESPEAK_WPM)
        mp3 = to_format(wav, bench.work / "hour.mp3", "mp3")
        wav.unlink()

        started = time.perf_counter()
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(mp3), "-f", "null", "-"], check=True)
        ffmpeg_seconds = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-i",
                str(mp3),
                "-t",
                str(FIRST_CHUNK_AUDIO_SECONDS),
                "-f",
                "null",
                "-",
            ],
            check=True,
        )
        first_chunk_decode_seconds = time.perf_counter() - started
        decoded = bench.work / "decoded.wav"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(mp3), "-ac", "1", "-ar", "16000", str(decoded)], check=True
        )
        started = time.perf_counter()
        await bench.store.upload_file("bench/direct-put.wav", decoded)
        direct_put_seconds = time.perf_counter() - started
        decoded.unlink()

        chunker = bench.service("chunker", STT_LOG_LEVEL="INFO")
        await chunker.ready()
        # Ready means dependencies answer; wait until the group has given it the topic's partitions too.
        await wait_until(lambda: "partitions assigned" in chunker.log(), timeout=60, what="chunker assigned")
        assert chunker.proc is not None
        s3_server = s3_server_pid(bench.work)
        runs = []
        stop, child_peak = threading.Event(), [0.0]
        sampler = threading.Thread(target=children_peak_rss_mb, args=(chunker.proc.pid, stop, child_peak))
        sampler.start()
        for _ in range(RUNS):
            cpu_before = (*cpu_seconds(chunker.proc.pid), cpu_seconds(s3_server)[0])
            started = time.perf_counter()
            job_id = await bench.jobs.submit(mp3)
            job = await bench.jobs.wait_status(job_id, JobStatus.TRANSCRIBING, timeout=600)
            chunker_seconds = time.perf_counter() - started
            cpu_after = (*cpu_seconds(chunker.proc.pid), cpu_seconds(s3_server)[0])
            cpu = dict(
                zip(
                    ("chunker", "ffmpeg", "s3_server"),
                    (round(after - before, 2) for after, before in zip(cpu_after, cpu_before, strict=True)),
                    strict=True,
                )
            )
            async with bench.sessions() as session:
                detail = (
                    await session.execute(
                        text(
                            "SELECT detail FROM job_events WHERE job_id = :id AND to_status = 'TRANSCRIBING'"
                        ),
                        {"id": job_id},
                    )
                ).scalar_one()
            runs.append(
                {
                    "submit_to_chunked_seconds": round(chunker_seconds, 2),
                    "chunker_handler_seconds": detail["chunking_seconds"],
                    "steps_seconds": {k: detail[k] for k in STEPS if k in detail},
                    "cpu_seconds": cpu,
                }
            )
        stop.set()
        sampler.join()
        best = min(runs, key=lambda run: run["chunker_handler_seconds"])
        handler_seconds = sorted(run["chunker_handler_seconds"] for run in runs)
        write_result(
            "chunker",
            {
                "audio_seconds": round(job.duration_seconds or 0, 1),
                "mp3_bytes": mp3.stat().st_size,
                "chunks": job.chunks_total,
                "ffmpeg_decode_seconds": round(ffmpeg_seconds, 2),
                "chunker_handler_seconds_median": handler_seconds[len(handler_seconds) // 2],
                "ratio_to_ffmpeg_decode_median": round(
                    handler_seconds[len(handler_seconds) // 2] / ffmpeg_seconds, 2
                ),
                "ratio_to_ffmpeg_decode_best": round(best["chunker_handler_seconds"] / ffmpeg_seconds, 2),
                "direct_s3_put_seconds": round(direct_put_seconds, 2),
                "ratio_to_decode_plus_put_median": round(
                    handler_seconds[len(handler_seconds) // 2] / (ffmpeg_seconds + direct_put_seconds), 2
                ),
                "target_ratio_to_decode_plus_put": 1.2,
                "first_chunk_decode_seconds": round(first_chunk_decode_seconds, 2),
                "first_chunk_ready_seconds_median": sorted(
                    run["steps_seconds"].get("first_chunk_ready_seconds", 0) for run in runs
                )[len(runs) // 2],
                "target_first_chunk_ready_seconds": round(first_chunk_decode_seconds + 1, 2),
                "runs": runs,
                "chunker_peak_rss_mb": round(peak_rss_mb(chunker.proc.pid), 1),
                "ffmpeg_child_peak_rss_mb": round(child_peak[0], 1),
                "target_peak_rss_mb": 200,
            },
        )


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own CPU seconds, its reaped children's), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def s3_server_pid(work: Path) -> int:
    """The bench stack's SeaweedFS: on a 2-core machine its CPU competes with the chunker's."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"weed") and any(str(work).encode() in arg for arg in argv):
            return int(entry.name)
    raise RuntimeError("the bench stack's SeaweedFS process was not found")


if __name__ == "__main__":
    asyncio.run(main())
