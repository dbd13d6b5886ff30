"""The `stt` command against a real ingest process and the real pipeline: what a person at a terminal sees."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_devstack.demo import run_demo
from stt_devstack.harness import ServiceProcess, wait_until
from stt_ingest.keys import create_key
from tests.fixtures.audio import librivox_wavs, sine_wav
from tests.helpers import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def api(
    pipeline: dict[str, ServiceProcess],
    infra_env: dict[str, str],
    sessionmaker_: async_sessionmaker[AsyncSession],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[str, str]]:
    """(API URL, API key) of an ingest process in front of the module's pipeline."""
    port = free_port()
    env = {**os.environ, **infra_env, "STT_HTTP_PORT": str(port)}
    ingest = ServiceProcess("ingest", env, tmp_path_factory.mktemp("ingest")).start()
    base = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{base}/readyz")).is_success
        except httpx.HTTPError:
            return False

    try:
        await wait_until(ready, timeout=60, what="ingest ready")
        key = await create_key(sessionmaker_, name="cli", tenant="cli")
        yield base, key.api_key
    finally:
        ingest.kill(signal.SIGTERM)


async def stt(
    cwd: Path, *args: str, url: str | None = None, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m stt_cli ARGS` as a person would (no terminal: progress comes as lines)."""
    env = {k: v for k, v in os.environ.items() if k not in ("STT_API_URL", "STT_API_KEY")}
    if url:
        env["STT_API_URL"] = url
    if key:
        env["STT_API_KEY"] = key
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "stt_cli", *args],
        cwd=cwd,  # not the repository: no `.stack/env` to fall back on
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


async def test_submit_wait_follow_and_manage_a_job(api: tuple[str, str], tmp_path: Path) -> None:
    url, key = api
    audio, reference = librivox_wavs()[0]
    srt = tmp_path / "out.srt"

    done = await stt(
        tmp_path, "submit", str(audio), "--provider", "local", "--wait", "--interval", "0.2",
        "--format", "srt", "-o", str(srt), url=url, key=key,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith("uploading") and "100%" in line for line in lines), done.stderr
    job_id = next(line.split()[1] for line in lines if line.startswith("job "))
    # Off a terminal, one line per change: the last is the finished job with all its chunks.
    progress = [
        line
        for line in lines
        if line.split()[0] in ("PENDING", "UPLOADED", "CHUNKING", "TRANSCRIBING", "MERGING", "COMPLETED")
    ]
    assert progress, done.stderr
    assert progress[-1].startswith("COMPLETED"), done.stderr
    assert "1/1 chunks" in progress[-1], done.stderr
    assert len(progress) == len(set(progress)), "a line repeats only when something changed"
    text = srt.read_text()
    assert "-->" in text
    assert reference.split()[-1].lower() in text.lower()

    status = await stt(tmp_path, "status", job_id, url=url, key=key)
    assert status.returncode == 0
    assert f"{job_id}  COMPLETED  1/1 chunks" in status.stdout
    events = await stt(tmp_path, "events", job_id, url=url, key=key)
    assert "UPLOADED -> CHUNKING" in events.stdout
    assert "MERGING -> COMPLETED" in events.stdout
    listing = await stt(tmp_path, "list", "--limit", "5", url=url, key=key)
    assert job_id in listing.stdout
    again = await stt(tmp_path, "follow", job_id, "--format", "txt", url=url, key=key)
    assert again.returncode == 0
    assert reference.split()[-1].lower() in again.stdout.lower()

    refused = await stt(tmp_path, "cancel", job_id, url=url, key=key)
    assert refused.returncode == 3
    assert "HTTP 409" in refused.stderr
    assert "stt status JOB" in refused.stderr

    assert (await stt(tmp_path, "delete", job_id, url=url, key=key)).returncode == 0
    gone = await stt(tmp_path, "status", job_id, url=url, key=key)
    assert gone.returncode == 3
    assert "HTTP 404" in gone.stderr


async def test_a_job_that_fails_says_why_and_what_next(api: tuple[str, str], tmp_path: Path) -> None:
    url, key = api
    bogus = tmp_path / "song.mp3"  # an MP3 header over noise: accepted at the door, undecodable later
    bogus.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + os.urandom(50_000))
    failed = await stt(tmp_path, "submit", str(bogus), "--wait", "--interval", "0.2", url=url, key=key)
    assert failed.returncode == 1, failed.stderr
    assert "ended FAILED: invalid_audio" in failed.stderr
    # What fits this error: another file, not another try of the same bytes.
    assert "re-encoded file" in failed.stderr
    assert "retry" not in failed.stderr.replace("retrying would fail", "")
    job_id = failed.stderr.split("job ", 1)[1].split()[0]
    again = await stt(tmp_path, "retry", job_id, url=url, key=key)
    assert again.returncode == 3
    assert "HTTP 409" in again.stderr
    assert "job_not_retryable" in again.stderr
    assert failed.stdout == "", "no transcript for a failed job"


async def test_refusals_and_unreachable_servers_are_explained(api: tuple[str, str], tmp_path: Path) -> None:
    url, key = api
    renamed = tmp_path / "notes.wav"
    renamed.write_text("meeting notes, not audio\n" * 100)
    refused = await stt(tmp_path, "submit", str(renamed), url=url, key=key)
    assert refused.returncode == 3
    assert "HTTP 415" in refused.stderr
    assert "unsupported_media_type" in refused.stderr

    wrong_key = await stt(tmp_path, "list", url=url, key="stt_not-a-key")
    assert wrong_key.returncode == 3
    assert "HTTP 401" in wrong_key.stderr
    assert "--api-key" in wrong_key.stderr
    assert "stt_not-a-key" not in wrong_key.stderr

    nobody = await stt(tmp_path, "list", url=f"http://127.0.0.1:{free_port()}", key=key)
    assert nobody.returncode == 3
    assert "cannot reach the API" in nobody.stderr

    missing = await stt(tmp_path, "submit", str(tmp_path / "nope.wav"), url=url, key=key)
    assert missing.returncode == 2
    assert "no such file" in missing.stderr
    keyless = await stt(tmp_path, "list", url=url)
    assert keyless.returncode == 2
    assert "no API key" in keyless.stderr


async def test_providers_and_a_fallback_the_server_has_not_configured(
    api: tuple[str, str], tmp_path: Path
) -> None:
    url, key = api
    listing = await stt(tmp_path, "providers", url=url, key=key)
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert set(lines) == {"local", "openai", "gemini", "elevenlabs", "hispeech", "wavam"}
    assert "configured" in lines["local"]
    assert "(default)" in lines["local"]
    assert "not configured" in lines["wavam"]
    assert "estimated times" in lines["hispeech"]

    audio = tmp_path / "tone.wav"
    sine_wav(audio, 2.0)
    refused = await stt(tmp_path, "submit", str(audio), "--fallback", "wavam", url=url, key=key)
    assert refused.returncode == 3
    assert "HTTP 422" in refused.stderr
    assert "'wavam' is not configured on this deployment" in refused.stderr
    assert "configured: local" in refused.stderr

    too_short = await stt(tmp_path, "submit", str(audio), "--chunk-seconds", "10", url=url, key=key)
    assert too_short.returncode == 3
    assert "chunk_seconds" in too_short.stderr
    english_only = await stt(
        tmp_path, "submit", str(audio), "--task", "translate", "--model", "tiny.en", url=url, key=key
    )
    assert english_only.returncode == 3
    assert "HTTP 422" in english_only.stderr
    assert "'base'" in english_only.stderr  # the model that can translate


async def test_make_demo_transcribes_real_speech_through_the_api(
    api: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `make demo` runs once the stack is up (`python -m stt_devstack demo`), on a quarter of its
    recording (the same code; chunking and merging long speech are the pipeline tests' work)."""
    url, key = api
    code = await asyncio.to_thread(functools.partial(run_demo, url, key, tmp_path, rounds=4))
    out = capsys.readouterr().out
    assert code == 0, out
    rate = re.search(r"word error rate against the LibriVox reference: ([\d.]+)%", out)
    assert rate is not None, out
    assert float(rate[1]) < 15, out
    assert "--- transcript" in out
