"""The exceptions of the client. Everything it raises derives from `SttError`."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any, cast

import httpx

from stt_client.models import FieldError, Job, Problem


class SttError(Exception):
    """Base of every exception this package raises."""


class ApiError(SttError):
    """The API answered with an error: an RFC 9457 problem (`application/problem+json`), or whatever a
    proxy in between sent.

    `code` is the problem's stable machine-readable code (branch on it; `title` and `detail` are
    for people); `hint` says what to do next; `retry_after` is the server's `Retry-After` in
    seconds, when it sent one."""

    def __init__(
        self,
        status: int,
        code: str,
        *,
        title: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
        problem: Problem | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.hint = hint
        self.retry_after = retry_after
        self.problem = problem
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self._message())

    @property
    def request_id(self) -> str | None:
        return self.problem.get("request_id") if self.problem else None

    @property
    def errors(self) -> list[FieldError]:
        """Per-field validation errors (422), else empty."""
        return list((self.problem.get("errors") if self.problem else None) or [])

    def _message(self) -> str:
        message = f"HTTP {self.status} {self.title or 'error'} ({self.code})"
        if self.detail and self.detail != self.title:
            message += f": {self.detail}"
        if self.hint:
            message += f" — {self.hint}"
        return message


class ApiConnectionError(SttError):
    """No answer: the connection failed or broke (after the retries)."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ApiTimeoutError(ApiConnectionError):
    """No answer in time (after the retries)."""


class WaitTimeoutError(SttError):
    """`wait()` gave up; the job goes on on the server. `job` is how it was last seen."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job['id']} is still {job['status']} after {timeout:g} s")
        self.job = job
        self.timeout = timeout


class WebhookVerificationError(SttError):
    """A webhook request is not signed with the secret, or is too old or too new (a replay)."""


# What to do about an error answer, by HTTP status, where the problem does not say.
_HINTS = {
    400: "the request is malformed; see `detail`",
    401: "check the API key",
    403: "this key may not do that",
    404: "check the job id; a key sees only its own jobs",
    409: "the job is not in a state that allows this; get_job() shows where it is",
    413: "the file is larger than the server accepts",
    415: "send audio or video (wav, mp3, m4a, ogg, opus, flac, webm, mp4, mkv, mov, ...)",
    422: "fix the request: `errors` names each field",
    429: "slow down",
}
_CODE_HINTS = {
    "idempotency_key_reused": "this Idempotency-Key was used for another request: use a new key",
    "idempotency_in_progress": "the first request with this Idempotency-Key is still running: retry later",
    "job_not_retryable": "only FAILED or CANCELLED jobs can be retried",
}


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delay-seconds or an HTTP-date; None when absent or invalid."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_response(response: httpx.Response) -> ApiError:
    """An `ApiError` from an error answer (its body must have been read)."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    problem: Problem | None = None
    if isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("status"), int):
        problem = cast(Problem, body)  # an RFC 9457 problem of this API
    status = response.status_code
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    code: str
    title: str | None
    detail: str | None
    if problem is not None:
        code, title, detail = problem["code"], problem.get("title"), problem.get("detail")
    else:
        code = f"http_{status}"
        title = response.reason_phrase or None
        text = " ".join(response.text.split())[:200] if response.text else ""
        detail = text or None
    # The server's own next step, where a problem carries one; else one by code, then by status.
    hint = (
        body.get("next_step") if isinstance(body, dict) and isinstance(body.get("next_step"), str) else None
    )
    hint = hint or _CODE_HINTS.get(code) or _HINTS.get(status)
    if retry_after is not None and status in (429, 503):
        hint = f"try again in {retry_after:g} s"
    elif hint is None and status >= 500:
        hint = "the server failed; try again, and tell its operator if it persists"
    return ApiError(
        status,
        code,
        title=title,
        detail=detail,
        hint=hint,
        retry_after=retry_after,
        problem=problem,
        headers=dict(response.headers),
    )
