"""Each remote provider with its fake vendor, and how to make that fake misbehave in the ways every
vendor does: the provider contract suite (`test_contract.py`) runs the same tests over all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stt_transcriber.providers.elevenlabs import ElevenLabsProvider
from stt_transcriber.providers.gemini import GeminiProvider
from stt_transcriber.providers.hispeech import HiSpeechProvider
from stt_transcriber.providers.openai import OpenAIProvider
from stt_transcriber.providers.remote import RemoteProvider
from stt_transcriber.providers.wavam import WavAmProvider
from tests.fakes import elevenlabs_server, gemini_server, hispeech_server, openai_server, wavam_server
from tests.fakes.loopback import LoopbackFake

# Not shaped like any vendor's keys, so that only the provider's own redaction can hide it.
API_KEY = "contract-key-0123456789-SECRET"


@dataclass(frozen=True)
class VendorCase:
    name: str
    adapter: type[RemoteProvider[Any]]
    fake: Callable[[str], LoopbackFake]  # a fake that accepts only this key
    unauthorized: Callable[[], Any]
    rate_limited: Callable[[float | None], Any]  # a 429, with Retry-After seconds or without
    server_error: Callable[[], Any]  # a 503
    hang: Callable[[float], Any]
    garbage: Callable[[], Any]  # a 200 whose body is not the documented shape
    silence: Callable[[], Any]  # what the fake's `transcript_for` returns for audio without speech
    vendor_env: str  # the vendor's own environment variable for the key

    def provider(self, fake: LoopbackFake | None, **overrides: Any) -> RemoteProvider[Any]:
        config: dict[str, Any] = {"api_key": API_KEY, "timeout": 5.0}
        if fake is not None:
            config["base_url"] = fake.base_url
        return self.adapter(**{**config, **overrides})

    def __str__(self) -> str:
        return self.name


CASES = [
    VendorCase(
        name="openai",
        adapter=OpenAIProvider,
        fake=lambda key: openai_server.FakeOpenAI(api_key=key),
        unauthorized=openai_server.Failure.unauthorized,
        rate_limited=lambda s: openai_server.Failure.rate_limited(retry_after=s),
        server_error=lambda: openai_server.Failure.server_error(503),
        hang=openai_server.Failure.hang,
        garbage=openai_server.Failure.garbage,
        silence=lambda: lambda duration: [],
        vendor_env="OPENAI_API_KEY",
    ),
    VendorCase(
        name="gemini",
        adapter=GeminiProvider,
        fake=lambda key: gemini_server.FakeGemini(api_key=key),
        unauthorized=gemini_server.Failure.api_key_invalid,
        rate_limited=lambda s: gemini_server.Failure.rate_limited(
            retry_delay=None, retry_after=None if s is None else f"{s:g}"
        ),
        server_error=lambda: gemini_server.Failure.server_error(503),
        hang=gemini_server.Failure.hang,
        garbage=gemini_server.Failure.wrong_shape,
        silence=lambda: lambda duration: [],
        vendor_env="GEMINI_API_KEY",
    ),
    VendorCase(
        name="elevenlabs",
        adapter=ElevenLabsProvider,
        fake=lambda key: elevenlabs_server.FakeElevenLabs(api_key=key),
        unauthorized=elevenlabs_server.Failure.unauthorized,
        rate_limited=lambda s: elevenlabs_server.Failure.rate_limited(retry_after=s),
        server_error=lambda: elevenlabs_server.Failure.server_error(503),
        hang=elevenlabs_server.Failure.hang,
        garbage=elevenlabs_server.Failure.garbage,
        silence=lambda: lambda duration: [],
        vendor_env="ELEVENLABS_API_KEY",
    ),
    VendorCase(
        name="hispeech",
        adapter=HiSpeechProvider,
        fake=lambda key: hispeech_server.FakeHiSpeech(api_key=key),
        unauthorized=hispeech_server.Failure.unauthorized,
        rate_limited=lambda s: hispeech_server.Failure.rate_limited(retry_after=s),
        server_error=lambda: hispeech_server.Failure.server_error(503),
        hang=hispeech_server.Failure.hang,
        garbage=hispeech_server.Failure.garbage,
        silence=lambda: lambda duration, audio: "",
        vendor_env="HISPEECH_API_KEY",
    ),
    VendorCase(
        name="wavam",
        adapter=WavAmProvider,
        fake=lambda key: wavam_server.FakeWavAm(token=key),
        unauthorized=wavam_server.Failure.unauthorized,
        rate_limited=lambda s: wavam_server.Failure.rate_limited(retry_after=s),
        server_error=lambda: wavam_server.Failure.server_error(503),
        hang=wavam_server.Failure.hang,
        garbage=wavam_server.Failure.garbage,
        silence=lambda: lambda duration, audio: "",
        vendor_env="WAVAM_API_KEY",
    ),
]
