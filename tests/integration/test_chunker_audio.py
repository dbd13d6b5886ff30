"""The chunker's media layer against the real ffmpeg/ffprobe: formats users upload, broken files,
quiet-point search on synthetic and real speech, chunk cutting, and an hour-long input."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tracemalloc
import wave
from pathlib import Path

import pytest

from stt_chunker.audio import (
    WAV_HEADER_BYTES,
    MediaTimeoutError,
    normalise,
    normalised_seconds_written,
    probe,
    quietest_point,
    wav_chunk_blocks,
    wav_duration,
)
from stt_chunker.plan import plan_chunks
from stt_common.errors import ErrorCode, InvalidAudioError
from tests.fixtures.audio import (
    FORMATS,
    concat_wavs,
    espeak_wav,
    librivox_wavs,
    silence_wav,
    to_format,
    tone_wav,
    video_without_audio,
)


@pytest.fixture(autouse=True, scope="module")
def _tools_installed() -> None:
    """`make test` installs these (stt_devstack system-deps); their absence is a failure, not a skip."""
    missing = [tool for tool in ("ffmpeg", "ffprobe", "espeak-ng", "sox") if not shutil.which(tool)]
    assert not missing, f"missing tools: {missing}"


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Speech recognition turns spoken words into written text.",
    "Every chunk overlaps its neighbour by ten seconds.",
    "A quiet pause is the best place to cut a recording.",
    "Kafka carries only identifiers, never audio.",
    "Postgres remains the source of truth for every job.",
    "The merger removes words that appear twice in the overlap.",
    "Webhooks are signed so that clients can trust them.",
]
VIDEO_FORMATS = {"mp4", "mov", "mkv", "avi"}
LONG_GAP = 1.5


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def speech(media_dir: Path) -> tuple[Path, list[tuple[float, float, str]]]:
    """Four sentences; the gap between the second and third is 1.5 s, the others 0.6 s."""
    path = media_dir / "speech.wav"
    spans = espeak_wav(path, SENTENCES[:4], gap_seconds=[0.6, LONG_GAP, 0.6])
    return path, spans


def long_gap_centre(spans: list[tuple[float, float, str]]) -> float:
    return (spans[1][1] + spans[2][0]) / 2


def asymmetric_window(spans: list[tuple[float, float, str]]) -> tuple[float, float]:
    """A window holding the long pause off-centre, with a short pause nearer its centre."""
    return spans[1][0] + 1.8, spans[3][1]


def wav_params(path: Path) -> tuple[int, int, int]:
    with wave.open(str(path), "rb") as reader:
        return reader.getnchannels(), reader.getsampwidth(), reader.getframerate()


# ---------------------------------------------------------------------------------------------
# normalise / probe: what users upload


@pytest.mark.parametrize("fmt", FORMATS)
async def test_normalise_every_upload_format(
    fmt: str, media_dir: Path, speech: tuple[Path, list[tuple[float, float, str]]]
) -> None:
    source, spans = speech
    upload = to_format(source, media_dir / f"upload.{fmt}", fmt)

    info = await probe(upload)
    assert info.has_audio
    assert info.has_video == (fmt in VIDEO_FORMATS)
    assert info.duration is not None
    assert info.duration == pytest.approx(wav_duration(source), abs=0.6)

    normalised = media_dir / f"normalised-{fmt}.wav"
    duration = await normalise(upload, normalised)
    assert wav_params(normalised) == (1, 2, 16_000)
    assert duration == pytest.approx(wav_duration(normalised))
    assert duration == pytest.approx(wav_duration(source), abs=0.15)
    # The speech survived the round trip where it was: the long pause is still found in place
    # (lossy codecs may shift it by their priming delay).
    found = quietest_point(normalised, *asymmetric_window(spans))
    assert found == pytest.approx(long_gap_centre(spans), abs=0.3)


async def test_normalise_is_deterministic(media_dir: Path, speech: tuple[Path, object]) -> None:
    # A re-driven job re-chunks; byte-identical output keeps its chunks identical too.
    upload = to_format(speech[0], media_dir / "again.mp3", "mp3")
    first, second = media_dir / "first.wav", media_dir / "second.wav"
    await normalise(upload, first)
    await normalise(upload, second)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[36:40] == b"data"  # bare 44-byte header: no encoder tags


async def test_cover_art_is_not_video(media_dir: Path, speech: tuple[Path, object]) -> None:
    mp3 = to_format(speech[0], media_dir / "plain.mp3", "mp3")
    cover = media_dir / "cover.png"
    art = media_dir / "with-art.mp3"
    for args in (
        ["-f", "lavfi", "-i", "color=c=red:s=32x32", "-frames:v", "1", str(cover)],
        ["-i", str(mp3), "-i", str(cover), "-map", "0", "-map", "1", "-c", "copy",
         "-disposition:v", "attached_pic", str(art)],
    ):  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            "ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args
        )
        assert await process.wait() == 0
    info = await probe(art)
    assert info.has_audio
    assert not info.has_video


async def test_text_renamed_mp3_is_invalid_audio(media_dir: Path) -> None:
    fake = media_dir / "notes.mp3"
    fake.write_text("Meeting notes: remember to buy milk.\n" * 20)
    with pytest.raises(InvalidAudioError, match="could not be decoded as audio or video") as caught:
        await probe(fake)
    assert caught.value.code == ErrorCode.INVALID_AUDIO
    assert str(media_dir) not in caught.value.message  # no local paths in user-facing text
    with pytest.raises(InvalidAudioError, match="could not be decoded"):
        await normalise(fake, media_dir / "notes.wav")
    assert not (media_dir / "notes.wav").exists()


async def test_truncated_mp4_is_invalid_audio(media_dir: Path, speech: tuple[Path, object]) -> None:
    whole = to_format(speech[0], media_dir / "whole.mp4", "mp4")
    truncated = media_dir / "truncated.mp4"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # the index is at the end
    with pytest.raises(InvalidAudioError, match="moov atom not found"):
        await probe(truncated)
    with pytest.raises(InvalidAudioError, match="could not be decoded"):
        await normalise(truncated, media_dir / "truncated.wav")


async def test_truncated_mp3_keeps_what_can_be_decoded(media_dir: Path, speech: tuple[Path, object]) -> None:
    whole = to_format(speech[0], media_dir / "whole.mp3", "mp3")
    truncated = media_dir / "truncated.mp3"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    duration = await normalise(truncated, media_dir / "truncated-mp3.wav")
    assert duration == pytest.approx(wav_duration(speech[0]) / 2, abs=0.5)


async def test_video_without_audio_has_a_clear_error(media_dir: Path) -> None:
    silent_film = video_without_audio(media_dir / "silent-film.mp4")
    with pytest.raises(InvalidAudioError, match=r"^the file has no audio stream$"):
        await probe(silent_film)
    with pytest.raises(InvalidAudioError, match=r"^the file has no audio stream$"):
        await normalise(silent_film, media_dir / "silent-film.wav")
    info = await probe(silent_film, require_audio=False)
    assert info.has_video
    assert not info.has_audio


async def test_empty_and_missing_files(media_dir: Path) -> None:
    empty = media_dir / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InvalidAudioError, match="the file is empty"):
        await probe(empty)
    with pytest.raises(InvalidAudioError, match="could not be read"):
        await normalise(media_dir / "missing.mp3", media_dir / "missing.wav")


async def test_playlists_cannot_make_ffmpeg_open_other_files(media_dir: Path) -> None:
    # An HLS playlist uploaded as .mp3 would otherwise make ffmpeg read local files or URLs.
    secret = media_dir / "secret.wav"
    silence_wav(secret, 1.0)
    playlist = media_dir / "playlist.mp3"
    playlist.write_text(f"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\n{secret}\n#EXT-X-ENDLIST\n")
    with pytest.raises(InvalidAudioError, match=r"format \(hls\) is not supported"):
        await probe(playlist)
    with pytest.raises(InvalidAudioError, match=r"format \(hls\) is not supported"):
        await normalise(playlist, media_dir / "playlist.wav")


async def test_timeout_kills_ffmpeg_and_removes_the_output(long_input: Path, media_dir: Path) -> None:
    dst = media_dir / "too-slow.wav"
    with pytest.raises(MediaTimeoutError, match="longer than") as caught:
        await normalise(long_input, dst, timeout_s=0.05)
    assert caught.value.code == ErrorCode.TIMEOUT
    assert not dst.exists()
    assert not ffmpeg_children()


async def test_recordings_over_the_limit_are_refused_early(long_input: Path, media_dir: Path) -> None:
    dst = media_dir / "too-long.wav"
    with pytest.raises(InvalidAudioError, match="longer than the limit of 10 minutes"):
        await normalise(long_input, dst, max_duration_s=600)
    assert not dst.exists()
    assert await normalise(long_input, dst, max_duration_s=3600) == pytest.approx(3600.0, abs=0.01)


async def test_cancellation_kills_ffmpeg(long_input: Path, media_dir: Path) -> None:
    dst = media_dir / "cancelled.wav"
    task = asyncio.create_task(normalise(long_input, dst))
    for _ in range(500):
        await asyncio.sleep(0.005)
        if ffmpeg_children():
            break
    assert ffmpeg_children(), "ffmpeg did not start"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not dst.exists()
    assert not ffmpeg_children()


async def watch_ffmpeg_peak_rss(peaks: dict[int, int]) -> None:
    """Record the peak resident set (VmHWM, bytes) of each ffmpeg child until cancelled."""
    while True:
        for pid in ffmpeg_children():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]) * 1024)
        await asyncio.sleep(0.01)


def ffmpeg_children() -> list[int]:
    """ffmpeg/ffprobe processes whose parent is this test process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if name in ("ffmpeg", "ffprobe") and int(rest[1]) == os.getpid():
            found.append(int(entry))
    return found


# ---------------------------------------------------------------------------------------------
# quiet points


def test_quietest_point_finds_the_inserted_pause(speech: tuple[Path, list[tuple[float, float, str]]]) -> None:
    path, spans = speech
    # The window holds the 1.5 s pause and a 0.6 s one nearer its centre: the longest pause wins.
    start, end = asymmetric_window(spans)
    assert abs((start + end) / 2 - long_gap_centre(spans)) > 1.5
    found = quietest_point(path, start, end)
    assert found == pytest.approx(long_gap_centre(spans), abs=0.3)
    assert spans[1][1] < found < spans[2][0]


def test_quietest_point_in_real_read_speech(media_dir: Path) -> None:
    recordings = librivox_wavs()
    assert len(recordings) >= 2, "pocketsphinx-testdata is not installed"
    joined = media_dir / "librivox.wav"
    spans = concat_wavs([path for path, _ in recordings[:2]], joined, gap_seconds=1.0)
    junction_start, junction_end = spans[0][1], spans[1][0]
    found = quietest_point(joined, junction_start - 5.5, junction_end + 1.0)
    # The inserted second of silence (plus the recordings' own lead-out and lead-in).
    assert junction_start - 0.5 < found < junction_end + 0.5


def test_quietest_point_without_silence_and_in_silence(media_dir: Path) -> None:
    tone = tone_wav(media_dir / "tone.wav", 10.0, sample_rate=16_000, codec="pcm_s16le")
    assert 2.0 <= quietest_point(tone, 2.0, 6.0) <= 6.0
    silence = silence_wav(media_dir / "silence.wav", 10.0)
    assert quietest_point(silence, 2.0, 6.0) == pytest.approx(4.0, abs=0.05)
    # Windows are clamped to the file; an empty window answers its midpoint.
    assert quietest_point(silence, 8.0, 30.0) == pytest.approx(9.0, abs=0.05)
    assert quietest_point(silence, 12.0, 14.0) == 13.0


# ---------------------------------------------------------------------------------------------
# cutting


def cut_chunk(source: Path, start: float, end: float, dst: Path) -> float:
    """What the chunker uploads for a window, written to a file; returns its duration."""
    with dst.open("wb") as handle:
        for block in wav_chunk_blocks(source, start, end, block_frames=10_000):
            handle.write(block)
    return wav_duration(dst)


def test_cut_chunk_copies_exactly_that_range(
    media_dir: Path, speech: tuple[Path, list[tuple[float, float, str]]]
) -> None:
    source = speech[0]
    chunk = media_dir / "chunk.wav"
    duration = cut_chunk(source, 1.25, 4.5, chunk)
    assert duration == pytest.approx(3.25)
    assert wav_duration(chunk) == pytest.approx(3.25)
    assert wav_params(chunk) == (1, 2, 16_000)
    with wave.open(str(source), "rb") as reader:
        reader.setpos(20_000)
        expected = reader.readframes(52_000)
    with wave.open(str(chunk), "rb") as reader:
        assert reader.readframes(reader.getnframes()) == expected


def test_cut_chunk_clamps_to_the_file_and_refuses_empty_ranges(
    media_dir: Path, speech: tuple[Path, object]
) -> None:
    source = speech[0]
    total = wav_duration(source)
    tail = media_dir / "tail.wav"
    assert cut_chunk(source, total - 1.0, total + 50.0, tail) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty chunk"):
        next(wav_chunk_blocks(source, total + 1.0, total + 5.0))


async def test_plan_with_real_quiet_points_never_cuts_a_sentence(media_dir: Path) -> None:
    """The chunker's path end to end: mp3 upload → normalise → plan at quiet points → cut."""
    sentences = [SENTENCES[i % len(SENTENCES)] for i in range(240)]
    gaps = [0.35 + 0.1 * (i % 5) for i in range(len(sentences) - 1)]
    source = media_dir / "eleven-minutes.wav"
    spans = espeak_wav(source, sentences, gap_seconds=gaps)
    assert spans[-1][1] > 600
    upload = to_format(source, media_dir / "eleven-minutes.mp3", "mp3")
    normalised = media_dir / "eleven-minutes-normalised.wav"
    duration = await normalise(upload, normalised)

    chunks = plan_chunks(duration, quietest=lambda start, end: quietest_point(normalised, start, end))
    assert len(chunks) == 3
    for before, after in itertools.pairwise(chunks):
        cut = (before.end + after.start) / 2
        assert not any(start + 0.05 < cut < end - 0.05 for start, end, _ in spans), cut
    for start, end, _ in spans:
        assert any(c.start <= start and end <= c.end for c in chunks)
    for chunk in chunks:
        path = media_dir / f"{chunk.index:04d}.wav"
        assert cut_chunk(normalised, chunk.start, chunk.end, path) == pytest.approx(
            chunk.duration, abs=1 / 16_000
        )


# ---------------------------------------------------------------------------------------------
# an hour-long input


@pytest.fixture(scope="module")
def long_input(media_dir: Path) -> Path:
    """60 minutes of 8 kHz 8-bit tone (29 MB): resampled and widened by normalise."""
    return tone_wav(media_dir / "hour.wav", 3600.0)


async def test_an_hour_normalises_in_bounded_memory(long_input: Path, media_dir: Path) -> None:
    dst = media_dir / "hour-normalised.wav"
    peaks: dict[int, int] = {}
    watcher = asyncio.create_task(watch_ffmpeg_peak_rss(peaks))
    tracemalloc.start()
    try:
        duration = await normalise(long_input, dst)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        watcher.cancel()
    assert duration == pytest.approx(3600.0, abs=0.01)
    assert dst.stat().st_size == 44 + 3600 * 16_000 * 2  # 115 MB written ...
    # ... none of it through this process (the bound leaves room for other tasks on the shared loop)
    assert python_peak < 16 * 1024 * 1024
    # ... nor held by ffmpeg, whose peak resident set stays a fraction of it.
    assert peaks, "ffmpeg was never seen running"
    assert max(peaks.values()) < 100 * 1024 * 1024

    windows = plan_chunks(duration, quietest=lambda start, end: quietest_point(dst, start, end))
    assert len(windows) == 12
    last = media_dir / "hour-last.wav"
    assert cut_chunk(dst, windows[-1].start, windows[-1].end, last) == pytest.approx(
        windows[-1].duration, abs=1 / 16_000
    )


async def test_chunks_cut_while_ffmpeg_writes_are_final(long_input: Path, media_dir: Path) -> None:
    """The chunker cuts chunks out of the WAV ffmpeg is still writing (header not yet filled in)."""
    dst = media_dir / "growing.wav"
    decoding = asyncio.create_task(normalise(long_input, dst))
    written = [0.0]
    while not decoding.done() and written[-1] < 900:
        await asyncio.sleep(0.005)
        written.append(normalised_seconds_written(dst))
    assert not decoding.done(), "ffmpeg finished before the test could look at a growing file"
    assert written == sorted(written)
    early_chunk = b"".join(wav_chunk_blocks(dst, 295.0, 605.0))
    early_quiet = quietest_point(dst, 590.0, 610.0)
    assert await decoding == pytest.approx(3600.0, abs=0.01)

    assert normalised_seconds_written(dst) == pytest.approx(3600.0, abs=0.01)
    assert dst.stat().st_size == WAV_HEADER_BYTES + 3600 * 16_000 * 2
    assert early_chunk == b"".join(wav_chunk_blocks(dst, 295.0, 605.0))
    assert len(early_chunk) == WAV_HEADER_BYTES + 310 * 16_000 * 2
    assert early_quiet == quietest_point(dst, 590.0, 610.0)
