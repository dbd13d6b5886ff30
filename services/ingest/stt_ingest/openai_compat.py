"""The OpenAI Audio API's shapes, for `POST /v1/audio/transcriptions` and `/v1/audio/translations`
(`routes/openai_audio.py`): its form fields as our job options, our transcript as its answers, and
our errors in its envelope.

* **Form.** `file`, `model`, `language`, `prompt`, `response_format`, `temperature` and
  `timestamp_granularities[]`, as the OpenAI SDK sends them (text fields first, then the file). A
  field OpenAI does not have is refused, as OpenAI does ("Unrecognized request argument").
* **Models.** `whisper-1` is this server's default provider and model (what a job naming neither
  gets); a provider's name (`local`, `openai`, ...) is that provider with its default model;
  `<provider>/<model>` (`local/base`, `gemini/gemini-2.5-pro`) both. Anything else is unknown (400).
* **Answers.** Built from the job's result as the merger stored it (the JSON document for `json`,
  `text` and `verbose_json`; its SRT and WebVTT renderings as they are for `srt` and `vtt`).
* **Errors.** `{"error": {"message", "type", "param", "code"}}` on every `/v1/` path: a pure ASGI
  middleware rewrites the problem documents the rest of the app renders (RFC 9457, unchanged on
  `/api/v1`), keeping the status (but 400 where we say 415 or 422, as OpenAI does for every invalid
  parameter) and every header (`Retry-After`, `RateLimit-*`, `X-Request-ID`).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stt_common.providers.catalogue import PROVIDERS
from stt_common.providers.languages import LANGUAGE_NAME_CODES, normalise_language
from stt_ingest.problems import PROBLEM_MEDIA_TYPE, ApiProblem, FieldError
from stt_ingest.schemas import JobOptions, Task
from stt_ingest.settings import IngestSettings

OPENAI_PREFIX = "/v1/"
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
TRANSLATIONS_PATH = "/v1/audio/translations"
DEFAULT_MODEL = "whisper-1"

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
RESPONSE_FORMATS: tuple[ResponseFormat, ...] = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
# The SDK sends lists as repeated `name[]` fields; curl users write either spelling.
_GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")
_TEXT_FIELDS = frozenset(
    {"model", "language", "prompt", "response_format", "temperature", *_GRANULARITY_FIELDS}
)
# Our option names (in validation errors) as the OpenAI parameters a client sent.
_PARAMS = {"provider": "model", "model": "model", "output": "timestamp_granularities[]"}

# ISO 639-1 code → the name Whisper's verbose_json gives ("en" → "english"): the first name listed.
LANGUAGE_NAMES: dict[str, str] = {}
for _name, _code in LANGUAGE_NAME_CODES.items():
    LANGUAGE_NAMES.setdefault(_code, _name)


def bad_request(param: str | None, code: str, message: str) -> ApiProblem:
    """A 400 about one parameter (the envelope's `param` comes from the error's location)."""
    errors = [FieldError(loc=["body", param], msg=message, type=code)] if param else None
    return ApiProblem(400, code, message, errors=errors)


def model_choice(model: str, settings: IngestSettings) -> tuple[str | None, str | None]:
    """OpenAI's `model` as our (provider, model); None for "the server's default"."""
    name = model.strip()
    if name == DEFAULT_MODEL:
        return None, None
    provider, _, provider_model = name.partition("/")
    provider = provider.lower()
    if provider in PROVIDERS and (provider_model.strip() or "/" not in name):
        return provider, provider_model.strip() or None
    examples = ", ".join(settings.allowed_providers)
    raise bad_request(
        "model",
        "model_not_found",
        f"The model {name!r} does not exist here. Use {DEFAULT_MODEL!r} (this server's default, "
        f"{settings.default_provider}), a provider ({examples}) or provider/model, e.g. 'local/base'; "
        "GET /api/v1/providers lists the providers and models you may name.",
    )


@dataclass
class AudioRequest:
    """One `/v1/audio/*` request: what the answer looks like (set from the form as it is read) and
    how the form becomes job options (`job_options`, the submission's `read_options`)."""

    task: Task
    settings: IngestSettings
    response_format: ResponseFormat = "json"
    granularities: frozenset[str] = field(default_factory=frozenset)
    temperature: float = 0.0

    def job_options(self, fields: Mapping[str, list[str]]) -> JobOptions:
        """The job's options from the text fields read so far (called before the file with the ones
        sent before it, and after it with all): every OpenAI field is checked here, so a wrong one is
        refused before anything is stored when it comes first, as the SDK sends it."""
        values: dict[str, str] = {}
        granularities: list[str] = []
        for name, sent in fields.items():
            present = [value for value in sent if value != ""]
            if name not in _TEXT_FIELDS:
                raise bad_request(
                    name,
                    "unknown_parameter",
                    f"Unrecognized request argument supplied: {name}. This endpoint takes file, model, "
                    "language, prompt, response_format, temperature and timestamp_granularities[]; "
                    "leave it out (GET /docs describes the /api/v1 API for everything else).",
                )
            if name in _GRANULARITY_FIELDS:
                granularities.extend(present)
            elif len(present) > 1:
                raise bad_request(
                    name, "duplicate_parameter", f"{name} is given more than once; send it once."
                )
            elif present:
                values[name] = present[0]
        self._read_format(values.get("response_format"), granularities)
        self._read_temperature(values.get("temperature"))
        provider, model = model_choice(values.get("model", DEFAULT_MODEL), self.settings)
        if "word" in self.granularities:
            self._check_word_times(provider)
        data: dict[str, Any] = {
            "provider": provider,
            "model": model,
            "language": values.get("language"),
            "prompt": values.get("prompt"),
            "task": self.task,
        }
        if "word" in self.granularities:
            data["output"] = {"word_timestamps": True}
        try:
            return JobOptions.model_validate({key: value for key, value in data.items() if value is not None})
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            param = _param(error["loc"])
            raise bad_request(
                param, "invalid_value", f"{param}: {error['msg']}. Correct it and send the request again."
            ) from exc

    def _read_format(self, value: str | None, granularities: list[str]) -> None:
        response_format = value or "json"
        if response_format not in RESPONSE_FORMATS:
            raise bad_request(
                "response_format",
                "invalid_value",
                f"response_format {response_format!r} is not supported; use one of: "
                f"{', '.join(RESPONSE_FORMATS)}.",
            )
        self.response_format = response_format
        unknown = sorted(set(granularities) - set(GRANULARITIES))
        if unknown:
            raise bad_request(
                "timestamp_granularities[]",
                "invalid_value",
                f"timestamp_granularities[] {unknown[0]!r} is not supported; use word and/or segment.",
            )
        if granularities and response_format != "verbose_json":
            raise bad_request(
                "timestamp_granularities[]",
                "invalid_value",
                "timestamp_granularities[] needs response_format=verbose_json; set it, or leave "
                "timestamp_granularities[] out.",
            )
        self.granularities = frozenset(granularities)

    def _read_temperature(self, value: str | None) -> None:
        if value is None:
            return
        try:
            temperature = float(value)
        except ValueError:
            temperature = math.nan
        if not 0.0 <= temperature <= 1.0:  # NaN fails this too
            raise bad_request(
                "temperature", "invalid_value", "temperature must be a number from 0 to 1; correct it."
            )
        self.temperature = temperature

    def _check_word_times(self, provider: str | None) -> None:
        name = provider or self.settings.default_provider
        if PROVIDERS[name].capabilities.timestamps != "words":
            able = [info.name for info in PROVIDERS.values() if info.capabilities.timestamps == "words"]
            raise bad_request(
                "timestamp_granularities[]",
                "invalid_value",
                f"Provider {name!r} gives no word times; name a model of one that does "
                f"({', '.join(able)}), or ask for segment timestamps only.",
            )


def _param(loc: tuple[str | int, ...] | list[str | int]) -> str:
    names = [part for part in loc if isinstance(part, str) and part != "body"]
    name = names[0] if names else "file"
    return _PARAMS.get(name, name)


# -- answers ------------------------------------------------------------------------------------


def language_name(code: str | None) -> str:
    normalised = normalise_language(code)
    if normalised is None:
        return "unknown"
    return LANGUAGE_NAMES.get(normalised, normalised)


def _duration(document: Mapping[str, Any]) -> float:
    duration = document.get("duration_seconds")
    if isinstance(duration, (int, float)):
        return float(duration)
    ends = [float(segment["end"]) for segment in document.get("segments") or []]
    return max(ends, default=0.0)


def _compression_ratio(text: str) -> float:
    """Whisper's measure of repetition: text length over its zlib-compressed length."""
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


def _usage(document: Mapping[str, Any]) -> dict[str, Any]:
    # OpenAI bills audio by the second, rounded up; the SDK reads it as `usage`.
    return {"type": "duration", "seconds": math.ceil(_duration(document))}


def json_answer(document: Mapping[str, Any]) -> dict[str, Any]:
    return {"text": str(document.get("text") or ""), "usage": _usage(document)}


def text_answer(document: Mapping[str, Any]) -> str:
    return str(document.get("text") or "") + "\n"


def verbose_answer(document: Mapping[str, Any], audio: AudioRequest) -> dict[str, Any]:
    """OpenAI's `verbose_json`: segments unless only word timestamps were asked for, words when
    they were (OpenAI's own rule)."""
    segments = list(document.get("segments") or [])
    # A translation is English whatever was spoken; OpenAI says so in full ("english").
    language = "en" if audio.task == "translate" else document.get("language")
    answer: dict[str, Any] = {
        "task": audio.task,
        "language": language_name(language),
        "duration": _duration(document),
        "text": str(document.get("text") or ""),
        "usage": _usage(document),
    }
    if "segment" in audio.granularities or not audio.granularities:
        answer["segments"] = [
            {
                "id": index,
                # Whisper's seek is in 10 ms frames.
                "seek": round(float(segment["start"]) * 100),
                "start": float(segment["start"]),
                "end": float(segment["end"]),
                "text": " " + str(segment["text"]).strip(),
                "tokens": [],  # providers do not give token ids
                "temperature": audio.temperature,
                "avg_logprob": float(segment.get("avg_logprob") or 0.0),
                "compression_ratio": _compression_ratio(str(segment["text"])),
                "no_speech_prob": float(segment.get("no_speech_prob") or 0.0),
            }
            for index, segment in enumerate(segments)
        ]
    if "word" in audio.granularities:
        answer["words"] = [
            {"word": str(word["text"]), "start": float(word["start"]), "end": float(word["end"])}
            for segment in segments
            for word in segment.get("words") or []
        ]
    return answer


# -- errors -------------------------------------------------------------------------------------


def error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    if status in (401, 403):
        return "authentication_error"
    return "invalid_request_error"


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_from_problem(problem: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """A problem document as OpenAI's error: (status, body)."""
    status = int(problem.get("status") or 500)
    # OpenAI answers every invalid parameter, file type included, with 400.
    if status in (415, 422):
        status = 400
    message = str(problem.get("detail") or problem.get("title") or "Error")
    errors = [error for error in problem.get("errors") or [] if isinstance(error, dict)]
    param = _param(errors[0].get("loc") or []) if errors else None
    missing = [f"{_param(error.get('loc') or [])}: {error.get('msg')}" for error in errors]
    missing = [text for text in missing if text.split(": ", 1)[1] not in message]
    if missing:
        message = f"{message} {'; '.join(missing)}."
    return status, error_body(status, message, str(problem.get("code") or "error"), param)


class OpenAIErrorMiddleware:
    """On `/v1/` paths, problem documents become OpenAI error bodies (pure ASGI, so answers that are
    not problems, transcripts included, pass through untouched). Outermost, so the last-resort 500
    of `RequestContextMiddleware` is rewritten too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(OPENAI_PREFIX):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body = bytearray()

        async def rewrite(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if content_type.split(";")[0].strip() == PROBLEM_MEDIA_TYPE:
                    start = message  # held until the body is complete
                    return
            elif message["type"] == "http.response.body" and start is not None:
                body.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return
                await _send_converted(send, start, bytes(body))
                return
            await send(message)

        await self.app(scope, receive, rewrite)


async def _send_converted(send: Send, start: Message, problem_bytes: bytes) -> None:
    try:
        problem = json.loads(problem_bytes)
    except ValueError:
        problem = {"status": start["status"], "detail": problem_bytes.decode(errors="replace")}
    status, body = error_from_problem(problem if isinstance(problem, dict) else {})
    payload = json.dumps(body).encode()
    headers = MutableHeaders(raw=list(start.get("headers", [])))
    headers["content-type"] = "application/json"
    headers["content-length"] = str(len(payload))
    await send({"type": "http.response.start", "status": status, "headers": headers.raw})
    await send({"type": "http.response.body", "body": payload})
