"""The transcriber builds each remote provider from its STT_* settings (the path a deployment takes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stt_common.providers.base import ProviderRequest
from stt_transcriber.pool import ProviderPool
from stt_transcriber.settings import TranscriberSettings
from tests.fakes.elevenlabs_server import FakeElevenLabs
from tests.fixtures.audio import sine_wav


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sine_wav(tmp_path_factory.mktemp("pool") / "tone.wav", 1.2)


async def test_elevenlabs_from_settings(audio: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_ELEVENLABS_API_KEY", "sk_settings_key")
    monkeypatch.setenv("STT_ELEVENLABS_DIARIZE", "true")
    with FakeElevenLabs(api_key="sk_settings_key") as fake:
        monkeypatch.setenv("STT_ELEVENLABS_BASE_URL", fake.base_url)
        pool = ProviderPool(TranscriberSettings(development=True))
        try:
            transcript = await pool.get("elevenlabs").transcribe(audio, ProviderRequest())
        finally:
            await pool.aclose()
        assert fake.requests()[0].diarize == "true"
    assert transcript.provider == "elevenlabs"
    assert transcript.model == "scribe_v2"
    assert transcript.text
