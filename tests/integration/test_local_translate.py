"""`task=translate` on the `local` provider: an English-only model refuses it before anything is loaded
(the real translation, Spanish speech through Whisper `base`, is `tests/e2e/test_openai_compat.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stt_common.errors import is_transient
from stt_common.providers.base import ProviderRequest
from stt_transcriber.providers.local import LocalModelError, LocalWhisperProvider
from tests.integration.ingest.media import wav_bytes


async def test_an_english_only_model_cannot_translate(tmp_path: Path) -> None:
    audio = tmp_path / "chunk.wav"
    audio.write_bytes(wav_bytes(0.5))
    provider = LocalWhisperProvider(model_cache_dir=tmp_path / "models")
    with pytest.raises(LocalModelError) as refused:
        await provider.transcribe(audio, ProviderRequest(model="tiny.en", task="translate"))
    assert "'tiny.en' is English-only and cannot translate" in refused.value.message
    assert "model 'base'" in refused.value.message
    assert not is_transient(refused.value)  # configuration: the chunk fails, naming what to do
    assert provider.loaded_models == []  # refused before loading anything
