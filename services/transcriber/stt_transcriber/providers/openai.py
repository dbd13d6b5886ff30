"""`openai`: the OpenAI Audio API (`whisper-1`, `gpt-4o-transcribe`, ...) through the `openai` package.

Any OpenAI-compatible server (speaches, vLLM, LocalAI, ...) works through `base_url`, so this is also
the "Whisper" provider. One `AsyncOpenAI` client is shared by every call of a provider instance (its
connection pool serves concurrent chunks); the SDK's own retries are off, retrying is the transcriber's
job, driven by the typed errors raised here.

Response formats, chosen from the model name unless configured (`response_format=`):
  * `verbose_json` with segment and word timestamps: `whisper-1` and any non-`gpt-` model (Whisper
    served by a compatible server);
  * `json` (text only): `gpt-4o-transcribe`, `gpt-4o-mini-transcribe`, other `gpt-*` models. They return
    no timestamps, so the chunk becomes one segment spanning the audio (duration from the WAV header);
  * `diarized_json` (segments with speakers): `gpt-4o-transcribe-diarize`.

The response body is parsed and checked here (not by the SDK, which accepts anything): a 200 whose body
is not the documented shape, or has impossible times, is reported as a transient
`ProviderUnavailableError` ("provider returned garbage").
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any, Literal

import openai
from openai import AsyncOpenAI
from pydantic import ValidationError

from stt_common.errors import (
    AuthError,
    InvalidAudioError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitedError,
    SttError,
)
from stt_common.logs import get_logger
from stt_common.providers.base import ProviderRequest
from stt_common.providers.languages import normalise_language
from stt_common.transcript import ChunkTranscript, Segment, Word
from stt_transcriber.providers.remote import RemoteProvider
from stt_transcriber.providers.vendor import (
    GarbageResponseError,
    VendorBody,
    VendorRequestError,
    check_times,
    clamp,
    content_type,
    context_prompt,
    describe_validation_error,
    parse_retry_after,
    read_audio,
    time_limits,
)

log = get_logger(__name__)

ResponseFormat = Literal["verbose_json", "json", "diarized_json"]
_FORMAT_SETTINGS: dict[str, ResponseFormat | Literal["auto"]] = {
    "auto": "auto",
    "verbose_json": "verbose_json",
    "json": "json",
    "diarized_json": "diarized_json",
}

# Key placed in the Authorization header for OpenAI-compatible servers that need none.
NO_KEY_PLACEHOLDER = "no-key"
# `error.code` values that mean the account is out of credit rather than momentarily rate-limited.
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})
# `error.code` values of a 400 that are about the uploaded audio (OpenAI sets `param: "file"` as well).
AUDIO_ERROR_CODES = frozenset(
    {"audio_too_short", "audio_too_long", "invalid_file_format", "file_too_large", "unsupported_file"}
)
# `request.options` keys passed to the API (others are ignored: they may be meant for another provider).
PASSTHROUGH_OPTIONS = frozenset({"temperature"})


class OpenAIRequestError(VendorRequestError):
    """The API refused the request for a reason retrying will not fix (unknown model, bad parameter,
    wrong `base_url`, ...): a configuration problem, not the audio's and not the vendor's health."""


# ------------------------------------------------------------------------------------ response shapes


class _ApiWord(VendorBody):
    word: str
    start: float
    end: float


class _ApiSegment(VendorBody):
    start: float
    end: float
    text: str
    speaker: str | None = None


class _ApiUsage(VendorBody):
    type: str | None = None
    seconds: float | None = None


class _ApiLanguage(VendorBody):
    code: str


class _VerboseBody(VendorBody):
    text: str
    language: str | None = None
    duration: float | None = None
    segments: list[_ApiSegment] | None = None
    words: list[_ApiWord] | None = None
    usage: _ApiUsage | None = None


class _JsonBody(VendorBody):
    text: str
    languages: list[_ApiLanguage] | None = None
    usage: _ApiUsage | None = None


class _DiarizedBody(VendorBody):
    text: str
    duration: float | None = None
    segments: list[_ApiSegment]
    usage: _ApiUsage | None = None


# --------------------------------------------------------------------------------------------- provider


class OpenAIProvider(RemoteProvider[AsyncOpenAI]):
    """The OpenAI Audio API (or an OpenAI-compatible server) behind the `Provider` protocol.

    Settings (besides the key, base URL, model and timeout of every remote provider):
      base_url: e.g. "http://speaches:8000/v1"; OpenAI's own API when unset. With a `base_url` and no
        key, a placeholder key is sent (local servers usually need none).
      response_format: "auto" (from the model name; see the module docs), "verbose_json", "json" or
        "diarized_json".
      word_timestamps: ask for word timestamps with `verbose_json` (on by default).
    """

    name = "openai"
    keyless_placeholder = NO_KEY_PLACEHOLDER

    def __init__(self, *, response_format: str = "auto", word_timestamps: bool = True, **common: Any) -> None:
        super().__init__(**common)
        if response_format not in _FORMAT_SETTINGS:
            raise ValueError(
                "openai provider: response_format must be 'auto', 'verbose_json', 'json' or "
                f"'diarized_json', not {response_format!r}"
            )
        self.response_format = _FORMAT_SETTINGS[response_format]
        self.word_timestamps = word_timestamps

    def _make_client(self, api_key: str) -> AsyncOpenAI:
        return AsyncOpenAI(
            api_key=api_key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,  # retrying is the transcriber's job
        )

    async def _close_client(self, client: AsyncOpenAI) -> None:
        await client.close()

    def response_format_for(self, model: str) -> ResponseFormat:
        if self.response_format != "auto":
            return self.response_format
        name = model.lower().rsplit("/", 1)[-1]
        if "diarize" in name:
            return "diarized_json"
        if name.startswith("gpt-"):
            return "json"
        return "verbose_json"

    # ------------------------------------------------------------------------------------ transcribe

    async def _transcribe(self, audio_path: Path, request: ProviderRequest) -> ChunkTranscript:
        model = self.model_for(request)
        client = self.client()
        data, duration = await asyncio.to_thread(read_audio, audio_path)
        response_format = self.response_format_for(model)
        language = normalise_language(request.language)

        kwargs: dict[str, Any] = {
            "file": (audio_path.name, data, content_type(audio_path)),
            "model": model,
            "response_format": response_format,
        }
        if response_format == "verbose_json":
            kwargs["timestamp_granularities"] = ["segment", "word"] if self.word_timestamps else ["segment"]
        if response_format == "diarized_json":
            kwargs["chunking_strategy"] = "auto"  # required by the diarize model above 30 s
        if language:
            kwargs["language"] = language
        prompt = context_prompt(request)
        if prompt and response_format != "diarized_json":  # the diarize model takes no prompt
            kwargs["prompt"] = prompt
        for key, value in request.options.items():
            if key in PASSTHROUGH_OPTIONS:
                kwargs[key] = value

        started = time.perf_counter()
        try:
            # The raw response: the body is parsed and checked here, not trusted to the SDK.
            raw = await client.audio.transcriptions.with_raw_response.create(**kwargs)
            body = raw.content
        except openai.APIStatusError as exc:
            raise self._status_error(exc, model) from None  # `from None`: the vendor's text is redacted here
        except openai.APITimeoutError as exc:
            raise ProviderTimeoutError(
                f"openai ({model}): no answer within {self.timeout:g}s{self._where()}"
            ) from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc.__context__
            detail = f"{type(cause).__name__}: {cause}" if cause else exc.message
            raise ProviderUnavailableError(
                f"openai ({model}): cannot reach the API{self._where()}: {self.redact(detail)[:200]}"
            ) from exc
        except openai.APIResponseValidationError as exc:
            raise ProviderUnavailableError(
                f"openai ({model}): provider returned garbage: {self.redact(exc.message)[:200]}"
            ) from None
        except openai.OpenAIError as exc:
            raise OpenAIRequestError(
                f"openai ({model}): {type(exc).__name__}: {self.redact(str(exc))[:200]}"
            ) from None

        try:
            transcript = parse_response(
                body, response_format, duration=duration, model=model, requested_language=language
            )
        except GarbageResponseError as exc:
            raise ProviderUnavailableError(
                f"openai ({model}): provider returned garbage (HTTP {raw.status_code}): "
                f"{self.redact(str(exc))[:300]}"
            ) from None
        log.debug(
            "openai_transcribed",
            model=model,
            response_format=response_format,
            audio_seconds=round(duration, 3) if duration is not None else None,
            seconds=round(time.perf_counter() - started, 3),
            segments=len(transcript.segments),
            request_id=raw.request_id,
        )
        return transcript

    # ---------------------------------------------------------------------------------------- errors

    def _where(self) -> str:
        return f" at {self.base_url}" if self.base_url else ""

    def _status_error(self, exc: openai.APIStatusError, model: str) -> SttError:
        """The typed error for an HTTP error answer, chosen by exception type (and the error's code)."""
        status = exc.status_code
        code = _error_field(exc, "code")
        err_type = _error_field(exc, "type")
        param = _error_field(exc, "param")
        vendor = self.redact(_vendor_message(exc))[:200]
        label = code or err_type
        message = f"openai ({model}): HTTP {status}{f' {label}' if label else ''}: {vendor}"
        if exc.request_id:
            message += f" (request {exc.request_id})"
        retry_after = parse_retry_after(exc.response.headers)

        if isinstance(exc, openai.RateLimitError):
            if code in QUOTA_CODES or err_type in QUOTA_CODES:
                return QuotaExceededError(message)
            return RateLimitedError(message, retry_after=retry_after)
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return AuthError(message)
        if isinstance(exc, openai.InternalServerError):
            return ProviderUnavailableError(message, retry_after=retry_after)
        if isinstance(exc, openai.BadRequestError):
            # OpenAI names the offending field: `param: "file"` (or an audio error code) is about the audio;
            # another field (model, response_format, language, ...) is our configuration. A compatible
            # server that names nothing most likely objects to the audio, the only per-call input.
            if param == "file" or code in AUDIO_ERROR_CODES or param is None:
                return InvalidAudioError(message)
            return OpenAIRequestError(message)
        if status in (413, 415):  # too large / unsupported media type: this file will never pass
            return InvalidAudioError(message)
        if status == 408:
            return ProviderTimeoutError(message, retry_after=retry_after)
        if status in (409, 425):  # conflict / too early: worth another try
            return ProviderUnavailableError(message, retry_after=retry_after)
        return OpenAIRequestError(message)


# ---------------------------------------------------------------------------------------------- helpers


def _error_field(exc: openai.APIStatusError, name: str) -> str | None:
    body = exc.body  # the SDK already unwrapped `{"error": {...}}`
    value = body.get(name) if isinstance(body, dict) else None
    return str(value) if value is not None and str(value) != "" else None


def _vendor_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or body.get("error")
        if message:
            return " ".join(str(message).split())
    if isinstance(body, str) and body.strip():
        return " ".join(body.split())
    return exc.response.reason_phrase or "no details"


def _language_code(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return normalise_language(value)


def parse_response(
    body: bytes,
    response_format: ResponseFormat,
    *,
    duration: float | None,
    model: str,
    requested_language: str | None,
) -> ChunkTranscript:
    """A `ChunkTranscript` from a 200 body, or `GarbageResponseError` when it is not the documented shape."""
    if not body.strip():
        raise GarbageResponseError("empty body")
    try:
        if response_format == "verbose_json":
            verbose = _VerboseBody.model_validate_json(body)
            segments, language = _verbose_segments(verbose, duration), verbose.language
        elif response_format == "diarized_json":
            diarized = _DiarizedBody.model_validate_json(body)
            segments = _timed_segments(diarized.segments, None, time_limits(duration, diarized.duration))
            language = None
        else:
            plain = _JsonBody.model_validate_json(body)
            segments = _whole_segment(plain, duration)
            language = plain.languages[0].code if plain.languages else None
    except ValidationError as exc:
        raise GarbageResponseError(describe_validation_error(exc, body)) from None
    return ChunkTranscript(
        provider=OpenAIProvider.name,
        model=model,
        language=_language_code(language) or requested_language,
        segments=segments,
    )


def _timed_segments(
    api_segments: list[_ApiSegment], words: list[_ApiWord] | None, limits: tuple[float | None, float]
) -> list[Segment]:
    duration, max_time = limits
    for i, s in enumerate(api_segments):
        check_times(s.start, s.end, f"segment {i}", max_time)
    for i, w in enumerate(words or []):
        check_times(w.start, w.end, f"word {i}", max_time)

    segments: list[Segment] = []
    spans: list[tuple[float, float]] = []
    for s in api_segments:
        text = s.text.strip()
        if not text:
            continue
        start = clamp(s.start, duration)
        end = max(start, clamp(s.end, duration))
        segments.append(
            Segment(
                start=start, end=end, text=text, words=[] if words is not None else None, speaker=s.speaker
            )
        )
        spans.append((start, end))

    # verbose_json lists words for the whole file; give each to the segment holding its midpoint
    # (else the nearest one).
    for w in words or []:
        text = w.word.strip()
        if not text or not segments:
            continue
        start = clamp(w.start, duration)
        end = max(start, clamp(w.end, duration))
        mid = (start + end) / 2
        best = min(
            range(len(spans)),
            key=lambda i: (
                0.0
                if spans[i][0] <= mid <= spans[i][1]
                else min(abs(mid - spans[i][0]), abs(mid - spans[i][1]))
            ),
        )
        seg_words = segments[best].words
        assert seg_words is not None
        seg_words.append(Word(start=start, end=end, text=text))
    for segment in segments:
        if segment.words:
            segment.words.sort(key=lambda w: w.start)
    return segments


def _verbose_segments(body: _VerboseBody, duration: float | None) -> list[Segment]:
    limits = time_limits(duration, body.duration)
    if body.segments is None:
        raise GarbageResponseError("verbose_json without `segments`")
    if not body.segments and body.text.strip():
        # Text without segments: keep the text, spanning the audio, rather than lose it.
        known = limits[0]
        return [Segment(start=0.0, end=known or 0.0, text=body.text.strip(), words=None)]
    return _timed_segments(body.segments, body.words, limits)


def _whole_segment(body: _JsonBody, duration: float | None) -> list[Segment]:
    text = body.text.strip()
    if not text:
        return []
    if duration is None and body.usage is not None and body.usage.type == "duration":
        duration = body.usage.seconds
    if duration is not None and (not math.isfinite(duration) or duration < 0):
        raise GarbageResponseError(f"usage.seconds {duration!r}")
    return [Segment(start=0.0, end=duration or 0.0, text=text, words=None)]
