"""A real `python -m stt_ingest serve` process over real sockets: large streamed uploads with bounded
memory, clients that lie in Content-Length or vanish, the size limit on a chunked body, JSON logs
with the request id, and the key-management CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Job
from stt_common.s3 import ObjectStore, original_key
from stt_ingest.main import main
from tests.helpers import wait_until
from tests.integration.ingest.conftest import ROOT, IngestProcess, Key, run_ingest_process
from tests.integration.ingest.media import SAMPLES

pytestmark = pytest.mark.timeout(180)

LIMIT = 48 * 1024 * 1024
BOUNDARY = "streamingTestBoundary"


@pytest.fixture(scope="module")
def ingest(infra_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestProcess]:
    with run_ingest_process(
        infra_env,
        tmp_path_factory.mktemp("ingest"),
        STT_MAX_UPLOAD_BYTES=str(LIMIT),
        STT_UPLOAD_IDLE_TIMEOUT_SECONDS="3",
        STT_LOG_LEVEL="INFO",
    ) as process:
        yield process


def cli(infra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **infra_env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "stt_ingest", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def cli_key(infra_env: dict[str, str]) -> Key:
    """A key made the way an operator makes one: with the CLI."""
    done = cli(
        infra_env, "create", "--name", "streaming tests", "--tenant", "tests", "--rate-limit", "0", "--json"
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["api_key"].startswith("stt_")
    assert created["webhook_secret"].startswith("whsec_")
    return Key(id=uuid.UUID(created["id"]), plaintext=created["api_key"])


def part_head(filename: str = "big.wav") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()


TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def wav_header(data_size: int) -> bytes:
    import struct

    return (
        b"RIFF" + struct.pack("<I", data_size + 36) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data" + struct.pack("<I", data_size)
    )  # fmt: skip


async def body_stream(size: int) -> AsyncIterator[bytes]:
    yield part_head()
    yield wav_header(size - 44)
    block = bytes(range(256)) * 1024  # 256 KiB
    sent = 44
    while sent < size:
        chunk = block[: min(len(block), size - sent)]
        sent += len(chunk)
        yield chunk
    yield TAIL


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def jobs_of(sessionmaker_: async_sessionmaker[AsyncSession], key: Key) -> int:
    async with sessionmaker_() as session:
        return int(
            await session.scalar(select(func.count()).select_from(Job).where(Job.api_key_id == key.id)) or 0
        )


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP response (head and Content-Length body), or whatever came before the server closed."""
    data = b""
    while True:
        block = await asyncio.wait_for(reader.read(65536), 15)
        data += block
        head, sep, body = data.partition(b"\r\n\r\n")
        if not block:
            return data
        if sep:
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            if len(body) >= length:
                return data


async def raw_request(ingest: IngestProcess, head: bytes, body: bytes, *, close_write: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", ingest.port)
    writer.write(head + body)
    await writer.drain()
    if close_write:
        writer.write_eof()
    try:
        return await read_response(reader)
    finally:
        writer.close()


def request_head(key: Key, content_length: int | None, *, chunked: bool = False) -> bytes:
    lines = [
        "POST /api/v1/transcribe HTTP/1.1",
        "Host: 127.0.0.1",
        f"X-API-Key: {key.plaintext}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
    ]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_large_upload_streams_through_with_bounded_memory(
    ingest: IngestProcess, cli_key: Key, store: ObjectStore
) -> None:
    """Memory is bounded by the S3 part size, not the file: after a first multi-part upload has
    set the high-water mark, an upload twice as large does not raise it."""
    headers = {**cli_key.headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with httpx.AsyncClient(base_url=ingest.base_url, timeout=60) as client:
        start = peak_rss_kib(ingest.proc.pid)
        warm = await client.post("/api/v1/transcribe", headers=headers, content=body_stream(20 * 1024 * 1024))
        assert warm.status_code == 202, warm.text
        after_warm = peak_rss_kib(ingest.proc.pid)
        size = 40 * 1024 * 1024
        response = await client.post("/api/v1/transcribe", headers=headers, content=body_stream(size))
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["job_id"])
    assert (await store.head(original_key(job_id)))["ContentLength"] == size
    warm_growth, growth = (after_warm - start) / 1024, (peak_rss_kib(ingest.proc.pid) - after_warm) / 1024
    assert warm_growth < 64, f"a 20 MiB upload raised peak RSS by {warm_growth:.0f} MiB"
    assert growth < 12, f"a 40 MiB upload raised peak RSS by a further {growth:.0f} MiB"


async def test_content_length_shorter_than_the_body(
    ingest: IngestProcess, cli_key: Key, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> None:
    """The server reads exactly Content-Length bytes: the form is then truncated (our 400), and the
    surplus is an invalid next request (uvicorn's 400, which may win the race to the socket)."""
    before = set(await store.list_keys("jobs/"))
    body = part_head("a.wav") + SAMPLES["wav"] + TAIL
    answer = await raw_request(ingest, request_head(cli_key, len(body) - 40), body)
    assert b" 400 " in answer.split(b"\r\n", 1)[0], answer[:300]

    async def cleaned_up() -> bool:
        return await jobs_of(sessionmaker_, cli_key) == 2 and set(await store.list_keys("jobs/")) == before

    await wait_until(cleaned_up, timeout=10, what="the truncated upload leaves no job and no object")


async def test_content_length_longer_than_the_body_then_the_client_goes(
    ingest: IngestProcess, cli_key: Key, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> None:
    partial = part_head("a.wav") + SAMPLES["wav"][:2000]
    before = set(await store.list_keys("jobs/"))
    answer = await raw_request(
        ingest, request_head(cli_key, len(partial) + 100_000), partial, close_write=True
    )
    assert answer == b"" or b" 400 " in answer.split(b"\r\n", 1)[0]

    async def cleaned_up() -> bool:
        return await jobs_of(sessionmaker_, cli_key) == 2 and set(await store.list_keys("jobs/")) == before

    await wait_until(cleaned_up, timeout=10, what="the abandoned upload's job and object are removed")


async def test_a_chunked_body_over_the_limit_is_cut_off(
    ingest: IngestProcess, cli_key: Key, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> None:
    before = set(await store.list_keys("jobs/"))
    async with httpx.AsyncClient(base_url=ingest.base_url, timeout=60) as client:
        try:
            response = await client.post(
                "/api/v1/transcribe",
                headers={**cli_key.headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                content=body_stream(LIMIT + 1),
            )
        except httpx.TransportError:
            pytest.fail("the server should answer 413 before the client finishes sending")
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    assert await jobs_of(sessionmaker_, cli_key) == 2
    assert set(await store.list_keys("jobs/")) == before


async def test_a_declared_oversize_body_is_refused_before_it_is_sent(
    ingest: IngestProcess, cli_key: Key
) -> None:
    answer = await raw_request(ingest, request_head(cli_key, LIMIT * 2), b"")
    assert b" 413 " in answer.split(b"\r\n", 1)[0]
    assert b"application/problem+json" in answer


async def test_a_silent_client_times_out(
    ingest: IngestProcess, cli_key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    partial = part_head("a.wav") + SAMPLES["wav"][:1000]
    reader, writer = await asyncio.open_connection("127.0.0.1", ingest.port)
    writer.write(request_head(cli_key, len(partial) + 5000) + partial)
    await writer.drain()
    answer = await read_response(reader)  # the idle timeout is 3 s in this process
    writer.close()
    assert b" 408 " in answer.split(b"\r\n", 1)[0]
    assert b"upload_timeout" in answer
    assert await jobs_of(sessionmaker_, cli_key) == 2


async def test_logs_are_json_with_the_request_id(ingest: IngestProcess, cli_key: Key) -> None:
    async with httpx.AsyncClient(base_url=ingest.base_url) as client:
        response = await client.post(
            "/api/v1/transcribe",
            headers={**cli_key.headers, "X-Request-ID": "log-trace-42"},
            files={"file": ("a.wav", SAMPLES["wav"], "audio/wav")},
        )
    assert response.status_code == 202
    job_id = response.json()["job_id"]

    def lines() -> list[dict[str, object]]:
        parsed = []
        for line in ingest.log_lines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("request_id") == "log-trace-42":
                    parsed.append(record)
        return parsed

    records = await wait_until(lambda: len(lines()) >= 2 and lines(), timeout=5, what="request log lines")
    assert {record["event"] for record in records} >= {"upload stored", "request"}
    assert any(record.get("job_id") == job_id for record in records)
    assert all(record["service"] == "ingest" for record in records)


def test_key_cli_lists_and_revokes(
    infra_env: dict[str, str],
    ingest: IngestProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same CLI, called in-process (`main(argv)`) to save the interpreter start-ups."""
    for name, value in infra_env.items():
        monkeypatch.setenv(name, value)
    # main() configures logging for a process; here it would point structlog at pytest's capture.
    monkeypatch.setattr("stt_ingest.main.configure_logging", lambda *args, **kwargs: None)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["keys", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = run("create", "--name", "to revoke", "--tenant", "t2", "--json")
    assert code == 0
    created = json.loads(out)
    code, out, err = run("create", "--name", "human", "--tenant", "t2", "--rate-limit", "5")
    assert code == 0
    assert "api_key: stt_" in out
    assert "rate_limit_per_minute: 5" in out
    assert "not shown again" in err
    code, out, _ = run("list", "--json")
    listing = json.loads(out)
    row = next(item for item in listing if item["id"] == created["id"])
    assert row["revoked_at"] is None
    assert row["prefix"] == created["prefix"]
    assert created["api_key"] not in out
    assert created["webhook_secret"] not in out

    headers = {"X-API-Key": created["api_key"]}
    assert httpx.get(ingest.base_url + "/api/v1/jobs", headers=headers).status_code == 200
    code, out, _ = run("revoke", created["prefix"])
    assert code == 0
    assert created["id"] in out
    assert httpx.get(ingest.base_url + "/api/v1/jobs", headers=headers).status_code == 401
    code, _, err = run("revoke", created["id"])
    assert code == 1
    assert "no active key" in err
    code, out, _ = run("list")
    line = f"{created['id']}  {created['prefix']}  to revoke  tenant=t2  limit=default  max_audio=default"
    assert f"{line}  revoked" in out
    # A key for long recordings: its own limit on audio length (the chunker's default is 8 h).
    code, out, _ = run("create", "--name", "archive", "--tenant", "t2", "--max-audio-hours", "24", "--json")
    assert code == 0
    assert json.loads(out)["max_audio_seconds"] == 24 * 3600
    code, out, _ = run("list")
    assert "archive  tenant=t2  limit=default  max_audio=24h  active" in out


def test_key_cli_rotates_the_webhook_secret(
    infra_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import base64

    for name, value in infra_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("stt_ingest.main.configure_logging", lambda *args, **kwargs: None)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["keys", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = run("create", "--name", "rotating", "--tenant", "t3", "--json")
    created = json.loads(out)
    code, out, err = run("rotate-webhook-secret", created["prefix"])
    assert code == 0
    secret = out.split("webhook_secret: ")[1].strip()
    assert secret != created["webhook_secret"]
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32  # Standard Webhooks form
    assert "not shown again" in err
    code, out, _ = run("list", "--json")
    assert secret not in out
    run("revoke", created["id"])
    code, _, err = run("rotate-webhook-secret", created["id"])
    assert code == 1
    assert "no active key" in err
