from __future__ import annotations

from pydantic import Field

from stt_common.settings import Settings

# Longer than any meeting, lecture or court day; a decode bomb stops here (0.9 GB of 16 kHz PCM).
DEFAULT_MAX_AUDIO_SECONDS = 8 * 3600.0


class ChunkerSettings(Settings):
    service_name: str = "chunker"
    ops_port: int = 8082
    max_in_flight: int = Field(default=1, ge=1, description="Jobs normalised at once (ffmpeg is CPU-bound).")
    # 180 s from bench/README.md's chunk-length table: the fewest errors pooled over three real-speech
    # recordings (0.039 against 0.042 for 120 s and 0.043 for 300 s), and between them in time.
    chunk_seconds: float = Field(
        default=180.0,
        gt=10,
        description="Planned length of a chunk, unless the job names its own `chunk_seconds`.",
    )
    chunk_overlap_seconds: float = Field(
        default=10.0, ge=0, description="Audio two neighbouring chunks share (the merger cuts inside it)."
    )
    chunk_search_window_seconds: float = Field(
        default=20.0, ge=0, description="How far around a planned cut to look for silence."
    )
    ffmpeg_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Longest an ffmpeg/ffprobe run may take; past it the job fails `timeout`.",
    )
    max_audio_seconds: float = Field(
        default=DEFAULT_MAX_AUDIO_SECONDS,
        gt=0,
        description="Longest recording accepted (8 h); longer ones fail with invalid_audio as soon as "
        "the decoder passes the limit, so a small file that decodes to days costs no more than this. "
        "An API key may carry its own limit (`python -m stt_ingest keys create --max-audio-hours`).",
    )
