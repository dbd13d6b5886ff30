"""The chunker on a 60-minute MP3: wall time against a bare `ffmpeg -i in.mp3 -f null -` decode of the
same file (target <= 1.5x) and the chunker process's peak RSS (target < 200 MB).

Writes bench/results/chunker.json. Run: `make bench-chunker`."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from pathlib import Path

from sqlalchemy import text

from bench._stack import bench_stack, peak_rss_mb, write_result
from stt_common.db.models import JobStatus
from stt_devstack.harness import wait_until
from tests.fixtures.audio import ESPEAK_VOICE, ESPEAK_WPM, espeak_wav, to_format, varied_sentences


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

        chunker = bench.service("chunker", STT_LOG_LEVEL="INFO")
        await chunker.ready()
        # Ready means dependencies answer; wait until the group has given it the topic's partitions too.
        await wait_until(lambda: "partitions assigned" in chunker.log(), timeout=60, what="chunker assigned")
        assert chunker.proc is not None
        stop, child_peak = threading.Event(), [0.0]
        sampler = threading.Thread(target=children_peak_rss_mb, args=(chunker.proc.pid, stop, child_peak))
        sampler.start()
        started = time.perf_counter()
        job_id = await bench.jobs.submit(mp3)
        job = await bench.jobs.wait_status(job_id, JobStatus.TRANSCRIBING, timeout=600)
        chunker_seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
        async with bench.sessions() as session:
            detail = (
                await session.execute(
                    text("SELECT detail FROM job_events WHERE job_id = :id AND to_status = 'TRANSCRIBING'"),
                    {"id": job_id},
                )
            ).scalar_one()
        write_result(
            "chunker",
            {
                "audio_seconds": round(job.duration_seconds or 0, 1),
                "mp3_bytes": mp3.stat().st_size,
                "chunks": job.chunks_total,
                "ffmpeg_decode_seconds": round(ffmpeg_seconds, 2),
                "submit_to_chunked_seconds": round(chunker_seconds, 2),
                "chunker_handler_seconds": detail["chunking_seconds"],
                "chunker_steps_seconds": {k: v for k, v in detail.items() if k.endswith("_seconds")},
                "ratio_to_ffmpeg_decode": round(detail["chunking_seconds"] / ffmpeg_seconds, 2),
                "target_ratio": 1.5,
                "chunker_peak_rss_mb": round(peak_rss_mb(chunker.proc.pid), 1),
                "ffmpeg_child_peak_rss_mb": round(child_peak[0], 1),
                "target_peak_rss_mb": 200,
            },
        )


if __name__ == "__main__":
    asyncio.run(main())
