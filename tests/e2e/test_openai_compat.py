"""The OpenAI-compatible endpoints with the official `openai` SDK as the client, against the live stack:
ingest, chunker, transcriber and merger as real processes on the session's real servers.

Jobs go to the fake OpenAI vendor (`tests/fakes/openai_server.py`, in this process: the transcriber's
`openai` provider calls it) so they finish in a second or two; translation goes through the real
`local` provider and Whisper `base`, on Spanish speech synthesised by espeak-ng. A second ingest with
`STT_OPENAI_WAIT_SECONDS=1` answers past its wait. The README's curl example is run as written.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
import warnings
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Job, JobStatus
from stt_common.s3 import ObjectStore, chunk_result_key, result_key
from stt_devstack.harness import ServiceProcess, stop_services
from stt_ingest.keys import create_key
from tests.fakes.openai_server import FakeOpenAI
from tests.fixtures.audio import espeak_wav
from tests.helpers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RATE_WINDOW_SECONDS = 2


@dataclass
class Stack:
    url: str  # ingest, waiting up to 30 s
    short_url: str  # ingest, waiting 1 s
    vendor: FakeOpenAI
    sessionmaker: async_sessionmaker[AsyncSession]

    async def key(self, rate_limit: int = 0) -> tuple[uuid.UUID, str]:
        created = await create_key(
            self.sessionmaker, name="openai-sdk", tenant="e2e", rate_limit_per_minute=rate_limit
        )
        return created.id, created.api_key

    async def jobs(self, key_id: uuid.UUID) -> list[Job]:
        async with self.sessionmaker() as session:
            return list(
                await session.scalars(select(Job).where(Job.api_key_id == key_id).order_by(Job.created_at))
            )


@pytest.fixture(scope="module")
def vendor() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
async def stack(
    infra_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    vendor: FakeOpenAI,
    sessionmaker_: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Stack]:
    log_dir = tmp_path_factory.mktemp("openai-compat")
    env = {**os.environ, **infra_env, "STT_LOG_LEVEL": "INFO"}
    vendor_env = {"STT_OPENAI_API_KEY": "sk-vendor", "STT_OPENAI_BASE_URL": vendor.base_url}
    # `whisper-1` is the server's default provider: the fake vendor, so that jobs take a second.
    ingest_env = {**env, **vendor_env, "STT_DEFAULT_PROVIDER": "openai"}
    ports = free_port(), free_port()
    services = [
        ServiceProcess("chunker", env, log_dir),
        ServiceProcess("transcriber", {**env, **vendor_env, "STT_COVERAGE_RETRIES": "0"}, log_dir),
        ServiceProcess("merger", env, log_dir),
        ServiceProcess(
            "ingest",
            {
                **ingest_env,
                "STT_HTTP_PORT": str(ports[0]),
                "STT_OPENAI_WAIT_SECONDS": "30",
                "STT_RATE_LIMIT_WINDOW_SECONDS": str(RATE_WINDOW_SECONDS),
            },
            log_dir,
        ),
        ServiceProcess(
            "ingest", {**ingest_env, "STT_HTTP_PORT": str(ports[1]), "STT_OPENAI_WAIT_SECONDS": "1"}, log_dir
        ),
    ]
    try:
        for service in services:
            service.start()
        await asyncio.gather(*(service.ready() for service in services))
        yield Stack(
            url=f"http://127.0.0.1:{ports[0]}",
            short_url=f"http://127.0.0.1:{ports[1]}",
            vendor=vendor,
            sessionmaker=sessionmaker_,
        )
    finally:
        stop_services(services)


MakeClient = Callable[..., openai.AsyncOpenAI]


@pytest.fixture
async def client() -> AsyncIterator[MakeClient]:
    """`client(url, api_key, **options)`: an AsyncOpenAI for the ingest at `url`, closed after the test
    (an open keep-alive connection would hold ingest's graceful shutdown)."""
    made: list[openai.AsyncOpenAI] = []

    def make(url: str, api_key: str, **options: Any) -> openai.AsyncOpenAI:
        made.append(openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, **options))
        return made[-1]

    yield make
    for sdk in made:
        await sdk.close()


class CountingTransport(httpx2.AsyncBaseTransport):
    """The SDK's own transport, recording each attempt's `X-Stainless-Retry-Count`; with `drop_first`
    the first answer is read and then lost, as when a connection breaks before the client reads it."""

    def __init__(self, *, drop_first: bool = False) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.drop_first = drop_first
        self.attempts: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.attempts.append(request.headers.get("x-stainless-retry-count", ""))
        response = await self.inner.handle_async_request(request)
        if self.drop_first and len(self.attempts) == 1:
            await response.aread()
            await response.aclose()
            raise httpx2.ReadError("connection lost before the answer was read (test)", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def tone(path: Path, seconds: float) -> Path:
    """A loud square wave: speech to the transcriber's coverage check (the fake vendor ignores it)."""
    period = 80
    frame = b"".join(
        (12000 if i < period // 2 else -12000).to_bytes(2, "little", signed=True) for i in range(period)
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(frame * int(seconds * 16000 / period))
    return path


async def test_every_response_format(stack: Stack, client: MakeClient, tmp_path: Path) -> None:
    key_id, api_key = await stack.key()
    audio = tone(tmp_path / "meeting.wav", 2.0)
    sdk = client(stack.url, api_key)
    # Two jobs at once: word times and a prompt are other options, so another job.
    first, words = await asyncio.gather(
        sdk.audio.transcriptions.create(file=audio, model="whisper-1"),
        sdk.audio.transcriptions.create(
            file=audio,
            model="openai/whisper-1",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="en",
            prompt="A meeting.",
        ),
    )
    assert first.text == "w0 w1 w2 w3"  # the fake vendor: a word every 0.5 s
    assert first.usage is not None
    assert first.usage.type == "duration"
    assert words.words is not None
    assert [(w.word, w.start, w.end) for w in words.words] == [
        ("w0", 0.0, 0.4),
        ("w1", 0.5, 0.9),
        ("w2", 1.0, 1.4),
        ("w3", 1.5, 1.9),
    ]
    assert words.segments is not None
    prompted = [sent for sent in stack.vendor.requests() if sent.prompt == "A meeting."]
    assert [(sent.model, sent.language) for sent in prompted] == [("whisper-1", "en")]

    # The same file and fields with another response_format: answered from the first job.
    text = await sdk.audio.transcriptions.create(file=audio, model="whisper-1", response_format="text")
    assert text == "w0 w1 w2 w3\n"
    srt = await sdk.audio.transcriptions.create(file=audio, model="whisper-1", response_format="srt")
    assert re.match(r"1\n00:00:00,\d{3} --> 00:00:0\d,\d{3}\nw0 w1", srt), srt
    vtt = await sdk.audio.transcriptions.create(file=audio, model="whisper-1", response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.")
    verbose = await sdk.audio.transcriptions.create(
        file=audio, model="whisper-1", response_format="verbose_json"
    )
    assert (verbose.language, verbose.duration, verbose.text) == ("english", 2.0, "w0 w1 w2 w3")
    assert verbose.segments is not None
    assert [segment.text for segment in verbose.segments] == [" w0 w1 w2 w3"]
    assert verbose.words is None
    jobs = await stack.jobs(key_id)
    assert [(job.status, job.provider) for job in jobs] == [(JobStatus.COMPLETED, "openai")] * 2
    assert sorted(job.options["output"].get("word_timestamps", False) for job in jobs) == [False, True]


async def test_translation_of_spanish_speech_through_local_base(
    stack: Stack, client: MakeClient, store: ObjectStore, tmp_path: Path
) -> None:
    key_id, api_key = await stack.key()
    audio = tmp_path / "hola.wav"
    espeak_wav(audio, ["Hoy el tiempo es muy bueno y vamos a la playa con mis amigos."], voice="es")
    sdk = client(stack.url, api_key)
    with warnings.catch_warnings():
        # The SDK marks OpenAI's translations endpoint deprecated; it is the API this one mirrors.
        warnings.simplefilter("ignore", DeprecationWarning)
        translated = await sdk.audio.translations.create(
            file=audio, model="local/base", response_format="verbose_json"
        )
    text = translated.text.lower()
    english = {"today", "weather", "good", "beach", "friends"}
    assert len({word for word in english if word in text}) >= 3, translated.text
    assert not {"hoy", "tiempo", "playa", "amigos"} & set(re.findall(r"\w+", text)), translated.text
    assert translated.language == "english"
    [job] = await stack.jobs(key_id)
    assert (job.provider, job.model, job.options["task"]) == ("local", "base", "translate")
    chunk = (await store.get_bytes(chunk_result_key(job.id, 0))).decode()
    assert '"language": "en"' in chunk  # the transcript is English, whatever was spoken
    result = json.loads(await store.get_bytes(result_key(job.id)))
    assert (result["language"], result["language_probability"]) == ("en", None)  # the text's language


async def test_a_wrong_key_and_an_unknown_model_are_sdk_errors_without_a_job(
    stack: Stack, client: MakeClient, tmp_path: Path
) -> None:
    key_id, api_key = await stack.key()
    audio = tone(tmp_path / "a.wav", 1.0)
    # The synchronous client too: the same errors, the same SDK exceptions.
    with (
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="sk-not-a-key-of-ours") as wrong,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        await asyncio.to_thread(wrong.audio.transcriptions.create, file=audio, model="whisper-1")
    assert refused.value.code == "invalid_api_key"
    assert "not valid" in refused.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        await client(stack.url, api_key).audio.transcriptions.create(file=audio, model="gpt-4o-transcribe")
    assert (unknown.value.code, unknown.value.param) == ("model_not_found", "model")
    assert "local/base" in unknown.value.message
    assert await stack.jobs(key_id) == []


async def test_a_rate_limit_is_a_429_the_sdk_retries_without_a_second_job(
    stack: Stack, client: MakeClient, tmp_path: Path
) -> None:
    key_id, api_key = await stack.key(rate_limit=1)
    audio = tone(tmp_path / "b.wav", 1.0)
    # A refused request still counts against the limit: it takes this window's one submission.
    with pytest.raises(openai.BadRequestError):
        await client(stack.url, api_key, max_retries=0).audio.transcriptions.create(
            file=audio, model="nosuch"
        )
    with pytest.raises(openai.RateLimitError) as limited:
        await client(stack.url, api_key, max_retries=0).audio.transcriptions.create(
            file=audio, model="whisper-1"
        )
    assert limited.value.code == "rate_limited"
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= RATE_WINDOW_SECONDS
    assert await stack.jobs(key_id) == []

    # With its retries the SDK waits out Retry-After and gets in; nothing was created before.
    attempts = CountingTransport()
    patient = client(stack.url, api_key, max_retries=2, http_client=httpx2.AsyncClient(transport=attempts))
    answer = await patient.audio.transcriptions.create(file=audio, model="whisper-1")
    assert answer.text == "w0 w1"
    assert attempts.attempts == ["0", "1"]
    assert len(await stack.jobs(key_id)) == 1


async def test_past_the_wait_a_504_names_the_job_the_sdk_does_not_retry_and_asking_again_finds_it(
    stack: Stack, client: MakeClient, tmp_path: Path
) -> None:
    key_id, api_key = await stack.key()
    audio = tone(tmp_path / "slow.wav", 1.5)
    stack.vendor.configure(latency=3.0)
    try:
        attempts = CountingTransport()
        sdk = client(
            stack.short_url, api_key, max_retries=2, http_client=httpx2.AsyncClient(transport=attempts)
        )
        with pytest.raises(openai.APIStatusError) as still_running:
            await sdk.audio.transcriptions.create(file=audio, model="whisper-1")
        error = still_running.value
        assert error.status_code == 504
        assert attempts.attempts == ["0"], "x-should-retry: false, so the SDK did not send it again"
        [job] = await stack.jobs(key_id)
        location = error.response.headers["location"]
        assert location == f"{stack.short_url}/api/v1/jobs/{job.id}"
        assert error.code == "job_not_finished"
        assert str(job.id) in error.message
        assert "Send the same request again" in error.message

        # Sent again (to an ingest that waits longer): the same job, waited for, not a new one.
        again = await client(stack.url, api_key).audio.transcriptions.with_raw_response.create(
            file=audio, model="whisper-1"
        )
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"].endswith(f"/api/v1/jobs/{job.id}")
        assert again.parse().text == "w0 w1 w2"
        [done] = await stack.jobs(key_id)
        assert (done.id, done.status) == (job.id, JobStatus.COMPLETED)
    finally:
        stack.vendor.configure(latency=0.0)


async def test_an_sdk_retry_after_a_lost_answer_gets_the_same_job(
    stack: Stack, client: MakeClient, tmp_path: Path
) -> None:
    key_id, api_key = await stack.key()
    audio = tone(tmp_path / "c.wav", 1.0)
    attempts = CountingTransport(drop_first=True)
    sdk = client(stack.url, api_key, http_client=httpx2.AsyncClient(transport=attempts))
    answer = await sdk.audio.transcriptions.with_raw_response.create(file=audio, model="whisper-1")
    assert attempts.attempts == ["0", "1"]  # the SDK's own retry, with no idempotency key
    assert answer.headers["idempotent-replayed"] == "true"
    assert answer.parse().text == "w0 w1"
    assert len(await stack.jobs(key_id)) == 1


async def _run_readme_example(
    stack: Stack, tmp_path: Path, api_key: str, language: str, runner: list[str], audio: str
) -> str:
    """The section's first `language` code block, run in a folder holding a one-second `audio`;
    returns its output."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## OpenAI-compatible endpoint", 1)[1].split("\n## ", 1)[0]
    example = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert example is not None, f"the section has a {language} example"
    tone(tmp_path / audio, 1.0)
    done = await asyncio.to_thread(
        subprocess.run,
        [*runner, example.group(1)],
        cwd=tmp_path,
        env={**os.environ, "STT_API_URL": stack.url, "STT_API_KEY": api_key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_the_readme_curl_example_runs(stack: Stack, tmp_path: Path) -> None:
    key_id, api_key = await stack.key()
    out = await _run_readme_example(
        stack, tmp_path, api_key, "sh", ["bash", "-euo", "pipefail", "-c"], "interview.wav"
    )
    assert json.loads(out)["text"] == "w0 w1", out
    assert len(await stack.jobs(key_id)) == 1


async def test_the_readme_sdk_example_runs(stack: Stack, tmp_path: Path) -> None:
    _, api_key = await stack.key()
    out = await _run_readme_example(stack, tmp_path, api_key, "python", [sys.executable, "-c"], "speech.wav")
    language, *segments = out.splitlines()
    assert language.startswith("english ")
    assert segments, out
    assert "w0" in segments[0], out
