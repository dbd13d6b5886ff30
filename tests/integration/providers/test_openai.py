"""The `openai` provider with the real `openai` client against the fake OpenAI server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from stt_common.errors import (
    AuthError,
    ErrorCode,
    InvalidAudioError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitedError,
    SttError,
    classify,
    is_transient,
)
from stt_common.providers.base import ProviderRequest
from stt_common.providers.languages import normalise_language
from stt_common.transcript import Segment
from stt_transcriber.providers.openai import (
    OpenAIProvider,
    OpenAIRequestError,
    parse_retry_after,
)
from stt_transcriber.providers.vendor import context_prompt
from tests.fakes.openai_server import Failure, FakeOpenAI, FakeOpenAIProcess
from tests.fixtures.audio import sine_wav
from tests.integration.providers.conftest import assert_no_key

API_KEY = "sk-test-0123456789abcdefSECRET"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake: FakeOpenAI) -> None:
    fake.reset()


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    p = OpenAIProvider(api_key=API_KEY, base_url=fake.base_url, model="whisper-1", timeout=5.0)
    yield p
    await p.aclose()


# ---------------------------------------------------------------------------------------- success


async def test_verbose_json_segments_and_words(
    fake: FakeOpenAI, provider: OpenAIProvider, audio: Path
) -> None:
    result = await provider.transcribe(audio, ProviderRequest())

    assert result.provider == "openai"
    assert result.model == "whisper-1"
    assert result.language == "en"  # "english" in verbose_json, as an ISO code here
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 5.0), (5.0, 10.0), (10.0, 12.0)]
    assert result.segments[0].text == "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    assert result.text.split() == [f"w{i}" for i in range(24)]
    words = [w for s in result.segments for w in (s.words or [])]
    assert [w.text for w in words] == [f"w{i}" for i in range(24)]
    assert words[1].start == pytest.approx(0.5)
    assert words[1].end == pytest.approx(0.9)
    for segment in result.segments:
        assert segment.words
        assert all(segment.start <= w.start <= w.end <= segment.end for w in segment.words)

    [req] = fake.requests()
    assert req.model == "whisper-1"
    assert req.response_format == "verbose_json"
    assert sorted(req.timestamp_granularities) == ["segment", "word"]
    assert req.api_key == API_KEY
    assert req.filename == "chunk-0007.wav"
    assert req.content_type == "audio/wav"
    assert req.file_size == audio.stat().st_size
    assert req.audio_seconds == pytest.approx(12.0)
    assert req.language is None
    assert req.prompt is None
    assert req.status == 200


async def test_prompt_context_language_and_model_override(
    fake: FakeOpenAI, provider: OpenAIProvider, short_audio: Path
) -> None:
    context = [
        Segment(start=0, end=1, text="x" * 150),
        Segment(start=1, end=2, text="Kafka and Armenian names."),
    ]
    request = ProviderRequest(
        language="hy-AM",
        model="Systran/faster-whisper-small",
        prompt="Glossary: Yerevan.",
        context_segments=context,
    )
    result = await provider.transcribe(short_audio, request)

    [req] = fake.requests()
    assert req.language == "hy"
    assert req.model == "Systran/faster-whisper-small"
    assert req.response_format == "verbose_json"
    assert req.prompt is not None
    assert req.prompt.startswith("Glossary: Yerevan. ")
    assert req.prompt.endswith("Kafka and Armenian names.")
    assert len(req.prompt) <= len("Glossary: Yerevan. ") + 200
    assert result.model == "Systran/faster-whisper-small"
    assert result.language == "hy"  # the fake answers "armenian"


def test_prompt_and_language_helpers() -> None:
    assert context_prompt(ProviderRequest()) is None
    long = [Segment(start=0, end=1, text="alpha " * 100)]
    tail = context_prompt(ProviderRequest(context_segments=long))
    assert tail is not None
    assert len(tail) <= 200
    assert tail.startswith("alpha")
    assert normalise_language("en_GB") == "en"
    assert normalise_language("Armenian") == "hy"
    assert normalise_language(" ") is None


async def test_gpt_4o_transcribe_json_gives_one_segment(
    fake: FakeOpenAI, provider: OpenAIProvider, audio: Path
) -> None:
    result = await provider.transcribe(audio, ProviderRequest(model="gpt-4o-transcribe", language="en"))

    [req] = fake.requests()
    assert req.response_format == "json"
    assert req.timestamp_granularities == []
    assert req.status == 200
    [segment] = result.segments
    assert segment.start == 0.0
    assert segment.end == pytest.approx(12.0)
    assert segment.words is None
    assert segment.text.split()[:2] == ["w0", "w1"]
    assert result.language == "en"
    assert result.model == "gpt-4o-transcribe"


async def test_diarize_model_gives_speakers(fake: FakeOpenAI, provider: OpenAIProvider, audio: Path) -> None:
    result = await provider.transcribe(
        audio, ProviderRequest(model="gpt-4o-transcribe-diarize", prompt="ignored by this model")
    )
    [req] = fake.requests()
    assert req.response_format == "diarized_json"
    assert req.chunking_strategy == "auto"
    assert req.prompt is None
    assert [s.speaker for s in result.segments] == ["A", "B", "A"]
    assert result.segments[-1].end == pytest.approx(12.0)


async def test_custom_script_and_empty_transcript(
    fake: FakeOpenAI, provider: OpenAIProvider, audio: Path
) -> None:
    fake.transcript_for = lambda duration: [
        (0.0, 2.0, "Hello there."),
        (3.0, duration + 5, "General Kenobi."),
    ]
    result = await provider.transcribe(audio, ProviderRequest())
    assert [(s.start, s.end, s.text) for s in result.segments] == [
        (0.0, 2.0, "Hello there."),
        (3.0, 12.0, "General Kenobi."),
    ]
    assert [w.text for w in result.segments[1].words or []] == ["General", "Kenobi."]

    fake.transcript_for = lambda duration: []
    silent = await provider.transcribe(audio, ProviderRequest())
    assert silent.segments == []


async def test_concurrent_calls_share_one_client(
    fake: FakeOpenAI, provider: OpenAIProvider, short_audio: Path
) -> None:
    fake.configure(latency=0.5)
    results = await asyncio.gather(*(provider.transcribe(short_audio, ProviderRequest()) for _ in range(8)))
    assert all(r.text == "w0 w1" for r in results)
    assert fake.stats().max_in_flight == 8, "all eight were at the server at once: concurrent, not queued"


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "failure", [Failure.unauthorized("Incorrect API key provided: {api_key}."), Failure.forbidden()]
)
async def test_auth_errors(
    fake: FakeOpenAI, provider: OpenAIProvider, short_audio: Path, failure: Failure
) -> None:
    fake.fail(failure)
    with pytest.raises(AuthError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    err = info.value
    assert not err.transient
    assert not is_transient(err)
    assert classify(err) is ErrorCode.AUTH_ERROR
    assert f"HTTP {failure.status}" in err.message
    assert_no_key(err, API_KEY)
    assert err.__cause__ is None  # the vendor's unredacted error is not chained into tracebacks


async def test_rate_limited_with_retry_after_seconds(
    fake: FakeOpenAI, provider: OpenAIProvider, short_audio: Path
) -> None:
    fake.fail(Failure.rate_limited(retry_after=3))
    with pytest.raises(RateLimitedError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    err = info.value
    assert err.retry_after == 3.0
    assert err.transient
    assert classify(err) is ErrorCode.RATE_LIMITED
    assert "HTTP 429 rate_limit_exceeded" in err.message
    assert_no_key(err, API_KEY)
    # The queue is used up: the next call succeeds.
    assert (await provider.transcribe(short_audio, ProviderRequest())).text == "w0 w1"
    assert [r.status for r in fake.requests()] == [429, 200]


async def test_rate_limited_with_retry_after_http_date(
    fake: FakeOpenAI, provider: OpenAIProvider, short_audio: Path
) -> None:
    fake.fail(
        Failure.rate_limited(
            retry_after=format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        )
    )
    with pytest.raises(RateLimitedError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    assert info.value.retry_after is not None
    assert 25 <= info.value.retry_after <= 31


def test_parse_retry_after() -> None:
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None


async def test_insufficient_quota(fake: FakeOpenAI, provider: OpenAIProvider, short_audio: Path) -> None:
    fake.fail(Failure.insufficient_quota())
    with pytest.raises(QuotaExceededError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    assert not info.value.transient
    assert classify(info.value) is ErrorCode.QUOTA_EXCEEDED
    assert "insufficient_quota" in info.value.message


@pytest.mark.parametrize(
    ("failure", "expect"),
    [
        (Failure.garbage(), "not JSON"),
        (Failure.garbage("oops", content_type="text/plain"), "not JSON"),
        (Failure.garbage(""), "empty body"),
        (Failure.json_body([1, 2, 3]), "unexpected shape"),
        (Failure.missing_segments(), "without `segments`"),
        (Failure.negative_times(), "negative time"),
        (
            Failure.json_body(
                {
                    "text": "x",
                    "language": "english",
                    "duration": 1.0,
                    "segments": [{"start": 0, "end": 5000, "text": "x"}],
                }
            ),
            "past the end",
        ),
        (
            Failure.json_body({"text": "x", "segments": [{"start": "zero", "end": 1, "text": "x"}]}),
            "segments.0.start",
        ),
    ],
)
async def test_garbage_200_is_transient_unavailable(
    fake: FakeOpenAI, provider: OpenAIProvider, short_audio: Path, failure: Failure, expect: str
) -> None:
    fake.fail(failure)
    with pytest.raises(ProviderUnavailableError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    assert info.value.transient
    assert "provider returned garbage" in info.value.message
    assert expect in info.value.message


async def test_gpt_json_without_text_is_garbage(
    fake: FakeOpenAI, provider: OpenAIProvider, short_audio: Path
) -> None:
    fake.fail(Failure.json_body({"usage": {"type": "duration", "seconds": 1}}))
    with pytest.raises(ProviderUnavailableError, match="garbage"):
        await provider.transcribe(short_audio, ProviderRequest(model="gpt-4o-mini-transcribe"))


async def test_invalid_audio(
    fake: FakeOpenAI, provider: OpenAIProvider, short_audio: Path, tmp_path: Path
) -> None:
    fake.fail(Failure.invalid_file())
    with pytest.raises(InvalidAudioError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    assert not info.value.transient
    assert classify(info.value) is ErrorCode.INVALID_AUDIO
    assert "HTTP 400 invalid_value" in info.value.message

    # The fake's own checks: not a WAV, and too short.
    not_wav = tmp_path / "notes.mp3"
    not_wav.write_bytes(b"ID3 this is not audio at all")
    with pytest.raises(InvalidAudioError, match="Invalid file format"):
        await provider.transcribe(not_wav, ProviderRequest())
    with pytest.raises(InvalidAudioError, match="audio_too_short"):
        await provider.transcribe(sine_wav(tmp_path / "blip.wav", 0.05), ProviderRequest())
    assert [r.content_type for r in fake.requests()][-2:] == ["audio/mpeg", "audio/wav"]


async def test_local_audio_problems_fail_before_any_request(
    fake: FakeOpenAI, provider: OpenAIProvider, tmp_path: Path
) -> None:
    with pytest.raises(InvalidAudioError, match="does not exist"):
        await provider.transcribe(tmp_path / "missing.wav", ProviderRequest())
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(InvalidAudioError, match="empty"):
        await provider.transcribe(tmp_path / "empty.wav", ProviderRequest())
    with pytest.raises(InvalidAudioError, match="no audio samples"):
        await provider.transcribe(sine_wav(tmp_path / "zero.wav", 0.0), ProviderRequest())
    assert fake.requests() == []


async def test_other_client_errors_are_permanent(fake: FakeOpenAI, short_audio: Path) -> None:
    # A json-only model forced to verbose_json: the fake answers OpenAI's 400 about `response_format`.
    p = OpenAIProvider(
        api_key=API_KEY, base_url=fake.base_url, model="gpt-4o-transcribe", response_format="verbose_json"
    )
    try:
        with pytest.raises(OpenAIRequestError, match="response_format") as info:
            await p.transcribe(short_audio, ProviderRequest())
        assert not info.value.transient
        fake.fail(Failure.error(404, "The model `nope` does not exist", code="model_not_found"))
        with pytest.raises(OpenAIRequestError, match="HTTP 404 model_not_found"):
            await p.transcribe(short_audio, ProviderRequest())
        fake.fail(Failure.error(413, "Maximum content size limit (26214400) exceeded"))
        with pytest.raises(InvalidAudioError, match="HTTP 413"):
            await p.transcribe(short_audio, ProviderRequest())
    finally:
        await p.aclose()


async def test_compatible_server_without_key(
    fake: FakeOpenAI, short_audio: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = OpenAIProvider(base_url=fake.base_url, model="Systran/faster-distil-whisper-large-v3")
    try:
        assert (await p.transcribe(short_audio, ProviderRequest())).text == "w0 w1"
    finally:
        await p.aclose()
    assert fake.requests()[0].api_key == "no-key"


# ----------------------------------------------------------------------- the fake as a process


async def test_fake_as_a_separate_process_scripted_over_http(short_audio: Path) -> None:
    with FakeOpenAIProcess(latency=0.2) as proc:
        control = proc.control
        control.fail(Failure.rate_limited(retry_after=1), Failure.garbage())
        assert [f.status for f in control.pending_failures()] == [429, 200]
        p = OpenAIProvider(api_key=API_KEY, base_url=proc.base_url, timeout=5.0)
        try:
            with pytest.raises(RateLimitedError):
                await p.transcribe(short_audio, ProviderRequest())
            with pytest.raises(ProviderUnavailableError):
                await p.transcribe(short_audio, ProviderRequest(language="en"))
            result = await p.transcribe(short_audio, ProviderRequest(prompt="hi"))
        finally:
            await p.aclose()
        assert result.text == "w0 w1"
        requests = control.requests()
        assert [r.status for r in requests] == [429, 200, 200]
        assert [r.failure for r in requests] == ["error", "body", None]
        assert requests[1].language == "en"
        assert requests[2].prompt == "hi"
        assert control.configure(latency=0.0).latency == 0.0
        assert control.stats().requests == 3
        control.reset()
        assert control.requests() == []


def test_failure_objects_round_trip_as_json() -> None:
    for failure in (Failure.unauthorized(), Failure.rate_limited(3), Failure.hang(2), Failure.garbage()):
        assert Failure.model_validate_json(failure.model_dump_json()) == failure


def test_sttError_subclass() -> None:
    assert issubclass(OpenAIRequestError, SttError)
    assert not OpenAIRequestError.transient
