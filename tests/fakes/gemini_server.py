"""A fake Gemini API (Google AI, `generativelanguage.googleapis.com`) for the `gemini` provider, on
127.0.0.1 only, speaking the REST shapes the `google-genai` SDK uses:

    POST   /v1beta/models/{model}:generateContent   inline audio (`inlineData`) or a `fileData` reference
    POST   /upload/v1beta/files                     resumable upload: `X-Goog-Upload-Command: start`
                                                    answers `X-Goog-Upload-URL`; then `upload, finalize`
    GET    /v1beta/files/{id}                       the File, `state` PROCESSING / ACTIVE / FAILED
    DELETE /v1beta/files/{id}

Errors are Google's `{"error": {"code", "message", "status", "details": [...]}}` (with
`google.rpc.RetryInfo`, `QuotaFailure`, `ErrorInfo` details where Google sends them). The API key is
checked in the `x-goog-api-key` header (or `?key=`), when the fake is given one.

By default `generateContent` answers a deterministic transcript derived from the audio's duration (the
inline base64 WAV, or the uploaded file): words "w0 w1 ..." one every `word_seconds` (0.5 s), grouped
into segments of `segment_seconds` (5 s), as the JSON text of the candidate's part:
`{"language": "en", "segments": [{"start", "end", "text"}]}`. `transcript_for(duration)` replaces it.

A queue of scripted failures is consumed in order, each by the next request to its `endpoint`
("generate" by default, or "upload", "get", "delete")::

    with FakeGemini(api_key="test-key") as fake:
        provider = GeminiProvider(api_key="test-key", base_url=fake.url)
        fake.fail(Failure.rate_limited(retry_delay="17s"), Failure.server_error(503))
        ...
        assert fake.requests()[0].model == "gemini-2.5-flash"
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tests.fakes.loopback import FakeVendorState, LoopbackFake, wav_seconds

API_VERSION = "v1beta"
# Google's documented limit of a whole generateContent request (inline data included).
MAX_REQUEST_BYTES = 20 * 1024 * 1024

# A (start, end, text) segment of a scripted transcript. Times may be strings ("01:02.5") on purpose.
ScriptSegment = tuple[float | str, float | str, str]
TranscriptFor = Callable[[float], Sequence[ScriptSegment]]
Endpoint = Literal["generate", "upload", "get", "delete"]

_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_QUOTA_HELP = {
    "@type": "type.googleapis.com/google.rpc.Help",
    "links": [
        {
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
        }
    ],
}
_FREE_TIER_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)


# ------------------------------------------------------------------------------------------ models


class FakeConfig(BaseModel):
    latency: float = Field(default=0.0, ge=0, description="Seconds before every generateContent answer.")
    api_key: str | None = Field(default=None, description="When set, other keys get Google's 400.")
    segment_seconds: float = Field(default=5.0, gt=0)
    word_seconds: float = Field(default=0.5, gt=0)
    language: str = Field(default="en", description="Reported when the prompt names no language.")
    speakers: bool = Field(default=False, description="Label segments with speakers A, B, A, ...")
    processing_polls: int = Field(default=0, ge=0, description="GETs an uploaded file stays PROCESSING.")
    file_fails: bool = Field(default=False, description="Uploaded files end up FAILED instead of ACTIVE.")


class Failure(BaseModel):
    """One scripted misbehaviour, used by the next request to `endpoint`.

    kind "error": Google's error body with `status` (HTTP), `grpc_status`, `message`, `details`.
    kind "body": `status` with `body` as is (str) or as JSON (anything else).
    kind "text": a 200 generateContent answer whose only part's text is `text`, with `finish_reason`.
    kind "hang": wait `seconds` (or until the server stops), then answer normally.
    `message` may contain {api_key} (the key received).
    """

    kind: Literal["error", "body", "text", "hang"] = "error"
    endpoint: Endpoint = "generate"
    status: int = 500
    grpc_status: str | None = None
    message: str | None = None
    details: list[dict[str, Any]] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    content_type: str = "application/json"
    text: str | None = None
    finish_reason: str | None = "STOP"
    seconds: float = 3600.0

    @classmethod
    def error(
        cls,
        status: int,
        message: str,
        *,
        grpc_status: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        endpoint: Endpoint = "generate",
    ) -> Failure:
        return cls(
            kind="error",
            endpoint=endpoint,
            status=status,
            grpc_status=grpc_status or _HTTP_STATUS.get(status, "UNKNOWN"),
            message=message,
            details=details or [],
            headers=headers or {},
        )

    @classmethod
    def api_key_invalid(cls) -> Failure:
        """What Google answers a wrong key: a 400, not a 401."""
        return cls.error(
            400,
            "API key not valid. Please pass a valid API key.",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        )

    @classmethod
    def unauthenticated(cls, message: str | None = None) -> Failure:
        return cls.error(
            401,
            message
            or "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
            "cookie or other valid authentication credential.",
        )

    @classmethod
    def permission_denied(cls) -> Failure:
        return cls.error(
            403, "Method doesn't allow unregistered callers (callers without established identity)."
        )

    @classmethod
    def rate_limited(cls, retry_delay: str | None = "17s", retry_after: str | None = None) -> Failure:
        details: list[dict[str, Any]] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": _FREE_TIER_METRIC,
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                        "quotaValue": "10",
                    }
                ],
            },
            _QUOTA_HELP,
        ]
        if retry_delay is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls.error(429, _QUOTA_MESSAGE, details=details, headers=headers)

    @classmethod
    def quota_exhausted(cls) -> Failure:
        """The daily free-tier cap: the same 429 and message as a rate limit, a per-day quota id."""
        return cls.error(
            429,
            _QUOTA_MESSAGE,
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": _FREE_TIER_METRIC,
                            "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                            "quotaValue": "250",
                        }
                    ],
                },
                _QUOTA_HELP,
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "43s"},
            ],
        )

    @classmethod
    def credits_depleted(cls) -> Failure:
        return cls.error(
            429,
            "Your prepayment credits are depleted. Please go to AI Studio at https://ai.studio/projects "
            "to manage your project and billing.",
        )

    @classmethod
    def server_error(cls, status: int = 500, retry_after: str | None = None) -> Failure:
        message = (
            "The model is overloaded. Please try again later."
            if status == 503
            else "An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting"
        )
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls.error(status, message, headers=headers)

    @classmethod
    def deadline_exceeded(cls) -> Failure:
        return cls.error(504, "The request timed out. Please try again.")

    @classmethod
    def invalid_audio(cls) -> Failure:
        return cls.error(400, "Request contains an invalid argument: unable to process the input audio file.")

    @classmethod
    def bad_argument(cls) -> Failure:
        return cls.error(
            400,
            "Invalid JSON payload received. Unknown name \"frobnicate\" at 'generation_config': Cannot find "
            "field.",
        )

    @classmethod
    def model_not_found(cls, model: str = "nope") -> Failure:
        return cls.error(
            404,
            f"models/{model} is not found for API version v1beta, or is not supported for generateContent.",
        )

    @classmethod
    def hang(cls, seconds: float = 3600.0, endpoint: Endpoint = "generate") -> Failure:
        return cls(kind="hang", seconds=seconds, endpoint=endpoint)

    @classmethod
    def raw(cls, body: Any, status: int = 200, content_type: str = "application/json") -> Failure:
        return cls(kind="body", status=status, body=body, content_type=content_type)

    @classmethod
    def model_text(cls, text: str, finish_reason: str | None = "STOP") -> Failure:
        return cls(kind="text", status=200, text=text, finish_reason=finish_reason)

    @classmethod
    def malformed_json(cls) -> Failure:
        return cls.model_text('{"language": "en", "segments": [{"start": 0, "end": 1, "text": "w0')

    @classmethod
    def wrong_shape(cls) -> Failure:
        return cls.model_text('{"transcript": "w0 w1"}')

    @classmethod
    def truncated(cls) -> Failure:
        return cls.model_text('{"language": "en", "segments": [{"start": 0, "end": 1, "te', "MAX_TOKENS")

    @classmethod
    def times_past_end(cls) -> Failure:
        return cls.model_text('{"language": "en", "segments": [{"start": 0, "end": 5000, "text": "w0"}]}')

    @classmethod
    def safety_block(cls, reason: str = "SAFETY") -> Failure:
        """A candidate stopped by the safety filters: no content, finishReason SAFETY (or RECITATION)."""
        return cls.raw(
            {
                "candidates": [
                    {
                        "finishReason": reason,
                        "index": 0,
                        "safetyRatings": [
                            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}
                        ],
                    }
                ],
                "usageMetadata": {"promptTokenCount": 40, "totalTokenCount": 40},
                "modelVersion": "gemini-2.5-flash",
            }
        )

    @classmethod
    def prompt_blocked(cls, reason: str = "PROHIBITED_CONTENT") -> Failure:
        return cls.raw(
            {
                "promptFeedback": {"blockReason": reason},
                "usageMetadata": {"promptTokenCount": 40, "totalTokenCount": 40},
                "modelVersion": "gemini-2.5-flash",
            }
        )

    @classmethod
    def no_candidates(cls) -> Failure:
        return cls.raw({"usageMetadata": {"promptTokenCount": 40}, "modelVersion": "gemini-2.5-flash"})


class RecordedRequest(BaseModel):
    index: int
    received_at: float
    endpoint: Endpoint
    method: str
    path: str
    model: str | None = None
    api_key: str | None = None
    prompt: str = Field(default="", description="The system instruction and every text part, joined.")
    system_instruction: str | None = None
    generation_config: dict[str, Any] = Field(default_factory=dict)
    audio_source: Literal["inline", "file"] | None = None
    mime_type: str | None = None
    file_name: str | None = None
    audio_bytes: int = 0
    audio_seconds: float | None = None
    upload_command: str | None = None
    failure: str | None = Field(default=None, description="The scripted failure's kind, if one was used.")
    status: int | None = None


class FakeFile(BaseModel):
    name: str
    display_name: str | None = None
    mime_type: str
    size_bytes: int
    data: bytes = Field(default=b"", repr=False)
    state: Literal["PROCESSING", "ACTIVE", "FAILED"] = "PROCESSING"
    polls_left: int = 0
    fails: bool = False
    uploaded: bool = False
    deleted: bool = False

    def resource(self, base_url: str) -> dict[str, Any]:
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        body: dict[str, Any] = {
            "name": self.name,
            "mimeType": self.mime_type,
            "sizeBytes": str(self.size_bytes),
            "createTime": now,
            "updateTime": now,
            "expirationTime": now,
            "sha256Hash": base64.b64encode(b"0" * 32).decode(),
            "uri": f"{base_url}/{API_VERSION}/{self.name}",
            "state": self.state,
            "source": "UPLOADED",
        }
        if self.display_name:
            body["displayName"] = self.display_name
        if self.state == "FAILED":
            body["error"] = {"code": 400, "message": "The audio file could not be processed."}
        return body


# ------------------------------------------------------------------------------------------- state


class FakeGeminiState(FakeVendorState[FakeConfig, Failure, RecordedRequest]):
    """What the server shares with the test: `FakeVendorState` (failures queued per endpoint), the
    transcript override, and the Files API's files and unfinished uploads."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        super().__init__(config or FakeConfig(), RecordedRequest)
        self.transcript_for: TranscriptFor | None = None
        self.files: dict[str, FakeFile] = {}
        self.uploads: dict[str, FakeFile] = {}

    def _reset(self) -> None:
        self.transcript_for = None
        self.files.clear()
        self.uploads.clear()


# ------------------------------------------------------------------------------------- transcripts


def default_script(duration: float, config: FakeConfig) -> list[ScriptSegment]:
    """Words "w0 w1 ..." one per `word_seconds`, in segments of `segment_seconds`."""
    n_words = max(1, math.ceil(duration / config.word_seconds - 1e-9))
    groups: dict[int, list[str]] = {}
    for i in range(n_words):
        groups.setdefault(int(i * config.word_seconds // config.segment_seconds), []).append(f"w{i}")
    script: list[ScriptSegment] = []
    for k, words in sorted(groups.items()):
        start = k * config.segment_seconds
        script.append((start, min(start + config.segment_seconds, duration), " ".join(words)))
    return script


def _r(t: float | str) -> float | str:
    return round(t, 2) if isinstance(t, float | int) else t


def _transcript_text(script: Sequence[ScriptSegment], language: str, speakers: bool) -> str:
    segments: list[dict[str, Any]] = []
    for i, (start, end, text) in enumerate(script):
        segment: dict[str, Any] = {"start": _r(start), "end": _r(end), "text": text}
        if speakers:
            segment["speaker"] = "AB"[i % 2]
        segments.append(segment)
    return json.dumps({"language": language, "segments": segments})


def _generate_body(text: str, finish_reason: str | None, model: str) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish_reason:
        candidate["finishReason"] = finish_reason
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": 120,
            "candidatesTokenCount": max(1, len(text) // 4),
            "totalTokenCount": 120 + max(1, len(text) // 4),
        },
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:22],
    }


# ---------------------------------------------------------------------------------------------- app


def _error_response(
    status: int,
    message: str,
    *,
    grpc_status: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": grpc_status or _HTTP_STATUS.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _failure_response(failure: Failure, api_key: str | None, model: str) -> Response:
    if failure.kind == "body":
        content = failure.body if isinstance(failure.body, str) else json.dumps(failure.body)
        return Response(
            content, status_code=failure.status, media_type=failure.content_type, headers=failure.headers
        )
    if failure.kind == "text":
        return JSONResponse(_generate_body(failure.text or "", failure.finish_reason, model))
    message = (failure.message or "error").replace("{api_key}", api_key or "")
    return _error_response(
        failure.status,
        message,
        grpc_status=failure.grpc_status,
        details=failure.details,
        headers=failure.headers,
    )


def _api_key(request: Request) -> str | None:
    return request.headers.get("x-goog-api-key") or request.query_params.get("key")


def _texts(content: Any) -> list[str]:
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p["text"] for p in parts or [] if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _pick(d: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in d:
            return d[name]
    return None


def create_app(state: FakeGeminiState, base_url: Callable[[], str]) -> FastAPI:
    app = FastAPI(title="fake Gemini API", docs_url=None, redoc_url=None, openapi_url=None)

    def key_error(api_key: str | None) -> Response | None:
        expected = state.config.api_key
        if expected is not None and api_key != expected:
            return _failure_response(Failure.api_key_invalid(), api_key, "")
        return None

    # -------------------------------------------------------------------------------- generate

    @app.post(f"/{API_VERSION}/models/{{target:path}}")
    async def models(target: str, request: Request) -> Response:
        model, _, method = target.rpartition(":")
        raw = await request.body()
        api_key = _api_key(request)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        fields: dict[str, Any] = {"model": model, "api_key": api_key}
        audio: bytes | None = None
        problem: Response | None = None
        if isinstance(body, dict):
            system = _pick(body, "systemInstruction", "system_instruction")
            system_text = "\n".join(_texts(system)) if system else None
            texts: list[str] = []
            for content in body.get("contents") or []:
                texts += _texts(content)
                for part in content.get("parts") or [] if isinstance(content, dict) else []:
                    inline = _pick(part, "inlineData", "inline_data")
                    file_data = _pick(part, "fileData", "file_data")
                    if isinstance(inline, dict):
                        fields.update(audio_source="inline", mime_type=_pick(inline, "mimeType", "mime_type"))
                        try:
                            # The SDK sends URL-safe base64 (pydantic's); Google takes either alphabet.
                            data = str(inline.get("data") or "").replace("+", "-").replace("/", "_")
                            audio = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
                        except (binascii.Error, ValueError):
                            audio = b""
                    elif isinstance(file_data, dict):
                        uri = str(_pick(file_data, "fileUri", "file_uri") or "")
                        name = "files/" + uri.rsplit("/files/", 1)[-1] if "/files/" in uri else uri
                        fields.update(
                            audio_source="file",
                            mime_type=_pick(file_data, "mimeType", "mime_type"),
                            file_name=name,
                        )
                        stored = state.files.get(name)
                        if stored is None or stored.deleted:
                            problem = _error_response(
                                403,
                                f"You do not have permission to access the File {name} or it may not exist.",
                            )
                        elif stored.state != "ACTIVE":
                            problem = _error_response(
                                400,
                                f"The File {name} is not in an ACTIVE state and usage is not allowed.",
                                grpc_status="FAILED_PRECONDITION",
                            )
                        else:
                            audio = stored.data
            config = _pick(body, "generationConfig", "generation_config")
            fields.update(
                system_instruction=system_text,
                prompt="\n".join(([system_text] if system_text else []) + texts),
                generation_config=config if isinstance(config, dict) else {},
            )
        if audio is not None:
            fields.update(audio_bytes=len(audio), audio_seconds=wav_seconds(audio))
        failure = state.next_failure("generate")
        recorded = state.record(
            endpoint="generate",
            method="POST",
            path=request.url.path,
            failure=failure.kind if failure else None,
            **fields,
        )
        await state.sleep(state.config.latency)
        if failure is not None and failure.kind == "hang":
            await state.sleep(failure.seconds)
            failure = None
        if failure is not None:
            response = _failure_response(failure, api_key, model)
        else:
            response = key_error(api_key) or problem or answer(method, model, body, raw, recorded)
        recorded.status = response.status_code
        return response

    def answer(method: str, model: str, body: Any, raw: bytes, call: RecordedRequest) -> Response:
        if method != "generateContent":
            return _error_response(404, f"Method {method!r} not found on the fake.", grpc_status="NOT_FOUND")
        if not isinstance(body, dict):
            return _error_response(400, "Invalid JSON payload received.")
        if len(raw) > MAX_REQUEST_BYTES:
            return _error_response(400, f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes.")
        if call.audio_source is None:
            return _error_response(400, "The fake expects one audio part (inlineData or fileData).")
        if call.audio_seconds is None:
            return _error_response(
                400, "Request contains an invalid argument: unable to process input audio."
            )
        config = state.config
        duration = call.audio_seconds
        if state.transcript_for is not None:
            script = list(state.transcript_for(duration))
        else:
            script = default_script(duration, config)
        language = config.language
        marker = "The audio is in the language with ISO 639-1 code "
        if marker in call.prompt:
            language = call.prompt.split(marker, 1)[1][:8].split(".", 1)[0].strip('" ')
        text = _transcript_text(script, language, config.speakers)
        return JSONResponse(_generate_body(text, "STOP", model))

    # ----------------------------------------------------------------------------------- files

    @app.post(f"/upload/{API_VERSION}/files")
    async def upload(request: Request) -> Response:
        command = request.headers.get("x-goog-upload-command", "")
        upload_id = request.query_params.get("upload_id")
        raw = await request.body()
        api_key = _api_key(request)
        failure = state.next_failure("upload") if upload_id is None else None
        recorded = state.record(
            endpoint="upload",
            method="POST",
            path=request.url.path,
            api_key=api_key,
            upload_command=command,
            audio_bytes=len(raw) if upload_id else 0,
            failure=failure.kind if failure else None,
        )
        if failure is not None and failure.kind == "hang":
            await state.sleep(failure.seconds)
            failure = None
        response: Response
        if failure is not None:
            response = _failure_response(failure, api_key, "")
        elif upload_id is None:
            response = key_error(api_key) or start_upload(request, raw)
        else:
            response = continue_upload(upload_id, command, request, raw)
        # The SDK retries an upload chunk whose answer lacks this header; Google always sends it.
        response.headers.setdefault("x-goog-upload-status", "final")
        recorded.status = response.status_code
        return response

    def start_upload(request: Request, raw: bytes) -> Response:
        if "start" not in request.headers.get("x-goog-upload-command", ""):
            return _error_response(400, "Expected X-Goog-Upload-Command: start")
        try:
            meta = (json.loads(raw or b"{}").get("file")) or {}
        except (ValueError, AttributeError):
            return _error_response(400, "Invalid JSON payload received.")
        upload_id = uuid.uuid4().hex
        name = str(meta.get("name") or f"files/{uuid.uuid4().hex[:12]}")
        state.uploads[upload_id] = FakeFile(
            name=name,
            display_name=meta.get("displayName") or meta.get("display_name"),
            mime_type=request.headers.get("x-goog-upload-header-content-type", "application/octet-stream"),
            size_bytes=int(request.headers.get("x-goog-upload-header-content-length", "0")),
        )
        url = f"{base_url()}/upload/{API_VERSION}/files?upload_id={upload_id}&upload_protocol=resumable"
        return Response(b"", headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})

    def continue_upload(upload_id: str, command: str, request: Request, raw: bytes) -> Response:
        pending = state.uploads.get(upload_id)
        if pending is None:
            return _error_response(404, "Upload session not found.")
        offset = int(request.headers.get("x-goog-upload-offset", "0"))
        if offset != len(pending.data):
            return _error_response(400, f"Offset {offset} does not match {len(pending.data)}.")
        pending.data += raw
        if "finalize" not in command:
            return Response(b"", headers={"X-Goog-Upload-Status": "active"})
        del state.uploads[upload_id]
        config = state.config
        pending.size_bytes = len(pending.data)
        pending.uploaded = True
        pending.fails = config.file_fails
        pending.polls_left = config.processing_polls
        pending.state = "PROCESSING" if pending.polls_left or pending.fails else "ACTIVE"
        state.files[pending.name] = pending
        return JSONResponse({"file": pending.resource(base_url())}, headers={"X-Goog-Upload-Status": "final"})

    @app.get(f"/{API_VERSION}/files/{{file_id}}")
    async def get_file(file_id: str, request: Request) -> Response:
        return await file_call("get", file_id, request)

    @app.delete(f"/{API_VERSION}/files/{{file_id}}")
    async def delete_file(file_id: str, request: Request) -> Response:
        return await file_call("delete", file_id, request)

    async def file_call(endpoint: Literal["get", "delete"], file_id: str, request: Request) -> Response:
        api_key = _api_key(request)
        name = f"files/{file_id}"
        failure = state.next_failure(endpoint)
        recorded = state.record(
            endpoint=endpoint,
            method=request.method,
            path=request.url.path,
            api_key=api_key,
            file_name=name,
            failure=failure.kind if failure else None,
        )
        if failure is not None and failure.kind == "hang":
            await state.sleep(failure.seconds)
            failure = None
        stored = state.files.get(name)
        response: Response
        if failure is not None:
            response = _failure_response(failure, api_key, "")
        elif (problem := key_error(api_key)) is not None:
            response = problem
        elif stored is None or stored.deleted:
            response = _error_response(
                403, f"You do not have permission to access the File {file_id} or it may not exist."
            )
        elif endpoint == "delete":
            stored.deleted = True
            response = JSONResponse({})
        else:
            if stored.state == "PROCESSING":
                if stored.polls_left > 0:
                    stored.polls_left -= 1
                else:
                    stored.state = "FAILED" if stored.fails else "ACTIVE"
            response = JSONResponse(stored.resource(base_url()))
        recorded.status = response.status_code
        return response

    return app


# ------------------------------------------------------------------------------------------ server


class FakeGemini(LoopbackFake):
    """The fake in a background thread of this process: `with FakeGemini() as fake: fake.url`."""

    name = "fake-gemini"
    state: FakeGeminiState

    def __init__(
        self, *, latency: float = 0.0, api_key: str | None = None, log_level: str = "warning", **config: Any
    ) -> None:
        self.state = FakeGeminiState(FakeConfig(latency=latency, api_key=api_key, **config))
        super().__init__(log_level=log_level)

    def app(self) -> FastAPI:
        return create_app(self.state, lambda: self.url)

    def requests(self, endpoint: Endpoint | None = None) -> list[RecordedRequest]:
        return [r for r in self.state.requests() if endpoint is None or r.endpoint == endpoint]

    def files(self) -> list[FakeFile]:
        """Every uploaded file, deleted ones included (`deleted` says which)."""
        return [f.model_copy() for f in self.state.files.values()]

    def live_files(self) -> list[FakeFile]:
        return [f for f in self.files() if not f.deleted]

    @contextmanager
    def scripted(self, fn: TranscriptFor) -> Iterator[None]:
        self.state.transcript_for = fn
        try:
            yield
        finally:
            self.state.transcript_for = None
