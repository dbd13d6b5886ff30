"""The transcriber's provider adapters, registered by name in `stt_common.providers.base`."""

from __future__ import annotations

from stt_common.providers.base import register_provider
from stt_transcriber.providers.elevenlabs import ElevenLabsProvider
from stt_transcriber.providers.gemini import GeminiProvider
from stt_transcriber.providers.local import LocalWhisperProvider
from stt_transcriber.providers.openai import OpenAIProvider

__all__ = ["LocalWhisperProvider", "register_builtin_providers"]


def register_builtin_providers() -> None:
    """Register every built-in provider. Idempotent; add one `register_provider` line per provider."""
    register_provider("local", LocalWhisperProvider)
    register_provider("openai", OpenAIProvider)
    register_provider("gemini", GeminiProvider)
    register_provider("elevenlabs", ElevenLabsProvider)
