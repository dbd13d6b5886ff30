"""Every provider this pipeline knows, what it can do, and what it needs configured: the one place that
says so. Read by ingest (`GET /api/v1/providers`, refusing a job for a provider that is not configured),
the chunker (chunks no longer than the provider takes) and the transcriber (adapters, timestamps).

Standard library only: ingest and the chunker have no vendor SDKs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# 16 kHz mono 16-bit PCM: what the chunker sends to every provider.
CHUNK_BYTES_PER_SECOND = 32_000

Timestamps = Literal["words", "segments", "none"]


@dataclass(frozen=True)
class Capabilities:
    """What a provider gives back and accepts.

    timestamps: "words" (word times), "segments" (segment times only) or "none" (text only: the
      transcriber estimates times from the chunk's speech and marks them `estimated`).
    languages: the languages it transcribes, or None for "many; it detects them".
    max_request_bytes / max_request_seconds: the most one request may carry (None: no documented limit
      below our chunk size); the chunker cuts shorter chunks for such a provider.
    translate: can translate speech into English text (a job's `task=translate`); ingest refuses a
      translate job for a provider without it (422) rather than let it come back untranslated.
    """

    timestamps: Timestamps
    diarization: bool
    prompt: bool  # takes a free-text prompt (vocabulary, the previous chunk's text)
    languages: frozenset[str] | None = None
    max_request_bytes: int | None = None
    max_request_seconds: float | None = None
    translate: bool = False

    def max_chunk_seconds(self) -> float | None:
        """The longest chunk one request can carry, or None when any chunk we cut fits."""
        limits = [
            limit
            for limit in (
                self.max_request_seconds,
                # 1 % headroom for the WAV header and multipart framing.
                self.max_request_bytes / CHUNK_BYTES_PER_SECOND * 0.99 if self.max_request_bytes else None,
            )
            if limit is not None
        ]
        return min(limits) if limits else None


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    title: str
    # The setting holding its key (`STT_<KEY_SETTING>`), None when it needs none (`local`).
    key_setting: str | None
    default_model: str
    models: tuple[str, ...]  # known models; others are passed through to the vendor as named
    capabilities: Capabilities
    # Default context mode: "chained" sends each chunk the previous chunk's text (LLM providers use
    # it to keep names and spelling consistent), "parallel" transcribes every chunk at once.
    context_mode: Literal["parallel", "chained"] = "parallel"
    source: str = ""  # where the API shapes come from (docs/providers.md has the detail)


_MB = 1024 * 1024

PROVIDERS: dict[str, ProviderInfo] = {
    info.name: info
    for info in (
        ProviderInfo(
            name="local",
            title="Embedded faster-whisper (offline)",
            key_setting=None,
            default_model="tiny.en",
            models=("tiny.en", "base"),
            # Whisper's own translate task; with a multilingual model only (`base`, not `tiny.en`).
            capabilities=Capabilities(timestamps="words", diarization=False, prompt=True, translate=True),
            source="in process",
        ),
        ProviderInfo(
            name="openai",
            title="OpenAI Audio API (and OpenAI-compatible Whisper servers)",
            key_setting="openai_api_key",
            default_model="whisper-1",
            models=("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize"),
            # 25 MB per upload (documented); gpt-4o-* models refuse more than 1,400 s.
            capabilities=Capabilities(
                timestamps="words",
                diarization=True,
                prompt=True,
                max_request_bytes=25 * _MB,
                max_request_seconds=1400.0,
            ),
            source="platform.openai.com API reference",
        ),
        ProviderInfo(
            name="gemini",
            title="Google Gemini",
            key_setting="gemini_api_key",
            default_model="gemini-2.5-flash",
            models=("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"),
            capabilities=Capabilities(timestamps="segments", diarization=True, prompt=True),
            context_mode="chained",
            source="ai.google.dev Gemini API reference",
        ),
        ProviderInfo(
            name="elevenlabs",
            title="ElevenLabs Speech to Text (Scribe)",
            key_setting="elevenlabs_api_key",
            default_model="scribe_v2",
            models=("scribe_v1", "scribe_v2"),
            capabilities=Capabilities(timestamps="words", diarization=True, prompt=False),
            source="elevenlabs.io API reference",
        ),
        ProviderInfo(
            name="hispeech",
            title="HiSpeech (Armenian)",
            key_setting="hispeech_api_key",
            default_model="model-01052025",
            models=("model-01052025", "model-23012026"),
            capabilities=Capabilities(
                timestamps="none", diarization=False, prompt=False, languages=frozenset({"hy"})
            ),
            source="hispeech.ai/api.html",
        ),
        ProviderInfo(
            name="wavam",
            title="wav.am (Armenian)",
            key_setting="wavam_api_key",
            default_model="default",
            models=("default",),
            capabilities=Capabilities(
                timestamps="none", diarization=True, prompt=False, languages=frozenset({"hy", "en", "ru"})
            ),
            source="reverse-engineered from public clients (docs/providers.md)",
        ),
    )
}


def provider_info(name: str) -> ProviderInfo:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise KeyError(f"unknown provider {name!r} (known: {', '.join(PROVIDERS)})") from None
