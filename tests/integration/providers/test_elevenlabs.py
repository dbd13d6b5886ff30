"""The `elevenlabs` provider (httpx) against the fake ElevenLabs Speech to Text server on loopback."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
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
from stt_transcriber.providers.elevenlabs import (
    ElevenLabsProvider,
    ElevenLabsRequestError,
    keyterms,
    language_from_api,
    parse_error_body,
    supports_keyterms,
)
from stt_transcriber.providers.vendor import VendorRequestError
from tests.fakes.elevenlabs_server import Failure, FakeElevenLabs
from tests.fixtures.audio import sine_wav
from tests.integration.providers.conftest import assert_no_key

API_KEY = "sk_test_0123456789abcdefSECRETSECRET"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeElevenLabs]:
    with FakeElevenLabs(api_key=API_KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake: FakeElevenLabs) -> None:
    fake.reset()


@pytest.fixture
async def provider(fake: FakeElevenLabs) -> AsyncIterator[ElevenLabsProvider]:
    p = ElevenLabsProvider(api_key=API_KEY, base_url=fake.base_url, timeout=5.0)
    yield p
    await p.aclose()


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest.py's 12 s chunk under another chunk's name (the requests' file name is checked)."""
    return sine_wav(tmp_path_factory.mktemp("elevenlabs") / "chunk-0003.wav", 12.0)


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sine_wav(tmp_path_factory.mktemp("elevenlabs") / "long.wav", 45.0)


def _word(text: str, start: float, end: float, speaker: str = "speaker_0", **extra: Any) -> dict[str, Any]:
    return {"text": text, "start": start, "end": end, "type": "word", "speaker_id": speaker, **extra}


def _space(start: float, end: float) -> dict[str, Any]:
    return {"text": " ", "start": start, "end": end, "type": "spacing", "speaker_id": "speaker_0"}


def _spaced(*words: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for w in words:
        if out:
            out.append(_space(out[-1]["end"], w["start"]))
        out.append(w)
    return out


# ---------------------------------------------------------------------------------------- success


async def test_words_segment_and_language(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, audio: Path
) -> None:
    result = await provider.transcribe(audio, ProviderRequest())

    assert result.provider == "elevenlabs"
    assert result.model == "scribe_v2"
    assert result.language == "en"  # the API's "eng", as the pipeline's ISO 639-1 code
    [segment] = result.segments  # no pause, no sentence end, under 30 s: one segment
    assert segment.text == " ".join(f"w{i}" for i in range(24))
    assert segment.speaker is None  # speaker_id is ignored without diarization
    assert segment.start == 0.0
    assert segment.end == pytest.approx(11.9)
    words = segment.words or []
    assert [w.text for w in words] == [f"w{i}" for i in range(24)]
    assert [words[1].start, words[1].end] == pytest.approx([0.5, 0.9])
    assert words[0].probability == pytest.approx(math.exp(-0.05))

    [req] = fake.requests()
    assert req.path == "/v1/speech-to-text"
    assert req.api_key == API_KEY
    assert req.model_id == "scribe_v2"
    assert req.timestamps_granularity == "word"
    assert (req.diarize, req.tag_audio_events) == ("false", "false")
    assert req.language_code is None
    assert req.keyterms == []
    assert req.filename == "chunk-0003.wav"
    assert req.content_type == "audio/wav"
    assert req.file_size == audio.stat().st_size
    assert req.audio_seconds == pytest.approx(12.0)
    assert req.status == 200


async def test_model_override_language_and_options(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path
) -> None:
    request = ProviderRequest(
        language="hy-AM",
        model="scribe_v2",
        prompt="Glossary: Yerevan.",  # no prompt parameter at ElevenLabs: not sent
        context_segments=[Segment(start=0, end=1, text="previous chunk")],
        options={
            "prompt": "Glossary: Yerevan.",
            "vocabulary": ["Yerevan", " Kafka ", "yerevan", "x" * 60, "one two three four five six"],
            "temperature": 0.2,
            "num_speakers": 2,
            "output": {"word_timestamps": True},
            "beam_size": 5,  # another provider's option: ignored
        },
    )
    result = await provider.transcribe(short_audio, request)

    [req] = fake.requests()
    assert req.model_id == "scribe_v2"
    assert req.language_code == "hy"
    assert req.keyterms == ["Yerevan", "Kafka"]
    assert (req.temperature, req.num_speakers) == ("0.2", "2")
    assert not {"prompt", "output", "beam_size", "vocabulary"} & set(req.fields)
    assert result.model == "scribe_v2"
    assert result.language == "hy"  # the fake answers "hye"
    assert result.text == "w0 w1"


async def test_no_keyterms_for_scribe_v1(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path
) -> None:
    # The fake, like the API, refuses keyterms for scribe_v1 with a 400: the provider leaves them out.
    request = ProviderRequest(model="scribe_v1", options={"vocabulary": ["Yerevan"]})
    result = await provider.transcribe(short_audio, request)
    assert result.text == "w0 w1"
    [req] = fake.requests()
    assert req.model_id == "scribe_v1"
    assert "keyterms" not in req.fields
    # The default model takes them.
    await provider.transcribe(short_audio, ProviderRequest(options={"vocabulary": ["Yerevan"]}))
    assert fake.requests()[1].keyterms == ["Yerevan"]


async def test_diarization_gives_speakers(fake: FakeElevenLabs, audio: Path) -> None:
    p = ElevenLabsProvider(api_key=API_KEY, base_url=fake.base_url + "/v1/", diarize=True)
    try:
        result = await p.transcribe(audio, ProviderRequest())
    finally:
        await p.aclose()
    assert [s.speaker for s in result.segments] == ["speaker_0", "speaker_1", "speaker_0"]
    spans = [t for s in result.segments for t in (s.start, s.end)]
    assert spans == pytest.approx([0.0, 4.9, 5.0, 9.9, 10.0, 11.9])
    assert result.segments[1].text.split()[0] == "w10"
    [req] = fake.requests()
    assert req.diarize == "true"
    assert req.path == "/v1/speech-to-text"  # a base_url ending in /v1 is not doubled


async def test_audio_events_kept_in_text_not_words(fake: FakeElevenLabs, short_audio: Path) -> None:
    fake.configure(audio_event_at=0.45)
    p = ElevenLabsProvider(api_key=API_KEY, base_url=fake.base_url, tag_audio_events=True)
    try:
        result = await p.transcribe(short_audio, ProviderRequest())
    finally:
        await p.aclose()
    [segment] = result.segments
    assert segment.text == "w0 [laughter] w1"
    assert [w.text for w in segment.words or []] == ["w0", "w1"]
    assert fake.requests()[0].tag_audio_events == "true"


async def test_unrequested_audio_events_are_dropped(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path
) -> None:
    event = {"text": "(music)", "start": 0.1, "end": 0.2, "type": "audio_event", "speaker_id": "speaker_0"}
    fake.transcript_for = lambda d: [event, _space(0.2, 0.3), _word("hi", 0.3, 0.5)]
    result = await provider.transcribe(short_audio, ProviderRequest())
    assert [(s.text, s.start) for s in result.segments] == [("hi", 0.3)]


async def test_segments_split_on_pause_sentence_and_length(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, long_audio: Path
) -> None:
    words = [
        _word("Hello", 0.0, 0.4),
        _word("there.", 0.5, 0.9),  # a sentence end, but the segment is short: no split
        _word("General", 1.0, 1.4),
        _word("Kenobi", 3.0, 3.4),  # 1.6 s pause: new segment
    ]
    words += [_word(f"a{i}", 3.5 + 0.5 * i, 3.9 + 0.5 * i) for i in range(12)]  # up to 9.4 s
    words += [_word("end.", 9.5, 9.9), _word("Next", 10.0, 10.4)]  # long + sentence end: split
    words += [_word(f"b{i}", 10.5 + 0.5 * i, 10.9 + 0.5 * i) for i in range(66)]  # no end until 43.4
    fake.transcript_for = lambda d: _spaced(*words)

    result = await provider.transcribe(long_audio, ProviderRequest())

    texts = [s.text for s in result.segments]
    assert texts[0] == "Hello there. General"
    assert texts[1].startswith("Kenobi a0")
    assert texts[1].endswith("a11 end.")
    assert texts[2].startswith("Next b0")
    assert len(result.segments) == 4  # the last run is cut before it exceeds 30 s
    assert result.segments[2].end - result.segments[2].start <= 30.0
    assert result.segments[3].start == pytest.approx(result.segments[2].end + 0.1)
    assert sum(len(s.words or []) for s in result.segments) == len(words)


async def test_text_without_spacing_entries(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path
) -> None:
    fake.transcript_for = lambda d: [_word("你好", 0.0, 0.3), _word("世界", 0.3, 0.6)]
    result = await provider.transcribe(short_audio, ProviderRequest(language="zh"))
    assert [s.text for s in result.segments] == ["你好世界"]  # "text" has no spaces: none added
    assert result.language == "zh"


async def test_text_without_word_times_spans_the_audio(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, audio: Path
) -> None:
    fake.transcript_for = lambda d: [{"text": "hello", "type": "word"}]
    result = await provider.transcribe(audio, ProviderRequest())
    [segment] = result.segments
    assert (segment.start, segment.end, segment.text, segment.words) == (0.0, 12.0, "hello", None)


async def test_times_a_little_past_the_end_are_clamped(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path
) -> None:
    fake.transcript_for = lambda d: [_word("w0", 0.2, d + 0.5)]
    result = await provider.transcribe(short_audio, ProviderRequest())
    assert result.segments[0].end == 1.0
    assert (result.segments[0].words or [])[0].end == 1.0


async def test_concurrent_calls_share_one_client(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path
) -> None:
    fake.configure(latency=1.0)
    results = await asyncio.gather(*(provider.transcribe(short_audio, ProviderRequest()) for _ in range(6)))
    client = provider._client
    assert client is not None
    assert all(r.text == "w0 w1" for r in results)
    assert fake.max_in_flight == 6  # all six were in flight at once, over the one client's pool
    await provider.transcribe(short_audio, ProviderRequest())
    assert provider._client is client
    await provider.aclose()  # closing drops the client; a later call makes a new one
    assert provider._client is None
    fake.configure(latency=0.0)
    assert (await provider.transcribe(short_audio, ProviderRequest())).text == "w0 w1"
    assert provider._client is not None
    assert provider._client is not client


def test_helpers() -> None:
    assert normalise_language("en-US") == "en"
    assert normalise_language("EN") == "en"
    assert normalise_language("pt_BR") == "pt"
    assert normalise_language(" ") is None
    assert language_from_api("eng") == "en"
    assert language_from_api("yue") == "yue"
    assert language_from_api("") is None
    assert supports_keyterms("scribe_v2")
    assert not supports_keyterms("scribe_v1_experimental")
    many = {"vocabulary": [f"t{i}" for i in range(150)], "keyterms": "first"}
    terms = keyterms(many)
    assert terms[0] == "first"
    assert len(terms) == 100
    info = parse_error_body(b'{"detail": [{"loc": ["body", "file"], "msg": "Field required"}]}')
    assert (info.param, info.message) == ("file", "file: Field required")
    assert parse_error_body(b"<html>oops</html>").message == "<html>oops</html>"


def test_repr_and_settings_checks() -> None:
    p = ElevenLabsProvider(api_key=API_KEY, model="scribe_v2")
    assert API_KEY not in repr(p)
    assert "scribe_v2" in repr(p)
    assert "https://api.elevenlabs.io" in repr(p)
    with pytest.raises(ValueError, match="timeout"):
        ElevenLabsProvider(api_key=API_KEY, timeout=0)


# ----------------------------------------------------------------------------------------- errors


async def test_unauthorized(fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path) -> None:
    fake.fail(Failure.unauthorized("Invalid API key: {api_key}"))  # a vendor that echoes the key
    with pytest.raises(AuthError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    err = info.value
    assert not err.transient
    assert not is_transient(err)
    assert classify(err) is ErrorCode.AUTH_ERROR
    assert "elevenlabs (scribe_v2): HTTP 401 invalid_api_key: Invalid API key: ***" in err.message
    assert "STT_ELEVENLABS_API_KEY" in err.message
    assert "(request " in err.message
    assert "\n" not in err.message
    assert_no_key(err, API_KEY)
    assert err.__cause__ is None


@pytest.mark.parametrize(
    "failure",
    [
        Failure.quota_exceeded(),  # 401 with the legacy `status`
        Failure.insufficient_credits(),  # 402
        Failure.json_body({"detail": {"status": "quota_exceeded", "message": "out of credits"}}, status=429),
    ],
)
async def test_quota_exceeded(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path, failure: Failure
) -> None:
    fake.fail(failure)
    with pytest.raises(QuotaExceededError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    err = info.value
    assert not err.transient
    assert classify(err) is ErrorCode.QUOTA_EXCEEDED
    assert f"HTTP {failure.status}" in err.message
    assert "credits" in err.message
    assert_no_key(err, API_KEY)


@pytest.mark.parametrize("concurrent", [False, True])
async def test_rate_limited_with_retry_after(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path, concurrent: bool
) -> None:
    fake.fail(Failure.rate_limited(retry_after=3, concurrent=concurrent))
    with pytest.raises(RateLimitedError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    err = info.value
    assert err.retry_after == 3.0
    assert err.transient
    assert classify(err) is ErrorCode.RATE_LIMITED
    code = "concurrent_limit_exceeded" if concurrent else "rate_limit_exceeded"
    assert f"HTTP 429 {code}" in err.message
    assert_no_key(err, API_KEY)
    # The queue is used up: the next call succeeds.
    assert (await provider.transcribe(short_audio, ProviderRequest())).text == "w0 w1"
    assert [r.status for r in fake.requests()] == [429, 200]


@pytest.mark.parametrize(
    ("failure", "expect"),
    [
        (Failure.garbage(), "not JSON"),
        (Failure.garbage(""), "empty body"),
        (Failure.json_body([1, 2, 3]), "unexpected shape"),
        (Failure.json_body({"language_code": "eng", "text": "hi"}), "words: Field required"),
        (Failure.json_body({"text": "hi", "words": [{"text": "hi", "start": "zero"}]}), "words.0"),
        (Failure.times_past_end(), "past the end"),
        (Failure.json_body({"text": "x", "words": [_word("x", -3.0, -2.0)]}), "negative time"),
        (Failure.json_body({"text": "x", "words": [_word("x", 0.9, 0.1)]}), "ends before it starts"),
        (
            Failure.json_body(
                {"text": "a b", "words": [_word("a", 0.1, 0.2), {"text": "b", "type": "word"}]}
            ),
            "has no start or end time",
        ),
    ],
)
async def test_garbage_200_is_transient_unavailable(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path, failure: Failure, expect: str
) -> None:
    fake.fail(failure)
    with pytest.raises(ProviderUnavailableError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    err = info.value
    assert err.transient
    assert classify(err) is ErrorCode.PROVIDER_UNAVAILABLE
    assert "elevenlabs (scribe_v2): provider returned garbage" in err.message
    assert expect in err.message


async def test_invalid_audio(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path, tmp_path: Path
) -> None:
    fake.fail(Failure.invalid_audio())
    with pytest.raises(InvalidAudioError) as info:
        await provider.transcribe(short_audio, ProviderRequest())
    assert not info.value.transient
    assert classify(info.value) is ErrorCode.INVALID_AUDIO
    assert "HTTP 400 invalid_audio" in info.value.message

    # A validation error about the file (what the API answers when no file arrives).
    missing = [{"type": "missing", "loc": ["body", "file"], "msg": "Field required", "input": None}]
    fake.fail(Failure.json_body({"detail": missing}, status=422))
    with pytest.raises(InvalidAudioError, match="HTTP 422 validation_error: file: Field required"):
        await provider.transcribe(short_audio, ProviderRequest())

    # The fake's own checks: not a WAV, and too short.
    not_wav = tmp_path / "notes.mp3"
    not_wav.write_bytes(b"ID3 this is not audio at all")
    with pytest.raises(InvalidAudioError, match="invalid_file_type"):
        await provider.transcribe(not_wav, ProviderRequest())
    with pytest.raises(InvalidAudioError, match="audio_too_short"):
        await provider.transcribe(sine_wav(tmp_path / "blip.wav", 0.05), ProviderRequest())
    assert [r.content_type for r in fake.requests()][-2:] == ["audio/mpeg", "audio/wav"]


async def test_fake_answers_a_request_without_file_like_the_api(fake: FakeElevenLabs) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"xi-api-key": API_KEY}) as client:
        response = await client.post("/v1/speech-to-text", files={"model_id": (None, "scribe_v1")})
    assert response.status_code == 422
    info = parse_error_body(response.content)
    assert info.param == "file"
    assert info.locations == ["file"]


@pytest.mark.parametrize(
    ("request_", "expect"),
    [
        (ProviderRequest(model="scribe_v9"), "HTTP 400 invalid_parameters: Invalid model_id"),
        (ProviderRequest(language="klingon"), "HTTP 400 invalid_parameters: Invalid language_code"),
    ],
)
async def test_parameter_errors_are_configuration_errors(
    fake: FakeElevenLabs,
    provider: ElevenLabsProvider,
    short_audio: Path,
    request_: ProviderRequest,
    expect: str,
) -> None:
    with pytest.raises(ElevenLabsRequestError) as info:
        await provider.transcribe(short_audio, request_)
    err = info.value
    assert isinstance(err, VendorRequestError)
    assert not err.transient
    assert classify(err) is ErrorCode.UNKNOWN
    assert expect in err.message
    assert "STT_ELEVENLABS_MODEL" in err.message
    assert_no_key(err, API_KEY)


async def test_other_client_errors(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path
) -> None:
    p = ElevenLabsProvider(api_key=API_KEY, base_url=fake.base_url + "/wrong")
    try:
        with pytest.raises(ElevenLabsRequestError, match="HTTP 404: Not Found"):
            await p.transcribe(short_audio, ProviderRequest())
    finally:
        await p.aclose()
    missing_language = [{"loc": ["body", "language_code"], "msg": "bad code", "type": "value_error"}]
    fake.fail(Failure.json_body({"detail": missing_language}, status=422))
    with pytest.raises(ElevenLabsRequestError, match="language_code: bad code"):
        await provider.transcribe(short_audio, ProviderRequest())
    fake.fail(Failure.error(413, "invalid_request", "request_too_large", "Request body too large"))
    with pytest.raises(InvalidAudioError, match="HTTP 413"):
        await provider.transcribe(short_audio, ProviderRequest())
    fake.fail(Failure.error(403, "authorization_error", "feature_not_available", "Not on your plan"))
    with pytest.raises(AuthError, match="HTTP 403 feature_not_available"):
        await provider.transcribe(short_audio, ProviderRequest())


async def test_bad_option_fails_before_any_request(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, short_audio: Path
) -> None:
    with pytest.raises(ElevenLabsRequestError, match="'temperature' must be a number"):
        await provider.transcribe(short_audio, ProviderRequest(options={"temperature": [0.1]}))
    assert fake.requests() == []


async def test_local_audio_problems_fail_before_any_request(
    fake: FakeElevenLabs, provider: ElevenLabsProvider, tmp_path: Path
) -> None:
    with pytest.raises(InvalidAudioError, match="does not exist"):
        await provider.transcribe(tmp_path / "missing.wav", ProviderRequest())
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(InvalidAudioError, match="empty"):
        await provider.transcribe(tmp_path / "empty.wav", ProviderRequest())
    with pytest.raises(InvalidAudioError, match="no audio samples"):
        await provider.transcribe(sine_wav(tmp_path / "zero.wav", 0.0), ProviderRequest())
    assert fake.requests() == []


def test_error_classes() -> None:
    assert issubclass(ElevenLabsRequestError, VendorRequestError)
    assert issubclass(ElevenLabsRequestError, SttError)
    assert not ElevenLabsRequestError.transient
