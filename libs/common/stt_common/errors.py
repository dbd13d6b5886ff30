"""Error codes and the typed exceptions that map to them.

Classification is by exception type, never by matching message text: a provider adapter
raises the right subclass, and `classify` turns anything into one of the stable codes.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

import httpx


class ErrorCode(StrEnum):
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    INVALID_AUDIO = "invalid_audio"
    AUTH_ERROR = "auth_error"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    QUOTA_EXCEEDED = "quota_exceeded"
    STALLED = "stalled"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class SttError(Exception):
    """Base of every error the pipeline classifies. `transient` errors are worth retrying."""

    code: ErrorCode = ErrorCode.UNKNOWN
    transient: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class RateLimitedError(SttError):
    code = ErrorCode.RATE_LIMITED
    transient = True


class ProviderTimeoutError(SttError):
    code = ErrorCode.TIMEOUT
    transient = True


class ProviderUnavailableError(SttError):
    code = ErrorCode.PROVIDER_UNAVAILABLE
    transient = True


class InvalidAudioError(SttError):
    code = ErrorCode.INVALID_AUDIO


class AuthError(SttError):
    code = ErrorCode.AUTH_ERROR


class QuotaExceededError(SttError):
    code = ErrorCode.QUOTA_EXCEEDED


class StalledError(SttError):
    code = ErrorCode.STALLED


class CancelledJobError(SttError):
    code = ErrorCode.CANCELLED


# Transport failures from libraries we use directly, mapped once here.
_LIBRARY_ERRORS: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (httpx.TimeoutException, ErrorCode.TIMEOUT),
    (asyncio.TimeoutError, ErrorCode.TIMEOUT),
    (TimeoutError, ErrorCode.TIMEOUT),
    (httpx.TransportError, ErrorCode.PROVIDER_UNAVAILABLE),
    (ConnectionError, ErrorCode.PROVIDER_UNAVAILABLE),
)


def classify(exc: BaseException) -> ErrorCode:
    """The stable error code for an exception (typed errors first, then known transport errors)."""
    if isinstance(exc, SttError):
        return exc.code
    for exc_type, code in _LIBRARY_ERRORS:
        if isinstance(exc, exc_type):
            return code
    return ErrorCode.UNKNOWN


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call later may succeed."""
    if isinstance(exc, SttError):
        return exc.transient
    return classify(exc) in (ErrorCode.TIMEOUT, ErrorCode.PROVIDER_UNAVAILABLE)


# What the client can do about a job that ended with each code: shown by the API (`error.next_step`),
# the CLI and the webhook payload, so every error says what comes next.
_RETRY = "`POST /api/v1/jobs/{id}/retry` (`stt retry {id}`) redoes only the unfinished chunks"
NEXT_STEPS: dict[ErrorCode, str] = {
    ErrorCode.RATE_LIMITED: f"The provider kept refusing for its rate limit: {_RETRY} later, or submit "
    "with fallback_providers.",
    ErrorCode.TIMEOUT: f"The provider did not answer in time: {_RETRY}.",
    ErrorCode.PROVIDER_UNAVAILABLE: f"The provider was unreachable or failing: {_RETRY} later, or submit "
    "with fallback_providers.",
    ErrorCode.QUOTA_EXCEEDED: "The provider account is out of credit: ask the operator to top it up, "
    f"then {_RETRY}; or submit with another provider.",
    ErrorCode.AUTH_ERROR: "The server's key for this provider was refused: ask the operator to fix it "
    f"(GET /api/v1/providers lists what is configured), then {_RETRY}.",
    ErrorCode.INVALID_AUDIO: "The file cannot be transcribed as it is (retrying would fail the same "
    "way): check that it plays and holds speech, then submit a repaired or re-encoded file.",
    ErrorCode.STALLED: f"The job stopped making progress and was ended: {_RETRY}.",
    ErrorCode.CANCELLED: f"The job was cancelled: {_RETRY} to resume it.",
    ErrorCode.UNKNOWN: f"An unexpected error: {_RETRY}; if it fails again, report the job id.",
}
# Codes whose job another try cannot fix once its file is stored: the same bytes fail the same way.
NOT_RETRYABLE = frozenset({ErrorCode.INVALID_AUDIO})


# A URL whose download was refused has no stored file: the source may serve other bytes next time.
REFUSED_DOWNLOAD_STEP = f"The URL served no usable audio: fix what it serves, then {_RETRY}."


def next_step(code: str, job_id: object = "{id}", *, stored_file: bool = True) -> str:
    """The next step for a job's stored error code (an unknown code reads as `unknown`)."""
    try:
        error = ErrorCode(code)
    except ValueError:
        error = ErrorCode.UNKNOWN
    text = NEXT_STEPS[error]
    if error in NOT_RETRYABLE and not stored_file:
        text = REFUSED_DOWNLOAD_STEP
    return text.replace("{id}", str(job_id))
