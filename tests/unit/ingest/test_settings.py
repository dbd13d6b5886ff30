"""Ingest settings from the environment."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

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
