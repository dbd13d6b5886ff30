"""One interface for every speech-to-text vendor (the transcriber's pool maps names to adapters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

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
    # "translate": English text of speech in any language (Whisper's task). Only providers whose
    # catalogue capabilities say `translate` get it: ingest refuses the others at submission.
    task: Literal["transcribe", "translate"] = "transcribe"


class Provider(Protocol):
    name: ClassVar[str]

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
