"""`make demo`: real speech through the REST API and the whole pipeline, with progress on screen.

The recording is the LibriVox read speech shipped by Debian's pocketsphinx-testdata (public domain),
repeated to about 6.5 minutes so it spans two 5-minute chunks and exercises chunking and merging.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import wave
from pathlib import Path

import httpx

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
ROUNDS = 16
GAP_SECONDS = 0.7
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def build_recording(target: Path) -> tuple[Path, str, float]:
    """Concatenate the samples; returns (path, reference text, seconds). Reused when present."""
    order = (LIBRIVOX_DIR / "fileids").read_text().split()
    references: dict[str, str] = {}
    for line in (LIBRIVOX_DIR / "transcription").read_text().splitlines():
        match = re.match(r"^\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^)\s]+)\)\s*$", line)
        if match:
            references[match[2]] = match[1]
    reference = " ".join(references[file_id] for _ in range(ROUNDS) for file_id in order)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        with wave.open(str(target), "wb") as out:
            for round_ in range(ROUNDS):
                for file_id in order:
                    with wave.open(str(LIBRIVOX_DIR / f"{file_id}.wav"), "rb") as sample:
                        if round_ == 0 and file_id == order[0]:
                            out.setparams(sample.getparams())
                        out.writeframes(sample.readframes(sample.getnframes()))
                        gap_frames = int(GAP_SECONDS * sample.getframerate())
                        out.writeframes(b"\x00" * gap_frames * sample.getsampwidth())
    with wave.open(str(target), "rb") as done:
        seconds = done.getnframes() / done.getframerate()
    return target, reference, seconds


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else 0
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total} chunks"


async def run_demo(api_url: str, api_key: str, work_dir: Path, *, timeout_seconds: float = 900) -> int:
    audio, reference, seconds = build_recording(work_dir / "librivox-demo.wav")
    print(f"recording: {audio} ({seconds / 60:.1f} min of LibriVox read speech)")
    headers = {"X-API-Key": api_key}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=60) as client:
        with audio.open("rb") as handle:
            answer = await client.post(
                "/api/v1/transcribe",
                files={"file": (audio.name, handle, "audio/wav")},
                data={"provider": "local"},
            )
        if answer.status_code != 202:
            print(f"submission refused: {answer.status_code} {answer.text}", file=sys.stderr)
            return 1
        job_id = answer.json()["job_id"]
        print(f"job {job_id} accepted; following {api_url}/api/v1/jobs/{job_id}")
        started = time.monotonic()
        status, last_line = "", ""
        while time.monotonic() - started < timeout_seconds:
            job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            status = job["status"]
            progress = job.get("progress") or {}
            line = f"\r{status:<13} {_bar(progress.get('chunks_done', 0), progress.get('chunks_total') or 0)}"
            line += f"  {time.monotonic() - started:5.1f}s"
            if line != last_line:
                print(line, end="", flush=True)
                last_line = line
            if status in _TERMINAL:
                break
            await asyncio.sleep(0.5)
        print()
        if status != "COMPLETED":
            error = job.get("error") or {}
            print(f"job ended {status}: {error.get('code')}: {error.get('message')}", file=sys.stderr)
            return 1
        elapsed = time.monotonic() - started
        transcript = (await client.get(f"/api/v1/jobs/{job_id}/result", params={"format": "txt"})).text
        document = (await client.get(f"/api/v1/jobs/{job_id}/result", params={"format": "json"})).json()

    print("\n--- transcript " + "-" * 60)
    print(transcript.strip())
    print("-" * 75)
    print(
        f"{seconds:.0f} s of audio in {elapsed:.1f} s (real-time factor {seconds / elapsed:.1f}x), "
        f"{len(document['chunks'])} chunks, merge: "
        + ", ".join(d["method"] for d in document["quality"]["merge_decisions"])
    )
    print(f"word error rate against the LibriVox reference: {_wer(reference, document['text']):.1%}")
    print("result files:")
    for fmt in ("json", "txt", "srt", "vtt"):
        url = f"{api_url}/api/v1/jobs/{job_id}/result?format={fmt}"
        print(f"  {url}   (s3: jobs/{job_id}/result/transcript.{fmt})")
    return 0


def _wer(reference: str, hypothesis: str) -> float:
    """Word error rate by edit distance over normalised words (no extra dependency)."""

    def words(text: str) -> list[str]:
        return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).replace("mr ", "mister ").split()

    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / max(len(ref), 1)
