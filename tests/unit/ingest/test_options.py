"""The provider rules of `resolve_options`: allowed, configured, and the languages it transcribes."""

from __future__ import annotations

from typing import Any

import pytest

from stt_ingest.options import configured_providers, resolve_options
from stt_ingest.problems import ApiProblem
from stt_ingest.schemas import JobOptions
from stt_ingest.settings import IngestSettings


def _settings(**values: Any) -> IngestSettings:
    keys: dict[str, Any] = {
        "openai_api_key": None,
        "openai_base_url": None,
        "gemini_api_key": None,
        "elevenlabs_api_key": None,
        "hispeech_api_key": None,
        "wavam_api_key": None,
    }
    return IngestSettings(development=True, **{**keys, **values})


def _refusal(settings: IngestSettings, **options: Any) -> list[tuple[list[str | int], str, str]]:
    with pytest.raises(ApiProblem) as caught:
        resolve_options(JobOptions(**options), settings)
    assert caught.value.status == 422
    assert caught.value.code == "validation_error"
    return [(error.loc, error.type, error.msg) for error in caught.value.errors or []]


def test_configured_providers_are_the_allowed_ones_with_a_key_in_catalogue_order() -> None:
    settings = _settings(
        allowed_providers=["wavam", "openai", "local", "hispeech"], wavam_api_key="w", gemini_api_key="g"
    )
    assert configured_providers(settings) == ["local", "wavam"]


def test_a_provider_without_a_key_is_refused_with_what_to_do() -> None:
    settings = _settings(elevenlabs_api_key="e")
    assert _refusal(settings, provider="hispeech") == [
        (
            ["body", "provider"],
            "provider_not_configured",
            "Provider 'hispeech' is not configured on this deployment (no STT_HISPEECH_API_KEY); "
            "configured: local, elevenlabs. Choose one of those, or ask the operator to set the key.",
        )
    ]


def test_a_language_outside_the_providers_is_refused() -> None:
    settings = _settings(hispeech_api_key="h")
    assert _refusal(settings, provider="hispeech", language="EN") == [
        (
            ["body", "language"],
            "unsupported_language",
            "Provider 'hispeech' transcribes only hy, not language 'en': choose one of those languages, "
            "or another provider.",
        )
    ]


@pytest.mark.parametrize("language", [None, "auto", "hy", "HY-am"])
def test_the_providers_languages_or_detection_are_accepted(language: str | None) -> None:
    resolved = resolve_options(
        JobOptions(provider="hispeech", language=language), _settings(hispeech_api_key="h")
    )
    assert resolved.provider == "hispeech"
    assert resolved.context_mode == "parallel"


def test_the_context_mode_default_follows_the_setting() -> None:
    settings = _settings(gemini_api_key="g", openai_api_key="o")
    assert resolve_options(JobOptions(provider="gemini"), settings).context_mode == "chained"
    assert resolve_options(JobOptions(provider="openai"), settings).context_mode == "parallel"
    settings = _settings(openai_api_key="o", chained_providers=["openai"])
    assert resolve_options(JobOptions(provider="openai"), settings).context_mode == "chained"
