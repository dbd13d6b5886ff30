"""The providers by name, each built once per process from settings (models load once, clients and their
connection pools are shared by concurrent chunks)."""

from __future__ import annotations

from collections.abc import Callable

from stt_common.providers import Provider
from stt_common.providers.catalogue import PROVIDERS
from stt_transcriber.providers.elevenlabs import ElevenLabsProvider
from stt_transcriber.providers.gemini import GeminiProvider
from stt_transcriber.providers.hispeech import HiSpeechProvider
from stt_transcriber.providers.local import LocalWhisperProvider
from stt_transcriber.providers.openai import OpenAIProvider
from stt_transcriber.providers.wavam import WavAmProvider
from stt_transcriber.settings import TranscriberSettings

# One adapter per entry of the catalogue (a test checks that none is missing).
ADAPTERS: dict[str, Callable[[TranscriberSettings], Provider]] = {
    "local": LocalWhisperProvider.from_settings,
    "openai": OpenAIProvider.from_settings,
    "gemini": GeminiProvider.from_settings,
    "elevenlabs": ElevenLabsProvider.from_settings,
    "hispeech": HiSpeechProvider.from_settings,
    "wavam": WavAmProvider.from_settings,
}


class ProviderPool:
    def __init__(self, settings: TranscriberSettings) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {}

    def get(self, name: str) -> Provider:
        if name not in self._providers:
            try:
                adapter = ADAPTERS[name]
            except KeyError:
                raise KeyError(f"unknown provider {name!r} (known: {', '.join(PROVIDERS)})") from None
            self._providers[name] = adapter(self._settings)
        return self._providers[name]

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()
