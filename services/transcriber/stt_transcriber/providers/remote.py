"""What every remote-vendor adapter shares: its key (never shown), a client made on first use and shared
by every concurrent call, closing it, the model a call uses, and building itself from settings.

An adapter subclasses `RemoteProvider[ClientType]`, names itself (`name`, which is also its entry in
`stt_common.providers.catalogue`), and writes `_make_client`, `_close_client` and `_transcribe`;
vendor-specific settings go in its own `from_settings`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

from stt_common.errors import (
    AuthError,
    InvalidAudioError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitedError,
    SttError,
)
from stt_common.providers.base import ProviderRequest
from stt_common.providers.catalogue import ProviderInfo, provider_info
from stt_common.transcript import ChunkTranscript
from stt_transcriber.providers.vendor import VendorRequestError, redact
from stt_transcriber.settings import TranscriberSettings

ClientT = TypeVar("ClientT")


class RemoteProvider(ABC, Generic[ClientT]):
    name: ClassVar[str]
    # Key placed in requests to servers that need none (an OpenAI-compatible server); None: a key is
    # required.
    keyless_placeholder: ClassVar[str | None] = None
    # What the operator can do, by kind of error, where it differs from `default_hints`.
    hints: ClassVar[dict[type[SttError], str]] = {}

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        timeout: float = 300.0,
    ) -> None:
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"{self.name} provider: timeout must be > 0, not {timeout}")
        self.info: ProviderInfo = provider_info(self.name)
        self.base_url = (base_url or "").strip().rstrip("/") or None
        self.model = (model or "").strip() or self.info.default_model
        self.timeout = float(timeout)
        self._api_key = (api_key or "").strip() or None
        self._client: ClientT | None = None

    @classmethod
    def from_settings(cls, settings: TranscriberSettings) -> Self:
        return cls(**cls.settings_kwargs(settings))

    @classmethod
    def settings_kwargs(cls, settings: TranscriberSettings) -> dict[str, Any]:
        """The constructor's arguments from settings; adapters with more settings extend this."""
        return {
            "api_key": settings.provider_key(cls.name),
            "base_url": settings.provider_base_url(cls.name),
            "model": settings.provider_model(cls.name),
            "timeout": settings.provider_timeout_seconds,
        }

    # -- the client ------------------------------------------------------------------------------

    def client(self) -> ClientT:
        """The shared client, made on first use (again after `aclose`)."""
        if self._client is None:
            key = self._api_key or self.keyless_placeholder
            if key is None or (key == self.keyless_placeholder and self.base_url is None):
                setting = f"STT_{(self.info.key_setting or '').upper()}"
                raise AuthError(
                    f"{self.name} provider: no API key configured (GET /api/v1/providers lists the "
                    f"providers this deployment has configured); set {setting} for the transcriber"
                )
            self._client = self._make_client(key)
        return self._client

    async def transcribe(self, audio_path: Path, request: ProviderRequest) -> ChunkTranscript:
        """Transcribe one chunk; every error says what to do next (see `with_hint`)."""
        try:
            return await self._transcribe(Path(audio_path), request)
        except SttError as err:
            raise self.with_hint(err) from err.__cause__

    @abstractmethod
    async def _transcribe(self, audio_path: Path, request: ProviderRequest) -> ChunkTranscript: ...

    @abstractmethod
    def _make_client(self, api_key: str) -> ClientT: ...

    @abstractmethod
    async def _close_client(self, client: ClientT) -> None: ...

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._close_client(client)

    # -- small shared decisions ------------------------------------------------------------------

    def model_for(self, request: ProviderRequest) -> str:
        return (request.model or "").strip() or self.model

    def redact(self, text: str) -> str:
        """`text` without this provider's key, or anything else that looks like a key."""
        return redact(text, self._api_key)

    def default_hints(self) -> dict[type[SttError], str]:
        setting = f"STT_{self.name.upper()}"
        return {
            AuthError: f"check {setting}_API_KEY" if self._api_key else "",
            QuotaExceededError: f"the {self.info.title} account is out of credit: top it up, then retry",
            RateLimitedError: f"retried later (lower the budget for {self.name} if it persists)",
            ProviderUnavailableError: f"retried later; check {setting}_BASE_URL and egress if it persists",
            ProviderTimeoutError: "retried later; raise STT_PROVIDER_TIMEOUT_SECONDS if long chunks need "
            "more time",
            InvalidAudioError: f"{self.name} refused this chunk's audio; check the source media",
            VendorRequestError: f"check {setting}_MODEL, {setting}_BASE_URL and the job's options",
        }

    def with_hint(self, err: SttError) -> SttError:
        """The same kind of error, its message (redacted) followed by what the operator can do."""
        hints = {**self.default_hints(), **self.hints}
        hint = next((h for kind, h in hints.items() if isinstance(err, kind)), None)
        text = self.redact(err.message)
        if hint:
            text = f"{text}; {hint}"
        return type(err)(text, retry_after=err.retry_after)

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"
