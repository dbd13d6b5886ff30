"""Times estimated for text-only providers, and the speaking-rate check that replaces coverage."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest

from stt_common.transcript import ChunkTranscript, Segment
from stt_transcriber.coverage import FRAME_SECONDS, speech_mask
from stt_transcriber.timing import (
    MAX_SEGMENT_WORDS,
    estimate_times,
    estimated_report,
    sanity_check,
    words_per_speech_second,
)

TEXT = (
    "The committee met on Tuesday to discuss the budget. Several members argued that the proposal "
    "was too ambitious, while others felt it did not go far enough! In the end they agreed to meet "
    "again next month? Nobody was entirely satisfied."
)


def _text_only(*turns: tuple[str | None, str], duration: float = 30.0) -> ChunkTranscript:
    """What an adapter returns for a text-only answer: one segment per turn, times 0..duration."""
    return ChunkTranscript(
        provider="hispeech",
        segments=[
            Segment(start=0.0, end=duration, text=text, speaker=speaker, estimated=True)
            for speaker, text in turns
        ],
    )


def _mask(duration: float, *speech: tuple[float, float]) -> np.ndarray:
    mask = np.zeros(round(duration / FRAME_SECONDS), dtype=bool)
    for start, end in speech:
        mask[round(start / FRAME_SECONDS) : round(end / FRAME_SECONDS)] = True
    return mask


def _in_speech(mask: np.ndarray, start: float, end: float) -> bool:
    """Every 100 ms frame that [start, end] touches is speech."""
    first = math.floor(start / FRAME_SECONDS + 1e-6)
    last = math.ceil(end / FRAME_SECONDS - 1e-6)
    return bool(mask[first : max(last, first + 1)].all())


def test_no_word_is_put_in_silence() -> None:
    mask = _mask(30.0, (1.0, 6.0), (6.4, 9.0), (14.0, 22.5), (25.0, 29.0))  # a 0.4 s and 5 s pauses
    out = estimate_times(_text_only((None, TEXT)), mask, 30.0)
    words = [w for s in out.segments for w in s.words or []]
    assert len(words) == len(TEXT.split())
    assert all(_in_speech(mask, w.start, w.end) for w in words)
    assert all(w.end > w.start for w in words)
    assert words[0].start == pytest.approx(1.0)
    assert words[-1].end == pytest.approx(29.0, abs=0.2)  # ends with the speech (less a space's share)
    # Each speech run gets words in proportion to its length: none crowd into one run.
    for start, end in [(1.0, 6.0), (14.0, 22.5), (25.0, 29.0)]:
        inside = sum(1 for w in words if start <= w.start and w.end <= end)
        assert inside / len(words) == pytest.approx((end - start) / 20.1, abs=0.06)


def test_order_text_and_sentences_are_kept() -> None:
    out = estimate_times(_text_only((None, TEXT)), _mask(30.0, (0.5, 28.0)), 30.0)
    assert out.text == TEXT
    assert [s.text for s in out.segments] == [
        "The committee met on Tuesday to discuss the budget.",
        "Several members argued that the proposal was too ambitious, while others felt it did not go "
        "far enough!",
        "In the end they agreed to meet again next month?",
        "Nobody was entirely satisfied.",
    ]
    starts = [w.start for s in out.segments for w in s.words or []]
    assert starts == sorted(starts)
    for segment in out.segments:
        assert segment.estimated
        assert segment.words is not None
        assert [w.text for w in segment.words] == segment.text.split()
        assert (segment.start, segment.end) == (segment.words[0].start, segment.words[-1].end)
    # Longer words take longer: "committee" against "on".
    words = {w.text: w for w in out.segments[0].words or []}
    assert words["committee"].end - words["committee"].start > 3 * (words["on"].end - words["on"].start)
    assert out.provider == "hispeech"


def test_speaker_turns_split_segments_and_keep_their_labels() -> None:
    transcript = _text_only(
        ("speaker_0", "Good morning. How are you"),
        ("speaker_1", "Fine thanks"),
        ("speaker_0", "Glad to hear it."),
    )
    out = estimate_times(transcript, _mask(12.0, (0.5, 4.0), (5.0, 11.0)), 12.0)
    assert [(s.speaker, s.text) for s in out.segments] == [
        ("speaker_0", "Good morning."),
        ("speaker_0", "How are you"),
        ("speaker_1", "Fine thanks"),
        ("speaker_0", "Glad to hear it."),
    ]
    ends = [s.end for s in out.segments]
    assert all(a <= b.start for a, b in zip(ends, out.segments[1:], strict=False))


def test_unpunctuated_text_is_cut_into_segments_of_bounded_length() -> None:
    text = " ".join(f"word{i}" for i in range(100))
    out = estimate_times(_text_only((None, text)), _mask(60.0, (0.0, 60.0)), 60.0)
    assert [len(s.text.split()) for s in out.segments] == [MAX_SEGMENT_WORDS, MAX_SEGMENT_WORDS, 20]
    assert out.text == text


@pytest.mark.parametrize("mask", [np.zeros(300, dtype=bool), np.zeros(0, dtype=bool)])
def test_without_speech_the_words_are_spread_over_the_whole_chunk(mask: np.ndarray) -> None:
    text = "one two six ten"  # equal lengths: equal shares
    out = estimate_times(_text_only((None, text)), mask, 30.0)
    words = [w for s in out.segments for w in s.words or []]
    assert [w.start for w in words] == pytest.approx([0.0, 7.5, 15.0, 22.5])
    assert [w.end - w.start for w in words] == pytest.approx([5.625] * 4)


def test_estimating_twice_changes_nothing_and_empty_text_gives_no_segments() -> None:
    mask = _mask(30.0, (1.0, 9.0), (14.0, 29.0))
    once = estimate_times(_text_only((None, TEXT)), mask, 30.0)
    assert estimate_times(once, mask, 30.0) == once
    assert estimate_times(_text_only((None, "  ")), mask, 30.0).segments == []


def test_a_real_mask_from_audio(tmp_path: Path) -> None:
    """The mask `speech_mask` makes of a file: a tone at 1-4 s and 6-9 s, silence around it."""
    rate = 16000
    t = np.arange(10 * rate) / rate
    loud = ((t >= 1) & (t < 4)) | ((t >= 6) & (t < 9))
    samples = (np.sin(2 * np.pi * 220 * t) * 8000 * loud).astype("<i2")
    path = tmp_path / "chunk.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    mask = speech_mask(path)
    result = estimate_times(_text_only((None, "alpha beta gamma delta epsilon zeta")), mask, 10.0)
    words = [w for s in result.segments for w in s.words or []]
    assert all((w.start >= 1.0 and w.end <= 4.0) or (w.start >= 6.0 and w.end <= 9.0) for w in words)
    assert {w.start < 5 for w in words} == {True, False}  # both bursts got words


def test_speaking_rate_check() -> None:
    ten_seconds = _mask(30.0, (2.0, 7.0), (10.0, 15.0))

    def text(words: int) -> ChunkTranscript:
        return _text_only((None, " ".join(["word"] * words)))

    assert words_per_speech_second(text(25), ten_seconds) == pytest.approx(2.5)
    assert words_per_speech_second(text(25), _mask(30.0)) is None
    assert sanity_check(text(25), ten_seconds) is None  # 2.5 words/s: ordinary speech
    assert sanity_check(text(6), ten_seconds) is None  # 0.6: slow, long words, noise: not alarming
    assert "text may be missing" in (sanity_check(text(4), ten_seconds) or "")
    assert sanity_check(text(60), ten_seconds) is None
    assert "invented" in (sanity_check(text(61), ten_seconds) or "")
    assert sanity_check(text(0), ten_seconds) == "10.0 s of speech but no text"
    # Under 5 s of speech nothing is judged: an empty answer to a cough is right.
    assert sanity_check(text(0), _mask(30.0, (2.0, 6.0))) is None
    assert sanity_check(text(100), _mask(30.0, (2.0, 6.0))) is None


def test_report_keys_for_the_chunk_document() -> None:
    mask = _mask(30.0, (2.0, 10.0))
    assert estimated_report(_text_only((None, "one two three four")), mask) == {
        "timestamps": "estimated",
        "check": "words_per_speech_second",
        "words_per_speech_second": 0.5,
    }
    assert estimated_report(_text_only((None, "one")), _mask(30.0))["words_per_speech_second"] is None
