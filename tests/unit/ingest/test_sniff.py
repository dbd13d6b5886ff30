"""Magic-byte detection and the extension/content agreement rule."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from stt_ingest.sniff import (
    EXTENSIONS,
    SNIFF_BYTES,
    Family,
    MediaError,
    check_media,
    detect,
    holds_no_audio,
    sanitize_filename,
)
from tests.integration.ingest.media import SAMPLES, id3_mp3, mp3_frames, wav_bytes

EXPECTED = {
    "wav": Family.WAV,
    "mp3": Family.MP3,
    "aac": Family.AAC,
    "flac": Family.FLAC,
    "ogg": Family.OGG,
    "m4a": Family.MP4,
    "mp4": Family.MP4,
    "mov": Family.MP4,
    "webm": Family.MATROSKA,
    "mkv": Family.MATROSKA,
    "avi": Family.AVI,
    "aiff": Family.AIFF,
    "wma": Family.ASF,
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_accepted_format_is_detected_and_agrees_with_its_extension(name: str) -> None:
    detected = check_media(SAMPLES[name], f"file.{name}", require_extension=True)
    assert detected.family == EXPECTED[name]


def test_id3_tagged_mp3_is_detected() -> None:
    assert check_media(id3_mp3(), "song.MP3", require_extension=True).family == Family.MP3


@pytest.mark.parametrize(
    ("content", "filename", "code"),
    [
        (b"Hello, this is a plain text file.\n" * 10, "notes.mp3", "unsupported_media_type"),
        (b"%PDF-1.7\n" + bytes(100), "paper.wav", "unsupported_media_type"),
        (b"RIFF\x24\x00", "cut.wav", "unsupported_media_type"),  # truncated RIFF header
        (b"RIFF\x24\x00\x00\x00WAV", "cut.wav", "unsupported_media_type"),  # one byte short
        (b"ID3\x04", "cut.mp3", "unsupported_media_type"),  # truncated ID3 header
        (b"\xff\xfb", "cut.mp3", "unsupported_media_type"),  # half a frame header
        (b"", "empty.wav", "empty_file"),
        (SAMPLES["mp4"], "video.wav", "content_mismatch"),
        (SAMPLES["wav"], "audio.mp3", "content_mismatch"),
        (SAMPLES["webm"], "clip.mp4", "content_mismatch"),
        (SAMPLES["wav"], "audio.txt", "extension_not_allowed"),
        (SAMPLES["wav"], "audio", "extension_not_allowed"),
        (SAMPLES["wav"], ".wav", "extension_not_allowed"),
        (b"RIFF\x24\x00\x00\x00WEBP" + bytes(20), "image.wav", "unsupported_media_type"),
    ],
)
def test_wrong_files_are_refused(content: bytes, filename: str, code: str) -> None:
    with pytest.raises(MediaError) as caught:
        check_media(content, filename, require_extension=True)
    assert caught.value.code == code


def test_a_lone_frame_sync_followed_by_garbage_is_not_mp3() -> None:
    fake = b"\xff\xfb\x90\x00" + bytes(413) + b"not another frame" + bytes(200)
    assert detect(fake) is None
    assert detect(mp3_frames(3)) is not None


def test_urls_without_a_media_extension_let_the_content_decide() -> None:
    assert check_media(SAMPLES["wav"], "download.php", require_extension=False).family == Family.WAV
    assert check_media(SAMPLES["wav"], None, require_extension=False).family == Family.WAV
    with pytest.raises(MediaError, match="mp3"):
        check_media(SAMPLES["mp4"], "episode.mp3", require_extension=False)


def test_every_extension_maps_to_a_family_with_a_mime_type() -> None:
    assert set(EXPECTED.values()) <= set(EXTENSIONS.values())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd.wav", "passwd.wav"),
        ("..\\..\\windows\\system32\\evil.mp3", "evil.mp3"),
        ("/absolute/path/a.wav", "a.wav"),
        ("Re\u0301union \u2013 entretien.wav", "R\u00e9union \u2013 entretien.wav"),  # NFC-normalised
        ("日本語の会議.m4a", "日本語の会議.m4a"),
        ("bad\x00name\r\n.wav", "badname.wav"),
        ("...hidden.wav", "hidden.wav"),
        ("\u202eevil\u202c.wav", "evil.wav"),  # bidi overrides dropped
        ("", "upload"),
        ("../", "upload"),
        ("x" * 400 + ".flac", "x" * 250 + ".flac"),
    ],
)
def test_sanitize_filename(raw: str, expected: str) -> None:
    assert sanitize_filename(raw) == expected


FFMPEG_FORMATS = {
    "wav": ["-c:a", "pcm_s16le"],
    "mp3": ["-c:a", "libmp3lame"],
    "aac": ["-c:a", "aac", "-f", "adts"],
    "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libvorbis"],
    "opus": ["-c:a", "libopus"],
    "m4a": ["-c:a", "aac"],
    "mp4": ["-c:a", "aac"],
    "mov": ["-c:a", "aac"],
    "webm": ["-c:a", "libopus"],
    "mkv": ["-c:a", "flac"],
    "avi": ["-c:a", "pcm_s16le"],
    "aiff": ["-c:a", "pcm_s16be"],
    "wma": ["-c:a", "wmav2"],
}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    assert shutil.which("ffmpeg"), "ffmpeg is missing (make test installs it)"
    folder = tmp_path_factory.mktemp("encoded")
    source = folder / "source.wav"
    source.write_bytes(wav_bytes(0.5))
    heads: dict[str, bytes] = {}
    for ext, codec in FFMPEG_FORMATS.items():
        target: Path = folder / f"sample.{ext}"
        result = subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), *codec, str(target)],
            capture_output=True,
        )
        if result.returncode == 0:
            heads[ext] = target.read_bytes()[:SNIFF_BYTES]
    return heads


@pytest.mark.parametrize("ext", sorted(FFMPEG_FORMATS))
def test_files_written_by_ffmpeg_are_detected(encoded: dict[str, bytes], ext: str) -> None:
    assert ext in encoded, f"ffmpeg could not write .{ext}"
    assert check_media(encoded[ext], f"real.{ext}", require_extension=True).family == EXTENSIONS[ext]


@pytest.mark.parametrize(
    ("data", "family", "empty"),
    [
        (wav_bytes(0.0), Family.WAV, True),  # a complete header, a data chunk of no samples
        (wav_bytes(0.0)[:20], Family.WAV, True),  # cut inside the fmt chunk
        (wav_bytes(0.0) + b"\x01", Family.WAV, True),  # half a 16-bit sample
        (wav_bytes(0.0) + b"\x01\x02", Family.WAV, False),  # one sample: audio, however short
        (wav_bytes(0.01), Family.WAV, False),
        (b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10), Family.MP3, True),  # the tag and no frame
        (id3_mp3(), Family.MP3, False),
        (mp3_frames(2), Family.MP3, False),  # no tag: the decoder decides
        (SAMPLES["mp4"], Family.MP4, False),
    ],
)
def test_a_whole_file_that_ends_in_its_header_holds_no_audio(
    data: bytes, family: Family, empty: bool
) -> None:
    assert holds_no_audio(data, family) is empty


def test_only_a_whole_file_is_judged_truncated() -> None:
    header = wav_bytes(0.0)
    # The first bytes of a longer upload say nothing about its end.
    assert check_media(header, "a.wav", require_extension=True).family == Family.WAV
    with pytest.raises(MediaError) as info:
        check_media(header, "a.wav", require_extension=True, whole_file=True)
    assert info.value.code == "truncated_media"
    assert "submit the whole file" in info.value.message
