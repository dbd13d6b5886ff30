"""The provider interface and registry. Adapters raise the typed errors of
`stt_common.errors`, so the transcriber never inspects vendor messages."""

from stt_common.providers.base import LanguageDetector, Provider, ProviderRequest

__all__ = ["LanguageDetector", "Provider", "ProviderRequest"]
