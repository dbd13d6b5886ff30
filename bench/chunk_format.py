"""Chunk format: 16 kHz PCM WAV (what the chunker writes) against FLAC (lossless, about half the bytes),
step by step on an hour of speech, as the pipeline would pay for each:

* cut: the chunker's work to turn the decoded hour into 12 chunk objects of 300 s (WAV: copy the
  frames behind a header; FLAC: one `ffmpeg -c:a flac` per chunk), CPU seconds;
* put: the 12 PUTs to the bench stack's S3 server, two at a time as the chunker does: wall time and
  the S3 server's CPU seconds (on a small machine it shares the cores with the chunker);
* get + decode: what the transcribers do before a provider call: download each chunk and have 16 kHz
  PCM samples (WAV: read them; FLAC: decode with ffmpeg), wall and CPU seconds.

The decoded hour is the latency bench's MP3 (bench/results/latency-speech-60min.mp3, made if missing).
Prints the table and writes bench/results/chunk_format.json. Run: `make bench-chunk-format`."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

from bench._stack import bench_stack, write_result
from bench.chunker import cpu_seconds, s3_server_pid
from bench.latency import speech_mp3
from stt_chunker.audio import wav_chunk_blocks

CHUNK_SECONDS = 300
PARALLEL_PUTS = 2  # as the chunker uploads


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cut(wav: Path, out: Path, fmt: str, duration: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    chunks = []
    start = 0.0
    while start < duration:
        end = min(start + CHUNK_SECONDS, duration)
        path = out / f"{len(chunks):04d}.{fmt}"
        if fmt == "wav":
            with path.open("wb") as handle:
                for block in wav_chunk_blocks(wav, start, end):
                    handle.write(block)
        else:
            subprocess.run(
                ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{start}", "-t", f"{end - start}",
                 "-i", str(wav), "-c:a", "flac", "-f", "flac", str(path)],
                check=True,
            )  # fmt: skip
        chunks.append(path)
        start = end
    return chunks


def to_pcm(path: Path, fmt: str) -> None:
    if fmt == "wav":
        with path.open("rb") as handle:
            while handle.read(1 << 20):
                pass
        return
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(path), "-f", "s16le", "-ac", "1",
         "-ar", "16000", str(path.with_suffix(".pcm"))],
        check=True,
    )  # fmt: skip


async def measure(bench: Any, wav: Path, fmt: str, duration: float, s3_pid: int, run: int) -> dict[str, Any]:
    work = bench.work / f"format-{run}-{fmt}"
    cpu = own_cpu() + children_cpu()
    started = time.perf_counter()
    chunks = await asyncio.to_thread(cut, wav, work / "cut", fmt, duration)
    cut_wall, cut_cpu = time.perf_counter() - started, own_cpu() + children_cpu() - cpu

    limiter = asyncio.Semaphore(PARALLEL_PUTS)

    async def put(path: Path) -> None:
        async with limiter:
            await bench.store.upload_file(f"bench/format/{fmt}/{path.name}", path)

    s3_before = cpu_seconds(s3_pid)[0]
    started = time.perf_counter()
    await asyncio.gather(*(put(path) for path in chunks))
    put_wall, put_s3_cpu = time.perf_counter() - started, cpu_seconds(s3_pid)[0] - s3_before

    got = work / "got"
    got.mkdir()
    cpu = own_cpu() + children_cpu()
    s3_before = cpu_seconds(s3_pid)[0]
    started = time.perf_counter()
    for path in chunks:
        local = got / path.name
        await bench.store.download_file(f"bench/format/{fmt}/{path.name}", local)
        await asyncio.to_thread(to_pcm, local, fmt)
    get_wall = time.perf_counter() - started
    get_cpu, get_s3_cpu = own_cpu() + children_cpu() - cpu, cpu_seconds(s3_pid)[0] - s3_before
    size = sum(path.stat().st_size for path in chunks)
    return {
        "format": fmt,
        "chunks": len(chunks),
        "megabytes": round(size / 1e6, 1),
        "cut_wall_seconds": round(cut_wall, 2),
        "cut_cpu_seconds": round(cut_cpu, 2),
        "put_wall_seconds": round(put_wall, 2),
        "put_s3_server_cpu_seconds": round(put_s3_cpu, 2),
        "get_decode_wall_seconds": round(get_wall, 2),
        "get_decode_cpu_seconds": round(get_cpu, 2),
        "get_s3_server_cpu_seconds": round(get_s3_cpu, 2),
        "total_cpu_seconds": round(cut_cpu + put_s3_cpu + get_cpu + get_s3_cpu, 2),
    }


async def main() -> None:
    mp3 = speech_mp3(60)
    async with bench_stack() as bench:
        wav = bench.work / "hour.wav"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(mp3), "-ac", "1", "-ar", "16000",
             "-c:a", "pcm_s16le", "-fflags", "+bitexact", "-map_metadata", "-1", str(wav)],
            check=True,
        )  # fmt: skip
        duration = (wav.stat().st_size - 44) / 32000
        s3_pid = s3_server_pid(bench.work)
        rows = [
            await measure(bench, wav, fmt, duration, s3_pid, run)
            for run, fmt in enumerate(("wav", "flac", "wav", "flac"))
        ]
    columns = list(rows[0])
    print("  ".join(f"{column:>14.14}" for column in columns))
    for row in rows:
        print("  ".join(f"{row[column]!s:>14.14}" for column in columns))
    write_result("chunk_format", {"audio_seconds": round(duration, 1), "runs": rows})


if __name__ == "__main__":
    asyncio.run(main())
