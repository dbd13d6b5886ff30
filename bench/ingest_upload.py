"""A 500 MiB upload through `POST /api/v1/transcribe` of a real ingest process, against a direct S3
multipart put of the same file (`ObjectStore.upload_file`) in the same run.

Prints and writes bench/results/ingest_upload.json: ingest's idle and peak RSS (VmRSS before, VmHWM
after; target peak < 150 MB), and the throughput of each path in MiB/s, with the ratio
ingest / direct (target >= 0.7). The two paths alternate for `ROUNDS` rounds; the figures are the
medians, every round is kept too. The file is a valid WAV header followed by noise, so the sniff
passes; the upload limit is raised above it for the run.
Run: `make bench-ingest-upload` (or `PYTHONPATH=. .venv/bin/python -m bench.ingest_upload`).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import struct
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from bench._stack import Bench, bench_stack, peak_rss_mb, write_result
from stt_common.s3 import original_key
from stt_devstack.harness import ServiceProcess, wait_until
from stt_devstack.procs import free_port
from stt_ingest import keys
from stt_ingest.settings import IngestSettings

MIB = 1024 * 1024
FILE_BYTES = 500 * MIB
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SEND_BLOCK = 1 * MIB
BOUNDARY = "ingestUploadBenchBoundary"
TARGET_PEAK_RSS_MB = 150
TARGET_RATIO = 0.7
INGEST_PART_BYTES = IngestSettings.model_fields["upload_part_bytes"].default


def make_wav(path: Path, size: int) -> None:
    """A WAV header (16 kHz mono 16-bit) whose data chunk is noise, exactly `size` bytes."""
    data = size - 44
    header = (
        b"RIFF" + struct.pack("<I", size - 8) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data" + struct.pack("<I", data)
    )  # fmt: skip
    noise = os.urandom(4 * MIB)
    with path.open("wb") as handle:
        handle.write(header)
        written = 0
        while written < data:
            block = noise[: min(len(noise), data - written)]
            handle.write(block)
            written += len(block)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def multipart_body(path: Path) -> AsyncIterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    with path.open("rb") as handle:
        while block := handle.read(SEND_BLOCK):
            yield block
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def start_ingest(bench: Bench, limit: int) -> tuple[ServiceProcess, str]:
    port = free_port()
    ingest = bench.service(
        "ingest",
        STT_HTTP_HOST="127.0.0.1",
        STT_HTTP_PORT=str(port),
        STT_MAX_UPLOAD_BYTES=str(limit),
    )
    base_url = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        assert ingest.proc is not None
        if ingest.proc.poll() is not None:
            raise AssertionError(f"ingest exited early:\n{ingest.log()[-3000:]}")
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(base_url + "/readyz", timeout=2)).is_success
        except httpx.HTTPError:
            return False

    await wait_until(ready, timeout=60, what="ingest ready")
    return ingest, base_url


async def upload_through_ingest(base_url: str, api_key: str, path: Path) -> tuple[float, uuid.UUID]:
    headers = {"X-API-Key": api_key, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(600, connect=10)) as client:
        started = time.perf_counter()
        response = await client.post("/api/v1/transcribe", headers=headers, content=multipart_body(path))
        elapsed = time.perf_counter() - started
    assert response.status_code == 202, (response.status_code, response.text[:500])
    return elapsed, uuid.UUID(response.json()["job_id"])


async def main() -> None:
    async with bench_stack() as bench:
        path = bench.work / "upload-500mib.wav"
        make_wav(path, FILE_BYTES)
        size = path.stat().st_size
        created = await keys.create_key(
            bench.sessions, name="bench upload", tenant="bench", rate_limit_per_minute=0
        )
        ingest, base_url = await start_ingest(bench, limit=FILE_BYTES + 64 * MIB)
        assert ingest.proc is not None
        pid = ingest.proc.pid
        await asyncio.sleep(1)
        idle_rss = rss_mb(pid)
        idle_peak = peak_rss_mb(pid)

        ingest_seconds: list[float] = []
        direct_seconds: list[float] = []
        peaks: list[float] = []
        for round_number in range(ROUNDS):
            key = f"bench/direct-{round_number}"
            started = time.perf_counter()
            await bench.store.upload_file(key, path)
            direct_seconds.append(time.perf_counter() - started)
            assert (await bench.store.head(key))["ContentLength"] == size
            await bench.store.delete(key)

            try:
                elapsed, job_id = await upload_through_ingest(base_url, created.api_key, path)
            except AssertionError:
                print(ingest.log()[-6000:])
                raise
            ingest_seconds.append(elapsed)
            peaks.append(peak_rss_mb(pid))
            assert (await bench.store.head(original_key(job_id)))["ContentLength"] == size
            await bench.store.delete(original_key(job_id))

        def mib_per_s(seconds: float) -> float:
            return size / MIB / seconds

        ingest_rate = statistics.median(mib_per_s(s) for s in ingest_seconds)
        direct_rate = statistics.median(mib_per_s(s) for s in direct_seconds)
        write_result(
            "ingest_upload",
            {
                "file_bytes": size,
                "rounds": ROUNDS,
                "ingest_part_bytes": int(os.environ.get("STT_UPLOAD_PART_BYTES", INGEST_PART_BYTES)),
                "direct_s3_part_bytes": bench.settings.s3_multipart_chunk_bytes,
                "ingest_idle_rss_mb": round(idle_rss, 1),
                "ingest_peak_rss_mb_before_uploads": round(idle_peak, 1),
                "ingest_peak_rss_mb": round(max(peaks), 1),
                "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
                "ingest_mib_per_s": round(ingest_rate, 1),
                "direct_s3_mib_per_s": round(direct_rate, 1),
                "ratio_ingest_to_direct": round(ingest_rate / direct_rate, 3),
                "target_ratio": TARGET_RATIO,
                "ingest_seconds_per_round": [round(s, 2) for s in ingest_seconds],
                "direct_s3_seconds_per_round": [round(s, 2) for s in direct_seconds],
                "peak_rss_mb_after_each_round": [round(p, 1) for p in peaks],
            },
        )


if __name__ == "__main__":
    asyncio.run(main())
