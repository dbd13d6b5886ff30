"""`gemini`: Google's Gemini models (Google AI / `generativelanguage.googleapis.com`) through the
`google-genai` SDK, asked for a verbatim transcript as JSON with segment times.

One `genai.Client` per provider instance, made on first use, over an `httpx.AsyncClient` of our own
(so transport errors are httpx's, and `aclose` closes it). The SDK's own retries are off
(`HttpRetryOptions(attempts=1)`; with `retry_options` unset it would still retry a refused connection
once after 1-10 s): retrying is the transcriber's job, driven by the typed errors raised here. API version
`v1beta`, where the Files API, `systemInstruction` and `responseSchema` are documented.

The audio goes inline (base64 in the request) up to `inline_max_bytes` (15 MiB by default: Google caps a
whole request at 20 MB and base64 adds a third). Larger chunks go through the Files API: resumable upload,
`files.get` every `file_poll_interval` s until the file is ACTIVE (at most `file_wait_timeout` s, then
`ProviderTimeoutError`; FAILED is `InvalidAudioError`), generate with a `fileData` reference, and delete
the file afterwards whether generation worked or not (a failed delete is logged, never raised: Google
drops files after 48 hours anyway).

The answer is the model's text, requested with `response_mime_type="application/json"` and a response
schema: `{"language": "<ISO 639-1>", "segments": [{"start", "end", "text", "speaker"?}]}` with times in
seconds from the start of the audio. It is parsed strictly here; times may also come as strings, plain
("12.5"), "MM:SS(.f)" or "HH:MM:SS(.f)", which models sometimes write despite the schema; a JSON answer
wrapped in a ```json fence is unwrapped. Times are checked against the WAV's duration and clamped to it;
there are no word timestamps (`words=None`).

What the answer can be besides a transcript:
  * blocked: `promptFeedback.blockReason`, or a candidate stopped with finishReason SAFETY, RECITATION,
    PROHIBITED_CONTENT, BLOCKLIST, SPII (or IMAGE_SAFETY): `GeminiBlockedError`, permanent (the same audio
    will be refused again);
  * truncated: finishReason MAX_TOKENS. Reported as transient "provider returned garbage ... output was
    truncated": the output budget is the model's, a retry may be shorter, and failing the chunk for good
    on a first truncation would be harsher than the other providers are;
  * no candidates, no text, text that is not the JSON above, impossible times: transient "provider
    returned garbage" (`ProviderUnavailableError`), as for every provider.

HTTP errors (Google's `{"error": {"code", "message", "status", "details"}}`), by rule:
  * 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, and a 400 whose ErrorInfo reason is API_KEY_INVALID (or
    whose message says the API key is not valid / expired): `AuthError`;
  * 429 RESOURCE_EXHAUSTED: `RateLimitedError`, `retry_after` from the `google.rpc.RetryInfo` detail
    (`retryDelay`, e.g. "17s"), else the Retry-After header. Google sends the same message ("You exceeded
    your current quota, please check your plan and billing details") for per-minute and per-day limits,
    so the message alone decides nothing: it is `QuotaExceededError` when a QuotaFailure violation (or
    ErrorInfo metadata) names a per-day quota ("...PerDay..."), or the message speaks of a daily limit,
    depleted prepaid credits, a spending cap or a billing account that is missing or disabled (also on
    a 400 FAILED_PRECONDITION, Google's answer when the free tier is unavailable and billing is needed);
  * 400 INVALID_ARGUMENT about the audio (its words mention audio, media, MIME type, the inline data or
    file data, or the payload size): `InvalidAudioError`; other 400s and 404s: `VendorRequestError`;
  * 500, 503 UNAVAILABLE: `ProviderUnavailableError`; 504 / DEADLINE_EXCEEDED and client timeouts:
    `ProviderTimeoutError`; connection failures: `ProviderUnavailableError`.
Messages name the provider, model, HTTP and Google status and the vendor's words (one line), redacted:
the key travels in the `x-goog-api-key` header and never appears in messages or `repr`.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import BeforeValidator, ValidationError

from stt_common.errors import (
    AuthError,
    InvalidAudioError,
    ProviderTimeoutError,
    QuotaExceededError,
    SttError,
)
from stt_common.logs import get_logger
from stt_common.providers.base import ProviderRequest
from stt_common.providers.languages import normalise_language
from stt_common.transcript import ChunkTranscript, Segment
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
    garbage_error,
    http_status_error,
    one_line,
    parse_retry_after,
    read_audio,
    time_limits,
    transport_error,
)
from stt_transcriber.settings import TranscriberSettings

log = get_logger(__name__)

T = TypeVar("T")

API_VERSION = "v1beta"
# How much of the previous chunk's text goes into the prompt (an LLM reads far more than Whisper's 224
# tokens; a few sentences are enough for names, spelling and who was speaking).
GEMINI_CONTEXT_CHARS = 600
# Finish reasons (and prompt block reasons) meaning Google refused the content: permanent.
BLOCK_FINISH_REASONS = frozenset(
    {"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY"}
)
# Daily caps, prepaid credit and billing problems: retrying within minutes will not help.
_QUOTA_WORDS = re.compile(
    r"(?i)per[ _-]?day|\bdaily\b|credits? (?:are |is |have been )?(?:depleted|exhausted|used up)"
    r"|prepay|spend(?:ing)? cap|billing (?:account|is (?:not |dis)|has been dis|not enabled)|enable billing"
)
_AUDIO_WORDS = re.compile(
    r"(?i)audio|\bmedia\b|mime[ _]?type|inline[ _]?data|file[ _]?data|payload size|\bduration\b|too large"
)
_KEY_WORDS = re.compile(r"(?i)\bapi[ _]?key\b[^.]{0,80}?\b(?:not valid|invalid|expired)")
_AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)s\s*$")
_CLOCK = re.compile(r"^\s*(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:[.,]\d+)?)\s*$")
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)

INSTRUCTION = """\
You are a transcription engine. Transcribe the speech in the attached audio verbatim, in the language \
spoken (do not translate, summarise, correct or complete it). Answer only with JSON of this shape:
{"language": "<ISO 639-1 code of the spoken language>", "segments": [{"start": <seconds>, \
"end": <seconds>, "text": "<what was said>", "speaker": "<optional speaker label>"}]}
Times are numbers of seconds from the start of this audio (not clock strings), in order, within the \
audio's length; one segment per sentence or phrase, at most about 15 seconds long. Label speakers \
consistently ("A", "B", ...) when there is more than one. If there is no speech, answer \
{"language": null, "segments": []}. Text given as context below is NOT part of the audio: never \
transcribe it, use it only for spelling, names and speaker continuity."""


class GeminiBlockedError(VendorRequestError):
    """Google refused to transcribe this content (safety filters, recitation, prohibited content): the
    same audio will be refused again, so the error is permanent."""


# ------------------------------------------------------------------------------------ response shapes


def _seconds(value: Any) -> Any:
    """A time as seconds: a number, or a string "12.5", "MM:SS(.f)" or "HH:MM:SS(.f)"."""
    if isinstance(value, bool):
        raise ValueError("a time must be a number of seconds, not a boolean")
    if not isinstance(value, str):
        return value  # numbers (and anything else, for pydantic to reject) as they are
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _CLOCK.match(text)
    if match is None:
        raise ValueError(f"a time must be seconds or MM:SS / HH:MM:SS, not {value[:20]!r}")
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds.replace(",", "."))


Seconds = Annotated[float, BeforeValidator(_seconds)]


class _ModelSegment(VendorBody):
    start: Seconds
    end: Seconds
    text: str
    speaker: str | None = None


class _ModelTranscript(VendorBody):
    language: str | None = None
    segments: list[_ModelSegment]


def _response_schema() -> types.Schema:
    segment = types.Schema(
        type=types.Type.OBJECT,
        properties={
            "start": types.Schema(type=types.Type.NUMBER, description="seconds from the start of the audio"),
            "end": types.Schema(type=types.Type.NUMBER, description="seconds from the start of the audio"),
            "text": types.Schema(type=types.Type.STRING),
            "speaker": types.Schema(type=types.Type.STRING, nullable=True),
        },
        required=["start", "end", "text"],
        property_ordering=["start", "end", "text", "speaker"],
    )
    return types.Schema(
        type=types.Type.OBJECT,
        properties={
            "language": types.Schema(type=types.Type.STRING, nullable=True, description="ISO 639-1"),
            "segments": types.Schema(type=types.Type.ARRAY, items=segment),
        },
        required=["segments"],
        property_ordering=["language", "segments"],
    )


# --------------------------------------------------------------------------------------------- provider


class GeminiProvider(RemoteProvider[genai.Client]):
    """Gemini (Google AI Studio API) behind the `Provider` protocol.

    Settings (besides the key, base URL, model and timeout of every remote provider):
      inline_max_bytes: audio larger than this goes through the Files API (15 MiB by default).
      temperature: sampling temperature (0 for the most literal transcript).
      file_poll_interval, file_wait_timeout: how often, and how long at most, to wait for an uploaded
        file to become ACTIVE.
    """

    name = "gemini"

    def __init__(
        self,
        *,
        inline_max_bytes: int = 15 * 1024 * 1024,
        temperature: float = 0.0,
        file_poll_interval: float = 1.0,
        file_wait_timeout: float = 120.0,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if inline_max_bytes < 0:
            raise ValueError(f"gemini provider: inline_max_bytes must be >= 0, not {inline_max_bytes}")
        if not (0.0 <= temperature <= 2.0):
            raise ValueError(f"gemini provider: temperature must be within 0..2, not {temperature}")
        if file_poll_interval <= 0 or file_wait_timeout <= 0:
            raise ValueError("gemini provider: file_poll_interval and file_wait_timeout must be > 0")
        self.inline_max_bytes = int(inline_max_bytes)
        self.temperature = float(temperature)
        self.file_poll_interval = float(file_poll_interval)
        self.file_wait_timeout = float(file_wait_timeout)
        self._http: httpx.AsyncClient | None = None

    @classmethod
    def settings_kwargs(cls, settings: TranscriberSettings) -> dict[str, Any]:
        return {
            **super().settings_kwargs(settings),
            "inline_max_bytes": settings.gemini_inline_max_bytes,
            "temperature": settings.gemini_temperature,
        }

    def _make_client(self, api_key: str) -> genai.Client:
        self._http = httpx.AsyncClient(timeout=self.timeout)
        return genai.Client(
            vertexai=False,
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=self.base_url,
                api_version=API_VERSION,
                timeout=max(1, round(self.timeout * 1000)),  # milliseconds
                retry_options=types.HttpRetryOptions(attempts=1),  # retrying is the transcriber's job
                httpx_async_client=self._http,
            ),
        )

    async def _close_client(self, client: genai.Client) -> None:
        http, self._http = self._http, None
        await client.aio.aclose()
        client.close()  # the SDK's (unused) synchronous client
        if http is not None:
            await http.aclose()  # ours: the SDK leaves a client it was given open

    # ------------------------------------------------------------------------------------ transcribe

    async def _transcribe(self, audio_path: Path, request: ProviderRequest) -> ChunkTranscript:
        model = self.model_for(request)
        client = self.client()
        data, duration = await asyncio.to_thread(read_audio, audio_path)
        mime_type = content_type(audio_path)
        language = normalise_language(request.language)
        prompt = build_prompt(request, language, duration)
        started = time.perf_counter()

        uploaded: str | None = None
        try:
            if len(data) > self.inline_max_bytes:
                uploaded, audio_part = await self._upload(client, data, mime_type, audio_path.name, model)
            else:
                audio_part = types.Part.from_bytes(data=data, mime_type=mime_type)
            response = await self._call(
                model,
                "generateContent",
                client.aio.models.generate_content(
                    model=model,
                    contents=[
                        types.Content(role="user", parts=[audio_part, types.Part.from_text(text=prompt)])
                    ],
                    config=types.GenerateContentConfig(
                        system_instruction=INSTRUCTION,
                        temperature=self.temperature,
                        response_mime_type="application/json",
                        response_schema=_response_schema(),
                    ),
                ),
            )
        finally:
            if uploaded is not None:
                await self._delete(client, uploaded, model)

        try:
            transcript = parse_response(response, duration=duration, model=model, requested_language=language)
        except GarbageResponseError as exc:
            raise garbage_error(f"gemini ({model})", self.redact(str(exc))[:300]) from None
        usage = response.usage_metadata
        log.debug(
            "gemini_transcribed",
            model=model,
            via_files_api=uploaded is not None,
            audio_seconds=round(duration, 3) if duration is not None else None,
            seconds=round(time.perf_counter() - started, 3),
            segments=len(transcript.segments),
            prompt_tokens=usage.prompt_token_count if usage else None,
            output_tokens=usage.candidates_token_count if usage else None,
            response_id=response.response_id,
        )
        return transcript

    # ----------------------------------------------------------------------------------- Files API

    async def _upload(
        self, client: genai.Client, data: bytes, mime_type: str, display_name: str, model: str
    ) -> tuple[str | None, types.Part]:
        """Upload, wait until ACTIVE; (the file's name, for deleting it, and the part referencing it).

        Raising after the upload deletes the file here; the caller deletes it after generation."""
        file = await self._call(
            model,
            "Files API upload",
            client.aio.files.upload(
                file=io.BytesIO(data),
                config=types.UploadFileConfig(mime_type=mime_type, display_name=display_name),
            ),
        )
        if not file.name:
            raise garbage_error(f"gemini ({model})", "Files API upload answered a file without a name")
        try:
            file = await self._wait_active(client, file, model)
            if not file.uri:
                raise garbage_error(f"gemini ({model})", f"Files API file {file.name} without a uri")
        except BaseException:
            await self._delete(client, file.name, model)
            raise
        return file.name, types.Part.from_uri(file_uri=file.uri, mime_type=file.mime_type or mime_type)

    async def _wait_active(self, client: genai.Client, file: types.File, model: str) -> types.File:
        deadline = time.monotonic() + self.file_wait_timeout
        name = file.name or ""
        while True:
            state = file.state.value if file.state is not None else "STATE_UNSPECIFIED"
            if state == "ACTIVE":
                return file
            if state == "FAILED":
                reason = one_line(file.error.message or "") if file.error else ""
                raise InvalidAudioError(
                    f"gemini ({model}): the Files API could not process the audio ({name} FAILED)"
                    + (f": {self.redact(reason)}" if reason else "")
                )
            if time.monotonic() >= deadline:
                raise ProviderTimeoutError(
                    f"gemini ({model}): uploaded file {name} not ACTIVE within "
                    f"{self.file_wait_timeout:g} s (state {state})"
                )
            await asyncio.sleep(self.file_poll_interval)
            file = await self._call(model, "Files API get", client.aio.files.get(name=name))

    async def _delete(self, client: genai.Client, name: str | None, model: str) -> None:
        """Best effort: a file left behind expires after 48 hours; never hides the call's own outcome."""
        if not name:
            return
        try:
            await self._call(model, "Files API delete", client.aio.files.delete(name=name))
        except Exception as exc:  # logged: the transcription's own outcome is what matters
            log.warning(
                "gemini_file_delete_failed", model=model, file=name, error=self.redact(str(exc))[:300]
            )

    # ---------------------------------------------------------------------------------------- errors

    def _where(self) -> str:
        return f" at {self.base_url}" if self.base_url else ""

    async def _call(self, model: str, what: str, call: Awaitable[T]) -> T:
        """Await an SDK call, turning whatever it raises into a typed error (the vendor's text redacted,
        not chained: `from None`)."""
        label = f"gemini ({model})"
        try:
            return await call
        except genai_errors.APIError as exc:
            raise self._status_error(exc, model, what) from None
        except httpx.TransportError as exc:
            err = transport_error(label, f"the Gemini API{self._where()} ({what})", exc, self.timeout)
            raise type(err)(self.redact(err.message)) from None
        except TimeoutError:
            raise ProviderTimeoutError(
                f"{label}: no answer from the Gemini API{self._where()} ({what}) within {self.timeout:g} s"
            ) from None
        except (
            ValidationError,
            genai_errors.UnknownApiResponseError,
            ValueError,
            KeyError,
            TypeError,
        ) as exc:
            # The SDK could not read a 200 answer (not JSON, not its shape, an upload not finalised).
            kind = "answer is not JSON" if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            detail = one_line(f"{kind}: {exc}", 300)
            raise garbage_error(label, f"{what}: {self.redact(detail)}") from None

    def _status_error(self, exc: genai_errors.APIError, model: str, what: str) -> SttError:
        code = int(exc.code) if isinstance(exc.code, int) else 0
        status = str(exc.status) if exc.status else ""
        vendor = self.redact(one_line(str(exc.message or "") or "no details"))
        details = _error_details(exc.details)
        where = "" if what == "generateContent" else f"{what}: "
        message = f"gemini ({model}): {where}HTTP {code}{f' {status}' if status else ''}: {vendor}"
        headers = getattr(exc.response, "headers", None) or {}
        retry_after = _retry_delay(details)
        if retry_after is None:
            retry_after = parse_retry_after(headers)

        if _is_key_problem(code, exc.message, details):
            return AuthError(message)
        quota = (code == 429 or status == "RESOURCE_EXHAUSTED" or status == "FAILED_PRECONDITION") and (
            _is_quota(exc.message, details)
        )
        if quota:
            return QuotaExceededError(message, retry_after=retry_after)
        if status == "DEADLINE_EXCEEDED" and code != 504:
            return ProviderTimeoutError(message, retry_after=retry_after)
        about_audio = (
            code == 400
            and status in ("INVALID_ARGUMENT", "")
            and bool(_AUDIO_WORDS.search(str(exc.message or "")))
        )
        err = http_status_error(code, message, headers, about_audio=about_audio)
        if err.transient and retry_after is not None:
            err.retry_after = retry_after
        return err


# ---------------------------------------------------------------------------------------------- helpers


def build_prompt(request: ProviderRequest, language: str | None, duration: float | None) -> str:
    """The text part sent with the audio: the audio's length and language, then vocabulary and the
    previous chunk's last words, both marked as context that is not to be transcribed."""
    lines: list[str] = []
    if duration is not None:
        lines.append(
            f"The audio is {duration:.2f} seconds long; every time must lie within 0..{duration:.2f}."
        )
    if language:
        lines.append(f'The audio is in the language with ISO 639-1 code "{language}".')
    else:
        lines.append("Detect the spoken language.")
    if request.prompt and request.prompt.strip():
        lines.append(
            "Vocabulary and spellings to use when these words are spoken (context, not to be transcribed):\n"
            f"<vocabulary>\n{request.prompt.strip()}\n</vocabulary>"
        )
    previous = context_prompt(replace(request, prompt=None), GEMINI_CONTEXT_CHARS)
    if previous:
        speakers = [s.speaker for s in request.context_segments if s.speaker and s.text.strip()]
        who = f" (its last speaker was labelled {speakers[-1]!r})" if speakers else ""
        lines.append(
            "The previous part of the recording ended with these words" + who + ". They are context only, "
            "not part of this audio; do not repeat them:\n"
            f"<previous>\n{previous}\n</previous>"
        )
    lines.append("Transcribe the audio now.")
    return "\n".join(lines)


def _error_details(body: Any) -> list[dict[str, Any]]:
    error = body.get("error", body) if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """`google.rpc.RetryInfo.retryDelay` ("17s", "0.5s", or {"seconds", "nanos"}) in seconds."""
    for detail in details:
        if detail.get("@type") != _RETRY_INFO:
            continue
        delay = detail.get("retryDelay")
        seconds: float | None = None
        if isinstance(delay, str) and (match := _DURATION.match(delay)):
            seconds = float(match.group(1))
        elif isinstance(delay, dict):
            try:
                seconds = float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
            except (TypeError, ValueError):
                seconds = None
        if seconds is not None and math.isfinite(seconds):
            return max(seconds, 0.0)
    return None


def _is_key_problem(code: int, message: Any, details: list[dict[str, Any]]) -> bool:
    if code in (401, 403):
        return True
    reasons = {str(d.get("reason")) for d in details if d.get("@type") == _ERROR_INFO}
    return code == 400 and (bool(reasons & _AUTH_REASONS) or bool(_KEY_WORDS.search(str(message or ""))))


def _is_quota(message: Any, details: list[dict[str, Any]]) -> bool:
    """A daily cap or a billing/credit problem rather than a momentary rate limit (see the module docs)."""
    if _QUOTA_WORDS.search(str(message or "")):
        return True
    for detail in details:
        kind = detail.get("@type")
        if kind == _QUOTA_FAILURE:
            for violation in detail.get("violations") or []:
                if isinstance(violation, dict):
                    names = f"{violation.get('quotaId', '')} {violation.get('quotaMetric', '')}"
                    if _QUOTA_WORDS.search(names) or "perday" in names.lower():
                        return True
        elif kind == _ERROR_INFO:
            metadata = detail.get("metadata")
            if isinstance(metadata, dict) and any(
                "perday" in str(v).lower() or _QUOTA_WORDS.search(str(v)) for v in metadata.values()
            ):
                return True
    return False


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def _blocked(model: str, what: str, reason: str, detail: str | None = None) -> GeminiBlockedError:
    extra = f": {one_line(detail)}" if detail else ""
    return GeminiBlockedError(
        f"gemini ({model}): the vendor refused to transcribe this content ({what} {reason}){extra}"
    )


def parse_response(
    response: types.GenerateContentResponse,
    *,
    duration: float | None,
    model: str,
    requested_language: str | None,
) -> ChunkTranscript:
    """A `ChunkTranscript` from a generateContent answer; `GeminiBlockedError` when Google refused the
    content, `GarbageResponseError` when the answer is not the transcript asked for."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        block = _enum_value(feedback.block_reason)
        raise _blocked(model, "promptFeedback.blockReason", block, feedback.block_reason_message)
    if not response.candidates:
        raise GarbageResponseError("no candidates")
    candidate = response.candidates[0]
    reason = _enum_value(candidate.finish_reason) if candidate.finish_reason is not None else None
    if reason in BLOCK_FINISH_REASONS:
        raise _blocked(model, "finishReason", reason or "", candidate.finish_message)
    parts = candidate.content.parts if candidate.content is not None else None
    text = "".join(p.text for p in parts or [] if p.text and not p.thought)
    if reason == "MAX_TOKENS":
        raise GarbageResponseError(
            f"output was truncated (finishReason MAX_TOKENS after {len(text)} characters)"
        )
    if not text.strip():
        raise GarbageResponseError(f"no text in the answer (finishReason {reason})")
    fenced = _FENCE.match(text)
    body = (fenced.group(1) if fenced else text).strip().encode()
    try:
        parsed = _ModelTranscript.model_validate_json(body)
    except ValidationError as exc:
        raise GarbageResponseError(describe_validation_error(exc, body)) from None

    known, max_time = time_limits(duration, None)
    for i, s in enumerate(parsed.segments):
        check_times(s.start, s.end, f"segment {i}", max_time)
    segments: list[Segment] = []
    for s in parsed.segments:
        text = s.text.strip()
        if not text:
            continue
        start = clamp(s.start, known)
        end = max(start, clamp(s.end, known))
        speaker = s.speaker.strip() if s.speaker and s.speaker.strip() else None
        segments.append(Segment(start=start, end=end, text=text, words=None, speaker=speaker))
    segments.sort(key=lambda seg: seg.start)
    language = normalise_language(parsed.language) if parsed.language else None
    return ChunkTranscript(
        provider=GeminiProvider.name,
        model=model,
        language=language or requested_language,
        segments=segments,
    )
