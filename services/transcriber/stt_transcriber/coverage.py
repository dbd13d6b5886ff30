"""Coverage check: does a provider's output leave long stretches of *speech* untranscribed?

Silence is allowed to be empty, so gaps are measured in speech time, found from frame energy."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from stt_common.transcript import ChunkTranscript

FRAME_SECONDS = 0.1


def speech_mask(wav_path: Path) -> np.ndarray:
    """One boolean per 100 ms frame: louder than a threshold set from the file's own loudness."""
    with wave.open(str(wav_path), "rb") as wav:
        rate, width = wav.getframerate(), wav.getsampwidth()
        if wav.getnchannels() != 1 or width != 2:
            raise ValueError("expected 16-bit mono PCM (chunks are normalised by the chunker)")
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32)
    frame = max(int(rate * FRAME_SECONDS), 1)
    usable = len(samples) // frame * frame
    if usable == 0:
        return np.zeros(0, dtype=bool)
    rms = np.sqrt(np.mean(samples[:usable].reshape(-1, frame) ** 2, axis=1))
    loud = float(np.percentile(rms, 95))
    if loud < 100.0:  # digital silence or near it: nothing to transcribe
        return np.zeros(len(rms), dtype=bool)
    mask: np.ndarray = rms > max(loud * 0.1, 100.0)
    return mask


def speech_gaps(
    transcript: ChunkTranscript, mask: np.ndarray, *, min_gap_seconds: float
) -> list[tuple[float, float]]:
    """Stretches not covered by any segment that hold more than `min_gap_seconds` of speech."""
    duration = len(mask) * FRAME_SECONDS
    covered = sorted(
        (max(s.start, 0.0), min(s.end, duration)) for s in transcript.segments if s.end > s.start
    )
    gaps: list[tuple[float, float]] = []
    cursor = 0.0
    for start, end in [*covered, (duration, duration)]:
        if start > cursor:
            speech = (
                float(mask[int(cursor / FRAME_SECONDS) : int(start / FRAME_SECONDS)].sum()) * FRAME_SECONDS
            )
            if speech > min_gap_seconds:
                gaps.append((round(cursor, 2), round(start, 2)))
        cursor = max(cursor, end)
    return gaps
