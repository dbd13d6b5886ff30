"""Media handling for the chunker: probe, normalise, find quiet points, cut chunks.

Everything that touches a whole recording streams it: ``ffprobe``/``ffmpeg`` run as subprocesses
(their output is read with a bound, never collected whole), and the WAV helpers read only the frames
they need, block by block. Memory therefore does not grow with the length of the upload; pydub,
which decodes a whole file into memory, is not used here.

Untrusted input: uploads reach ffmpeg, whose playlist demuxers (HLS, concat, …) can open other local
files or URLs named inside the file. Every ffmpeg/ffprobe call is therefore restricted to the
``file`` protocol and to :data:`ALLOWED_DEMUXERS`, plain containers that reference nothing outside
themselves; anything else fails as unsupported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import operator
import os
import re
import signal
import statistics
import struct
import sys
import wave
from array import array
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stt_common.errors import ErrorCode, InvalidAudioError, SttError

StrPath = str | os.PathLike[str]

SAMPLE_RATE = 16_000
"""The normalised format: 16 kHz, mono, signed 16-bit little-endian PCM in a WAV container."""
CHANNELS = 1
SAMPLE_WIDTH = 2
WAV_HEADER_BYTES = 44
""":func:`normalise` writes a bare canonical header (no encoder tags), so samples start here."""

ALLOWED_DEMUXERS: tuple[str, ...] = (
    "mp3", "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "ogg", "flac", "matroska", "webm", "avi",
    "aiff", "aac", "asf", "wav", "w64", "caf", "amr", "amrnb", "amrwb", "mpegts", "mpeg", "flv",
    "au", "ac3", "eac3", "dts", "truehd", "wv", "ape", "mpc", "mpc8", "tta", "voc", "rm", "xwma",
    "nut", "mxf", "dv", "loas", "dsf",
)  # fmt: skip
"""Demuxers ffmpeg may use on an upload (ffmpeg's names; ``mov`` covers mp4/m4a/3gp, ``matroska``
covers mkv/webm, ``asf`` covers wma/wmv, ``ogg`` covers opus/vorbis)."""

MAX_WAV_SECONDS = 134_000.0
"""A RIFF header counts bytes in 32 bits: about 37 hours of 16 kHz mono 16-bit audio."""

DEFAULT_PROBE_TIMEOUT_S = 60.0
DEFAULT_NORMALISE_TIMEOUT_S = 3600.0
_STDOUT_LIMIT = 4 * 1024 * 1024  # ffprobe's JSON for one file; more means pathological metadata
_STDERR_TAIL = 16 * 1024  # the last bytes of ffmpeg's diagnostics are the useful ones
_READ_BLOCK = 64 * 1024
_WAV_BLOCK_FRAMES = SAMPLE_RATE * 8  # 256 KiB of 16-bit mono per read when copying

# quietest_point: a frame is "silent" below this fraction of the window's median energy
# (-20 dB) or below an absolute floor of -60 dBFS, whichever is higher.
_SILENCE_RATIO = 10 ** (-20 / 10)
_ABSOLUTE_FLOOR_ENERGY = (32768 * 10 ** (-60 / 20)) ** 2


class MediaTimeoutError(SttError):
    """ffmpeg/ffprobe ran past its time limit. Not transient: the same file will take as long again."""

    code = ErrorCode.TIMEOUT
    transient = False


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What ffprobe says about an upload."""

    duration: float | None
    """Seconds (container duration, else the audio stream's); None when the file does not say."""
    format_name: str
    """ffprobe's demuxer name, e.g. ``mp3`` or ``mov,mp4,m4a,3gp,3g2,mj2``."""
    format_long_name: str
    has_audio: bool
    has_video: bool
    """A real video track; cover art attached to an audio file does not count."""
    audio_codec: str | None
    video_codec: str | None
    sample_rate: int | None
    channels: int | None


# --------------------------------------------------------------------------------------------
# subprocesses


async def _drain(stream: asyncio.StreamReader | None, limit: int, *, keep_tail: bool) -> tuple[bytes, bool]:
    """Read a pipe to its end, keeping at most `limit` bytes (the head or the tail).

    Draining to the end matters: a child blocked on a full pipe would never exit.
    """
    if stream is None:
        return b"", False
    kept = bytearray()
    overflow = False
    while block := await stream.read(_READ_BLOCK):
        kept += block
        if len(kept) > limit:
            overflow = True
            if keep_tail:
                del kept[:-limit]
            else:
                del kept[limit:]
    return bytes(kept), overflow


async def _run(argv: list[str], *, timeout_s: float, want_stdout: bool) -> tuple[int, bytes, bool, str]:
    """Run a tool; returns (exit status, stdout head, stdout overflowed, stderr tail).

    The child is killed and reaped on timeout and on cancellation.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if want_stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            (out, overflow), (err, _) = await asyncio.gather(
                _drain(proc.stdout, _STDOUT_LIMIT, keep_tail=False),
                _drain(proc.stderr, _STDERR_TAIL, keep_tail=True),
            )
            returncode = await proc.wait()
    except TimeoutError:
        raise MediaTimeoutError(f"{Path(argv[0]).name} took longer than {timeout_s:g} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return returncode, out, overflow, err.decode("utf-8", "replace")


def _input_options() -> list[str]:
    return ["-protocol_whitelist", "file", "-format_whitelist", ",".join(ALLOWED_DEMUXERS)]


def _file_url(path: StrPath) -> str:
    # The `file:` prefix stops ffmpeg from reading a name such as `concat:a|b` or `x.m3u8?` as
    # anything but a local path.
    return "file:" + os.fspath(Path(path).resolve())


_LOG_PREFIX = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*")
_NOT_WHITELISTED = re.compile(r"^\[(?P<fmt>[\w,]+) @ 0x[0-9a-f]+\]\s*Format not on whitelist")
_NOISE = ("To ignore this, add a trailing '?'", "Conversion failed!", "Error opening input files")


def _summarise_stderr(stderr: str, path: StrPath, *, max_lines: int = 3) -> str:
    """ffmpeg's diagnostics in a few distinct lines, without object addresses or local paths."""
    url = _file_url(path)
    local = os.fspath(Path(path).resolve())
    lines: list[str] = []
    for raw in stderr.splitlines():
        line = _LOG_PREFIX.sub("", raw.strip()).rstrip(".")
        for name in (url, local, os.fspath(path)):
            line = line.replace(f"{name}: ", "").replace(name, "<input>")
        if not line or any(line.startswith(noise) for noise in _NOISE) or line in lines:
            continue
        lines.append(line)
    if not lines:
        return "no diagnostic from ffmpeg"
    summary = "; ".join(lines[:max_lines])
    return summary if len(summary) <= 400 else summary[:397] + "..."


def _explain_failure(stderr: str, path: StrPath, what: str) -> InvalidAudioError:
    """The InvalidAudioError for a failed ffprobe/ffmpeg run, in words a user understands."""
    for raw in stderr.splitlines():
        match = _NOT_WHITELISTED.match(raw.strip())
        if match:
            return InvalidAudioError(f"the file's format ({match['fmt']}) is not supported")
    if "matches no streams" in stderr or "does not contain any stream" in stderr:
        return InvalidAudioError("the file has no audio stream")
    return InvalidAudioError(f"{what}: {_summarise_stderr(stderr, path)}")


def _check_readable(path: StrPath) -> None:
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise InvalidAudioError(f"the file could not be read: {exc.strerror or exc}") from exc
    if size == 0:
        raise InvalidAudioError("the file is empty")


# --------------------------------------------------------------------------------------------
# probe


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _media_info(data: dict[str, Any]) -> MediaInfo:
    fmt = data.get("format") or {}
    streams = [s for s in data.get("streams") or [] if isinstance(s, dict)]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    video = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    first_audio = audio[0] if audio else {}
    duration = _float(fmt.get("duration"))
    if duration is None:
        duration = _float(first_audio.get("duration"))
    return MediaInfo(
        duration=duration,
        format_name=str(fmt.get("format_name") or ""),
        format_long_name=str(fmt.get("format_long_name") or ""),
        has_audio=bool(audio),
        has_video=bool(video),
        audio_codec=first_audio.get("codec_name"),
        video_codec=video[0].get("codec_name") if video else None,
        sample_rate=_int(first_audio.get("sample_rate")),
        channels=_int(first_audio.get("channels")),
    )


async def probe(
    path: StrPath, *, timeout_s: float = DEFAULT_PROBE_TIMEOUT_S, require_audio: bool = True
) -> MediaInfo:
    """Describe a media file with ffprobe.

    Raises InvalidAudioError when the file is empty, cannot be parsed, is in a format outside
    :data:`ALLOWED_DEMUXERS`, or (with ``require_audio``) has no audio stream; MediaTimeoutError
    when ffprobe runs past ``timeout_s``.
    """
    _check_readable(path)
    argv = [
        "ffprobe", "-v", "error", *_input_options(),
        "-print_format", "json", "-show_format", "-show_streams", _file_url(path),
    ]  # fmt: skip
    returncode, out, overflow, err = await _run(argv, timeout_s=timeout_s, want_stdout=True)
    if returncode != 0:
        raise _explain_failure(err, path, "the file could not be decoded as audio or video")
    if overflow:
        raise InvalidAudioError("the file could not be decoded as audio or video: its metadata is too large")
    try:
        data = json.loads(out)
    except ValueError as exc:
        raise InvalidAudioError("the file could not be decoded as audio or video") from exc
    info = _media_info(data if isinstance(data, dict) else {})
    if require_audio and not info.has_audio:
        raise InvalidAudioError("the file has no audio stream")
    return info


# --------------------------------------------------------------------------------------------
# normalise


async def normalise(
    src: StrPath,
    dst: StrPath,
    *,
    timeout_s: float = DEFAULT_NORMALISE_TIMEOUT_S,
    max_duration_s: float | None = None,
) -> float:
    """Convert the first audio stream of ``src`` (audio or video) to 16 kHz mono s16le WAV at ``dst``.

    Returns the duration in seconds, counted from the samples written. ffmpeg streams, so memory
    does not depend on the length of the input. The output is bit-exact (no encoder tags), so a
    re-driven job gets byte-identical chunks.

    Recordings longer than ``max_duration_s`` (at most :data:`MAX_WAV_SECONDS`, the WAV format's
    limit) are refused; ffmpeg stops writing just past the limit, so a huge input cannot fill the
    disk. Raises InvalidAudioError when the input cannot be decoded, yields no samples or is too
    long (``dst`` is then removed), MediaTimeoutError past ``timeout_s``, and DecoderKilledError
    when ffmpeg dies from a signal (the media is not to blame).
    """
    _check_readable(src)
    limit = MAX_WAV_SECONDS if max_duration_s is None else min(max_duration_s, MAX_WAV_SECONDS)
    argv = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        *_input_options(), "-i", _file_url(src),
        "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-ac", str(CHANNELS), "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
        "-t", f"{limit + 1:.3f}", "-f", "wav", _file_url(dst),
    ]  # fmt: skip
    try:
        returncode, _, _, err = await _run(argv, timeout_s=timeout_s, want_stdout=False)
        if returncode < 0:
            raise DecoderKilledError(
                f"ffmpeg was killed by {_signal_name(-returncode)} while decoding "
                "(out of memory, or the node stopping it?)"
            )
        if returncode != 0:
            raise _explain_failure(err, src, "the audio could not be decoded")
        try:
            duration = wav_duration(dst)
        except (OSError, EOFError, wave.Error) as exc:
            raise InvalidAudioError("the audio could not be decoded: ffmpeg wrote no usable audio") from exc
        if duration <= 0:
            raise InvalidAudioError("the file contains no audio samples")
        if duration > limit:
            raise InvalidAudioError(
                f"the recording is longer than the limit of {_hours(limit)}: split it into shorter "
                "parts, or ask the operator for an API key with a higher limit (--max-audio-hours)"
            )
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(dst)
        raise
    return duration


class DecoderKilledError(RuntimeError):
    """ffmpeg died from a signal: a fault of the machine, not of the media. Not an `SttError`, so the
    job is not failed: the stage runner retries the message (and redelivers it after a restart)."""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} hours"
    return f"{seconds / 60:.3g} minutes" if seconds >= 60 else f"{seconds:.3g} seconds"


# --------------------------------------------------------------------------------------------
# WAV helpers (work on the normalised file; read only the frames they need)


def wav_duration(path: StrPath) -> float:
    """Seconds of audio in a PCM WAV file, from its header."""
    with wave.open(os.fspath(path), "rb") as reader:
        return reader.getnframes() / reader.getframerate()


def _samples(data: bytes) -> array[int]:
    samples = array("h")
    samples.frombytes(data[: len(data) - len(data) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def frame_energies(
    wav_path: StrPath, start_s: float, end_s: float, *, frame_ms: float = 50
) -> tuple[float, float, list[float]]:
    """Mean-square energy of consecutive ``frame_ms`` frames of ``[start_s, end_s]`` of a 16-bit WAV.

    Returns ``(first frame start in seconds, frame length in seconds, energies)``. Reads only that
    window, in blocks; the window is clamped to the file.
    """
    if frame_ms <= 0:
        raise ValueError("frame_ms must be > 0")
    with wave.open(os.fspath(wav_path), "rb") as reader:
        if reader.getsampwidth() != SAMPLE_WIDTH:
            raise ValueError(f"expected 16-bit PCM, got {8 * reader.getsampwidth()}-bit")
        rate = reader.getframerate()
        channels = reader.getnchannels()
        total = reader.getnframes()
        first = min(total, max(0, math.floor(start_s * rate)))
        last = min(total, max(first, math.ceil(end_s * rate)))
        frame_len = max(1, round(rate * frame_ms / 1000))
        energies: list[float] = []
        reader.setpos(first)
        remaining = last - first
        per_block = frame_len * max(1, _WAV_BLOCK_FRAMES // frame_len)
        while remaining > 0:
            count = min(remaining, per_block)
            samples = _samples(reader.readframes(count))
            if not samples:
                break
            remaining -= count
            step = frame_len * channels
            for offset in range(0, len(samples), step):
                frame = samples[offset : offset + step]
                energies.append(sum(map(operator.mul, frame, frame)) / len(frame))
    return first / rate, frame_len / rate, energies


def quietest_point(wav_path: StrPath, start_s: float, end_s: float, *, frame_ms: float = 50) -> float:
    """The quietest instant of ``[start_s, end_s]`` in a 16-bit PCM WAV, in seconds.

    Frames are "silent" below -20 dB relative to the window's median energy (or below -60 dBFS);
    the answer is the middle of the longest silent run (the run nearest the window's centre on a
    tie). When no frame is silent, it is the centre of the frame with the lowest energy averaged
    over three frames, so a single stop consonant does not win over a breath pause. Always within
    the window (clamped to the file); an empty window gives its midpoint.
    """
    window_start, frame_s, energies = frame_energies(wav_path, start_s, end_s, frame_ms=frame_ms)
    middle = (start_s + end_s) / 2
    if not energies:
        return middle

    def centre_distance(position: float) -> float:
        return abs(window_start + position * frame_s - middle)

    threshold = max(statistics.median(energies) * _SILENCE_RATIO, _ABSOLUTE_FLOOR_ENERGY)
    best: tuple[int, float, float] | None = None  # (-length, distance, centre in frames)
    run_start: int | None = None
    for index, energy in enumerate([*energies, math.inf]):
        if energy <= threshold:
            if run_start is None:
                run_start = index
            continue
        if run_start is not None:
            centre = (run_start + index) / 2
            candidate = (run_start - index, centre_distance(centre), centre)
            best = candidate if best is None else min(best, candidate)
            run_start = None
    if best is not None:
        position = best[2]
    else:
        smoothed = [
            sum(energies[max(0, i - 1) : i + 2]) / len(energies[max(0, i - 1) : i + 2])
            for i in range(len(energies))
        ]
        quietest = min(range(len(smoothed)), key=lambda i: (smoothed[i], centre_distance(i + 0.5)))
        position = quietest + 0.5
    return min(max(window_start + position * frame_s, start_s), end_s)


def _wav_header(frames: int, *, rate: int, channels: int, width: int) -> bytes:
    """The canonical 44-byte header of a PCM WAV file holding ``frames`` frames."""
    data = frames * channels * width
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data, b"WAVE",
        b"fmt ", 16, 1, channels, rate, rate * channels * width, channels * width, 8 * width,
        b"data", data,
    )  # fmt: skip


def wav_chunk_blocks(
    wav_path: StrPath, start_s: float, end_s: float, *, block_frames: int = _WAV_BLOCK_FRAMES
) -> Generator[bytes, None, None]:
    """``[start_s, end_s]`` of a PCM WAV as a WAV file of its own, in blocks: the header, then frames.

    Times are rounded to the nearest sample and clamped to the file; an empty range is a
    ValueError. Memory holds one block, so a chunk of any length can be streamed to S3. The source
    may still be growing (ffmpeg writing it) as long as the range has already been written.
    """
    with wave.open(os.fspath(wav_path), "rb") as reader:
        rate, channels, width = reader.getframerate(), reader.getnchannels(), reader.getsampwidth()
        total = reader.getnframes()
        first = min(total, max(0, round(start_s * rate)))
        last = min(total, max(0, round(end_s * rate)))
        if last <= first:
            raise ValueError(f"empty chunk: [{start_s}, {end_s}] of a {total / rate:.3f} s file")
        yield _wav_header(last - first, rate=rate, channels=channels, width=width)
        reader.setpos(first)
        remaining = last - first
        while remaining > 0:
            data = reader.readframes(min(remaining, block_frames))
            if not data:
                raise EOFError(f"{wav_path} ended before the chunk did")
            yield data
            remaining -= len(data) // (width * channels)


def normalised_seconds_written(wav_path: StrPath) -> float:
    """Seconds of audio :func:`normalise` has written so far to ``wav_path`` (0 before it starts).

    Reads the file size, not the header: ffmpeg fills the header in only when it finishes.
    """
    try:
        size = os.stat(wav_path).st_size
    except FileNotFoundError:
        return 0.0
    return max(0, size - WAV_HEADER_BYTES) // (SAMPLE_WIDTH * CHANNELS) / SAMPLE_RATE
