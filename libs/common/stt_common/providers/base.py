"""One interface for every speech-to-text vendor, and a registry by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from stt_common.transcript import ChunkTranscript, Segment


@dataclass(frozen=True)
class ProviderRequest:
    """Everything a provider may use besides the audio itself."""

    language: str | None = None
    model: str | None = None
    prompt: str | None = None
    # The previous chunk's last segments (chained mode): continuity of names, spelling, speakers.
    context_segments: list[Segment] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    async def transcribe(self, audio_path: Path, request: ProviderRequest) -> ChunkTranscript:
        """Transcribe one chunk (16 kHz mono WAV). Raises `stt_common.errors.SttError` subclasses."""
        ...

    async def aclose(self) -> None:
        """Release clients and models."""
        ...


@runtime_checkable
class LanguageDetector(Protocol):
    """A provider that can tell the spoken language apart from transcribing (the `local` one): the
    transcriber detects it once per job and pins it for every chunk."""

    async def detect_language(self, audio_path: Path, model: str | None) -> tuple[str, float] | None:
        """(language code, probability), or None when the model knows one language only."""
        ...


ProviderFactory = Callable[..., Provider]

_REGISTRY: dict[str, ProviderFactory] = {}


def register_provider(name: str, factory: ProviderFactory) -> None:
    _REGISTRY[name] = factory


def get_provider(name: str, **config: Any) -> Provider:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown provider {name!r} (registered: {known})") from None
    return factory(**config)


def registered_providers() -> list[str]:
    return sorted(_REGISTRY)
