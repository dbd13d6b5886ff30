"""A fake OpenAI Audio API: `POST /v1/audio/transcriptions` with the documented request and response
shapes (json, text, srt, vtt, verbose_json with segments and words, diarized_json) and error bodies
(`{"error": {"message", "type", "param", "code"}}`), on 127.0.0.1 only.

By default it answers with a deterministic transcript derived from the uploaded WAV's duration: words
"w0 w1 ..." one every `word_seconds` (0.5 s), grouped into segments of `segment_seconds` (5 s). A script
can replace that (`script=[...]`, or in-process `transcript_for(duration)`), a fixed `latency` delays
every answer, and a queue of scripted failures is consumed one per request, in order.

In-process::

    with FakeOpenAI(latency=0.0) as fake:
        provider = OpenAIProvider(api_key="sk-test", base_url=fake.base_url)
        fake.fail(Failure.rate_limited(retry_after=3), Failure.server_error(503))
        ...
        assert fake.requests()[0].model == "whisper-1"

As a process (benchmarks, end-to-end tests)::

    python -m tests.fakes.openai_server --port 0 --latency 2.0
    # prints "FAKE_OPENAI_URL=http://127.0.0.1:PORT" first, then serves until SIGINT/SIGTERM

    with FakeOpenAIProcess(latency=2.0) as proc:      # the same, started from a test
        proc.control.fail(Failure.unauthorized())     # over HTTP: RemoteFakeOpenAI
        proc.base_url                                 # http://127.0.0.1:PORT/v1

HTTP control interface (JSON):
    GET  /_control/health                      {"ok": true}
    GET  /_control/config, POST /_control/config  partial update of FakeConfig fields
    GET  /_control/failures                    pending failures
    POST /_control/failures                    append a list of Failure objects
    PUT  /_control/failures                    replace the queue; DELETE clears it
    GET  /_control/requests                    every received request (RecordedRequest); DELETE clears
    GET  /_control/stats                       {"requests", "in_flight", "max_in_flight"}
    POST /_control/reset                       start-up config, no failures, no requests, stats zeroed
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from tests.fakes.loopback import (
    HOST,
    FakeVendorState,
    LoopbackFake,
    StoppableServer,
    bind_loopback,
    wav_seconds,
)

URL_LINE_PREFIX = "FAKE_OPENAI_URL="
REPO_ROOT = Path(__file__).resolve().parents[2]

# What each model accepts as response_format (others get OpenAI's 400 `param: "response_format"`).
WHISPER_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GPT_FORMATS = ("json", "text")
DIARIZE_FORMATS = ("json", "text", "diarized_json")
MIN_AUDIO_SECONDS = 0.1

_LANGUAGE_NAMES = {
    "en": "english",
    "hy": "armenian",
    "ru": "russian",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "it": "italian",
    "ja": "japanese",
    "zh": "chinese",
}

# A (start, end, text) segment of a scripted transcript; words are spread evenly over it.
ScriptSegment = tuple[float, float, str]
TranscriptFor = Callable[[float], Sequence[ScriptSegment]]


# ------------------------------------------------------------------------------------- models


class FakeConfig(BaseModel):
    latency: float = Field(default=0.0, ge=0, description="Seconds before every answer.")
    latency_per_audio_second: float = Field(
        default=0.0,
        ge=0,
        description="More seconds per second of audio sent, as a hosted model's time grows with the audio.",
    )
    api_key: str | None = Field(default=None, description="When set, other bearer tokens get a 401.")
    segment_seconds: float = Field(default=5.0, gt=0)
    word_seconds: float = Field(default=0.5, gt=0)
    word_template: str = Field(default="w{i}", description="Word text; {i} index, {stem} file stem.")
    language: str = Field(default="english", description="Reported when no language is requested.")
    script: list[ScriptSegment] | None = Field(
        default=None, description="Fixed (start, end, text) segments, clipped to the audio's duration."
    )


class Failure(BaseModel):
    """One scripted misbehaviour, used by one request.

    kind "error": an OpenAI error body `{"error": {message, type, param, code}}` with `status`.
    kind "body": `status` with `body` as is (str) or as JSON (anything else) and `content_type`.
    kind "hang": wait `seconds` (or until the server stops), then answer normally.
    `message` may contain {api_key} (the bearer token received) or {masked_key} (as OpenAI masks it).
    """

    kind: Literal["error", "body", "hang"] = "error"
    status: int = 500
    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    content_type: str = "application/json"
    seconds: float = 3600.0

    @classmethod
    def error(
        cls,
        status: int,
        message: str,
        *,
        type: str | None = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Failure:
        return cls(
            kind="error",
            status=status,
            message=message,
            type=type,
            param=param,
            code=code,
            headers=headers or {},
        )

    @classmethod
    def unauthorized(cls, message: str | None = None) -> Failure:
        return cls.error(
            401,
            message
            or "Incorrect API key provided: {masked_key}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )

    @classmethod
    def forbidden(cls) -> Failure:
        return cls.error(403, "You are not allowed to sample from this model", type="invalid_request_error")

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = None) -> Failure:
        headers = {} if retry_after is None else {"Retry-After": _header_value(retry_after)}
        return cls.error(
            429,
            "Rate limit reached for whisper-1 in organization org-fake on requests per min (RPM): "
            "Limit 50, Used 50, Requested 1. Please try again in 1.2s.",
            type="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )

    @classmethod
    def insufficient_quota(cls) -> Failure:
        return cls.error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            type="insufficient_quota",
            code="insufficient_quota",
        )

    @classmethod
    def server_error(cls, status: int = 500, retry_after: float | str | None = None) -> Failure:
        message = (
            "The engine is currently overloaded, please try again later."
            if status == 503
            else "The server had an error while processing your request. Sorry about that!"
        )
        headers = {} if retry_after is None else {"Retry-After": _header_value(retry_after)}
        return cls.error(status, message, type="server_error", headers=headers)

    @classmethod
    def invalid_file(cls) -> Failure:
        return cls.error(
            400, "Audio file might be corrupted or unsupported", param="file", code="invalid_value"
        )

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> Failure:
        return cls(kind="hang", seconds=seconds)

    @classmethod
    def garbage(
        cls, body: str = "<html><body>502 Bad Gateway</body></html>", content_type: str = "application/json"
    ) -> Failure:
        return cls(kind="body", status=200, body=body, content_type=content_type)

    @classmethod
    def json_body(cls, body: Any, status: int = 200) -> Failure:
        return cls(kind="body", status=status, body=body)

    @classmethod
    def missing_segments(cls) -> Failure:
        return cls.json_body({"task": "transcribe", "language": "english", "duration": 1.0, "text": "w0 w1"})

    @classmethod
    def negative_times(cls) -> Failure:
        segment = _segment_json(0, -5.0, -4.0, " w0", 0)
        return cls.json_body(
            {
                "task": "transcribe",
                "language": "english",
                "duration": 1.0,
                "text": "w0",
                "segments": [segment],
            }
        )


class RecordedRequest(BaseModel):
    index: int
    received_at: float
    path: str
    model: str | None = None
    response_format: str | None = None
    timestamp_granularities: list[str] = Field(default_factory=list)
    language: str | None = None
    prompt: str | None = None
    temperature: str | None = None
    chunking_strategy: str | None = None
    filename: str | None = None
    content_type: str | None = None
    file_size: int = 0
    audio_seconds: float | None = None
    api_key: str | None = None
    fields: list[str] = Field(default_factory=list, description="Every form field name received.")
    failure: str | None = Field(default=None, description="The scripted failure's kind, if one was used.")
    status: int | None = None


class Stats(BaseModel):
    requests: int
    in_flight: int
    max_in_flight: int


# -------------------------------------------------------------------------------------- state


class FakeOpenAIState(FakeVendorState[FakeConfig, Failure, RecordedRequest]):
    """Everything the server shares with its controllers: `FakeVendorState`, the transcript override
    and the stats the `/_control` interface reports."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        super().__init__(config or FakeConfig(), RecordedRequest)
        self.transcript_for: TranscriptFor | None = None

    def _reset(self) -> None:
        self.transcript_for = None

    def stats(self) -> Stats:
        with self._lock:
            return Stats(
                requests=len(self._requests), in_flight=self._in_flight, max_in_flight=self.max_in_flight
            )


# --------------------------------------------------------------------------------- transcripts


def _header_value(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def _r(t: float) -> float:
    return round(t, 2)


def _segment_json(i: int, start: float, end: float, text: str, first_token: int) -> dict[str, Any]:
    n_tokens = max(1, len(text.split()))
    return {
        "id": i,
        "seek": int(start * 100) // 3000 * 3000,
        "start": _r(start),
        "end": _r(end),
        "text": text,
        "tokens": [50364 + first_token + k for k in range(n_tokens)],
        "temperature": 0.0,
        "avg_logprob": -0.25,
        "compression_ratio": 1.2,
        "no_speech_prob": 0.01,
    }


def default_script(duration: float, config: FakeConfig, stem: str) -> list[ScriptSegment]:
    """Words "w0 w1 ..." one per `word_seconds`, in segments of `segment_seconds`."""
    n_words = max(1, math.ceil(duration / config.word_seconds - 1e-9))
    segments: dict[int, list[str]] = {}
    for i in range(n_words):
        start = i * config.word_seconds
        segments.setdefault(int(start // config.segment_seconds), []).append(
            config.word_template.format(i=i, stem=stem)
        )
    script: list[ScriptSegment] = []
    for k, words in sorted(segments.items()):
        start = k * config.segment_seconds
        end = min(start + config.segment_seconds, duration)
        script.append((start, end, " ".join(words)))
    return script


def _clip(script: Sequence[ScriptSegment], duration: float) -> list[ScriptSegment]:
    clipped: list[ScriptSegment] = []
    for start, end, text in script:
        if start >= duration:
            continue
        clipped.append((max(0.0, start), min(end, duration), text))
    return clipped


def _words(start: float, end: float, text: str) -> list[dict[str, Any]]:
    """The segment's words spread evenly over it (each 80% of its slot), as OpenAI reports them."""
    tokens = text.split()
    if not tokens:
        return []
    slot = (end - start) / len(tokens)
    return [
        {"word": word, "start": _r(start + k * slot), "end": _r(start + k * slot + 0.8 * slot)}
        for k, word in enumerate(tokens)
    ]


def _timestamp(t: float, sep: str) -> str:
    ms = round(t * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render_transcript(
    script: Sequence[ScriptSegment],
    *,
    duration: float,
    model: str,
    response_format: str,
    granularities: Sequence[str],
    language: str,
) -> Response:
    text = " ".join(t.strip() for _, _, t in script if t.strip())
    tokens_usage = {
        "type": "tokens",
        "input_tokens": 10 + int(duration * 10),
        "output_tokens": len(text.split()),
        "total_tokens": 10 + int(duration * 10) + len(text.split()),
        "input_token_details": {"text_tokens": 10, "audio_tokens": int(duration * 10)},
    }
    duration_usage = {"type": "duration", "seconds": math.ceil(duration)}
    usage = tokens_usage if model.startswith("gpt-") else duration_usage

    if response_format == "text":
        return PlainTextResponse(text + "\n")
    if response_format in ("srt", "vtt"):
        lines = ["WEBVTT", ""] if response_format == "vtt" else []
        sep = "." if response_format == "vtt" else ","
        for i, (start, end, seg_text) in enumerate(script, 1):
            if response_format == "srt":
                lines.append(str(i))
            lines += [f"{_timestamp(start, sep)} --> {_timestamp(end, sep)}", seg_text.strip(), ""]
        return PlainTextResponse("\n".join(lines))
    if response_format == "diarized_json":
        segments = [
            {
                "type": "transcript.text.segment",
                "id": f"seg_{i:03d}",
                "start": _r(start),
                "end": _r(end),
                "text": seg_text.strip(),
                "speaker": "AB"[i % 2],
            }
            for i, (start, end, seg_text) in enumerate(script)
        ]
        return JSONResponse(
            {
                "task": "transcribe",
                "duration": _r(duration),
                "text": text,
                "segments": segments,
                "usage": usage,
            }
        )
    if response_format == "verbose_json":
        body: dict[str, Any] = {
            "task": "transcribe",
            "language": language,
            "duration": _r(duration),
            "text": text,
        }
        if "segment" in granularities or not granularities:
            body["segments"] = []
            first_token = 0
            for i, (start, end, seg_text) in enumerate(script):
                body["segments"].append(_segment_json(i, start, end, " " + seg_text.strip(), first_token))
                first_token += len(seg_text.split())
        if "word" in granularities:
            body["words"] = [w for start, end, seg_text in script for w in _words(start, end, seg_text)]
        body["usage"] = duration_usage
        return JSONResponse(body)
    return JSONResponse({"text": text, "usage": usage})  # json


# ------------------------------------------------------------------------------------------ app


def _error_response(
    status: int,
    message: str,
    *,
    type: str | None = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


def _masked(key: str | None) -> str:
    if not key:
        return "(none)"
    return key[:8] + "*" * max(len(key) - 12, 4) + key[-4:] if len(key) > 12 else "****"


def _failure_response(failure: Failure, api_key: str | None) -> Response:
    if failure.kind == "body":
        content = failure.body if isinstance(failure.body, str) else json.dumps(failure.body)
        return Response(
            content, status_code=failure.status, media_type=failure.content_type, headers=failure.headers
        )
    message = (
        (failure.message or "error")
        .replace("{api_key}", api_key or "")
        .replace("{masked_key}", _masked(api_key))
    )
    return _error_response(
        failure.status,
        message,
        type=failure.type,
        param=failure.param,
        code=failure.code,
        headers=failure.headers,
    )


def _form_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def create_app(state: FakeOpenAIState) -> FastAPI:
    app = FastAPI(title="fake OpenAI audio API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        with state.tracking():
            return await _transcribe(request)

    async def _transcribe(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        api_key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        form = await request.form()
        upload = form.get("file")
        data = await upload.read() if isinstance(upload, UploadFile) else b""
        audio_seconds = wav_seconds(data) if data else None
        granularities = [
            g for key in ("timestamp_granularities[]", "timestamp_granularities") for g in form.getlist(key)
        ]
        failure = state.next_failure()
        recorded = state.record(
            path=request.url.path,
            model=_form_str(form.get("model")),
            response_format=_form_str(form.get("response_format")),
            timestamp_granularities=[g for g in granularities if isinstance(g, str)],
            language=_form_str(form.get("language")),
            prompt=_form_str(form.get("prompt")),
            temperature=_form_str(form.get("temperature")),
            chunking_strategy=_form_str(form.get("chunking_strategy")),
            filename=upload.filename if isinstance(upload, UploadFile) else None,
            content_type=upload.content_type if isinstance(upload, UploadFile) else None,
            file_size=len(data),
            audio_seconds=audio_seconds,
            api_key=api_key,
            fields=sorted(set(form.keys())),
            failure=failure.kind if failure else None,
        )
        config = state.config
        await state.sleep(config.latency + config.latency_per_audio_second * (audio_seconds or 0.0))
        response = await _answer(failure, config, recorded)
        recorded.status = response.status_code  # the stored object: visible to later `requests()`
        return response

    async def _answer(failure: Failure | None, config: FakeConfig, call: RecordedRequest) -> Response:
        if failure is not None and failure.kind != "hang":
            return _failure_response(failure, call.api_key)
        if failure is not None:
            await state.sleep(failure.seconds)
        if config.api_key is not None and call.api_key != config.api_key:
            return _failure_response(Failure.unauthorized(), call.api_key)
        if not call.file_size:
            return _error_response(400, "You must provide a file.", param="file", code="invalid_value")
        model, audio_seconds = call.model, call.audio_seconds
        if not model:
            return _error_response(400, "you must provide a model parameter", param="model")
        response_format = call.response_format or "json"
        granularities = call.timestamp_granularities
        name = model.lower()
        allowed = (
            DIARIZE_FORMATS
            if "diarize" in name
            else GPT_FORMATS
            if name.startswith("gpt-")
            else WHISPER_FORMATS
        )
        if response_format not in allowed:
            return _error_response(
                400,
                f"response_format '{response_format}' is not compatible with model '{model}'. "
                f"Use {' or '.join(repr(f) for f in allowed)} instead.",
                param="response_format",
                code="unsupported_value",
            )
        if granularities and response_format != "verbose_json":
            return _error_response(
                400,
                "timestamp_granularities requires response_format=verbose_json",
                param="timestamp_granularities",
            )
        if "diarize" in name and call.prompt:
            return _error_response(400, f"prompt is not supported with model '{model}'", param="prompt")
        if audio_seconds is None:
            return _error_response(
                400,
                "Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', 'mp4', 'mpeg', 'mpga', "
                "'oga', 'ogg', 'wav', 'webm']",
                param="file",
                code="invalid_value",
            )
        if audio_seconds < MIN_AUDIO_SECONDS:
            return _error_response(
                400,
                f"Audio file is too short. Minimum audio length is {MIN_AUDIO_SECONDS} seconds.",
                param="file",
                code="audio_too_short",
            )
        if "diarize" in name and audio_seconds > 30 and not call.chunking_strategy:
            return _error_response(
                400,
                "chunking_strategy is required for audio longer than 30 seconds",
                param="chunking_strategy",
            )

        stem = Path(call.filename or "audio").stem
        if state.transcript_for is not None:
            script = list(state.transcript_for(audio_seconds))
        elif config.script is not None:
            script = list(config.script)
        else:
            script = default_script(audio_seconds, config, stem)
        language = call.language
        reported_language = _LANGUAGE_NAMES.get(language, language) if language else config.language
        return render_transcript(
            _clip(script, audio_seconds),
            duration=audio_seconds,
            model=name,
            response_format=response_format,
            granularities=granularities,
            language=reported_language,
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        ids = ["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize"]
        return {
            "object": "list",
            "data": [{"id": i, "object": "model", "created": 1677610602, "owned_by": "openai"} for i in ids],
        }

    @app.get("/_control/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/_control/config")
    async def get_config() -> FakeConfig:
        return state.config

    @app.post("/_control/config")
    async def set_config(changes: dict[str, Any]) -> FakeConfig:
        return state.configure(**changes)

    @app.get("/_control/failures")
    async def get_failures() -> list[Failure]:
        return state.pending_failures()

    @app.post("/_control/failures")
    async def add_failures(failures: list[Failure]) -> list[Failure]:
        state.add_failures(failures)
        return state.pending_failures()

    @app.put("/_control/failures")
    async def replace_failures(failures: list[Failure]) -> list[Failure]:
        state.add_failures(failures, replace=True)
        return state.pending_failures()

    @app.delete("/_control/failures")
    async def clear_failures() -> list[Failure]:
        state.add_failures([], replace=True)
        return []

    @app.get("/_control/requests")
    async def get_requests() -> list[RecordedRequest]:
        return state.requests()

    @app.delete("/_control/requests")
    async def clear_requests() -> list[RecordedRequest]:
        state.clear_requests()
        return []

    @app.get("/_control/stats")
    async def get_stats() -> Stats:
        return state.stats()

    @app.post("/_control/reset")
    async def reset() -> dict[str, bool]:
        state.reset()
        return {"ok": True}

    return app


# ------------------------------------------------------------------------------- in-process use


class FakeOpenAI(LoopbackFake):
    """The fake in a background thread of this process: `with FakeOpenAI() as fake: fake.base_url`."""

    name = "fake-openai"
    state: FakeOpenAIState

    def __init__(
        self,
        *,
        latency: float = 0.0,
        api_key: str | None = None,
        port: int = 0,
        log_level: str = "warning",
        **config: Any,
    ) -> None:
        self.state = FakeOpenAIState(FakeConfig(latency=latency, api_key=api_key, **config))
        super().__init__(port=port, log_level=log_level)

    def app(self) -> FastAPI:
        return create_app(self.state)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def set_failures(self, failures: Sequence[Failure]) -> None:
        self.state.add_failures(failures, replace=True)

    def requests(self) -> list[RecordedRequest]:
        return self.state.requests()

    def clear_requests(self) -> None:
        self.state.clear_requests()

    def stats(self) -> Stats:
        return self.state.stats()


# -------------------------------------------------------------------------- out-of-process use


class RemoteFakeOpenAI:
    """Controls a fake running in another process, over its `/_control` HTTP interface."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self._timeout = timeout

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        response = httpx.request(method, f"{self.url}{path}", json=payload, timeout=self._timeout)
        response.raise_for_status()
        return response.json()

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "/_control/health").get("ok"))
        except httpx.HTTPError:
            return False

    def fail(self, *failures: Failure) -> None:
        self._call("POST", "/_control/failures", [f.model_dump() for f in failures])

    def set_failures(self, failures: Sequence[Failure]) -> None:
        self._call("PUT", "/_control/failures", [f.model_dump() for f in failures])

    def pending_failures(self) -> list[Failure]:
        return [Failure.model_validate(f) for f in self._call("GET", "/_control/failures")]

    def requests(self) -> list[RecordedRequest]:
        return [RecordedRequest.model_validate(r) for r in self._call("GET", "/_control/requests")]

    def clear_requests(self) -> None:
        self._call("DELETE", "/_control/requests")

    def configure(self, **changes: Any) -> FakeConfig:
        return FakeConfig.model_validate(self._call("POST", "/_control/config", changes))

    def stats(self) -> Stats:
        return Stats.model_validate(self._call("GET", "/_control/stats"))

    def reset(self) -> None:
        self._call("POST", "/_control/reset")


class FakeOpenAIProcess:
    """`python -m tests.fakes.openai_server` as a child process.

    `with FakeOpenAIProcess() as p: p.base_url, p.control.fail(...)`.
    """

    def __init__(self, *, port: int = 0, latency: float = 0.0, api_key: str | None = None) -> None:
        self._args = ["--port", str(port), "--latency", str(latency)]
        if api_key is not None:
            self._args += ["--api-key", api_key]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def control(self) -> RemoteFakeOpenAI:
        return RemoteFakeOpenAI(self.url)

    def start(self, timeout: float = 20.0) -> FakeOpenAIProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai_server", *self._args],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()  # the first line: the URL (blocks until the port is bound)
        if not line.startswith(URL_LINE_PREFIX):
            self.stop()
            raise RuntimeError(f"fake OpenAI process did not start (first line: {line!r})")
        self.url = line.strip().removeprefix(URL_LINE_PREFIX)
        while not self.control.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake OpenAI process did not become healthy")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> FakeOpenAIProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.openai_server", description="A fake OpenAI audio transcription API."
    )
    parser.add_argument("--host", default=HOST, help="loopback only (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed first)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--api-key", default=None, help="accept only this bearer token")
    parser.add_argument("--segment-seconds", type=float, default=5.0)
    parser.add_argument("--word-seconds", type=float, default=0.5)
    parser.add_argument("--word-template", default="w{i}", help="word text; {i} index, {stem} file stem")
    parser.add_argument("--failures", default=None, help="JSON list of Failure objects queued at start")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    state = FakeOpenAIState(
        FakeConfig(
            latency=args.latency,
            api_key=args.api_key,
            segment_seconds=args.segment_seconds,
            word_seconds=args.word_seconds,
            word_template=args.word_template,
        )
    )
    if args.failures:
        state.add_failures([Failure.model_validate(f) for f in json.loads(args.failures)])
    sock = bind_loopback(args.host, args.port)
    port = sock.getsockname()[1]
    print(f"{URL_LINE_PREFIX}http://{HOST}:{port}", flush=True)
    server = StoppableServer(create_app(state), state.stopping, log_level=args.log_level)
    try:
        server.run(sockets=[sock])
    finally:
        state.stopping.set()


if __name__ == "__main__":
    main()
