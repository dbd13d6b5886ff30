"""Media type detection from the first bytes of a file (magic signatures), and the rule that the
file name's extension must be allowed *and* belong to the same family as the content.

Families group containers the pipeline treats alike (an `.m4a` holding an MP4 container is fine; an
MP4 named `.wav` is not). Detection needs at most `SNIFF_BYTES` bytes; fewer bytes than a signature
needs (a truncated header, an empty file) are never guessed at.
"""

from __future__ import annotations

import struct
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

SNIFF_BYTES = 4096


class Family(StrEnum):
    WAV = "wav"
    MP3 = "mp3"
    AAC = "aac"
    FLAC = "flac"
    OGG = "ogg"
    MP4 = "mp4"
    MATROSKA = "matroska"
    AVI = "avi"
    AIFF = "aiff"
    ASF = "asf"


# Extension -> family. The extension list is the set of accepted file names.
EXTENSIONS: dict[str, Family] = {
    "wav": Family.WAV,
    "wave": Family.WAV,
    "mp3": Family.MP3,
    "mpga": Family.MP3,
    "mp2": Family.MP3,
    "aac": Family.AAC,
    "adts": Family.AAC,
    "flac": Family.FLAC,
    "ogg": Family.OGG,
    "oga": Family.OGG,
    "opus": Family.OGG,
    "spx": Family.OGG,
    "mp4": Family.MP4,
    "m4a": Family.MP4,
    "m4b": Family.MP4,
    "m4v": Family.MP4,
    "mov": Family.MP4,
    "qt": Family.MP4,
    "3gp": Family.MP4,
    "3g2": Family.MP4,
    "webm": Family.MATROSKA,
    "mkv": Family.MATROSKA,
    "mka": Family.MATROSKA,
    "avi": Family.AVI,
    "aif": Family.AIFF,
    "aiff": Family.AIFF,
    "aifc": Family.AIFF,
    "wma": Family.ASF,
    "wmv": Family.ASF,
    "asf": Family.ASF,
}

MIME_TYPES: dict[Family, str] = {
    Family.WAV: "audio/wav",
    Family.MP3: "audio/mpeg",
    Family.AAC: "audio/aac",
    Family.FLAC: "audio/flac",
    Family.OGG: "audio/ogg",
    Family.MP4: "video/mp4",
    Family.MATROSKA: "video/x-matroska",
    Family.AVI: "video/x-msvideo",
    Family.AIFF: "audio/aiff",
    Family.ASF: "video/x-ms-asf",
}

_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_EBML = b"\x1a\x45\xdf\xa3"
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")

# MPEG audio bitrates (kbit/s) by [version is MPEG-1][layer 1..3][index].
_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


class MediaError(Exception):
    """The file is not an accepted media file; `code` is the problem code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Detected:
    family: Family
    mime: str


def _mpeg_frame_length(header: bytes) -> int | None:
    """Length of an MPEG audio frame from its 4-byte header; None if it is not a valid header
    (0 for free-format frames, whose length cannot be computed)."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version = (header[1] >> 3) & 0x3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer_bits = (header[1] >> 1) & 0x3  # 1: layer III, 2: layer II, 3: layer I, 0: reserved
    bitrate_index = header[2] >> 4
    rate_index = (header[2] >> 2) & 0x3
    if version == 1 or layer_bits == 0 or bitrate_index == 0xF or rate_index == 3:
        return None
    layer = 4 - layer_bits
    mpeg1 = version == 3
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index] * 1000
    sample_rate = _SAMPLE_RATES[version][rate_index]
    padding = (header[2] >> 1) & 0x1
    if bitrate == 0:
        return 0
    if layer == 1:
        return (12 * bitrate // sample_rate + padding) * 4
    if layer == 3 and not mpeg1:
        return 72 * bitrate // sample_rate + padding
    return 144 * bitrate // sample_rate + padding


def _is_mpeg_audio(head: bytes) -> bool:
    length = _mpeg_frame_length(head[:4])
    if length is None:
        return False
    # Where the buffer reaches the next frame, it must start with a frame header too: one 0xFFEx
    # pair is weak evidence on its own. (A file shorter than two frames has only the first.)
    if length and len(head) >= length + 4:
        return _mpeg_frame_length(head[length : length + 4]) is not None
    return True


def _is_id3(head: bytes) -> bool:
    # "ID3", major version 2..4, revision < 0xFF, flags, then a 4-byte syncsafe size.
    return (
        len(head) >= 10
        and head[:3] == b"ID3"
        and 2 <= head[3] <= 4
        and head[4] != 0xFF
        and all(byte < 0x80 for byte in head[6:10])
    )


def _is_adts(head: bytes) -> bool:
    # 12-bit sync, layer bits 00, sampling frequency index < 13, frame length >= header length.
    if len(head) < 7 or head[0] != 0xFF or head[1] & 0xF6 != 0xF0:
        return False
    if (head[2] >> 2) & 0xF >= 13:
        return False
    frame_length = ((head[3] & 0x3) << 11) | (head[4] << 3) | (head[5] >> 5)
    return frame_length >= 7


def _mp4_box(head: bytes) -> bool:
    if len(head) < 12 or head[4:8] not in _MP4_BOXES:
        return False
    size = struct.unpack(">I", head[:4])[0]
    if head[4:8] == b"ftyp":
        return size >= 12 or size in (0, 1)
    return size >= 8 or size in (0, 1)


def detect(head: bytes) -> Detected | None:
    """The family of a file from its first `SNIFF_BYTES` bytes (fewer if the file is shorter), or None."""

    def found(family: Family) -> Detected:
        return Detected(family, MIME_TYPES[family])

    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64", b"BW64"):
        if head[8:12] == b"WAVE":
            return found(Family.WAV)
        if head[8:12] == b"AVI " and head[:4] == b"RIFF":
            return found(Family.AVI)
        return None
    if len(head) >= 12 and head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return found(Family.AIFF)
    if len(head) >= 4 and head[:4] == b"fLaC":
        return found(Family.FLAC)
    if len(head) >= 27 and head[:4] == b"OggS" and head[4] == 0:
        return found(Family.OGG)
    if len(head) >= 16 and head[:16] == _ASF_GUID:
        return found(Family.ASF)
    if len(head) >= 5 and head[:4] == _EBML:
        return found(Family.MATROSKA)
    if _mp4_box(head):
        return found(Family.MP4)
    if _is_id3(head):
        return found(Family.MP3)
    if _is_adts(head):
        return found(Family.AAC)
    if _is_mpeg_audio(head):
        return found(Family.MP3)
    return None


def extension_of(filename: str) -> str | None:
    base = filename.rsplit("/", 1)[-1]
    if "." not in base.strip("."):
        return None
    return base.rsplit(".", 1)[-1].lower() or None


def holds_no_audio(data: bytes, family: Family) -> bool:
    """For a WHOLE file (not just its head): its bytes end before any audio could start. Said only
    where the format shows it for sure: a WAV whose `data` chunk is missing or has no complete sample
    frame, an MP3 that is nothing but its ID3 tag. Other formats are left to the decoder."""
    if family == Family.WAV:
        channels, bits = 1, 16
        offset = 12
        while offset + 8 <= len(data):
            chunk, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
            if chunk == b"fmt " and offset + 24 <= len(data):
                channels, bits = (
                    struct.unpack("<H", data[offset + 10 : offset + 12])[0],
                    struct.unpack("<H", data[offset + 22 : offset + 24])[0],
                )
            if chunk == b"data":
                frame = max(channels, 1) * max((bits + 7) // 8, 1)
                return len(data) - (offset + 8) < frame
            offset += 8 + size + (size & 1)
        return True  # no data chunk before the end of the file
    if family == Family.MP3 and _is_id3(data):
        tag = 10 + sum(byte << (7 * (3 - i)) for i, byte in enumerate(data[6:10]))
        return len(data) <= tag
    return False


def check_media(
    head: bytes, filename: str | None, *, require_extension: bool, whole_file: bool = False
) -> Detected:
    """Detect the content and check it against the file name's extension.

    Uploads require a known extension (`require_extension`); URL downloads often have none (or a
    `.php`), so there an unknown extension lets the content decide, but a known one must agree.
    `whole_file`: `head` is the entire file (it was shorter than `SNIFF_BYTES`), so a file that ends
    inside its header is refused here rather than failing later in the chunker."""
    extension = extension_of(filename) if filename else None
    family_of_name = EXTENSIONS.get(extension) if extension else None
    if family_of_name is None and require_extension:
        allowed = ", ".join(sorted(EXTENSIONS))
        raise MediaError(
            "extension_not_allowed",
            f"The file name must end in one of the accepted extensions: {allowed}.",
        )
    if not head:
        raise MediaError("empty_file", "The file is empty.")
    detected = detect(head)
    if detected is None:
        raise MediaError(
            "unsupported_media_type",
            "The content is not a recognised audio or video format (or its header is truncated).",
        )
    if family_of_name is not None and family_of_name != detected.family:
        raise MediaError(
            "content_mismatch",
            f"The file is named .{extension} but its content is {detected.family.value}.",
        )
    if whole_file and holds_no_audio(head, detected.family):
        raise MediaError(
            "truncated_media",
            f"The {detected.family.value} file ends in its header ({len(head)} bytes) and holds no audio: "
            "it was cut short. Export or download it again, then submit the whole file.",
        )
    return detected


_MAX_FILENAME_CHARS = 255


def sanitize_filename(raw: str | None, *, fallback: str = "upload") -> str:
    """A display name safe to store and echo: the last path component, NFC-normalised, no control
    characters, no leading dots, at most 255 characters (extension kept). Never used in S3 keys."""
    text = unicodedata.normalize("NFC", raw or "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip().lstrip(".").strip()
    if not text:
        return fallback
    if len(text) > _MAX_FILENAME_CHARS:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            text = stem[: _MAX_FILENAME_CHARS - len(ext) - 1] + "." + ext
        else:
            text = text[:_MAX_FILENAME_CHARS]
    return text
