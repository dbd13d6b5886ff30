"""What the `stt` command adds to the API client (the `stt_client` package, which does the HTTP):
errors worded for the person at the terminal, with the flag or command that helps."""

from __future__ import annotations

from stt_client import ApiConnectionError, ApiError, ApiTimeoutError, SttError, WaitTimeoutError

# What to do about an error answer at the terminal, by HTTP status (the problem's `code` says what
# went wrong); statuses not here get the client's own hint.
_HINTS = {
    401: "check the API key (--api-key or STT_API_KEY)",
    404: "check the job id; a key sees only its own jobs",
    409: "the job is not in a state that allows this; `stt status JOB` shows where it is",
    429: "slow down",
}


def explain(error: SttError, api_url: str) -> str:
    """One line for stderr: what happened and what to do about it."""
    if isinstance(error, ApiError):
        message = f"HTTP {error.status} {error.title or 'error'}"
        if error.problem is not None:
            message += f" ({error.code})"
        if error.detail and error.detail != error.title:
            message += f": {error.detail}"
        hint = error.hint if error.retry_after is not None else _HINTS.get(error.status, error.hint)
        return f"{message} — {hint}" if hint else message
    if isinstance(error, WaitTimeoutError):
        job_id = error.job["id"]
        return f"{error}; it goes on: `stt follow {job_id}` picks it up again"
    if isinstance(error, ApiTimeoutError):
        return f"no answer from {api_url} in time; is the server overloaded?"
    if isinstance(error, ApiConnectionError):
        cause = error.__cause__
        why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return (
            f"cannot reach the API at {api_url}{why}; "
            "check --api-url / STT_API_URL, or start the local stack with `make up`"
        )
    return str(error)
