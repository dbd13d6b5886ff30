"""`wavam`: wav.am, an Armenian speech-to-text service. It publishes no API reference we could reach: the
shapes below are reverse-engineered from public clients that call it (docs/providers.md names them).

* `POST {base_url}/transcribe_audio/` (the trailing slash matters), header `Authorization: <token>` (the raw
  token, no `Bearer`), multipart `audio_file` plus form fields `project_id`, `language` (`hy`, `en` or
  `ru`; `auto` is refused) and `num_speakers`.
* The answer is a JSON list of speaker turns `[{"speaker": "speaker_0", "text": "..."}]` without times;
  older clients saw `{"text": "..."}` or a plain-text body, and all three are accepted. Each turn becomes
  a segment; the transcriber spreads the words over the chunk's speech and marks the times `estimated`.
* Every call names a project: `POST /get_projects/` (`{}` → a list of `{id, name}`) and, when none has
  the configured name (`STT_WAVAM_PROJECT`), `POST /add_project/` (`{"name": ...}` → a bare integer id).
  This happens once per process, on first use.
* A 500 whose body says "Failed to transcribe audio" is permanent for that audio (`invalid_audio`).
* Tokens are JWTs that expire (weeks to months after issue). An expired token is refused before any
  request, with the date it expired; a 401 that says "expired" gets the same advice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError

from stt_common.errors import AuthError, InvalidAudioError, SttError
from stt_common.logs import get_logger
from stt_common.providers.base import ProviderRequest
from stt_common.providers.languages import normalise_language
from stt_common.transcript import ChunkTranscript, Segment
from stt_transcriber.providers.remote import RemoteProvider
from stt_transcriber.providers.vendor import (
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
from stt_transcriber.settings import TranscriberSettings

log = get_logger(__name__)

NAME = "wavam"
DEFAULT_BASE_URL = "https://wav.am"
DEFAULT_PROJECT = "stt-pipeline"
LANGUAGES = ("hy", "en", "ru")
# The body of the 500 that means "this audio cannot be transcribed" (retrying does not help).
FAILED_TO_TRANSCRIBE = "failed to transcribe audio"
EXPIRED_ADVICE = "the wav.am token has expired: get a new one from wav.am and set STT_WAVAM_API_KEY"


class _Turn(VendorBody):
    text: str
    speaker: str | None = None


class _Text(VendorBody):
    text: str


class _Project(VendorBody):
    id: int
    name: str | None = None


_ANSWER = TypeAdapter(list[_Turn] | _Text | str)
_PROJECTS = TypeAdapter(list[_Project])


class WavAmProvider(RemoteProvider[httpx.AsyncClient]):
    """wav.am behind the `Provider` protocol (token `STT_WAVAM_API_KEY`, project `STT_WAVAM_PROJECT`)."""

    name = NAME

    def __init__(self, *, project: str = DEFAULT_PROJECT, **common: Any) -> None:
        super().__init__(**common)
        self.project = project.strip() or DEFAULT_PROJECT
        self._project_id: int | None = None
        self._project_lock = asyncio.Lock()

    @classmethod
    def settings_kwargs(cls, settings: TranscriberSettings) -> dict[str, Any]:
        return {**super().settings_kwargs(settings), "project": settings.wavam_project}

    def _make_client(self, api_key: str) -> httpx.AsyncClient:
        expired = token_expiry(api_key)
        if expired is not None and expired <= datetime.now(UTC):
            raise AuthError(f"{NAME}: the token expired on {expired:%Y-%m-%d}; {EXPIRED_ADVICE}")
        return httpx.AsyncClient(
            base_url=self.base_url or DEFAULT_BASE_URL,
            timeout=httpx.Timeout(self.timeout),
            headers={"Authorization": api_key, "accept": "application/json"},
            follow_redirects=False,
        )

    async def _close_client(self, client: httpx.AsyncClient) -> None:
        await client.aclose()
        self._project_id = None

    async def _transcribe(self, audio_path: Path, request: ProviderRequest) -> ChunkTranscript:
        language = normalise_language(request.language) or "hy"
        if language not in LANGUAGES:
            raise VendorRequestError(
                f"{NAME}: language {language!r} is not offered (wav.am transcribes {', '.join(LANGUAGES)}); "
                "submit the job with one of those or another provider"
            )
        # wav.am separates speakers only when told how many there may be: 2 when the job asks for
        # speaker labels (a conversation), else 1.
        output = request.options.get("output") or {}
        speakers = 2 if isinstance(output, dict) and output.get("speaker_labels") else 1
        client = self.client()
        data, duration = await asyncio.to_thread(read_audio, audio_path)
        project = await self._project(client)
        started = time.perf_counter()
        response = await self._post(
            client,
            "/transcribe_audio/",
            data={"project_id": str(project), "language": language, "num_speakers": str(speakers)},
            files={"audio_file": (audio_path.name, data, content_type(audio_path))},
        )
        turns = self._turns(response)
        known, _ = time_limits(duration, None)
        segments = [
            Segment(start=0.0, end=known or 0.0, text=text, speaker=speaker, estimated=True)
            for speaker, text in turns
        ]
        log.debug("wavam_transcribed", seconds=round(time.perf_counter() - started, 3), turns=len(segments))
        return ChunkTranscript(provider=NAME, model=self.model, language=language, segments=segments)

    async def _project(self, client: httpx.AsyncClient) -> int:
        """The id of the project named `self.project`, found or made once per process."""
        async with self._project_lock:
            if self._project_id is None:
                listed = await self._post(client, "/get_projects/", json={})
                try:
                    projects = _PROJECTS.validate_json(listed.content)
                except ValidationError as exc:
                    what = describe_validation_error(exc, listed.content)
                    raise garbage_error(NAME, f"get_projects: {what}") from None
                found = [p.id for p in projects if p.name == self.project]
                if found:
                    self._project_id = found[0]
                else:
                    made = await self._post(client, "/add_project/", json={"name": self.project})
                    try:
                        self._project_id = TypeAdapter(int).validate_json(made.content)
                    except ValidationError as exc:
                        what = describe_validation_error(exc, made.content)
                        raise garbage_error(NAME, f"add_project: {what}") from None
                    log.info("wavam_project_created", project=self.project, project_id=self._project_id)
            return self._project_id

    async def _post(self, client: httpx.AsyncClient, path: str, **kwargs: Any) -> httpx.Response:
        """One call; any answer but a 200 becomes the typed error for it."""
        try:
            response = await client.post(path, **kwargs)
        except httpx.TransportError as exc:
            raise transport_error(NAME, self.base_url or DEFAULT_BASE_URL, exc, self.timeout) from None
        except httpx.HTTPError as exc:  # an invalid URL and the like: configuration
            raise VendorRequestError(f"{NAME}: {one_line(str(exc))}") from None
        if response.status_code != 200:
            raise self._error(response, path)
        return response

    def _turns(self, response: httpx.Response) -> list[tuple[str | None, str]]:
        """(speaker, text) of each non-empty turn, from any of the three answer shapes."""
        body = response.content
        if "json" not in response.headers.get("content-type", "application/json"):
            answer: Any = body.decode("utf-8", "replace")  # a plain-text answer
        else:
            try:
                answer = _ANSWER.validate_json(body)
            except ValidationError as exc:
                what = describe_validation_error(exc, body) if body.strip() else "empty body"
                raise garbage_error(NAME, f"(HTTP 200) {one_line(what, 300)}") from None
        if isinstance(answer, str):
            turns = [(None, answer)]
        elif isinstance(answer, _Text):
            turns = [(None, answer.text)]
        else:
            turns = [(turn.speaker, turn.text) for turn in answer]
        return [(speaker, " ".join(text.split())) for speaker, text in turns if text.strip()]

    def _error(self, response: httpx.Response, path: str) -> SttError:
        words = one_line(self.redact(error_body_text(response) or response.reason_phrase or "no details"))
        message = f"{NAME} ({path.strip('/')}): HTTP {response.status_code}: {words}"
        if response.status_code >= 500 and FAILED_TO_TRANSCRIBE in words.lower():
            return InvalidAudioError(f"{message} (wav.am could not transcribe this audio)")
        if response.status_code == 401 and "expired" in words.lower():
            return AuthError(f"{message}; {EXPIRED_ADVICE}")
        return http_status_error(response.status_code, message, response.headers)


def token_expiry(token: str) -> datetime | None:
    """When a JWT says it expires (its `exp`, read without checking the signature: only to warn early),
    or None for a token that is not a JWT or names no expiry."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return datetime.fromtimestamp(float(payload["exp"]), UTC)
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError, OSError):
        return None
