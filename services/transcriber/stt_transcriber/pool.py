"""Provider instances by name, built once per process from settings (models load once)."""

from __future__ import annotations

from typing import Any

from stt_common.providers import Provider, get_provider
from stt_transcriber.settings import TranscriberSettings


class ProviderPool:
    def __init__(self, settings: TranscriberSettings) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {}

    def config_for(self, name: str) -> dict[str, Any]:
        s = self._settings
        if name == "local":
            return {
                "model": s.local_model,
                "model_cache_dir": s.local_model_cache_dir,
                "device": s.local_device,
                "compute_type": s.local_compute_type,
                "beam_size": s.local_beam_size,
                "cpu_threads": s.local_cpu_threads,
                "condition_on_previous_text": s.local_condition_on_previous_text,
                "vad_filter": s.local_vad_filter,
            }
        if name == "openai":
            return {
                "api_key": s.openai_api_key.get_secret_value() if s.openai_api_key else None,
                "base_url": s.openai_base_url,
                "model": s.openai_model,
                "timeout": s.provider_timeout_seconds,
            }
        if name == "gemini":
            return {
                "api_key": s.gemini_api_key.get_secret_value() if s.gemini_api_key else None,
                "base_url": s.gemini_base_url,
                "model": s.gemini_model,
                "timeout": s.provider_timeout_seconds,
                "inline_max_bytes": s.gemini_inline_max_bytes,
                "temperature": s.gemini_temperature,
            }
        if name == "elevenlabs":
            return {
                "api_key": s.elevenlabs_api_key.get_secret_value() if s.elevenlabs_api_key else None,
                "base_url": s.elevenlabs_base_url,
                "model": s.elevenlabs_model,
                "timeout": s.provider_timeout_seconds,
                "diarize": s.elevenlabs_diarize,
                "tag_audio_events": s.elevenlabs_tag_audio_events,
            }
        return {}

    def get(self, name: str) -> Provider:
        if name not in self._providers:
            self._providers[name] = get_provider(name, **self.config_for(name))
        return self._providers[name]

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()
