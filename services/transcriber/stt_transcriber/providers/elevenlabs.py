"""`elevenlabs`: ElevenLabs Speech to Text ("Scribe": `scribe_v1`, `scribe_v2`) over plain HTTP with httpx.

One request per chunk: `POST {base_url}/v1/speech-to-text`, multipart form with the WAV as `file`,
`model_id`, `timestamps_granularity=word`, `diarize`, `tag_audio_events` and, when known, `language_code`;
the key goes in the `xi-api-key` header. One `httpx.AsyncClient` is shared by every call of a provider
instance (its connection pool serves concurrent chunks); there are no retries here, retrying is the
transcriber's job, driven by the typed errors raised here.

The answer lists `words` with `type` "word", "spacing" or "audio_event". They are grouped into segments
here (ElevenLabs returns none): a new segment starts when the speaker changes (with diarization), after a
pause longer than `PAUSE_SPLIT_SECONDS`, after sentence-final punctuation once the segment is
`LONG_SEGMENT_SECONDS` long, and before a segment would exceed `MAX_SEGMENT_SECONDS`. Segment text is
rebuilt from the words and the vendor's own spacing entries (so languages written without spaces stay
right). `Word`s are the "word" entries only, with `probability = exp(logprob)`.

Audio events ("(laughter)", "(music)"): only asked for with `tag_audio_events=True`; they are then kept in
the segment text, in square brackets ("[laughter]"), never as `Word`s, and never split a segment on a
speaker change. Without the setting any event the API returns anyway is dropped.

Context: the API takes no free-text prompt, so `ProviderRequest.prompt` and the previous chunk's segments
(chained mode) are not sent. The job's `vocabulary` (`request.options["vocabulary"]`, a list of words and
names) and an explicit `request.options["keyterms"]` are sent as `keyterms`, which the API documents for
`scribe_v2` and later only (it refuses them for `scribe_v1` with a 400): they are left out for
`scribe_v1*` models. Keyterms over the documented limits (100 terms, under 50 characters, at most 5
words each) are dropped.

A 200 whose body is not the documented shape, or has impossible times, is reported as a transient
`ProviderUnavailableError` ("provider returned garbage"). A transcript with no words and no text is a
valid empty transcript.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
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
    describe_validation_error,
    garbage_error,
    http_status_error,
    one_line,
    read_audio,
    time_limits,
    transport_error,
)
from stt_transcriber.settings import TranscriberSettings

log = get_logger(__name__)

NAME = "elevenlabs"
DEFAULT_BASE_URL = "https://api.elevenlabs.io"
ENDPOINT = "/v1/speech-to-text"
KEY_ENV = "ELEVENLABS_API_KEY"
KEY_SETTING = "STT_ELEVENLABS_API_KEY"

# Segmenting the word list.
PAUSE_SPLIT_SECONDS = 1.0
LONG_SEGMENT_SECONDS = 5.0
MAX_SEGMENT_SECONDS = 30.0
# ASCII, ellipsis, CJK full stop, fullwidth ? and !, Arabic ?, Devanagari danda.
SENTENCE_END = (".", "?", "!", "\u2026", "\u3002", "\uff1f", "\uff01", "\u061f", "\u0964")
CLOSING_MARKS = "\"'\u201d\u2019\u00bb)]"

# Documented keyterm limits.
MAX_KEYTERMS = 100
MAX_KEYTERM_CHARS = 49
MAX_KEYTERM_WORDS = 5

# Values of the error body's `detail.code` / `detail.status` (legacy) / `detail.type` that mean the
# account is out of credit (ElevenLabs has answered that with 401 `quota_exceeded` as well as 402).
QUOTA_CODES = frozenset({"quota_exceeded", "insufficient_credits", "payment_required"})
# Codes of a 400/422 that are about the uploaded audio (besides `param: "file"`).
AUDIO_ERROR_CODES = frozenset(
    {
        "invalid_audio",
        "invalid_audio_format",
        "invalid_file_type",
        "audio_too_long",
        "audio_too_short",
        "request_too_large",
    }
)
# `request.options` keys sent as form fields (others are ignored: they may be meant for another provider).
PASSTHROUGH_OPTIONS = frozenset({"temperature", "seed", "num_speakers", "diarization_threshold"})

# ISO 639-3 (and 639-2/B) codes as ElevenLabs reports them ("eng") to the ISO 639-1 codes the rest of
# the pipeline uses. Codes not listed are kept as they are.
ISO639_3_TO_1: dict[str, str] = {
    "eng": "en", "spa": "es", "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "ita": "it",
    "por": "pt", "rus": "ru", "ukr": "uk", "pol": "pl", "nld": "nl", "dut": "nl", "swe": "sv",
    "nor": "no", "nob": "nb", "nno": "nn", "dan": "da", "fin": "fi", "ces": "cs", "cze": "cs",
    "slk": "sk", "slo": "sk", "hun": "hu", "ron": "ro", "rum": "ro", "bul": "bg", "hrv": "hr",
    "srp": "sr", "slv": "sl", "ell": "el", "gre": "el", "tur": "tr", "ara": "ar", "heb": "he",
    "fas": "fa", "per": "fa", "hin": "hi", "ben": "bn", "urd": "ur", "tam": "ta", "tel": "te",
    "mar": "mr", "guj": "gu", "kan": "kn", "mal": "ml", "pan": "pa", "tha": "th", "vie": "vi",
    "ind": "id", "msa": "ms", "may": "ms", "tgl": "tl", "cmn": "zh", "zho": "zh", "chi": "zh",
    "jpn": "ja", "kor": "ko", "hye": "hy", "arm": "hy", "kat": "ka", "geo": "ka", "aze": "az",
    "kaz": "kk", "uzb": "uz", "est": "et", "lav": "lv", "lit": "lt", "cat": "ca", "eus": "eu",
    "baq": "eu", "glg": "gl", "isl": "is", "ice": "is", "gle": "ga", "cym": "cy", "wel": "cy",
    "afr": "af", "swa": "sw", "amh": "am", "bel": "be", "mkd": "mk", "mac": "mk", "bos": "bs",
    "sqi": "sq", "alb": "sq", "mon": "mn", "nep": "ne", "sin": "si", "khm": "km", "lao": "lo",
    "mya": "my", "bur": "my", "ltz": "lb", "mlt": "mt", "som": "so", "yor": "yo", "hau": "ha",
}  # fmt: skip


class ElevenLabsRequestError(VendorRequestError):
    """ElevenLabs refused the request for a reason retrying will not fix (unknown model, bad parameter,
    wrong `base_url`, ...): a configuration problem, not the audio's and not the vendor's health."""


# What the operator can do, by the kind of error (appended to every message).
HINTS: dict[type[SttError], str] = {
    AuthError: f"check {KEY_SETTING} (the key needs Speech to Text access)",
    QuotaExceededError: "the ElevenLabs account is out of credits: top up or upgrade the plan, then retry",
    RateLimitedError: "too many requests or concurrent transcriptions for the ElevenLabs plan; "
    "retried later (or lower the transcriber's concurrency for elevenlabs)",
    ProviderUnavailableError: "ElevenLabs is unavailable or unreachable (check STT_ELEVENLABS_BASE_URL "
    "and egress if it persists); retried later",
    ProviderTimeoutError: "retried later; raise STT_PROVIDER_TIMEOUT_SECONDS if long chunks need more time",
    InvalidAudioError: "ElevenLabs refused this chunk's audio; check the source media",
    ElevenLabsRequestError: "check STT_ELEVENLABS_MODEL, STT_ELEVENLABS_BASE_URL and the job's options",
}


# ------------------------------------------------------------------------------------ response shapes


class _ApiWord(VendorBody):
    text: str
    type: str
    start: float | None = None
    end: float | None = None
    speaker_id: str | None = None
    logprob: float | None = None


class _ApiBody(VendorBody):
    text: str
    words: list[_ApiWord]
    language_code: str | None = None
    language_probability: float | None = None


# --------------------------------------------------------------------------------------------- provider


class ElevenLabsProvider(RemoteProvider[httpx.AsyncClient]):
    """ElevenLabs Speech to Text behind the `Provider` protocol.

    Settings (besides the key, base URL, model and timeout of every remote provider):
      base_url: "https://api.elevenlabs.io" by default (a data-residency host, or a test server); a
        trailing "/v1" is ignored.
      model: "scribe_v2" by default (the current batch model; "scribe_v1" still works).
      diarize: ask for speaker labels (`Segment.speaker` is then "speaker_0", "speaker_1", ...).
      tag_audio_events: ask for audio events, kept in the segment text as "[laughter]".
    """

    name = NAME
    hints = HINTS

    def __init__(self, *, diarize: bool = False, tag_audio_events: bool = False, **common: Any) -> None:
        super().__init__(**common)
        self.base_url: str = (self.base_url or DEFAULT_BASE_URL).removesuffix("/v1")
        self.diarize = bool(diarize)
        self.tag_audio_events = bool(tag_audio_events)

    @classmethod
    def settings_kwargs(cls, settings: TranscriberSettings) -> dict[str, Any]:
        return {
            **super().settings_kwargs(settings),
            "diarize": settings.elevenlabs_diarize,
            "tag_audio_events": settings.elevenlabs_tag_audio_events,
        }

    def _make_client(self, api_key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url or DEFAULT_BASE_URL,
            timeout=httpx.Timeout(self.timeout),
            headers={"xi-api-key": api_key, "accept": "application/json"},
            follow_redirects=False,
        )

    async def _close_client(self, client: httpx.AsyncClient) -> None:
        await client.aclose()

    # ------------------------------------------------------------------------------------ transcribe

    async def _transcribe(self, audio_path: Path, request: ProviderRequest) -> ChunkTranscript:
        model = self.model_for(request)
        label = f"{NAME} ({model})"
        client = self.client()
        data, duration = await asyncio.to_thread(read_audio, audio_path)
        language = normalise_language(request.language)
        form = self._form(model, language, request)
        files = {"file": (audio_path.name, data, content_type(audio_path))}

        started = time.perf_counter()
        try:
            response = await client.post(ENDPOINT, data=form, files=files)
        except httpx.TransportError as exc:
            err = transport_error(label, self.base_url, exc, self.timeout)
            raise err from exc
        except httpx.HTTPError as exc:  # an invalid URL and the like: configuration
            detail = self.redact(one_line(str(exc))) or type(exc).__name__
            raise ElevenLabsRequestError(f"{label}: {detail}") from None

        if response.status_code != 200:
            raise self._status_error(response, model)
        try:
            transcript = parse_response(
                response.content,
                duration=duration,
                model=model,
                requested_language=language,
                diarize=self.diarize,
                tag_audio_events=self.tag_audio_events,
            )
        except GarbageResponseError as exc:
            what = f"(HTTP {response.status_code}) {self.redact(one_line(str(exc), 300))}"
            raise garbage_error(label, what) from None
        log.debug(
            "elevenlabs_transcribed",
            model=model,
            audio_seconds=round(duration, 3) if duration is not None else None,
            seconds=round(time.perf_counter() - started, 3),
            segments=len(transcript.segments),
            language=transcript.language,
            request_id=response.headers.get("request-id"),
        )
        return transcript

    def _form(self, model: str, language: str | None, request: ProviderRequest) -> dict[str, Any]:
        form: dict[str, Any] = {
            "model_id": model,
            "timestamps_granularity": "word",
            "diarize": _form_bool(self.diarize),
            "tag_audio_events": _form_bool(self.tag_audio_events),
        }
        if language:
            form["language_code"] = language
        for key, value in request.options.items():
            if key not in PASSTHROUGH_OPTIONS or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ElevenLabsRequestError(
                    f"{NAME} ({model}): option {key!r} must be a number, not {type(value).__name__}; "
                    "fix the job's options"
                )
            form[key] = str(value)
        terms = keyterms(request.options)
        if terms and supports_keyterms(model):
            form["keyterms"] = terms
        elif terms:
            log.debug("elevenlabs_keyterms_skipped", model=model, keyterms=len(terms))
        return form

    # ---------------------------------------------------------------------------------------- errors

    def _status_error(self, response: httpx.Response, model: str) -> SttError:
        """The typed error for an HTTP error answer, from its status and the body's `detail`."""
        status = response.status_code
        info = parse_error_body(response.content)
        vendor = one_line(self.redact(info.message or response.reason_phrase or "no details"))
        label = info.code or info.status or info.type
        message = f"{NAME} ({model}): HTTP {status}{f' {label}' if label else ''}: {vendor}"
        if info.request_id:
            message += f" (request {one_line(self.redact(info.request_id), 80)})"
        quota = bool(QUOTA_CODES & {info.code, info.status, info.type})
        about_audio = info.param == "file" or bool(AUDIO_ERROR_CODES & {info.code, info.status})
        err = http_status_error(status, message, response.headers, quota=quota, about_audio=about_audio)
        if type(err) is VendorRequestError:
            err = ElevenLabsRequestError(err.message, retry_after=err.retry_after)
        return err


# ---------------------------------------------------------------------------------------------- helpers


def language_from_api(code: str | None) -> str | None:
    """The API's `language_code` ("eng") as the ISO 639-1 code the pipeline uses ("en")."""
    if code is None or not code.strip():
        return None
    value = normalise_language(code)
    return ISO639_3_TO_1.get(value, value) if value else None


def supports_keyterms(model: str) -> bool:
    """Keyterms are documented for Scribe v2 and later; `scribe_v1` (and its variants) refuse them."""
    return not model.strip().lower().startswith("scribe_v1")


def keyterms(options: Mapping[str, Any]) -> list[str]:
    """The job's `vocabulary` and any explicit `keyterms`, within the documented limits, deduplicated."""
    raw: list[Any] = []
    for key in ("keyterms", "vocabulary"):
        value = options.get(key)
        if isinstance(value, str):
            raw.append(value)
        elif isinstance(value, list | tuple):
            raw.extend(value)
    terms: list[str] = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, str):
            continue
        term = " ".join(item.split())
        if not term or len(term) > MAX_KEYTERM_CHARS or len(term.split()) > MAX_KEYTERM_WORDS:
            continue
        if term.casefold() in seen:
            continue
        seen.add(term.casefold())
        terms.append(term)
        if len(terms) == MAX_KEYTERMS:
            break
    return terms


def _form_bool(value: bool) -> str:
    return "true" if value else "false"


@dataclass(frozen=True)
class ErrorInfo:
    """What an error body says: `{"detail": {type, code, status, message, param, request_id}}`, or a
    validation error `{"detail": [{loc, msg, type}, ...]}`, or anything else as text."""

    message: str | None = None
    code: str | None = None
    status: str | None = None
    type: str | None = None
    param: str | None = None
    request_id: str | None = None
    locations: list[str] = field(default_factory=list)


def _str(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int | float) and str(value) != "" else None


def parse_error_body(body: bytes) -> ErrorInfo:
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        return ErrorInfo(message=text or None)
    detail = parsed.get("detail", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(detail, dict):
        return ErrorInfo(
            message=_str(detail.get("message")) or _str(detail.get("msg")),
            code=_str(detail.get("code")),
            status=_str(detail.get("status")),
            type=_str(detail.get("type")),
            param=_str(detail.get("param")),
            request_id=_str(detail.get("request_id")),
        )
    if isinstance(detail, list):  # validation errors: [{"loc": ["body", "file"], "msg": ..., "type": ...}]
        parts: list[str] = []
        fields: list[str] = []
        for item in detail:
            if not isinstance(item, dict):
                continue
            loc = item.get("loc")
            where = [str(p) for p in loc] if isinstance(loc, list) else []
            name = where[-1] if where and where[0] == "body" else (".".join(where) or "request")
            fields.append(name)
            parts.append(f"{name}: {_str(item.get('msg')) or 'invalid'}")
        more = f" (+{len(parts) - 3} more)" if len(parts) > 3 else ""
        return ErrorInfo(
            message="; ".join(parts[:3]) + more or None,
            type="validation_error",
            param="file" if "file" in fields else (fields[0] if fields else None),
            locations=fields,
        )
    if isinstance(detail, str):
        return ErrorInfo(message=detail)
    return ErrorInfo(message=text or None)


# ------------------------------------------------------------------------------------------ the answer


@dataclass
class _Open:
    """The segment being built."""

    start: float
    end: float
    text: str
    speaker: str | None
    words: list[Word]
    last_word: str = ""


def parse_response(
    body: bytes,
    *,
    duration: float | None,
    model: str,
    requested_language: str | None,
    diarize: bool,
    tag_audio_events: bool,
) -> ChunkTranscript:
    """A `ChunkTranscript` from a 200 body, or `GarbageResponseError` when it is not the documented shape."""
    if not body.strip():
        raise GarbageResponseError("empty body")
    try:
        api = _ApiBody.model_validate_json(body)
    except ValidationError as exc:
        raise GarbageResponseError(describe_validation_error(exc, body)) from None
    return ChunkTranscript(
        provider=NAME,
        model=model,
        language=language_from_api(api.language_code) or requested_language,
        segments=build_segments(api, duration, diarize=diarize, tag_audio_events=tag_audio_events),
    )


def build_segments(
    api: _ApiBody, duration: float | None, *, diarize: bool, tag_audio_events: bool
) -> list[Segment]:
    known, max_time = time_limits(duration, None)
    spoken = [w for w in api.words if w.type == "word" and w.text.strip()]
    timed = [w for w in spoken if w.start is not None and w.end is not None]
    if not spoken or not timed:
        # No words (or none with times): the text, if any, as one segment spanning the audio.
        text = api.text.strip()
        return [Segment(start=0.0, end=known or 0.0, text=text, words=None)] if text else []
    if len(timed) != len(spoken):
        i = next(
            i
            for i, w in enumerate(api.words)
            if w.type == "word" and w.text.strip() and (w.start is None or w.end is None)
        )
        raise GarbageResponseError(f"word {i} ({api.words[i].text!r}) has no start or end time")

    # Words are joined by the vendor's spacing entries; a body without any is joined by spaces unless
    # its text has none (a language written without spaces).
    has_spacing = any(w.type == "spacing" for w in api.words)
    joiner = " " if any(c.isspace() for c in api.text.strip()) else ""
    segments: list[Segment] = []
    current: _Open | None = None
    gap = ""  # spacing seen since the last token of the current segment

    def close() -> None:
        nonlocal current
        if current is not None:
            segments.append(
                Segment(
                    start=current.start,
                    end=current.end,
                    text=current.text.strip(),
                    words=current.words,
                    speaker=current.speaker,
                )
            )
        current = None

    for i, w in enumerate(api.words):
        if w.type == "spacing":
            gap += w.text
            continue
        is_word = w.type == "word"
        if not is_word and not (w.type == "audio_event" and tag_audio_events):
            continue  # unknown types, and events nobody asked for
        text = w.text.strip()
        if not text or w.start is None or w.end is None:
            continue
        check_times(w.start, w.end, f"{w.type} {i}", max_time)
        start = clamp(w.start, known)
        end = max(start, clamp(w.end, known))
        if not is_word:
            text = f"[{text.strip('()[] ')}]"
        speaker = w.speaker_id if diarize and is_word else None

        if current is not None and _splits(current, start, end, speaker if is_word else None):
            close()
        if current is None:
            current = _Open(start=start, end=end, text=text, speaker=speaker, words=[])
        else:
            spacing = (" " if gap.isspace() else gap) if has_spacing else joiner
            current.text += spacing + text
            current.end = max(current.end, end)
            if current.speaker is None and speaker is not None:
                current.speaker = speaker
        gap = ""
        if is_word:
            probability = None
            if w.logprob is not None:
                probability = min(1.0, math.exp(min(w.logprob, 0.0)))
            current.words.append(Word(start=start, end=end, text=text, probability=probability))
            current.last_word = text
    close()
    return [s for s in segments if s.text]


def _splits(current: _Open, start: float, end: float, speaker: str | None) -> bool:
    """Whether a token from `start` to `end` (spoken by `speaker`, if known) begins a new segment."""
    if speaker is not None and current.speaker is not None and speaker != current.speaker:
        return True
    if start - current.end > PAUSE_SPLIT_SECONDS:
        return True
    if (
        current.last_word.rstrip(CLOSING_MARKS).endswith(SENTENCE_END)
        and current.end - current.start >= LONG_SEGMENT_SECONDS
    ):
        return True
    return end - current.start > MAX_SEGMENT_SECONDS and current.end > current.start
