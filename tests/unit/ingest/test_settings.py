"""Ingest settings from the environment."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from pydantic import ValidationError

from stt_common.providers.catalogue import PROVIDERS
from stt_ingest.settings import IngestSettings


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STT_HTTP_HOST", "STT_HTTP_PORT", "STT_SSRF_ALLOW_NETWORKS", "STT_MAX_UPLOAD_BYTES"):
        monkeypatch.delenv(name, raising=False)
    settings = IngestSettings(development=True)
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8000)
    assert settings.max_upload_bytes == 500 * 1024 * 1024
    assert settings.rate_limit_per_minute == 10
    assert settings.ssrf_allow_networks == []
    assert settings.default_provider == "local"
    assert settings.fetch_max_bytes == settings.max_upload_bytes


@pytest.mark.parametrize("value", ["10.0.0.0/8, 127.0.0.1", '["10.0.0.0/8", "127.0.0.1"]'])
def test_lists_come_comma_separated_or_as_json(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("STT_SSRF_ALLOW_NETWORKS", value)
    monkeypatch.setenv("STT_ALLOWED_PROVIDERS", "local,openai")
    settings = IngestSettings(development=True)
    assert settings.ssrf_allow_networks == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    ]
    assert settings.allowed_providers == ["local", "openai"]


def test_default_provider_must_be_allowed() -> None:
    with pytest.raises(ValidationError, match="STT_DEFAULT_PROVIDER"):
        IngestSettings(development=True, default_provider="gemini", allowed_providers=["local"])


def test_bad_networks_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_SSRF_ALLOW_NETWORKS", "not-a-network")
    with pytest.raises(ValidationError):
        IngestSettings(development=True)


# -- providers ------------------------------------------------------------------------------------

_NO_KEYS: dict[str, Any] = {
    "openai_api_key": None,
    "openai_base_url": None,
    "gemini_api_key": None,
    "elevenlabs_api_key": None,
    "hispeech_api_key": None,
    "wavam_api_key": None,
}


def test_the_provider_defaults_come_from_the_catalogue() -> None:
    settings = IngestSettings(development=True, **_NO_KEYS)
    assert settings.allowed_providers == list(PROVIDERS)
    assert settings.chained_providers == [
        name for name, info in PROVIDERS.items() if info.context_mode == "chained"
    ]
    assert settings.chained_providers == ["gemini"]
    assert [name for name in PROVIDERS if settings.provider_configured(name)] == ["local"]


def test_provider_keys_and_lists_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_HISPEECH_API_KEY", "hs-key")
    monkeypatch.setenv("STT_CHAINED_PROVIDERS", "gemini, OpenAI")
    monkeypatch.setenv("STT_DEFAULT_PROVIDER", "hispeech")
    settings = IngestSettings(development=True)
    assert settings.provider_configured("hispeech")
    assert settings.chained_providers == ["gemini", "openai"]
    assert settings.default_provider == "hispeech"


def test_unknown_providers_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown provider"):
        IngestSettings(development=True, allowed_providers=["local", "whisperx"])
    with pytest.raises(ValidationError, match="unknown provider"):
        IngestSettings(development=True, chained_providers=["nope"])


def test_the_default_provider_must_be_configured() -> None:
    with pytest.raises(ValidationError, match="STT_DEFAULT_PROVIDER 'gemini' is not configured: STT_GEMINI"):
        IngestSettings(development=True, default_provider="gemini", **_NO_KEYS)
    settings = IngestSettings(
        development=True, **{**_NO_KEYS, "default_provider": "gemini", "gemini_api_key": "k"}
    )
    assert settings.default_provider == "gemini"
