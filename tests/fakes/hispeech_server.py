"""A fake HiSpeech (hispeech.ai, Armenian speech to text) API: the synchronous upload endpoint
`POST /api/v1/transcriptions/upload` on 127.0.0.1 only.

Sources, and how much of each shape is documented:

- Documented (https://hispeech.ai/api.html, "API Endpoints Guide"; only the part of the page down to the
  Conversational model's example could be read): the endpoint; the `x-auth-token: YOUR_API_KEY` header;
  multipart `file` plus form field `wait_for_result="true"`; the `stt_model` query parameter, with
  `model-01052025` (Formal, the default, used when `stt_model` is left out) and `model-23012026`
  (Conversational); and the answer
  `{"job_id", "error": null, "success": true, "secure_mode": false, "return_word_timestamps": false,
  "status": 200, "transcription", "audio_duration": 3}` (`job_id` a UUID version 1, `audio_duration` an
  integer for the ~3 s sample).
- Seen only in client code (what clients send or expect, not proof of what the vendor does):
  `wait_for_result=true` as a query parameter (h3l10w0r1d/Haylinguav2 backend/routes_conversation.py);
  a 200 answer with `success` false carrying `error` (that file and hreshtak05/transcription-benchmark
  services/hispeech.py check for it); `success` a JSON boolean (transcription-benchmark's later fix of
  `str(success) != "true"`); a 429 with `Retry-After` (DavidArakelyan/STT-tool
  src/stt_service/providers/hispeech.py handles one, by its own note a guess).
- Assumed, since the page's Asynchronous API, OpenAI-compatible API and any error, limit or
  word-timestamp parts could not be read: every error body is the same envelope with `success` false,
  `error` a message, `status` the HTTP status and `job_id`/`transcription`/`audio_duration` null
  (401 for a missing or wrong key, 429 rate limited, 400 for a missing file, an unknown `stt_model` or
  audio it cannot read, 413 for a file over `max_file_bytes`); `wait_for_result` missing or not "true"
  answers the envelope with `transcription` null (the page says the asynchronous API works with job ids
  and polling, but its endpoints are unknown, so none is served here); `return_word_timestamps` and
  `secure_mode` sent as "true" (form or query) are only echoed back, with no word list (its shape is
  unknown); `audio_duration` is the WAV's duration rounded half up to whole seconds.

The fake reads only WAV (any other upload gets the invalid-audio answer, though the vendor takes mp3
and video). By default it answers with a deterministic transcript derived from the WAV's duration:
words "w0 w1 ..." one every `word_seconds` (0.5 s). `transcript_for(duration, wav_bytes)` (in-process)
replaces it, so a test can map each uploaded chunk to a reference text. A fixed `latency` delays every
answer, requests in flight at once are counted (`max_in_flight`), and a queue of scripted failures is
consumed one per request, in order.

    with FakeHiSpeech(api_key="hs_test") as fake:
        provider = HiSpeechProvider(api_key="hs_test", base_url=fake.base_url)
        fake.fail(Failure.rate_limited(retry_after=3), Failure.vendor_failure("Transcription failed"))
        ...
        assert fake.requests()[0].model == "model-23012026"
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from tests.fakes.loopback import FakeVendorState, LoopbackFake, wav_seconds

UPLOAD_PATH = "/api/v1/transcriptions/upload"
FORMAL_MODEL = "model-01052025"
CONVERSATIONAL_MODEL = "model-23012026"
MODELS = (FORMAL_MODEL, CONVERSATIONAL_MODEL)
DEFAULT_MODEL = FORMAL_MODEL
KEY_HEADER = "x-auth-token"
_TRUE = ("true", "1")

TranscriptFor = Callable[[float, bytes], str]


class FakeConfig(BaseModel):
    latency: float = Field(default=0.0, ge=0, description="Seconds before every answer.")
    api_key: str | None = Field(default=None, description="When set, other `x-auth-token` values get a 401.")
    word_seconds: float = Field(default=0.5, gt=0, description="One default word per this many seconds.")
    max_file_bytes: int | None = Field(default=None, gt=0, description="Larger uploads get a 413 (assumed).")
    max_audio_seconds: float | None = Field(
        default=None, gt=0, description="Longer audio gets a 400 (assumed; the vendor's limit is unknown)."
    )


class Failure(BaseModel):
    """One scripted misbehaviour, used by one request.

    kind "error": HTTP `status` with the envelope `{job_id, error, success: false, ..., status}`, where
    the body's `status` is `body_status` (default: the HTTP status) and `job_id` is set when `with_job`.
    kind "body": `status` with `body` as is (str) or as JSON (anything else).
    kind "hang": wait `seconds` (or until the server stops), then answer normally.
    Only the 200-with-`success`-false answer is seen in client code; every error body is assumed.
    """

    kind: Literal["error", "body", "hang"] = "error"
    status: int = 500
    error: str | None = None
    body_status: int | None = None
    with_job: bool = False
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    content_type: str = "application/json"
    seconds: float = 3600.0

    @classmethod
    def error_answer(
        cls,
        status: int,
        error: str,
        *,
        body_status: int | None = None,
        with_job: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Failure:
        return cls(
            status=status, error=error, body_status=body_status, with_job=with_job, headers=headers or {}
        )

    @classmethod
    def unauthorized(cls, error: str = "Invalid API key") -> Failure:
        """401 with the envelope (assumed)."""
        return cls.error_answer(401, error)

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = None) -> Failure:
        """429 with the envelope and `Retry-After` when given (assumed)."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls.error_answer(429, "Too many requests", headers=headers)

    @classmethod
    def server_error(cls, status: int = 500, retry_after: float | None = None) -> Failure:
        """5xx with the envelope (assumed)."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        error = "Service temporarily unavailable" if status == 503 else "Internal server error"
        return cls.error_answer(status, error, headers=headers)

    @classmethod
    def vendor_failure(
        cls, error: str = "Transcription failed", *, status: int = 200, body_status: int = 500
    ) -> Failure:
        """A job that ran and failed: HTTP `status` (200 as clients expect) with `success` false,
        `error` and a `job_id`; the body's `status` (500 here) is a guess."""
        return cls.error_answer(status, error, body_status=body_status, with_job=True)

    @classmethod
    def invalid_audio(cls) -> Failure:
        """400 with the envelope (assumed)."""
        return cls.error_answer(400, "Invalid or unsupported audio file")

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> Failure:
        return cls(kind="hang", seconds=seconds)

    @classmethod
    def garbage(cls, body: Any = "<html><body>502 Bad Gateway</body></html>") -> Failure:
        """A 200 that is not the documented shape (HTML by default; anything `body` is otherwise)."""
        content_type = "text/html" if isinstance(body, str) else "application/json"
        return cls(kind="body", status=200, body=body, content_type=content_type)

    @classmethod
    def json_body(cls, body: Any, status: int = 200) -> Failure:
        return cls(kind="body", status=status, body=body)


class RecordedRequest(BaseModel):
    index: int
    received_at: float
    path: str
    has_key: bool = Field(default=False, description="Whether an `x-auth-token` header came.")
    key_matches: bool | None = Field(default=None, description="None when no `api_key` is configured.")
    headers: dict[str, str] = Field(default_factory=dict, description="Every header but `x-auth-token`.")
    model: str | None = Field(default=None, description="The `stt_model` query parameter as sent.")
    effective_model: str | None = None
    wait_for_result: str | None = Field(default=None, description="As sent (the form field wins).")
    wait_for_result_source: Literal["form", "query"] | None = None
    return_word_timestamps: str | None = None
    secure_mode: str | None = None
    filename: str | None = None
    content_type: str | None = None
    file_size: int = 0
    audio_seconds: float | None = None
    fields: list[str] = Field(default_factory=list, description="Every form field name received.")
    query: dict[str, str] = Field(default_factory=dict, description="Every query parameter received.")
    failure: str | None = None
    status: int | None = None
    job_id: str | None = None

    @property
    def waited(self) -> bool:
        return (self.wait_for_result or "").strip().lower() in _TRUE


class FakeHiSpeechState(FakeVendorState[FakeConfig, Failure, RecordedRequest]):
    """What the server shares with its controller: `FakeVendorState` and the transcript override,
    which `reset` puts back to the one the fake was built with."""

    def __init__(self, config: FakeConfig, transcript_for: TranscriptFor | None = None) -> None:
        super().__init__(config, RecordedRequest)
        self.initial_transcript_for = transcript_for
        self.transcript_for: TranscriptFor | None = transcript_for

    def _reset(self) -> None:
        self.transcript_for = self.initial_transcript_for


# --------------------------------------------------------------------------------- answers


def default_transcript(duration: float, config: FakeConfig) -> str:
    """Words "w0 w1 ..." one per `word_seconds` (at least one)."""
    n_words = max(1, math.ceil(duration / config.word_seconds - 1e-9))
    return " ".join(f"w{i}" for i in range(n_words))


def envelope(
    *,
    job_id: str | None,
    success: bool,
    status: int,
    error: str | None = None,
    transcription: str | None = None,
    audio_duration: int | None = None,
    secure_mode: bool = False,
    return_word_timestamps: bool = False,
) -> dict[str, Any]:
    """The documented answer's fields, in the documented order."""
    return {
        "job_id": job_id,
        "error": error,
        "success": success,
        "secure_mode": secure_mode,
        "return_word_timestamps": return_word_timestamps,
        "status": status,
        "transcription": transcription,
        "audio_duration": audio_duration,
    }


def _job_id() -> str:
    """A UUID version 1, as the documented `job_id`s are, with a random node instead of this host's MAC."""
    return str(uuid.uuid1(node=random.getrandbits(48) | 0x010000000000))


def _error(status: int, error: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(envelope(job_id=None, success=False, status=status, error=error), status, headers)


def _failure_response(failure: Failure, call: RecordedRequest) -> Response:
    if failure.kind == "body":
        content = failure.body if isinstance(failure.body, str) else json.dumps(failure.body)
        return Response(content, failure.status, headers=failure.headers, media_type=failure.content_type)
    job_id = _job_id() if failure.with_job else None
    call.job_id = job_id
    body = envelope(
        job_id=job_id,
        success=False,
        status=failure.body_status if failure.body_status is not None else failure.status,
        error=failure.error or "error",
    )
    return JSONResponse(body, failure.status, headers=failure.headers)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def create_app(state: FakeHiSpeechState) -> FastAPI:
    app = FastAPI(title="fake HiSpeech STT", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(UPLOAD_PATH)
    async def upload(request: Request) -> Response:
        with state.tracking():
            form = await request.form()
            upload = form.get("file")
            data = await upload.read() if isinstance(upload, UploadFile) else b""
            query = dict(request.query_params)
            failure = state.next_failure()
            key = request.headers.get(KEY_HEADER)
            wait_form, wait_query = _text(form.get("wait_for_result")), query.get("wait_for_result")
            wait_source = "form" if wait_form is not None else "query" if wait_query is not None else None
            model = query.get("stt_model")
            configured_key = state.config.api_key
            recorded = state.record(
                path=request.url.path,
                has_key=bool(key),
                key_matches=None if configured_key is None else key == configured_key,
                headers={k: v for k, v in request.headers.items() if k.lower() != KEY_HEADER},
                model=model,
                effective_model=model or DEFAULT_MODEL,
                wait_for_result=wait_form if wait_form is not None else wait_query,
                wait_for_result_source=wait_source,
                return_word_timestamps=_text(form.get("return_word_timestamps"))
                or query.get("return_word_timestamps"),
                secure_mode=_text(form.get("secure_mode")) or query.get("secure_mode"),
                filename=upload.filename if isinstance(upload, UploadFile) else None,
                content_type=upload.content_type if isinstance(upload, UploadFile) else None,
                file_size=len(data),
                audio_seconds=wav_seconds(data) if data else None,
                fields=sorted(set(form.keys())),
                query=query,
                failure=failure.kind if failure else None,
            )
            await state.sleep(state.config.latency)
            response = await _answer(failure, recorded, key, data)
            recorded.status = response.status_code  # the stored object: visible to later `requests()`
            return response

    async def _answer(
        failure: Failure | None, call: RecordedRequest, key: str | None, data: bytes
    ) -> Response:
        if failure is not None and failure.kind != "hang":
            return _failure_response(failure, call)
        if failure is not None:
            await state.sleep(failure.seconds)
        config = state.config
        if not key:
            return _error(401, "Unauthorized: missing x-auth-token")
        if config.api_key is not None and key != config.api_key:
            return _failure_response(Failure.unauthorized(), call)
        if call.model is not None and call.model not in MODELS:
            return _error(400, f"Invalid stt_model '{call.model}'. Use one of {', '.join(MODELS)}.")
        if not call.file_size:
            return _error(400, "No file uploaded")
        if config.max_file_bytes is not None and call.file_size > config.max_file_bytes:
            return _error(413, "File too large")
        seconds = call.audio_seconds
        if seconds is None or seconds <= 0:
            return _failure_response(Failure.invalid_audio(), call)
        if config.max_audio_seconds is not None and seconds > config.max_audio_seconds:
            return _error(400, "Audio is too long")

        call.job_id = _job_id()
        answer = envelope(
            job_id=call.job_id,
            success=True,
            status=200,
            secure_mode=_flag(call.secure_mode),
            return_word_timestamps=_flag(call.return_word_timestamps),
            audio_duration=math.floor(seconds + 0.5),
        )
        if not call.waited:  # assumed: the asynchronous acknowledgement, no transcription yet
            return JSONResponse(answer)
        if state.transcript_for is not None:
            answer["transcription"] = state.transcript_for(seconds, data)
        else:
            answer["transcription"] = default_transcript(seconds, config)
        return JSONResponse(answer)

    return app


class FakeHiSpeech(LoopbackFake):
    """The fake in a background thread of this process: `with FakeHiSpeech() as fake: fake.base_url`."""

    name = "fake-hispeech"
    state: FakeHiSpeechState

    def __init__(
        self,
        *,
        latency: float = 0.0,
        api_key: str | None = None,
        transcript_for: TranscriptFor | None = None,
        port: int = 0,
        log_level: str = "warning",
        **config: Any,
    ) -> None:
        self.state = FakeHiSpeechState(FakeConfig(latency=latency, api_key=api_key, **config), transcript_for)
        super().__init__(port=port, log_level=log_level)

    def app(self) -> FastAPI:
        return create_app(self.state)

    @property
    def base_url(self) -> str:
        """Stands for `https://api.hispeech.ai`."""
        return self.url

    @property
    def upload_url(self) -> str:
        return self.url + UPLOAD_PATH

    def requests(self) -> list[RecordedRequest]:
        return self.state.requests()

    @property
    def max_in_flight(self) -> int:
        return self.state.max_in_flight
