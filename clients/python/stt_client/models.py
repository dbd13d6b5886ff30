"""What the API sends and takes, as `TypedDict`s: the JSON as it comes (ids and times are strings,
ISO 8601 for times), typed for editors and mypy, with no conversion layer to fall out of step.

Each model mirrors one schema of the server's OpenAPI document (`SCHEMAS` names which): the same
fields, and a key is `NotRequired` exactly where the schema does not list it as required. The
package's tests compare them with the live document, so a change on the server shows up there.
`Transcript` (the `json` result) and `WebhookEvent` (a webhook's body) are documented in prose only
(docs/webhooks.md, the merger's result document) and are checked against real ones instead.
"""

# No `from __future__ import annotations` here: a TypedDict reads `NotRequired` from its annotations
# at run time (Python 3.11 cannot from strings), and the tests compare `__required_keys__`.
from typing import Any, Literal, NotRequired, TypedDict

JobStatus = Literal[
    "PENDING", "UPLOADED", "CHUNKING", "TRANSCRIBING", "MERGING", "COMPLETED", "FAILED", "CANCELLED"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
DeliveryStatus = Literal["PENDING", "SUCCEEDED", "FAILED"]
ContextMode = Literal["parallel", "chained"]
Task = Literal["transcribe", "translate"]
ResultFormat = Literal["json", "txt", "srt", "vtt"]
TextFormat = Literal["txt", "srt", "vtt"]
RESULT_FORMATS: tuple[ResultFormat, ...] = ("json", "txt", "srt", "vtt")


# -- submitting ---------------------------------------------------------------------------------


class OutputOptions(TypedDict, total=False):
    word_timestamps: bool
    speaker_labels: bool


class SubmitOptions(TypedDict, total=False):
    """The options every submission takes (`JobOptions`); all optional, the server's defaults apply."""

    language: str | None
    provider: str | None
    model: str | None
    context_mode: ContextMode | None
    task: Task  # translate: English text whatever the language spoken (providers that can)
    webhook_url: str | None
    prompt: str | None
    vocabulary: list[str]
    fallback_providers: list[str]
    chunk_seconds: float | None  # planned chunk length (30-900 s); the server's default when omitted
    output: OutputOptions | None
    delete_after_seconds: int | None


class UrlSubmission(SubmitOptions):
    """The body of `POST /api/v1/transcribe/url`."""

    url: str


class JobLinks(TypedDict):
    self: str
    events: str
    result: NotRequired[dict[ResultFormat, str] | None]
    cancel: NotRequired[str | None]
    retry: NotRequired[str | None]


class Submitted(TypedDict):
    """The answer to a submission (202, or 200 when an `Idempotency-Key` replays an earlier one)."""

    job_id: str
    status: JobStatus
    links: JobLinks


# -- jobs ---------------------------------------------------------------------------------------


class Progress(TypedDict):
    chunks_total: int  # 0 until the audio is cut
    chunks_done: int


class JobError(TypedDict):
    code: str
    message: NotRequired[str | None]
    next_step: str  # what to do about it, in words
    retryable: bool  # whether `retry()` can help


class Job(TypedDict):
    id: str
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
    error: JobError | None
    created_at: str
    updated_at: str
    status_changed_at: str
    started_at: str | None
    finished_at: str | None
    links: JobLinks


class JobPage(TypedDict):
    items: list[Job]
    next_cursor: str | None
    next: NotRequired[str | None]


class JobEvent(TypedDict):
    """One row of a job's timeline: a status change (`to_status` set) or chunk progress."""

    at: str
    stage: str
    from_status: str | None
    to_status: str | None
    detail: dict[str, Any]


class JobEvents(TypedDict):
    job_id: str
    items: list[JobEvent]


# -- webhooks -----------------------------------------------------------------------------------


class WebhookAttempt(TypedDict):
    attempted_at: str
    status_code: int | None
    latency_ms: float | None
    error: str | None


class WebhookDelivery(TypedDict):
    id: str
    event_id: str  # the `webhook-id` header
    event_type: str
    url: str
    status: DeliveryStatus
    next_attempt_at: str | None
    created_at: str
    delivered_at: str | None
    attempt_count: int
    attempts: list[WebhookAttempt]


class JobWebhooks(TypedDict):
    job_id: str
    items: list[WebhookDelivery]


class WebhookError(TypedDict):
    code: str
    message: str | None
    next_step: str
    retryable: bool


class WebhookEvent(TypedDict):
    """The body the notifier POSTs to a job's `webhook_url` (docs/webhooks.md)."""

    type: Literal["job.completed", "job.failed", "job.cancelled"]
    job_id: str
    status: JobStatus
    created_at: str | None
    finished_at: str | None
    error: NotRequired[WebhookError]
    result_url: NotRequired[str]


# -- providers ----------------------------------------------------------------------------------


class ProviderCapabilities(TypedDict):
    timestamps: Literal["words", "segments", "none"]
    diarization: bool
    prompt: bool
    translate: bool
    languages: list[str] | None
    max_request_bytes: int | None
    max_request_seconds: float | None


class Provider(TypedDict):
    name: str
    title: str
    configured: bool
    default: bool
    default_model: str
    models: list[str]
    context_mode: ContextMode
    capabilities: ProviderCapabilities


class ProviderList(TypedDict):
    default_provider: str
    items: list[Provider]


# -- errors -------------------------------------------------------------------------------------


class FieldError(TypedDict):
    loc: list[str | int]
    msg: str
    type: str


class Problem(TypedDict):
    """An RFC 9457 problem document: every 4xx/5xx of the API. Branch on `code`."""

    type: str
    title: str
    status: int
    detail: NotRequired[str | None]
    instance: NotRequired[str | None]
    code: str
    request_id: NotRequired[str | None]
    errors: NotRequired[list[FieldError] | None]
    checks: NotRequired[dict[str, str] | None]


# -- the transcript (`format=json`) -------------------------------------------------------------


class Word(TypedDict):
    start: float
    end: float
    text: str
    probability: NotRequired[float | None]


class Segment(TypedDict):
    start: float
    end: float
    text: str
    words: NotRequired[list[Word] | None]
    speaker: NotRequired[str | None]
    avg_logprob: NotRequired[float | None]
    no_speech_prob: NotRequired[float | None]
    estimated: NotRequired[bool]  # times estimated from the audio (a text-only provider)


class Transcript(TypedDict):
    job_id: str
    text: str
    language: str | None
    language_probability: float | None
    duration_seconds: float | None
    provider: str
    model: str | None
    timestamps_estimated: bool
    segments: list[Segment]
    chunks: list[dict[str, Any]]  # per chunk: who transcribed it, tries, checks
    quality: dict[str, Any]


# The OpenAPI component each model mirrors (enums: the `Literal` of their values).
SCHEMAS: dict[str, Any] = {
    "JobStatus": JobStatus,
    "DeliveryStatus": DeliveryStatus,
    "OutputOptions": OutputOptions,
    "UrlSubmission": UrlSubmission,
    "JobLinks": JobLinks,
    "Submitted": Submitted,
    "Progress": Progress,
    "JobErrorView": JobError,
    "JobView": Job,
    "JobPage": JobPage,
    "JobEventView": JobEvent,
    "JobEvents": JobEvents,
    "WebhookAttemptView": WebhookAttempt,
    "WebhookDeliveryView": WebhookDelivery,
    "JobWebhooks": JobWebhooks,
    "ProviderCapabilitiesView": ProviderCapabilities,
    "ProviderView": Provider,
    "ProviderList": ProviderList,
    "FieldError": FieldError,
    "Problem": Problem,
}
