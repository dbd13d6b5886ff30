"""`make demo`: real speech through the REST API and the whole pipeline, with progress on screen.

The recording is the LibriVox read speech shipped by Debian's pocketsphinx-testdata (public domain),
repeated to about 6.5 minutes so it spans several chunks and exercises chunking and merging.
"""

from __future__ import annotations

import re
import sys
import time
import wave
from pathlib import Path

from stt_cli.progress import Progress

from stt_client import Client, SttError
from stt_devstack.wer import wer

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
ROUNDS = 16
GAP_SECONDS = 0.7


def build_recording(target: Path, rounds: int = ROUNDS) -> tuple[Path, str, float]:
    """Concatenate the samples; returns (path, reference text, seconds). Reused when present."""
    order = (LIBRIVOX_DIR / "fileids").read_text().split()
    references: dict[str, str] = {}
    for line in (LIBRIVOX_DIR / "transcription").read_text().splitlines():
        match = re.match(r"^\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^)\s]+)\)\s*$", line)
        if match:
            references[match[2]] = match[1]
    reference = " ".join(references[file_id] for _ in range(rounds) for file_id in order)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        with wave.open(str(target), "wb") as out:
            for round_ in range(rounds):
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


def run_demo(
    api_url: str, api_key: str, work_dir: Path, *, timeout_seconds: float = 900, rounds: int = ROUNDS
) -> int:
    """`rounds`: how many times the samples are repeated (16: about 6.5 minutes)."""
    audio, reference, seconds = build_recording(work_dir / f"librivox-demo-{rounds}.wav", rounds)
    print(f"recording: {audio} ({seconds / 60:.1f} min of LibriVox read speech)")
    progress = Progress(sys.stdout)
    try:
        with Client(api_url, api_key) as client:
            submitted = client.submit_file(audio, provider="local", on_upload=progress.upload)
            job_id = str(submitted["job_id"])
            progress.end()
            print(f"job {job_id} accepted; following {api_url}/api/v1/jobs/{job_id}")
            print(f"(the same from a shell: .venv/bin/stt follow {job_id})")
            started = time.monotonic()
            job = client.wait(job_id, on_update=progress.job, poll_interval=0.5, timeout=timeout_seconds)
            progress.end()
            if job["status"] != "COMPLETED":
                error = job["error"]
                reason = f"{error['code']}: {error.get('message')}" if error else "no error recorded"
                print(f"job ended {job['status']}: {reason}", file=sys.stderr)
                return 1
            elapsed = time.monotonic() - started
            transcript = client.result(job_id, "txt")
            document = client.result(job_id, "json")
    except SttError as error:
        progress.end()
        print(f"demo: {error}", file=sys.stderr)
        return 1

    print("\n--- transcript " + "-" * 60)
    print(transcript.strip())
    print("-" * 75)
    print(
        f"{seconds:.0f} s of audio in {elapsed:.1f} s (real-time factor {seconds / elapsed:.1f}x), "
        f"{len(document['chunks'])} chunks, merge: "
        + ", ".join(d["method"] for d in document["quality"]["merge_decisions"])
    )
    print(f"word error rate against the LibriVox reference: {wer(reference, document['text']):.1%}")
    print("result files:")
    for fmt in ("json", "txt", "srt", "vtt"):
        url = f"{api_url}/api/v1/jobs/{job_id}/result?format={fmt}"
        print(f"  {url}   (s3: jobs/{job_id}/result/transcript.{fmt})")
    return 0
