"""Media files for ingest tests: real containers made with the standard library, and minimal
headers of every accepted format (enough for the magic-byte check, which is all ingest reads)."""

from __future__ import annotations

import io
import math
import struct
import wave

ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


def wav_bytes(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    """A real 16-bit mono WAV with a 440 Hz tone."""
    frames = int(seconds * rate)
    samples = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(frames)
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(samples)
    return buffer.getvalue()


def wav_of_size(size: int) -> bytes:
    """A WAV header followed by silence, exactly `size` bytes long (size >= 44)."""
    data = size - 44
    header = (
        b"RIFF" + struct.pack("<I", size - 8) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data" + struct.pack("<I", data)
    )  # fmt: skip
    return header + bytes(data)


def mp3_frames(count: int = 4) -> bytes:
    """MPEG-1 layer III, 128 kbit/s, 44.1 kHz frames (417 bytes each) with silent payloads."""
    return (b"\xff\xfb\x90\x00" + bytes(413)) * count


def id3_mp3() -> bytes:
    return b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10) + mp3_frames(2)


def adts_frames(count: int = 3) -> bytes:
    length = 7 + 20
    header = bytes(
        [
            0xFF,
            0xF1,
            0x50,
            0x80 | ((length >> 11) & 0x3),
            (length >> 3) & 0xFF,
            ((length & 0x7) << 5) | 0x1F,
            0xFC,
        ]
    )
    return (header + bytes(20)) * count


def mp4_bytes(brand: bytes = b"isom") -> bytes:
    return (
        struct.pack(">I", 24)
        + b"ftyp"
        + brand
        + b"\x00\x00\x02\x00"
        + brand
        + b"mp41"
        + struct.pack(">I", 8)
        + b"mdat"
    )


SAMPLES: dict[str, bytes] = {
    "wav": wav_bytes(0.1),
    "mp3": mp3_frames(),
    "aac": adts_frames(),
    "flac": b"fLaC\x00\x00\x00\x22" + bytes(34),
    "ogg": b"OggS\x00\x02" + bytes(22) + b"\x01\x13OpusHead" + bytes(20),
    "m4a": mp4_bytes(b"M4A "),
    "mp4": mp4_bytes(),
    "mov": mp4_bytes(b"qt  "),
    "webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + bytes(16),
    "mkv": b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska" + bytes(16),
    "avi": b"RIFF" + struct.pack("<I", 200) + b"AVI LIST" + bytes(32),
    "aiff": b"FORM" + struct.pack(">I", 200) + b"AIFFCOMM" + bytes(32),
    "wma": ASF_GUID + bytes(32),
}
