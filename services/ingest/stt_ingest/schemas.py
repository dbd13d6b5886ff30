"""Request and response models of the REST API (they are the OpenAPI schemas too)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from stt_common.db.models import JobStatus

ContextMode = Literal["parallel", "chained"]
Task = Literal["transcribe", "translate"]
# Free text ends up in Postgres (jsonb), which cannot store U+0000: refused as invalid input (422)
# rather than failing at the insert (500).
NO_NUL = r"^[^\x00]*$"
ResultFormat = Literal["json", "txt", "srt", "vtt"]
RESULT_FORMATS: tuple[ResultFormat, ...] = ("json", "txt", "srt", "vtt")

_JOB_ID_EXAMPLE = "6b4f5f46-9f0a-4a53-9c46-0d5f0d0b6f7e"
_BASE_EXAMPLE = "https://stt.example.com/api/v1/jobs/" + _JOB_ID_EXAMPLE


class OutputOptions(BaseModel):
    """What the transcript should contain (passed to the pipeline in `options.output`). The values
    are JSON booleans (`true`/`false`; not `0` or `"yes"`), in a form field too."""

    model_config = ConfigDict(extra="forbid", strict=True)

    word_timestamps: bool = Field(default=False, description="Ask the provider for word-level timestamps.")
    speaker_labels: bool = Field(default=False, description="Ask the provider for speaker labels.")


# A chunk must outlast the cut search window and the overlap by a margin (the chunker's planner), and
# one much longer than a quarter hour gains nothing while a single slow request holds the whole job.
MIN_CHUNK_SECONDS = 30
MAX_CHUNK_SECONDS = 900


class JobOptions(BaseModel):
    """Options every submission accepts."""

    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(
        default=None,
        max_length=16,
        pattern=r"^([A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*|[Aa][Uu][Tt][Oo])$",
        description="BCP 47 language tag of the speech (e.g. `en`, `hy`, `pt-BR`). Omitted or `auto`: "
        "detected once, on the first chunk's speech, and used for every chunk (the result says which, "
        "with its probability).",
        examples=["en"],
    )
    provider: str | None = Field(
        default=None, max_length=64, description="Transcription provider; the service default when omitted."
    )
    model: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Provider model name (e.g. `whisper-1`). For `local`: `tiny.en` (English only) or `base` "
        "(multilingual), or the server's configured model; the server's default when omitted.",
    )
    context_mode: ContextMode | None = Field(
        default=None,
        description="`parallel` (all chunks at once) or `chained` (each chunk gets the previous one's "
        "last segments as context). Default: chained for LLM providers (gemini), parallel otherwise.",
    )
    task: Task = Field(
        default="transcribe",
        description="`transcribe` (text in the language spoken) or `translate` (English text, whatever "
        "the language spoken: Whisper's translate task). Translation needs a provider that can "
        "(`local` with the multilingual model `base`, which a job naming no model gets); others are "
        "refused (422). `language`, if given, is the language spoken.",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Called (signed POST) when the job completes, fails or is cancelled; "
        "http(s) to a public address.",
        examples=["https://hooks.example.com/stt"],
    )
    prompt: str | None = Field(
        default=None,
        max_length=4000,
        pattern=NO_NUL,
        description="Free-text hint for the provider (no NUL characters).",
    )
    vocabulary: list[Annotated[str, StringConstraints(pattern=NO_NUL)]] = Field(
        default_factory=list,
        max_length=200,
        description="Words and names the provider should expect (no NUL characters).",
    )
    fallback_providers: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list,
        max_length=3,
        description="Providers tried in order for a chunk whose provider fails after its retries with "
        "rate_limited, quota_exceeded, provider_unavailable or timeout (not auth_error or invalid_audio). "
        "Each must be configured; GET /api/v1/providers lists them.",
    )
    chunk_seconds: float | None = Field(
        default=None,
        ge=MIN_CHUNK_SECONDS,
        le=MAX_CHUNK_SECONDS,
        description="Planned length of each chunk in seconds (cuts fall in a pause near it). Shorter chunks "
        "finish sooner when many transcribers are free; longer ones mean fewer boundaries to stitch. "
        "At most what the provider takes per request; the server's default when omitted "
        "(bench/README.md measures the trade-off).",
        examples=[120],
    )
    output: OutputOptions | None = None
    delete_after_seconds: int | None = Field(
        default=None,
        ge=60,
        le=10 * 365 * 24 * 3600,
        description="Delete the job (files and rows) this long after it finishes.",
    )


class UrlSubmission(JobOptions):
    """`POST /api/v1/transcribe/url`: a media URL plus the job options."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="http(s) URL of an audio or video file; must resolve to public addresses only.",
        examples=["https://media.example.com/interview.mp3"],
    )

    # Strict: a JSON body has real types, so `"60"` is not an integer. (Form fields are text and go
    # through the lax `JobOptions`.)
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "url": "https://media.example.com/interview.mp3",
                    "language": "en",
                    "webhook_url": "https://hooks.example.com/stt",
                    "output": {"word_timestamps": True},
                }
            ]
        },
    )


class JobLinks(BaseModel):
    self: str
    events: str
    result: dict[ResultFormat, str] | None = Field(
        default=None, description="Transcript downloads, once the job is COMPLETED."
    )
    cancel: str | None = Field(default=None, description="Present while the job can be cancelled.")
    retry: str | None = Field(default=None, description="Present while the job can be retried.")


class Submitted(BaseModel):
    job_id: uuid.UUID
    status: JobStatus
    links: JobLinks

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": _JOB_ID_EXAMPLE,
                    "status": "UPLOADED",
                    "links": {
                        "self": _BASE_EXAMPLE,
                        "events": _BASE_EXAMPLE + "/events",
                        "cancel": _BASE_EXAMPLE + "/cancel",
                    },
                }
            ]
        }
    )


class Progress(BaseModel):
    chunks_total: int = Field(description="Chunks the audio was cut into (0 until chunking is done).")
    chunks_done: int = Field(description="Chunks transcribed.")


class JobErrorView(BaseModel):
    code: str = Field(
        description="Stable error code: rate_limited, timeout, invalid_audio, auth_error, "
        "provider_unavailable, quota_exceeded, stalled, cancelled, unknown."
    )
    message: str | None = None
    next_step: str = Field(description="What to do about it: retry, fix the file, ask the operator, ...")
    retryable: bool = Field(description="Whether `POST /jobs/{id}/retry` can help (not for invalid_audio).")


class JobView(BaseModel):
    id: uuid.UUID
    status: JobStatus
    provider: str
    model: str | None
    language: str | None
    context_mode: ContextMode
    options: dict[str, Any]
    webhook_url: str | None
    source_url: str | None
    original_filename: str | None
    content_type: str | None
    size_bytes: int | None
    duration_seconds: float | None
    delete_after_seconds: int | None
    progress: Progress
    error: JobErrorView | None
    created_at: datetime
    updated_at: datetime
    status_changed_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _JOB_ID_EXAMPLE,
                    "status": "TRANSCRIBING",
                    "provider": "local",
                    "model": None,
                    "language": "en",
                    "context_mode": "parallel",
                    "options": {"prompt": None, "vocabulary": [], "output": {"word_timestamps": False}},
                    "webhook_url": None,
                    "source_url": None,
                    "original_filename": "interview.mp3",
                    "content_type": "audio/mpeg",
                    "size_bytes": 48213344,
                    "duration_seconds": 3012.5,
                    "delete_after_seconds": None,
                    "progress": {"chunks_total": 11, "chunks_done": 4},
                    "error": None,
                    "created_at": "2026-11-24T10:00:00Z",
                    "updated_at": "2026-11-24T10:01:10Z",
                    "status_changed_at": "2026-11-24T10:00:40Z",
                    "started_at": "2026-11-24T10:00:05Z",
                    "finished_at": None,
                    "links": {
                        "self": _BASE_EXAMPLE,
                        "events": _BASE_EXAMPLE + "/events",
                        "cancel": _BASE_EXAMPLE + "/cancel",
                    },
                }
            ]
        }
    )


class JobPage(BaseModel):
    items: list[JobView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
    next: str | None = Field(default=None, description="URL of the next page.")


class JobEventView(BaseModel):
    at: datetime
    stage: str
    from_status: str | None
    to_status: str | None
    detail: dict[str, Any]


class JobEvents(BaseModel):
    job_id: uuid.UUID
    items: list[JobEventView]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": _JOB_ID_EXAMPLE,
                    "items": [
                        {
                            "at": "2026-11-24T10:00:00Z",
                            "stage": "ingest",
                            "from_status": None,
                            "to_status": "PENDING",
                            "detail": {"kind": "upload"},
                        },
                        {
                            "at": "2026-11-24T10:00:04Z",
                            "stage": "ingest",
                            "from_status": "PENDING",
                            "to_status": "UPLOADED",
                            "detail": {"size_bytes": 48213344},
                        },
                    ],
                }
            ]
        }
    )


class Health(BaseModel):
    status: str
    checks: dict[str, str] | None = None


class ProviderCapabilitiesView(BaseModel):
    """What a provider gives back and accepts (from the catalogue)."""

    timestamps: Literal["words", "segments", "none"] = Field(
        description="`words` (word times), `segments` (segment times only) or `none` (text only: times "
        "are estimated from the speech and marked `estimated` in the transcript)."
    )
    diarization: bool = Field(description="Can label speakers (`output.speaker_labels`).")
    prompt: bool = Field(description="Takes `prompt` and `vocabulary` (free-text hints).")
    translate: bool = Field(description="Can translate speech to English text (`task=translate`).")
    languages: list[str] | None = Field(
        description="The only languages it transcribes (ISO 639-1); null: many, and it detects them. "
        "A job asking for another language is refused (422)."
    )
    max_request_bytes: int | None = Field(
        description="The most one request to it may carry (null: no limit below a chunk); longer "
        "audio is cut into shorter chunks for it."
    )
    max_request_seconds: float | None = Field(description="The longest audio one request may carry.")


class ProviderView(BaseModel):
    """One provider this deployment allows. Its key, if it has one, is never shown."""

    name: str = Field(description="What a job's `provider` names.")
    title: str
    configured: bool = Field(
        description="Usable here: its key is set (or it needs none, like `local`). A job naming a "
        "provider that is not configured is refused (422)."
    )
    default: bool = Field(description="The provider of jobs that name none.")
    default_model: str = Field(description="The model of jobs that name none (this deployment's setting).")
    models: list[str] = Field(
        description="Known models. Remote providers are passed other names as given; `local` has only these."
    )
    context_mode: ContextMode = Field(description="The context mode of jobs that name none.")
    capabilities: ProviderCapabilitiesView


class ProviderList(BaseModel):
    default_provider: str = Field(description="The provider of jobs that name none.")
    items: list[ProviderView] = Field(description="Every allowed provider, configured or not.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "default_provider": "local",
                    "items": [
                        {
                            "name": "local",
                            "title": "Embedded faster-whisper (offline)",
                            "configured": True,
                            "default": True,
                            "default_model": "tiny.en",
                            "models": ["tiny.en", "base"],
                            "context_mode": "parallel",
                            "capabilities": {
                                "timestamps": "words",
                                "diarization": False,
                                "prompt": True,
                                "languages": None,
                                "max_request_bytes": None,
                                "max_request_seconds": None,
                            },
                        },
                        {
                            "name": "hispeech",
                            "title": "HiSpeech (Armenian)",
                            "configured": False,
                            "default": False,
                            "default_model": "model-01052025",
                            "models": ["model-01052025", "model-23012026"],
                            "context_mode": "parallel",
                            "capabilities": {
                                "timestamps": "none",
                                "diarization": False,
                                "prompt": False,
                                "languages": ["hy"],
                                "max_request_bytes": None,
                                "max_request_seconds": None,
                            },
                        },
                    ],
                }
            ]
        }
    )
