"""What every remote-vendor provider needs: reading the chunk, Retry-After, HTTP errors as typed errors,
checking a vendor's times, keeping keys out of messages, and the context prompt.

A vendor answer that is not its documented shape is `GarbageResponseError` inside a provider and leaves
it as a transient `ProviderUnavailableError` ("provider returned garbage"): the vendor may be mid-deploy.
"""

from __future__ import annotations

import io
import json
import math
import mimetypes
import re
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from stt_common.errors import (
    AuthError,
    InvalidAudioError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitedError,
    SttError,
)
from stt_common.pinned import parse_retry_after as parse_retry_after  # the providers import it from here
from stt_common.providers.base import ProviderRequest

# How much of the previous chunk's text goes into a prompt (Whisper reads only its last ~224 tokens).
CONTEXT_PROMPT_CHARS = 200
# Slack when checking a vendor's times against the audio's duration: last timestamps may run a little
# past the end (they are clamped); times far beyond it mean the body is nonsense.
TIME_SLACK_SECONDS = 2.0
TIME_SLACK_FRACTION = 0.1
MAX_SECONDS_UNKNOWN_DURATION = 24 * 3600.0
# Small negative times and ends slightly before starts are rounding; more is nonsense.
TIME_TOLERANCE_SECONDS = 0.5
# How much of a vendor's error text goes into our message.
VENDOR_MESSAGE_CHARS = 200

_SECRET_PATTERNS = (
    re.compile(r"sk[-_][A-Za-z0-9_\-]{6,}"),  # OpenAI (sk-), ElevenLabs (sk_)
    re.compile(r"(?i)bearer\s+\S+"),
)
# A key passed as a query parameter (`?key=...`, as Google's APIs take it) shows up in URLs.
_KEY_PARAMETER = re.compile(r"(?i)\b((?:api[-_]?)?key)=[^&\s\"']+")


class VendorBody(BaseModel):
    """A vendor's JSON body, checked: unknown fields are ignored, NaN and infinities refused."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class GarbageResponseError(ValueError):
    """The body of a 200 response is not the vendor's documented shape."""


class VendorRequestError(SttError):
    """The vendor refused the request for a reason retrying will not fix (unknown model, bad parameter,
    wrong URL, ...): a configuration problem, not the audio's and not the vendor's health."""


# ----------------------------------------------------------------------------------------- the audio


def read_audio(path: Path) -> tuple[bytes, float | None]:
    """The file's bytes and its duration from the WAV header (None for other formats)."""
    if not path.is_file():
        raise InvalidAudioError(f"audio file {str(path)!r} does not exist or is not a file")
    data = path.read_bytes()
    if not data:
        raise InvalidAudioError(f"audio file {path.name!r} is empty")
    try:
        with wave.open(io.BytesIO(data)) as w:
            frames, rate = w.getnframes(), w.getframerate()
    except (wave.Error, EOFError):
        return data, None
    if rate <= 0:
        raise InvalidAudioError(f"audio file {path.name!r}: WAV header with sample rate {rate}")
    if frames == 0:
        raise InvalidAudioError(f"audio file {path.name!r} contains no audio samples")
    return data, frames / rate


def content_type(path: Path) -> str:
    if path.suffix.lower() == ".wav":
        return "audio/wav"  # mimetypes says audio/x-wav
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def context_prompt(request: ProviderRequest, max_context_chars: int = CONTEXT_PROMPT_CHARS) -> str | None:
    """Vocabulary prompt first, then the tail of the previous chunk's text (cut at a word boundary)."""
    parts: list[str] = []
    if request.prompt and request.prompt.strip():
        parts.append(request.prompt.strip())
    context = " ".join(s.text.strip() for s in request.context_segments if s.text and s.text.strip())
    if context:
        if len(context) > max_context_chars:
            tail = context[-max_context_chars:]
            cut = tail.find(" ")
            context = tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail
        parts.append(context)
    return " ".join(parts) or None


# ------------------------------------------------------------------------------------------- errors


def redact(text: str, *secrets: str | None) -> str:
    """`text` without the given secrets or anything that looks like a key or a bearer token."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("***", text)
    return _KEY_PARAMETER.sub(r"\1=***", text)


def error_body_text(response: httpx.Response) -> str:
    """What an error answer says, for vendors without a documented error shape: `error`, `detail` or
    `message` of a JSON object, else the body as text (a proxy's HTML page, plain text)."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body.get("message") or body)
    return str(body)


def one_line(text: str, limit: int = VENDOR_MESSAGE_CHARS) -> str:
    return " ".join(text.split())[:limit]


def http_status_error(
    status: int,
    message: str,
    headers: Mapping[str, str] | Any,
    *,
    quota: bool = False,
    about_audio: bool = False,
) -> SttError:
    """The typed error for an HTTP error answer of a plain-HTTP vendor.

    `message` already names the provider, the status and the vendor's words (redacted). `quota`: the
    vendor said the account is out of credit; `about_audio`: a 400/422 is about the uploaded file
    rather than our parameters (vendors say so in their error bodies; each provider decides).
    """
    retry_after = parse_retry_after(headers)
    if quota:
        return QuotaExceededError(message)
    if status == 429:
        return RateLimitedError(message, retry_after=retry_after)
    if status in (401, 403):
        return AuthError(message)
    if status == 402:
        return QuotaExceededError(message)
    if status in (408, 504):
        return ProviderTimeoutError(message, retry_after=retry_after)
    if status >= 500 or status in (409, 425):
        return ProviderUnavailableError(message, retry_after=retry_after)
    if status in (413, 415) or (status in (400, 422) and about_audio):
        return InvalidAudioError(message)
    return VendorRequestError(message)


def transport_error(provider: str, where: str, exc: httpx.TransportError, timeout: float) -> SttError:
    """Timeouts and connection failures of an httpx call, as transient typed errors."""
    if isinstance(exc, httpx.TimeoutException):
        kind = type(exc).__name__
        return ProviderTimeoutError(f"{provider}: no answer from {where} within {timeout:g} s ({kind})")
    detail = one_line(str(exc)) or type(exc).__name__
    return ProviderUnavailableError(f"{provider}: cannot reach {where}: {detail}")


def garbage_error(provider: str, what: str) -> ProviderUnavailableError:
    return ProviderUnavailableError(f"{provider}: provider returned garbage: {what}")


# ------------------------------------------------------------------------------ checking vendor bodies


def describe_validation_error(exc: ValidationError, body: bytes) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        snippet = " ".join(body[:80].decode("utf-8", "replace").split())
        return f"not JSON: {snippet!r}"
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:3]]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "unexpected shape: " + "; ".join(parts) + more


def time_limits(duration: float | None, reported: float | None) -> tuple[float | None, float]:
    """(the audio's duration used for clamping, the largest credible time)."""
    known = duration if duration is not None else reported
    if reported is not None and (not math.isfinite(reported) or reported < 0):
        raise GarbageResponseError(f"duration {reported!r}")
    if known is None:
        return None, MAX_SECONDS_UNKNOWN_DURATION
    return known, known + max(TIME_SLACK_SECONDS, TIME_SLACK_FRACTION * known)


def check_times(start: float, end: float, what: str, max_time: float) -> None:
    if not (math.isfinite(start) and math.isfinite(end)):
        raise GarbageResponseError(f"{what} has a time that is not a number ({start}..{end})")
    if start < -TIME_TOLERANCE_SECONDS or end < -TIME_TOLERANCE_SECONDS:
        raise GarbageResponseError(f"{what} has a negative time ({start}..{end})")
    if end < start - TIME_TOLERANCE_SECONDS:
        raise GarbageResponseError(f"{what} ends before it starts ({start}..{end})")
    if start > max_time or end > max_time:
        raise GarbageResponseError(f"{what} lies past the end of the audio ({start}..{end} > {max_time:.1f})")


def clamp(t: float, duration: float | None) -> float:
    t = max(t, 0.0)
    return min(t, duration) if duration is not None else t
