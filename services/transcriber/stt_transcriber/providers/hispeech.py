"""`hispeech`: HiSpeech, an Armenian speech-to-text service (https://hispeech.ai/api.html).

One synchronous request per chunk: `POST {base_url}/api/v1/transcriptions/upload?stt_model=<model>`, header
`x-auth-token: <key>`, multipart `file` plus `wait_for_result=true` (sent both as a form field and as a
query parameter: the page shows the first, clients send the second). Models: `model-01052025` ("formal",
the vendor's default) and `model-23012026` ("conversational").

The answer is `{"job_id", "error", "success", "secure_mode", "return_word_timestamps", "status",
"transcription", "audio_duration"}`: text only, no times. The chunk becomes one segment spanning the audio;
the transcriber spreads its words over the chunk's speech and marks the times `estimated`.
`success: false` carries `error` (and `status`, the vendor's own code, which is used as the HTTP status
when the HTTP status itself is 200).

Not implemented, because the page names them without documenting them: the asynchronous mode ("job IDs
and polling") and the OpenAI-compatible mode. Error bodies are not documented either: any non-200, or a
`success: false`, is mapped by its status code (401/403 auth, 402 quota, 429 rate limit with
Retry-After, 5xx unavailable, 413/415 the audio). docs/providers.md lists what is documented and what
is assumed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from pydantic import ValidationError

from stt_common.errors import (
    SttError,
)
from stt_common.logs import get_logger
from stt_common.providers.base import ProviderRequest
from stt_common.transcript import ChunkTranscript, Segment
from stt_transcriber.providers.remote import RemoteProvider
from stt_transcriber.providers.vendor import (
    GarbageResponseError,
    VendorBody,
    VendorRequestError,
    content_type,
    describe_validation_error,
    error_body_text,
    garbage_error,
    http_status_error,
    one_line,
    read_audio,
    time_limits,
    transport_error,
)

log = get_logger(__name__)

NAME = "hispeech"
DEFAULT_BASE_URL = "https://api.hispeech.ai"
ENDPOINT = "/api/v1/transcriptions/upload"
# The vendor's words for audio it cannot use (its error texts are not documented; these are the
# ones a person would write, matched case-insensitively).
AUDIO_WORDS = ("audio", "file", "format", "duration", "decode")


class _Answer(VendorBody):
    success: bool
    transcription: str | None = None
    error: str | None = None
    status: int | None = None
    job_id: str | None = None
    audio_duration: float | None = None


class HiSpeechProvider(RemoteProvider[httpx.AsyncClient]):
    """HiSpeech behind the `Provider` protocol (key `STT_HISPEECH_API_KEY`, model `STT_HISPEECH_MODEL`)."""

    name = NAME

    def _make_client(self, api_key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url or DEFAULT_BASE_URL,
            timeout=httpx.Timeout(self.timeout),
            headers={"x-auth-token": api_key, "accept": "application/json"},
            follow_redirects=False,
        )

    async def _close_client(self, client: httpx.AsyncClient) -> None:
        await client.aclose()

    async def _transcribe(self, audio_path: Path, request: ProviderRequest) -> ChunkTranscript:
        model = self.model_for(request)
        label = f"{NAME} ({model})"
        client = self.client()
        data, duration = await asyncio.to_thread(read_audio, audio_path)
        started = time.perf_counter()
        try:
            response = await client.post(
                ENDPOINT,
                params={"stt_model": model, "wait_for_result": "true"},
                data={"wait_for_result": "true"},
                files={"file": (audio_path.name, data, content_type(audio_path))},
            )
        except httpx.TransportError as exc:
            err = transport_error(label, self.base_url or DEFAULT_BASE_URL, exc, self.timeout)
            raise err from None
        except httpx.HTTPError as exc:  # an invalid URL and the like: configuration
            raise VendorRequestError(f"{label}: {one_line(str(exc))}") from None

        answer = self._answer(response, label)
        if answer is None or not answer.success:
            raise self._error(response, answer, label)
        if answer.transcription is None:
            raise garbage_error(label, "success without a transcription")
        try:
            known, _ = time_limits(duration, answer.audio_duration)
        except GarbageResponseError as exc:
            raise garbage_error(label, str(exc)) from None
        text = " ".join(answer.transcription.split())
        log.debug(
            "hispeech_transcribed",
            model=model,
            seconds=round(time.perf_counter() - started, 3),
            chars=len(text),
            job_id=answer.job_id,
        )
        segments = [Segment(start=0.0, end=known or 0.0, text=text, estimated=True)] if text else []
        return ChunkTranscript(provider=NAME, model=model, language="hy", segments=segments)

    def _answer(self, response: httpx.Response, label: str) -> _Answer | None:
        """The parsed answer; None for an error status whose body is not the vendor's shape."""
        try:
            return _Answer.model_validate_json(response.content)
        except ValidationError as exc:
            if response.status_code != 200:
                return None
            what = (
                describe_validation_error(exc, response.content) if response.content.strip() else "empty body"
            )
            raise garbage_error(label, f"(HTTP 200) {one_line(what, 300)}") from None

    def _error(self, response: httpx.Response, answer: _Answer | None, label: str) -> SttError:
        status = response.status_code
        if status == 200:  # `success: false` in a 200: the vendor's own status says what went wrong
            status = answer.status if answer and answer.status and answer.status >= 400 else 500
        words = (answer.error if answer else None) or error_body_text(response) or response.reason_phrase
        words = one_line(self.redact(words or "no details"))
        message = f"{label}: HTTP {status}: {words}"
        about_audio = any(word in words.lower() for word in AUDIO_WORDS)
        return http_status_error(status, message, response.headers, about_audio=about_audio)
