"""The WER corpus's pure parts: the committed manifest's shape and the long-recording concatenation.

Nothing here downloads: the manifest is read as JSON, and the concatenation runs on tiny WAVs made
in a tmp dir (only the joining is tested, not speech quality)."""

from __future__ import annotations

import itertools
import json
import math
import wave
from pathlib import Path

import pytest

from bench.corpus import (
    GAP_SECONDS,
    LANGUAGES,
    MANIFEST_PATH,
    REGISTRIES,
    SAMPLE_RATE,
    CorpusItem,
    load_manifest,
    long_recordings,
    manifest_problems,
)


def test_manifest_is_well_formed() -> None:
    manifest = load_manifest()
    assert manifest_problems(manifest) == []
    sources = manifest["sources"]
    ids: list[str] = []
    for key, src in sources.items():
        assert {p["registry"] for p in src["packages"]} <= REGISTRIES
        for entry in src["files"]:
            assert entry["reference"].strip(), entry["id"]
            assert entry["language"] in LANGUAGES, entry["id"]
            assert entry["id"].startswith(f"{key}/")
            ids.append(entry["id"])
    assert len(ids) == len(set(ids))
    # The brief's minimum: pocketsphinx plus at least three more sources, and Russian speech.
    assert "pocketsphinx" in sources
    assert len(sources) >= 4
    assert any(e["language"] == "ru" for s in sources.values() for e in s["files"])


def test_manifest_names_no_registry_host() -> None:
    # Packages are named, never fetched by URL: committed files name no registry or mirror host.
    assert "://" not in MANIFEST_PATH.read_text(encoding="utf-8")


def test_manifest_problems_catches_bad_entries() -> None:
    manifest = load_manifest()
    src = next(iter(manifest["sources"].values()))
    bad = {
        "sources": {
            "x": src
            | {
                "files": [
                    {"id": "y/a", "path": "a.wav", "reference": " ", "language": "xx", "kind": "two words"}
                ]
            }
        }
    }
    problems = " | ".join(manifest_problems(bad))
    for expected in ("must be 'x/<name>'", "empty reference", "unknown language", "one lowercase word"):
        assert expected in problems


def _tone(path: Path, seconds: float, freq: float) -> None:
    """A short sine WAV: stands in for speech, since only the joining is under test."""
    frames = bytearray()
    for n in range(round(seconds * SAMPLE_RATE)):
        value = round(8000 * math.sin(2 * math.pi * freq * n / SAMPLE_RATE))
        frames += value.to_bytes(2, "little", signed=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(bytes(frames))


def _items(tmp_path: Path) -> list[CorpusItem]:
    items = []
    for n, secs in enumerate((0.4, 0.7, 1.1)):
        path = tmp_path / "src" / f"f{n}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        _tone(path, secs, 200 + 100 * n)
        items.append(CorpusItem(f"t/f{n}", path, f"word{n} text{n}", "en", "t", "read", secs))
    return items


def test_long_recordings_join_references_in_order_and_reach_the_length(tmp_path: Path) -> None:
    items = _items(tmp_path)
    by_id = {it.id: it for it in items}
    minutes = 0.1  # 6 s from 2.2 s of files: the files must repeat
    out = long_recordings(items, tmp_path, minutes=minutes, count=2)
    assert [it.id for it in out] == ["long/en-1", "long/en-2"]
    orders = []
    for rec in out:
        assert (rec.kind, rec.language, rec.source) == ("long", "en", "long")
        meta = json.loads(rec.path.with_suffix(".json").read_text())
        pieces = meta["pieces"]
        order = [p["id"] for p in pieces]
        orders.append(order)
        # The reference is the pieces' references, joined in the order they play.
        assert rec.reference == " ".join(by_id[i].reference for i in order)
        assert meta["repeated"] is True
        assert meta["passes"] > 1
        with wave.open(str(rec.path), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2)
            seconds = wav.getnframes() / SAMPLE_RATE
        assert seconds >= minutes * 60
        assert rec.seconds == pytest.approx(seconds)
        # 0.5-1 s of silence between consecutive pieces, none before the first.
        assert pieces[0]["start"] == 0
        for prev, nxt in itertools.pairwise(pieces):
            assert GAP_SECONDS[0] - 1e-3 <= nxt["start"] - prev["end"] <= GAP_SECONDS[1] + 1e-3
    assert orders[0] != orders[1]  # a different mix per recording
    summary = json.loads((tmp_path / "long" / "manifest.json").read_text())
    assert [r["repeated"] for r in summary["recordings"]] == [True, True]


def test_long_recordings_are_deterministic_and_do_not_repeat_when_long_enough(tmp_path: Path) -> None:
    items = _items(tmp_path)
    first = long_recordings(items, tmp_path / "a", minutes=1.5 / 60, count=1)
    again = long_recordings(items, tmp_path / "b", minutes=1.5 / 60, count=1)
    assert first[0].reference == again[0].reference
    assert first[0].path.read_bytes() == again[0].path.read_bytes()
    meta = json.loads(first[0].path.with_suffix(".json").read_text())
    assert meta["repeated"] is False
    assert meta["distinct_files"] == meta["files"]


def test_long_recordings_refuse_non_16k_mono(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(b"\0" * 4 * SAMPLE_RATE)
    item = CorpusItem("t/stereo", path, "x", "en", "t", "read", 1.0)
    with pytest.raises(ValueError, match="16 kHz mono"):
        long_recordings([item], tmp_path, minutes=0.01, count=1)
