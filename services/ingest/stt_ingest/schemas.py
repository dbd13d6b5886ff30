"""Request and response models of the REST API (they are the OpenAPI schemas too)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from stt_common.db.models import JobStatus

ContextMode = Literal["parallel", "chained"]
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
