"""A job through the front door: REST upload to a real ingest process, the stages as real processes,
progress and timeline in the API, the transcript in every format."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_devstack.harness import ServiceProcess, wait_until
from stt_ingest.keys import create_key
from tests.fixtures.audio import concat_wavs, librivox_wavs
from tests.helpers import free_port

pytestmark = pytest.mark.slow


async def test_upload_progress_timeline_and_results(
    pipeline: dict[str, ServiceProcess],
    infra_env: dict[str, str],
    sessionmaker_: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {**os.environ, **infra_env, "STT_HTTP_PORT": str(port)}
    ingest = ServiceProcess("ingest", env, tmp_path).start()
    try:
        base = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{base}/readyz")).is_success
            except httpx.HTTPError:
                return False

        await wait_until(ready, timeout=60, what="ingest ready")
        key = await create_key(sessionmaker_, name="e2e", tenant="e2e")
        samples = librivox_wavs()
        audio = tmp_path / "speech.wav"
        concat_wavs([p for p, _ in samples], audio, gap_seconds=0.5)

        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key.api_key}, timeout=30) as client:
            with audio.open("rb") as handle:
                answer = await client.post(
                    "/api/v1/transcribe",
                    files={"file": ("speech.wav", handle, "audio/wav")},
                    data={"provider": "local"},
                )
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job_id"]
            seen: set[str] = set()

            async def finished() -> dict | None:  # type: ignore[type-arg]
                job: dict = (await client.get(f"/api/v1/jobs/{job_id}")).json()  # type: ignore[type-arg]
                seen.add(job["status"])
                return job if job["status"] in {"COMPLETED", "FAILED", "CANCELLED"} else None

            job = await wait_until(finished, timeout=180, what="job finished", interval=0.2)
            assert job["status"] == "COMPLETED", job
            assert job["progress"] == {"chunks_total": 1, "chunks_done": 1}
            events = (await client.get(f"/api/v1/jobs/{job_id}/events")).json()
            items = events["items"]
            transitions = [(e.get("from_status"), e.get("to_status")) for e in items if e.get("to_status")]
            assert transitions == [
                (None, "PENDING"),
                ("PENDING", "UPLOADED"),
                ("UPLOADED", "CHUNKING"),
                ("CHUNKING", "TRANSCRIBING"),
                ("TRANSCRIBING", "MERGING"),
                ("MERGING", "COMPLETED"),
            ]
            stages = {e["stage"] for e in items}
            assert {"ingest", "chunker", "transcriber", "merger"} <= stages
            text = (await client.get(f"/api/v1/jobs/{job_id}/result", params={"format": "txt"})).text
            assert "dashwood" in text.lower()
            for fmt in ("json", "srt", "vtt"):
                assert (await client.get(f"/api/v1/jobs/{job_id}/result", params={"format": fmt})).is_success
    finally:
        ingest.kill(signal.SIGTERM)
