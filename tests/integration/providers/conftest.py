"""What the vendor tests beside this file (`test_openai.py`, `test_gemini.py`, `test_elevenlabs.py`)
share: WAV chunks of the lengths they all use, and the check that an error never shows the key. Each
file keeps its own fake and provider fixtures, since those differ by vendor."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.audio import sine_wav

# Every vendor file's test key embeds this, so a key that leaks masked or cut short is still caught.
KEY_CORE = "0123456789abcdef"


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s, named like a pipeline chunk (the name reaches the vendor, and tests check it)."""
    return sine_wav(tmp_path_factory.mktemp("audio") / "chunk-0007.wav", 12.0)


@pytest.fixture(scope="module")
def short_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sine_wav(tmp_path_factory.mktemp("audio") / "short.wav", 1.0)


def assert_no_key(exc: BaseException, key: str) -> None:
    """Neither `key` nor its core shows in the error, however it is printed."""
    for text in (str(exc), repr(exc), getattr(exc, "message", "")):
        assert key not in text
        assert KEY_CORE not in text
