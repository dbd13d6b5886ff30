"""A fake ElevenLabs Speech to Text API: `POST /v1/speech-to-text` with the documented multipart request,
the documented answer (`language_code`, `language_probability`, `text`, `words` of type word / spacing /
audio_event with `start`, `end`, `speaker_id`, `logprob`) and error bodies
(`{"detail": {type, code, status, message, param, request_id}}`, and FastAPI's 422
`{"detail": [{loc, msg, type}]}`), on 127.0.0.1 only.

By default it answers with a deterministic transcript derived from the uploaded WAV's duration: words
"w0 w1 ..." one every `word_seconds` (0.5 s, each lasting 80% of its slot), with a spacing entry between
words; with `diarize=true` the speaker alternates between "speaker_0" and "speaker_1" every
`speaker_seconds` (5 s); with `tag_audio_events=true` and `audio_event_at` set, a "(laughter)" event is
inserted there. `transcript_for(duration)` (in-process) replaces the word list. A fixed `latency` delays
every answer, and a queue of scripted failures is consumed one per request, in order.

    with FakeElevenLabs(api_key="sk_test") as fake:
        provider = ElevenLabsProvider(api_key="sk_test", base_url=fake.base_url)
        fake.fail(Failure.rate_limited(retry_after=3), Failure.server_error(503))
        ...
        assert fake.requests()[0].model_id == "scribe_v2"
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from tests.fakes.loopback import FakeVendorState, LoopbackFake, wav_seconds

MODELS = ("scribe_v1", "scribe_v1_experimental", "scribe_v2")
MIN_AUDIO_SECONDS = 0.1
# ISO 639-1 to the ISO 639-3 codes ElevenLabs reports.
_LANGUAGE_CODES = {"en": "eng", "de": "deu", "fr": "fra", "es": "spa", "hy": "hye", "ru": "rus", "ja": "jpn"}

TranscriptFor = Callable[[float], Sequence[dict[str, Any]]]


class FakeConfig(BaseModel):
    latency: float = Field(default=0.0, ge=0, description="Seconds before every answer.")
    api_key: str | None = Field(default=None, description="When set, other `xi-api-key` values get a 401.")
    word_seconds: float = Field(default=0.5, gt=0)
    speaker_seconds: float = Field(default=5.0, gt=0)
    audio_event_at: float | None = Field(default=None, description="Where a (laughter) event goes.")
    language_code: str = Field(default="eng", description="Reported when no language is requested.")


class Failure(BaseModel):
    """One scripted misbehaviour, used by one request.

    kind "error": `{"detail": {type, code, status, message, param, request_id}}` with HTTP `status`.
    kind "body": `status` with `body` as is (str) or as JSON (anything else).
    kind "hang": wait `seconds` (or until the server stops), then answer normally.
    `message` may contain {api_key} (the key received).
    """

    kind: Literal["error", "body", "hang"] = "error"
    status: int = 500
    type: str | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    content_type: str = "application/json"
    seconds: float = 3600.0

    @classmethod
    def error(
        cls,
        status: int,
        type: str,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Failure:
        return cls(status=status, type=type, code=code, message=message, param=param, headers=headers or {})

    @classmethod
    def unauthorized(cls, message: str = "Invalid API key") -> Failure:
        return cls.error(401, "authentication_error", "invalid_api_key", message)

    @classmethod
    def quota_exceeded(cls) -> Failure:
        """The legacy body ElevenLabs has been seen to send with a 401."""
        message = "This request exceeds your quota of 10000. You have 0 credits remaining."
        return cls.json_body({"detail": {"status": "quota_exceeded", "message": message}}, status=401)

    @classmethod
    def insufficient_credits(cls) -> Failure:
        message = "Your account does not have enough credits for this operation."
        return cls.error(402, "payment_required", "insufficient_credits", message)

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = None, *, concurrent: bool = False) -> Failure:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        if concurrent:
            message = "Maximum number of concurrent requests exceeded."
            return cls.error(429, "rate_limit_error", "concurrent_limit_exceeded", message, headers=headers)
        return cls.error(
            429, "rate_limit_error", "rate_limit_exceeded", "Too many requests.", headers=headers
        )

    @classmethod
    def server_error(cls, status: int = 500, retry_after: float | None = None) -> Failure:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        if status == 503:
            message = "The service is temporarily unavailable. Try again later."
            return cls.error(503, "service_unavailable", "service_unavailable", message, headers=headers)
        return cls.error(status, "internal_error", "internal_error", "An unexpected error occurred.")

    @classmethod
    def invalid_audio(cls) -> Failure:
        message = "The provided audio is invalid or corrupted."
        return cls.error(400, "validation_error", "invalid_audio", message, param="file")

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> Failure:
        return cls(kind="hang", seconds=seconds)

    @classmethod
    def garbage(cls, body: str = "<html><body>502 Bad Gateway</body></html>") -> Failure:
        return cls(kind="body", status=200, body=body)

    @classmethod
    def json_body(cls, body: Any, status: int = 200) -> Failure:
        return cls(kind="body", status=status, body=body)

    @classmethod
    def times_past_end(cls) -> Failure:
        word = {"text": "w0", "start": 0.0, "end": 5000.0, "type": "word", "logprob": -0.1}
        return cls.json_body(
            {"language_code": "eng", "language_probability": 0.9, "text": "w0", "words": [word]}
        )


class RecordedRequest(BaseModel):
    index: int
    received_at: float
    path: str
    api_key: str | None = None
    model_id: str | None = None
    language_code: str | None = None
    timestamps_granularity: str | None = None
    diarize: str | None = None
    tag_audio_events: str | None = None
    num_speakers: str | None = None
    temperature: str | None = None
    keyterms: list[str] = Field(default_factory=list)
    filename: str | None = None
    content_type: str | None = None
    file_size: int = 0
    audio_seconds: float | None = None
    fields: list[str] = Field(default_factory=list, description="Every form field name received.")
    failure: str | None = None
    status: int | None = None


class FakeElevenLabsState(FakeVendorState[FakeConfig, Failure, RecordedRequest]):
    """What the server shares with its controller: `FakeVendorState` and the word-list override."""

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config, RecordedRequest)
        self.transcript_for: TranscriptFor | None = None

    def _reset(self) -> None:
        self.transcript_for = None


# --------------------------------------------------------------------------------- transcripts


def default_words(
    duration: float, config: FakeConfig, *, diarize: bool, events: bool
) -> list[dict[str, Any]]:
    """Words "w0 w1 ..." one per `word_seconds`, spacing between them, speakers and an event if asked."""
    n_words = max(1, math.ceil(duration / config.word_seconds - 1e-9))
    words: list[dict[str, Any]] = []
    event_at = config.audio_event_at if events else None

    def add(text: str, start: float, end: float, kind: str, speaker: str, logprob: float) -> None:
        if words:  # a spacing entry between tokens, as the API sends
            gap = {
                "text": " ",
                "start": words[-1]["end"],
                "end": start,
                "type": "spacing",
                "speaker_id": speaker,
            }
            words.append(gap)
        token = {"text": text, "start": round(start, 3), "end": round(end, 3), "type": kind}
        words.append({**token, "speaker_id": speaker, "logprob": logprob})

    for i in range(n_words):
        start = i * config.word_seconds
        speaker = f"speaker_{int(start // config.speaker_seconds) % 2}" if diarize else "speaker_0"
        if event_at is not None and event_at <= start:
            add("(laughter)", event_at, event_at, "audio_event", speaker, 0.0)
            event_at = None
        add(f"w{i}", start, min(start + 0.8 * config.word_seconds, duration), "word", speaker, -0.05)
    return words


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _detail(type: str, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "type": type,
        "code": code,
        "message": message,
        "status": code,
        "request_id": uuid.uuid4().hex,
        "param": param,
    }


def _failure_response(failure: Failure, api_key: str | None) -> Response:
    if failure.kind == "body":
        content = failure.body if isinstance(failure.body, str) else json.dumps(failure.body)
        return Response(content, failure.status, headers=failure.headers, media_type=failure.content_type)
    message = (failure.message or "error").replace("{api_key}", api_key or "")
    detail = _detail(
        failure.type or "internal_error", failure.code or "internal_error", message, failure.param
    )
    return _error(failure.status, detail, failure.headers)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def create_app(state: FakeElevenLabsState) -> FastAPI:
    app = FastAPI(title="fake ElevenLabs STT", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/speech-to-text")
    async def speech_to_text(request: Request) -> Response:
        with state.tracking():
            form = await request.form()
            upload = form.get("file")
            data = await upload.read() if isinstance(upload, UploadFile) else b""
            failure = state.next_failure()
            recorded = state.record(
                path=request.url.path,
                api_key=request.headers.get("xi-api-key"),
                model_id=_text(form.get("model_id")),
                language_code=_text(form.get("language_code")),
                timestamps_granularity=_text(form.get("timestamps_granularity")),
                diarize=_text(form.get("diarize")),
                tag_audio_events=_text(form.get("tag_audio_events")),
                num_speakers=_text(form.get("num_speakers")),
                temperature=_text(form.get("temperature")),
                keyterms=[k for k in form.getlist("keyterms") if isinstance(k, str)],
                filename=upload.filename if isinstance(upload, UploadFile) else None,
                content_type=upload.content_type if isinstance(upload, UploadFile) else None,
                file_size=len(data),
                audio_seconds=wav_seconds(data) if data else None,
                fields=sorted(set(form.keys())),
                failure=failure.kind if failure else None,
            )
            await state.sleep(state.config.latency)
            response = await _answer(failure, recorded)
            recorded.status = response.status_code  # the stored object: visible to later `requests()`
            return response

    async def _answer(failure: Failure | None, call: RecordedRequest) -> Response:
        if failure is not None and failure.kind != "hang":
            return _failure_response(failure, call.api_key)
        if failure is not None:
            await state.sleep(failure.seconds)
        config = state.config
        if not call.api_key:
            return _error(401, _detail("authentication_error", "missing_api_key", "Missing API key"))
        if config.api_key is not None and call.api_key != config.api_key:
            return _failure_response(Failure.unauthorized(), call.api_key)
        missing = [
            {"type": "missing", "loc": ["body", name], "msg": "Field required", "input": None}
            for name, present in (("model_id", call.model_id), ("file", call.file_size))
            if not present
        ]
        if missing:
            return _error(422, missing)
        if call.model_id not in MODELS:
            message = f"Invalid model_id '{call.model_id}'. Use one of {', '.join(MODELS)}."
            return _error(400, _detail("validation_error", "invalid_parameters", message, "model_id"))
        if call.keyterms and call.model_id != "scribe_v2":
            message = (
                "The 'keyterms' parameter is only supported with the 'scribe_v2' model. "
                f"You specified '{call.model_id}'."
            )
            return _error(400, _detail("validation_error", "invalid_parameters", message, "keyterms"))
        language = call.language_code
        if language is not None and not (2 <= len(language) <= 3 and language.isalpha()):
            message = f"Invalid language_code '{language}'."
            return _error(400, _detail("validation_error", "invalid_parameters", message, "language_code"))
        seconds = call.audio_seconds
        if seconds is None:
            message = "The file type is not supported."
            return _error(400, _detail("validation_error", "invalid_file_type", message, "file"))
        if seconds < MIN_AUDIO_SECONDS:
            message = "The audio is shorter than the minimum required duration."
            return _error(400, _detail("validation_error", "audio_too_short", message, "file"))

        diarize, events = call.diarize == "true", call.tag_audio_events == "true"
        if state.transcript_for is not None:
            words = list(state.transcript_for(seconds))
        else:
            words = default_words(seconds, config, diarize=diarize, events=events)
        return JSONResponse(
            {
                "language_code": _LANGUAGE_CODES.get(language, language)
                if language
                else config.language_code,
                "language_probability": 1.0 if language else 0.98,
                "text": "".join(str(w.get("text", "")) for w in words).strip(),
                "words": words,
                "transcription_id": uuid.uuid4().hex,
            },
            headers={"request-id": uuid.uuid4().hex},
        )

    return app


class FakeElevenLabs(LoopbackFake):
    """The fake in a background thread of this process: `with FakeElevenLabs() as fake: fake.base_url`."""

    name = "fake-elevenlabs"
    state: FakeElevenLabsState

    def __init__(self, *, latency: float = 0.0, api_key: str | None = None, **config: Any) -> None:
        self.state = FakeElevenLabsState(FakeConfig(latency=latency, api_key=api_key, **config))
        super().__init__()

    def app(self) -> FastAPI:
        return create_app(self.state)

    def requests(self) -> list[RecordedRequest]:
        return self.state.requests()

    @property
    def max_in_flight(self) -> int:
        return self.state.max_in_flight
