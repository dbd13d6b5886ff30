"""A fake wav.am speech-to-text API (the Armenian vendor), on 127.0.0.1 only.

wav.am publishes no API reference reachable from here. The shapes below come from public code that calls
it:

- DavidArakelyan/STT-tool `src/stt_service/providers/wav.py`, its commit 90a7285 ("handle API response
  format (list of speaker segments), raw project ID from add_project, and map language=auto to hy since
  wav.am requires explicit language codes") and `tests/test_providers/test_wav_parse.py`;
- hreshtak05/transcription-benchmark `services/wavam.py` history: c2f9343 (guessed project shapes,
  dropped 13 minutes later), 8b309dd ("handle list response format"), then a move to the separate
  streaming service on port 21478;
- two drone voice-command scripts (curl, `project_id` + `audio_file` only);
- the NUR Lingo Node scripts `scripts/test-wav.js`, `lib/wav-api.js` (curl, `data.text` or raw text);
- several TTS clients of the same host (`/generate_audio/`, `/get_credits/`): same raw-token header, error
  bodies read as `result.error`, tokens that are HS256 JWTs with `key`, `username`, `connection: "api"`,
  `iat` and `exp` (expiry at 00:00 UTC of a chosen day; 25 to 192 days after issue in the samples).

What the clients show (several agree, unless one is named), and this fake does:

- `POST /transcribe_audio/` (trailing slash), header `Authorization: <token>` (raw, no `Bearer`),
  multipart `audio_file` plus form fields `project_id`, `language` (`hy`; also `en`, `ru`), `num_speakers`.
- Answer 200 JSON: a list of speaker turns `[{"speaker": "speaker_0", "text": "..."}]`, no timestamps
  (STT-tool, benchmark). Older clients read `{"text": "..."}` or a plain-text body (`answer_shape`).
- `POST /get_projects/` with JSON `{}` answers a list of `{"id": <int>, "name": <str>}`;
  `POST /add_project/` with JSON `{"name": ...}` answers the new id as a bare JSON integer (STT-tool,
  observed). One benchmark version expects `{"projects": [...]}` and `{"project_id": id}` instead:
  `projects_shape="wrapped"` and `add_project_shape="object"` serve those.
- A 500 whose body contains "Failed to transcribe audio" is permanent for that audio (STT-tool).

Assumed (no client shows it): every error body is `{"error": "<message>"}` (one TTS client reads
`result.error`); a missing or wrong token is 401 "Invalid token"; an expired token is 401 "Token has
expired"; an unknown `project_id` is 404 "Project not found"; `language=auto` (refused, per STT-tool) and
any language other than hy/en/ru is 400; missing `audio_file`/`project_id`, a bad `num_speakers` and a
missing project `name` are 400; a missing `language` means `hy` and a missing `num_speakers` means 1 (the
drone scripts send neither); 429 carries `Retry-After` (only STT-tool's handling shows it); an upload that is
not a readable, non-empty WAV is answered like the permanent "Failed to transcribe audio" 500 (the real
service also takes MP3, which this fake cannot measure); a path without the trailing slash is 404;
duplicate project names are allowed; ids count up from 1001. No size or duration limit is known:
`max_upload_bytes` (413) and `max_audio_seconds` (400) are off unless set.

By default the transcript is derived from the uploaded WAV's duration: words "w0 w1 ..." one every
`word_seconds` (0.5 s); with `num_speakers` > 1 the speaker alternates between "speaker_0" and "speaker_1"
every `speaker_seconds` (5 s) of audio, consecutive words of one speaker forming one turn.
`transcript_for(duration, wav_bytes) -> str` (in-process) replaces the text; its words are spread evenly
over the duration for the speaker turns. A fixed `latency` delays every answer. Scripted failures are
queued per endpoint (transcribe_audio unless `Failure.on(...)` says otherwise) and used one per request.

    with FakeWavAm(token="tok") as fake:
        fake.add_project("STT-Tool")
        provider = WavAmProvider(api_key="tok", base_url=fake.base_url)
        fake.fail(Failure.rate_limited(retry_after=3), Failure.failed_to_transcribe())
        ...
        assert fake.calls("get_projects") == 1
        assert fake.requests("transcribe_audio")[0].raw_token
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from tests.fakes.loopback import FakeVendorState, LoopbackFake, wav_seconds

Endpoint = Literal["transcribe_audio", "get_projects", "add_project"]
ENDPOINTS: tuple[Endpoint, ...] = ("transcribe_audio", "get_projects", "add_project")
LANGUAGES = ("hy", "en", "ru")
DEFAULT_LANGUAGE = "hy"
FIRST_PROJECT_ID = 1001

INVALID_TOKEN = "Invalid token"
EXPIRED_TOKEN = "Token has expired"
FAILED_TO_TRANSCRIBE = "Failed to transcribe audio"

TranscriptFor = Callable[[float, bytes], str]


class FakeConfig(BaseModel):
    latency: float = Field(default=0.0, ge=0, description="Seconds before every answer (all endpoints).")
    token: str | None = Field(
        default=None, description="When set, any other Authorization value gets a 401 (invalid token)."
    )
    expired_token: str | None = Field(
        default=None, description="This Authorization value gets the expired-token 401."
    )
    word_seconds: float = Field(default=0.5, gt=0)
    speaker_seconds: float = Field(default=5.0, gt=0)
    answer_shape: Literal["turns", "text", "plain"] = Field(
        default="turns", description='turns: [{"speaker","text"}]; text: {"text"}; plain: a text/plain body.'
    )
    plain_as_json: bool = Field(default=False, description='answer_shape "plain" as a JSON string instead.')
    projects_shape: Literal["list", "wrapped"] = Field(
        default="list", description='get_projects: a bare list, or {"projects": [...]}.'
    )
    add_project_shape: Literal["int", "object"] = Field(
        default="int", description='add_project: the bare id, or {"project_id": id}.'
    )
    seed_projects: list[str] = Field(
        default_factory=list, description="Project names present at start and after reset()."
    )
    require_known_project: bool = Field(default=True, description="Refuse an unknown project_id (404).")
    max_upload_bytes: int | None = Field(default=None, gt=0, description="Larger uploads get a 413.")
    max_audio_seconds: float | None = Field(default=None, gt=0, description="Longer audio gets a 400.")
    transcript_for: TranscriptFor | None = Field(
        default=None, description="(duration, uploaded WAV bytes) -> the transcript text, in-process."
    )
    failure_for: Callable[[float, bytes], Failure | None] | None = Field(
        default=None,
        description="(duration, uploaded WAV bytes) -> a failure for this upload or None, in-process: "
        "a vendor down for one chunk of a recording only. Consulted before the failure queue.",
    )


class Failure(BaseModel):
    """One scripted misbehaviour, used by one request to `endpoint`.

    kind "error": `{"error": message}` with HTTP `status` and `headers`.
    kind "body": `status` with `body` as is (str) or as JSON (anything else), as `content_type`.
    kind "hang": wait `seconds` (or until the server stops), then answer normally.
    """

    kind: Literal["error", "body", "hang"] = "error"
    endpoint: Endpoint = "transcribe_audio"
    status: int = 500
    message: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    content_type: str = "application/json"
    seconds: float = 3600.0

    def on(self, endpoint: Endpoint) -> Failure:
        """The same failure, for another endpoint."""
        return self.model_copy(update={"endpoint": endpoint})

    @classmethod
    def error(cls, status: int, message: str, *, headers: dict[str, str] | None = None) -> Failure:
        return cls(status=status, message=message, headers=headers or {})

    @classmethod
    def unauthorized(cls, message: str = INVALID_TOKEN) -> Failure:
        return cls.error(401, message)

    @classmethod
    def expired_token(cls) -> Failure:
        return cls.error(401, EXPIRED_TOKEN)

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = None) -> Failure:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls.error(429, "Too many requests", headers=headers)

    @classmethod
    def server_error(cls, status: int = 500, retry_after: float | None = None) -> Failure:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        message = "Service temporarily unavailable" if status == 503 else "Internal server error"
        return cls.error(status, message, headers=headers)

    @classmethod
    def failed_to_transcribe(cls) -> Failure:
        """The 500 that STT-tool found permanent for the audio it was sent."""
        return cls.error(500, FAILED_TO_TRANSCRIBE)

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> Failure:
        return cls(kind="hang", seconds=seconds)

    @classmethod
    def garbage(cls, body: str = '{"status": "ok"}', *, content_type: str = "application/json") -> Failure:
        """A 200 that is none of the three answer shapes (the default: a JSON object without "text")."""
        return cls(kind="body", status=200, body=body, content_type=content_type)

    @classmethod
    def json_body(cls, body: Any, status: int = 200) -> Failure:
        return cls(kind="body", status=status, body=body)


class RecordedRequest(BaseModel):
    index: int
    received_at: float
    endpoint: Endpoint
    path: str
    authorization: str | None = None
    raw_token: bool = Field(
        default=False,
        description="Authorization was a bare token (present, no scheme such as Bearer).",
    )
    project_id: str | None = None
    language: str | None = None
    num_speakers: str | None = None
    name: str | None = Field(default=None, description="add_project: the name asked for.")
    json_body: Any = Field(default=None, description="get_projects/add_project: the JSON body received.")
    filename: str | None = None
    content_type: str | None = Field(default=None, description="transcribe_audio: the audio part's type.")
    size: int = 0
    duration: float | None = Field(default=None, description="Seconds of the uploaded WAV, if readable.")
    fields: list[str] = Field(default_factory=list, description="Every form field name received.")
    failure: str | None = None
    status: int | None = None


class FakeWavAmState(FakeVendorState[FakeConfig, Failure, RecordedRequest]):
    """What the server shares with its controller: `FakeVendorState` (failures queued per endpoint),
    the calls each endpoint received and the projects. `transcript_for` lives in the config, so that
    `configure` and `reset` cover it like any other setting."""

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config, RecordedRequest)
        self._calls: Counter[str] = Counter()
        self._projects: list[dict[str, Any]] = []
        self._next_id = FIRST_PROJECT_ID
        self._seed()

    def _seed(self) -> None:
        self._projects = []
        self._next_id = FIRST_PROJECT_ID
        for name in self.config.seed_projects:
            self._create_project(name)

    def _reset(self) -> None:
        self._calls.clear()
        self._seed()

    @property
    def transcript_for(self) -> TranscriptFor | None:
        return self.config.transcript_for

    @transcript_for.setter
    def transcript_for(self, fn: TranscriptFor | None) -> None:
        with self._lock:
            self.config = self.config.model_copy(update={"transcript_for": fn})

    def count(self, endpoint: Endpoint) -> None:
        with self._lock:
            self._calls[endpoint] += 1

    def calls(self) -> dict[str, int]:
        with self._lock:
            return {endpoint: self._calls[endpoint] for endpoint in ENDPOINTS}

    def _create_project(self, name: str) -> dict[str, Any]:
        project = {"id": self._next_id, "name": name}
        self._next_id += 1
        self._projects.append(project)
        return project

    def add_project(self, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._create_project(name))

    def projects(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(p) for p in self._projects]

    def has_project(self, project_id: str) -> bool:
        try:
            wanted = int(project_id.strip())
        except ValueError:
            return False
        with self._lock:
            return any(p["id"] == wanted for p in self._projects)


# --------------------------------------------------------------------------------- transcripts


def default_words(duration: float, config: FakeConfig) -> list[tuple[float, str]]:
    """(start, word): "w0 w1 ..." one per `word_seconds`."""
    n_words = max(1, math.ceil(duration / config.word_seconds - 1e-9))
    return [(i * config.word_seconds, f"w{i}") for i in range(n_words)]


def spread_words(text: str, duration: float) -> list[tuple[float, str]]:
    """(start, word) for a chosen text: its words spread evenly over the audio."""
    words = text.split()
    step = duration / len(words) if words else 0.0
    return [(i * step, word) for i, word in enumerate(words)]


def speaker_turns(
    words: Sequence[tuple[float, str]], num_speakers: int, config: FakeConfig
) -> list[dict[str, str]]:
    """Consecutive words of one speaker as one turn; speakers alternate every `speaker_seconds`."""
    turns: list[dict[str, str]] = []
    for start, word in words:
        index = int(start // config.speaker_seconds) % 2 if num_speakers > 1 else 0
        speaker = f"speaker_{index}"
        if turns and turns[-1]["speaker"] == speaker:
            turns[-1]["text"] += f" {word}"
        else:
            turns.append({"speaker": speaker, "text": word})
    return turns


def render_answer(turns: list[dict[str, str]], config: FakeConfig) -> Response:
    if config.answer_shape == "turns":
        return JSONResponse(turns)
    text = " ".join(turn["text"] for turn in turns)
    if config.answer_shape == "text":
        return JSONResponse({"text": text})
    if config.plain_as_json:
        return JSONResponse(text)
    return Response(text, media_type="text/plain; charset=utf-8")


# --------------------------------------------------------------------------------- helpers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _failure_response(failure: Failure) -> Response:
    if failure.kind == "body":
        content = failure.body if isinstance(failure.body, str) else json.dumps(failure.body)
        return Response(content, failure.status, headers=failure.headers, media_type=failure.content_type)
    return _error(failure.status, failure.message or "error", failure.headers)


def _is_raw_token(authorization: str | None) -> bool:
    """A bare token: present, and no "<scheme> <credentials>" form (a JWT has no whitespace)."""
    return bool(authorization) and not any(c.isspace() for c in (authorization or "").strip())


def _auth_error(authorization: str | None, config: FakeConfig) -> Response | None:
    if not _is_raw_token(authorization):
        return _error(401, INVALID_TOKEN)
    if config.expired_token is not None and authorization == config.expired_token:
        return _error(401, EXPIRED_TOKEN)
    if config.token is not None and authorization != config.token:
        return _error(401, INVALID_TOKEN)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def create_app(state: FakeWavAmState) -> FastAPI:
    # redirect_slashes=False: a path without the trailing slash is a 404, not a redirect to it.
    app = FastAPI(
        title="fake wav.am", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False
    )

    @app.post("/transcribe_audio/")
    async def transcribe_audio(request: Request) -> Response:
        with state.tracking():
            state.count("transcribe_audio")
            form = await request.form()
            upload = form.get("audio_file")
            data = await upload.read() if isinstance(upload, UploadFile) else b""
            authorization = request.headers.get("authorization")
            failure_for = state.config.failure_for
            chosen = failure_for(wav_seconds(data) or 0.0, data) if failure_for and data else None
            failure = chosen or state.next_failure("transcribe_audio")
            recorded = state.record(
                endpoint="transcribe_audio",
                path=request.url.path,
                authorization=authorization,
                raw_token=_is_raw_token(authorization),
                project_id=_text(form.get("project_id")),
                language=_text(form.get("language")),
                num_speakers=_text(form.get("num_speakers")),
                filename=upload.filename if isinstance(upload, UploadFile) else None,
                content_type=upload.content_type if isinstance(upload, UploadFile) else None,
                size=len(data),
                duration=wav_seconds(data) if data else None,
                fields=sorted(set(form.keys())),
                failure=failure.kind if failure else None,
            )
            await state.sleep(state.config.latency)
            response = await _transcribe(failure, recorded, isinstance(upload, UploadFile), data)
            recorded.status = response.status_code  # the stored object: visible to later `requests()`
            return response

    async def _transcribe(
        failure: Failure | None, call: RecordedRequest, has_upload: bool, data: bytes
    ) -> Response:
        if failure is not None and failure.kind != "hang":
            return _failure_response(failure)
        if failure is not None:
            await state.sleep(failure.seconds)
        config = state.config
        if (refused := _auth_error(call.authorization, config)) is not None:
            return refused
        if not has_upload:
            return _error(400, "audio_file is required")
        if not call.project_id:
            return _error(400, "project_id is required")
        if config.require_known_project and not state.has_project(call.project_id):
            return _error(404, "Project not found")
        language = call.language or DEFAULT_LANGUAGE
        if language not in LANGUAGES:
            return _error(400, f"Unsupported language '{language}'. Use one of: {', '.join(LANGUAGES)}")
        try:
            num_speakers = int(call.num_speakers) if call.num_speakers is not None else 1
        except ValueError:
            num_speakers = 0
        if num_speakers < 1:
            return _error(400, "num_speakers must be a positive integer")
        if config.max_upload_bytes is not None and call.size > config.max_upload_bytes:
            return _error(413, "File is too large")
        seconds = call.duration
        if seconds is None or seconds <= 0:
            return _error(500, FAILED_TO_TRANSCRIBE)
        if config.max_audio_seconds is not None and seconds > config.max_audio_seconds:
            return _error(400, "Audio is too long")
        if config.transcript_for is not None:
            words = spread_words(config.transcript_for(seconds, data), seconds)
        else:
            words = default_words(seconds, config)
        return render_answer(speaker_turns(words, num_speakers, config), config)

    async def _project_call(endpoint: Endpoint, request: Request) -> tuple[RecordedRequest, Response | None]:
        """Count, record, wait and apply a scripted failure and the token check: the part both project
        endpoints share. Returns the answer when one of those already decided it."""
        state.count(endpoint)
        body = _json_or_none(await request.body())
        authorization = request.headers.get("authorization")
        failure = state.next_failure(endpoint)
        name = body.get("name") if isinstance(body, dict) else None
        recorded = state.record(
            endpoint=endpoint,
            path=request.url.path,
            authorization=authorization,
            raw_token=_is_raw_token(authorization),
            name=_text(name),
            json_body=body,
            failure=failure.kind if failure else None,
        )
        await state.sleep(state.config.latency)
        if failure is not None and failure.kind != "hang":
            return recorded, _failure_response(failure)
        if failure is not None:
            await state.sleep(failure.seconds)
        return recorded, _auth_error(authorization, state.config)

    @app.post("/get_projects/")
    async def get_projects(request: Request) -> Response:
        recorded, response = await _project_call("get_projects", request)
        if response is None:
            projects = state.projects()
            wrapped = state.config.projects_shape == "wrapped"
            response = JSONResponse({"projects": projects} if wrapped else projects)
        recorded.status = response.status_code
        return response

    @app.post("/add_project/")
    async def add_project(request: Request) -> Response:
        recorded, response = await _project_call("add_project", request)
        if response is None:
            if not recorded.name or not recorded.name.strip():
                response = _error(400, "name is required")
            else:
                project_id = state.add_project(recorded.name)["id"]
                as_object = state.config.add_project_shape == "object"
                response = JSONResponse({"project_id": project_id} if as_object else project_id)
        recorded.status = response.status_code
        return response

    return app


class FakeWavAm(LoopbackFake):
    """The fake in a background thread of this process: `with FakeWavAm(token="t") as fake: fake.base_url`."""

    name = "fake-wavam"
    state: FakeWavAmState

    def __init__(
        self,
        *,
        latency: float = 0.0,
        token: str | None = None,
        expired_token: str | None = None,
        **config: Any,
    ) -> None:
        self.state = FakeWavAmState(
            FakeConfig(latency=latency, token=token, expired_token=expired_token, **config)
        )
        super().__init__()

    def app(self) -> FastAPI:
        return create_app(self.state)

    @property
    def base_url(self) -> str:
        """What a client puts before `/transcribe_audio/` (the real one is https://wav.am)."""
        return self.url

    def requests(self, endpoint: Endpoint | None = None) -> list[RecordedRequest]:
        """Every request received, in order; only those to `endpoint` when given."""
        return [r for r in self.state.requests() if endpoint is None or r.endpoint == endpoint]

    def calls(self, endpoint: Endpoint) -> int:
        """How many requests `endpoint` received (failed ones included)."""
        return self.state.calls()[endpoint]

    def call_counts(self) -> dict[str, int]:
        return self.state.calls()

    def add_project(self, name: str) -> int:
        """Create a project directly (as if through the dashboard); returns its id."""
        return int(self.state.add_project(name)["id"])

    def projects(self) -> list[dict[str, Any]]:
        return self.state.projects()

    @property
    def max_in_flight(self) -> int:
        """The most transcribe_audio requests that were being answered at once."""
        return self.state.max_in_flight


FakeConfig.model_rebuild()
