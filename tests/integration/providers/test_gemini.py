"""The `gemini` provider with the real `google-genai` SDK against the fake Gemini API on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stt_common.errors import (
    AuthError,
    ErrorCode,
    InvalidAudioError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitedError,
    SttError,
    classify,
    is_transient,
)
from stt_common.providers.base import ProviderRequest
from stt_common.transcript import Segment
from stt_transcriber.providers.gemini import GeminiBlockedError, GeminiProvider, build_prompt
from stt_transcriber.providers.vendor import VendorRequestError
from tests.fakes.gemini_server import Failure, FakeGemini
from tests.fixtures.audio import sine_wav
from tests.integration.providers.conftest import assert_no_key

API_KEY = "AIzaSyTEST0123456789abcdefSECRET"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=API_KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.reset()
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)


@pytest.fixture
async def provider(fake: FakeGemini) -> AsyncIterator[GeminiProvider]:
    p = GeminiProvider(api_key=API_KEY, base_url=fake.url, timeout=5.0)
    yield p
    await p.aclose()


@pytest.fixture
async def files_provider(fake: FakeGemini) -> AsyncIterator[GeminiProvider]:
    """Every chunk above 1 kB goes through the Files API."""
    p = GeminiProvider(
        api_key=API_KEY, base_url=fake.url, timeout=5.0, inline_max_bytes=1000, file_poll_interval=0.01
    )
    yield p
    await p.aclose()


# ---------------------------------------------------------------------------------------- success


async def test_inline_audio_gives_segments(fake: FakeGemini, provider: GeminiProvider, audio: Path) -> None:
    result = await provider.transcribe(audio, ProviderRequest())

    assert result.provider == "gemini"
    assert result.model == "gemini-2.5-flash"
    assert result.language == "en"
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 5.0), (5.0, 10.0), (10.0, 12.0)]
    assert result.segments[0].text == "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    assert result.text.split() == [f"w{i}" for i in range(24)]
    assert all(s.words is None and s.speaker is None for s in result.segments)

    [req] = fake.requests()
    assert req.endpoint == "generate"
    assert req.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert req.api_key == API_KEY
    assert req.audio_source == "inline"
    assert req.mime_type == "audio/wav"
    assert req.audio_bytes == audio.stat().st_size
    assert req.audio_seconds == pytest.approx(12.0)
    config = req.generation_config
    assert config["responseMimeType"] == "application/json"
    assert config["temperature"] == 0.0
    assert "segments" in config["responseSchema"]["properties"]
    assert req.system_instruction is not None
    assert "verbatim" in req.system_instruction
    assert "12.00 seconds" in req.prompt
    assert "Detect the spoken language" in req.prompt
    assert "<vocabulary>" not in req.prompt
    assert "<previous>" not in req.prompt
    assert req.status == 200
    assert fake.files() == []


async def test_prompt_has_vocabulary_context_and_language(
    fake: FakeGemini, provider: GeminiProvider, short_audio: Path
) -> None:
    context = [
        Segment(start=0, end=1, text="An early sentence that falls out of the window. " * 20, speaker="A"),
        Segment(start=1, end=2, text="Kafka and Armenian names.", speaker="B"),
    ]
    request = ProviderRequest(
        language="hy-AM", prompt="Glossary: Yerevan, Khachaturian.", context_segments=context
    )
    result = await provider.transcribe(short_audio, request)

    [req] = fake.requests()
    assert '"hy"' in req.prompt
    assert "<vocabulary>\nGlossary: Yerevan, Khachaturian.\n</vocabulary>" in req.prompt
    previous = req.prompt.split("<previous>\n", 1)[1].split("\n</previous>", 1)[0]
    assert previous.endswith("Kafka and Armenian names.")
    assert len(previous) <= 600
    assert "'B'" in req.prompt  # the last speaker, for continuity
    assert "not part of this audio" in req.prompt
    assert result.language == "hy"  # the fake answers in the language the prompt names


async def test_model_override_and_temperature(fake: FakeGemini, short_audio: Path) -> None:
    p = GeminiProvider(api_key=API_KEY, base_url=fake.url, model="gemini-2.0-flash", temperature=0.3)
    try:
        default = await p.transcribe(short_audio, ProviderRequest())
        override = await p.transcribe(short_audio, ProviderRequest(model="gemini-2.5-pro"))
    finally:
        await p.aclose()
    assert [r.model for r in fake.requests()] == ["gemini-2.0-flash", "gemini-2.5-pro"]
    assert fake.requests()[1].path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert fake.requests()[0].generation_config["temperature"] == pytest.approx(0.3)
    assert (default.model, override.model) == ("gemini-2.0-flash", "gemini-2.5-pro")
    assert override.text == "w0 w1"


async def test_times_as_strings_fences_speakers_and_clamping(
    fake: FakeGemini, provider: GeminiProvider, audio: Path
) -> None:
    fake.fail(
        Failure.model_text(
            '```json\n{"language": "English", "segments": ['
            '{"start": "00:00.0", "end": "00:01.5", "text": " Hello there. ", "speaker": "A"},'
            '{"start": "0:00:03", "end": "4.25", "text": "General Kenobi.", "speaker": "B"},'
            '{"start": 5, "end": 6, "text": "   "},'
            '{"start": 11.0, "end": 12.9, "text": "Bye."}]}\n```'
        )
    )
    result = await provider.transcribe(audio, ProviderRequest())
    assert [(s.start, s.end, s.text, s.speaker) for s in result.segments] == [
        (0.0, 1.5, "Hello there.", "A"),
        (3.0, 4.25, "General Kenobi.", "B"),
        (11.0, 12.0, "Bye.", None),  # 12.9 is within the slack, clamped to the audio's 12 s
    ]
    assert result.language == "en"

    fake.configure(speakers=True)
    assert [s.speaker for s in (await provider.transcribe(audio, ProviderRequest())).segments] == [
        "A",
        "B",
        "A",
    ]


async def test_silence_gives_no_segments(fake: FakeGemini, provider: GeminiProvider, audio: Path) -> None:
    fake.transcript_for = lambda duration: []
    result = await provider.transcribe(audio, ProviderRequest(language="de"))
    assert result.segments == []
    assert result.language == "de"


async def test_client_is_made_again_after_aclose(fake: FakeGemini, short_audio: Path) -> None:
    p = GeminiProvider(api_key=API_KEY, base_url=fake.url)
    try:
        assert p.name == "gemini"
        assert API_KEY not in repr(p)
        assert (await p.transcribe(short_audio, ProviderRequest())).text == "w0 w1"
        await p.aclose()
        await p.aclose()  # twice is harmless
        assert (await p.transcribe(short_audio, ProviderRequest())).text == "w0 w1"
    finally:
        await p.aclose()


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="timeout"):
        GeminiProvider(api_key=API_KEY, timeout=0)
    with pytest.raises(ValueError, match="inline_max_bytes"):
        GeminiProvider(api_key=API_KEY, inline_max_bytes=-1)
    with pytest.raises(ValueError, match="temperature"):
        GeminiProvider(api_key=API_KEY, temperature=5)


def test_prompt_without_context() -> None:
    prompt = build_prompt(ProviderRequest(prompt="  "), None, None)
    assert "Detect the spoken language" in prompt
    assert "<vocabulary>" not in prompt
    assert "seconds long" not in prompt


# --------------------------------------------------------------------------------------- Files API


async def test_large_audio_goes_through_the_files_api(
    fake: FakeGemini, files_provider: GeminiProvider, audio: Path
) -> None:
    fake.configure(processing_polls=2)
    result = await files_provider.transcribe(audio, ProviderRequest())
    assert result.text.split() == [f"w{i}" for i in range(24)]

    requests = fake.requests()
    assert [r.endpoint for r in requests] == ["upload", "upload", "get", "get", "get", "generate", "delete"]
    start, chunk = requests[0], requests[1]
    assert start.upload_command == "start"
    assert start.api_key == API_KEY
    assert chunk.upload_command == "upload, finalize"
    assert chunk.audio_bytes == audio.stat().st_size
    [file] = fake.files()
    assert file.mime_type == "audio/wav"
    assert file.display_name == "chunk-0007.wav"
    generate = requests[5]
    assert generate.audio_source == "file"
    assert generate.file_name == file.name
    assert generate.audio_seconds == pytest.approx(12.0)
    assert requests[6].file_name == file.name
    assert file.deleted
    assert fake.live_files() == []


async def test_uploaded_file_is_deleted_when_generation_fails(
    fake: FakeGemini, files_provider: GeminiProvider, audio: Path
) -> None:
    fake.fail(Failure.server_error(503))
    with pytest.raises(ProviderUnavailableError, match="HTTP 503 UNAVAILABLE"):
        await files_provider.transcribe(audio, ProviderRequest())
    assert [r.endpoint for r in fake.requests()][-2:] == ["generate", "delete"]
    [file] = fake.files()
    assert file.deleted

    fake.fail(Failure.safety_block())
    with pytest.raises(GeminiBlockedError):
        await files_provider.transcribe(audio, ProviderRequest())
    assert len(fake.files()) == 2
    assert fake.live_files() == []


async def test_file_that_fails_processing_is_invalid_audio(
    fake: FakeGemini, files_provider: GeminiProvider, audio: Path
) -> None:
    fake.configure(file_fails=True, processing_polls=1)
    with pytest.raises(InvalidAudioError, match="FAILED") as info:
        await files_provider.transcribe(audio, ProviderRequest())
    assert classify(info.value) is ErrorCode.INVALID_AUDIO
    assert "generate" not in [r.endpoint for r in fake.requests()]
    assert fake.live_files() == []


async def test_file_that_stays_processing_times_out(fake: FakeGemini, audio: Path) -> None:
    p = GeminiProvider(
        api_key=API_KEY,
        base_url=fake.url,
        inline_max_bytes=1000,
        file_poll_interval=0.02,
        file_wait_timeout=0.2,
    )
    fake.configure(processing_polls=1_000_000)
    try:
        with pytest.raises(ProviderTimeoutError, match="not ACTIVE") as info:
            await p.transcribe(audio, ProviderRequest())
    finally:
        await p.aclose()
    assert info.value.transient
    assert "generate" not in [r.endpoint for r in fake.requests()]
    assert fake.live_files() == []


async def test_failed_delete_does_not_fail_the_chunk(
    fake: FakeGemini, files_provider: GeminiProvider, audio: Path
) -> None:
    fake.fail(Failure.error(500, "Internal error encountered.", endpoint="delete"))
    result = await files_provider.transcribe(audio, ProviderRequest())
    assert result.text.startswith("w0 w1")
    assert [r.status for r in fake.requests("delete")] == [500]


async def test_upload_errors_are_typed(fake: FakeGemini, files_provider: GeminiProvider, audio: Path) -> None:
    fake.fail(Failure.rate_limited(retry_delay="3s").model_copy(update={"endpoint": "upload"}))
    with pytest.raises(RateLimitedError, match="Files API upload") as info:
        await files_provider.transcribe(audio, ProviderRequest())
    assert info.value.retry_after == 3.0
    assert fake.files() == []
    assert [r.endpoint for r in fake.requests()] == ["upload"]


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("failure", "error", "code", "fragment"),
    [
        (Failure.unauthenticated(), AuthError, ErrorCode.AUTH_ERROR, "HTTP 401 UNAUTHENTICATED"),
        (Failure.permission_denied(), AuthError, ErrorCode.AUTH_ERROR, "HTTP 403 PERMISSION_DENIED"),
        (Failure.api_key_invalid(), AuthError, ErrorCode.AUTH_ERROR, "API key not valid"),
        (Failure.rate_limited(), RateLimitedError, ErrorCode.RATE_LIMITED, "HTTP 429 RESOURCE_EXHAUSTED"),
        (
            Failure.quota_exhausted(),
            QuotaExceededError,
            ErrorCode.QUOTA_EXCEEDED,
            "exceeded your current quota",
        ),
        (Failure.credits_depleted(), QuotaExceededError, ErrorCode.QUOTA_EXCEEDED, "credits are depleted"),
        (
            Failure.server_error(500),
            ProviderUnavailableError,
            ErrorCode.PROVIDER_UNAVAILABLE,
            "HTTP 500 INTERNAL",
        ),
        (Failure.server_error(503), ProviderUnavailableError, ErrorCode.PROVIDER_UNAVAILABLE, "overloaded"),
        (Failure.deadline_exceeded(), ProviderTimeoutError, ErrorCode.TIMEOUT, "HTTP 504 DEADLINE_EXCEEDED"),
        (Failure.invalid_audio(), InvalidAudioError, ErrorCode.INVALID_AUDIO, "HTTP 400 INVALID_ARGUMENT"),
        (Failure.bad_argument(), VendorRequestError, ErrorCode.UNKNOWN, "Unknown name"),
        (Failure.model_not_found(), VendorRequestError, ErrorCode.UNKNOWN, "HTTP 404 NOT_FOUND"),
    ],
)
async def test_http_errors_are_typed(
    fake: FakeGemini,
    provider: GeminiProvider,
    short_audio: Path,
    failure: Failure,
    error: type[SttError],
    code: ErrorCode,
    fragment: str,
) -> None:
    fake.fail(failure)
    with pytest.raises(error) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    err = info.value
    assert type(err) is error  # not a subclass standing in for it
    assert classify(err) is code
    assert is_transient(err) == (
        code in (ErrorCode.RATE_LIMITED, ErrorCode.PROVIDER_UNAVAILABLE, ErrorCode.TIMEOUT)
    )
    assert err.message.startswith("gemini (gemini-2.5-flash): ")
    assert fragment in err.message
    assert "\n" not in err.message
    assert err.__cause__ is None  # the vendor's unredacted error is not chained into tracebacks
    assert_no_key(err, API_KEY)
    # One request: the SDK does not retry by itself; the next call is answered normally.
    assert len(fake.requests()) == 1
    assert (await provider.transcribe(short_audio, ProviderRequest())).text == "w0 w1"


async def test_sdk_does_not_retry_server_errors(
    fake: FakeGemini, provider: GeminiProvider, short_audio: Path
) -> None:
    fake.fail(Failure.server_error(503), Failure.server_error(503), Failure.server_error(503))
    for _ in range(3):
        with pytest.raises(ProviderUnavailableError):
            await provider.transcribe(short_audio, ProviderRequest())
    assert [r.status for r in fake.requests()] == [503, 503, 503]
    assert fake.pending_failures() == []


@pytest.mark.parametrize(
    ("failure", "retry_after"),
    [
        (Failure.rate_limited(retry_delay="17s"), 17.0),
        (Failure.rate_limited(retry_delay="2.5s", retry_after="60"), 2.5),  # RetryInfo first
        (Failure.rate_limited(retry_delay=None, retry_after="9"), 9.0),
        (Failure.rate_limited(retry_delay=None), None),
        (Failure.server_error(503, retry_after="7"), 7.0),
    ],
)
async def test_retry_after(
    fake: FakeGemini, provider: GeminiProvider, short_audio: Path, failure: Failure, retry_after: float | None
) -> None:
    fake.fail(failure)
    with pytest.raises(SttError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    assert info.value.transient
    assert info.value.retry_after == retry_after


@pytest.mark.parametrize(
    ("failure", "expect"),
    [
        (Failure.malformed_json(), "not JSON"),
        (Failure.wrong_shape(), "segments: Field required"),
        (Failure.times_past_end(), "past the end"),
        (Failure.model_text('{"segments": [{"start": -5, "end": -4, "text": "x"}]}'), "negative time"),
        (Failure.model_text('{"segments": [{"start": 3, "end": 1, "text": "x"}]}'), "ends before it starts"),
        (Failure.model_text('{"segments": [{"start": "soon", "end": 1, "text": "x"}]}'), "segments.0.start"),
        (Failure.model_text('{"segments": [{"start": true, "end": 1, "text": "x"}]}'), "segments.0.start"),
        (Failure.model_text('[{"start": 0, "end": 1, "text": "x"}]'), "unexpected shape"),
        (Failure.model_text(""), "no text"),
        (Failure.truncated(), "output was truncated"),
        (Failure.no_candidates(), "no candidates"),
        (Failure.raw("<html><body>502 Bad Gateway</body></html>", content_type="text/html"), "not JSON"),
    ],
)
async def test_garbage_is_transient_unavailable(
    fake: FakeGemini, provider: GeminiProvider, short_audio: Path, failure: Failure, expect: str
) -> None:
    fake.fail(failure)
    with pytest.raises(ProviderUnavailableError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    assert info.value.transient
    assert classify(info.value) is ErrorCode.PROVIDER_UNAVAILABLE
    assert "provider returned garbage" in info.value.message
    assert expect in info.value.message


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (Failure.safety_block("SAFETY"), "finishReason SAFETY"),
        (Failure.safety_block("RECITATION"), "finishReason RECITATION"),
        (Failure.safety_block("PROHIBITED_CONTENT"), "finishReason PROHIBITED_CONTENT"),
        (Failure.prompt_blocked("SAFETY"), "promptFeedback.blockReason SAFETY"),
        (Failure.prompt_blocked("PROHIBITED_CONTENT"), "blockReason PROHIBITED_CONTENT"),
    ],
)
async def test_blocked_content_is_permanent(
    fake: FakeGemini, provider: GeminiProvider, short_audio: Path, failure: Failure, reason: str
) -> None:
    fake.fail(failure)
    with pytest.raises(GeminiBlockedError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    err = info.value
    assert isinstance(err, VendorRequestError)
    assert not err.transient
    assert not is_transient(err)
    assert "refused to transcribe this content" in err.message
    assert reason in err.message


async def test_local_audio_problems_fail_before_any_request(
    fake: FakeGemini, provider: GeminiProvider, tmp_path: Path
) -> None:
    with pytest.raises(InvalidAudioError, match="does not exist"):
        await provider.transcribe(tmp_path / "missing.wav", ProviderRequest())
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(InvalidAudioError, match="empty"):
        await provider.transcribe(tmp_path / "empty.wav", ProviderRequest())
    with pytest.raises(InvalidAudioError, match="no audio samples"):
        await provider.transcribe(sine_wav(tmp_path / "zero.wav", 0.0), ProviderRequest())
    assert fake.requests() == []


async def test_audio_the_vendor_cannot_read(
    fake: FakeGemini, provider: GeminiProvider, tmp_path: Path
) -> None:
    not_wav = tmp_path / "notes.mp3"
    not_wav.write_bytes(b"ID3 this is not audio at all")
    with pytest.raises(InvalidAudioError, match="unable to process input audio"):
        await provider.transcribe(not_wav, ProviderRequest())
    [req] = fake.requests()
    assert req.mime_type == "audio/mpeg"
