"""The transcriber's repetition/silence guard: which windows it suspects, and the last-resort collapse."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from stt_common.transcript import Segment, Word
from stt_transcriber import guard
from stt_transcriber.coverage import FRAME_SECONDS


def seg(start: float, end: float, text: str) -> Segment:
    return Segment(start=start, end=end, text=text)


def test_identical_segments_back_to_back_are_a_loop() -> None:
    segments = [
        seg(0, 2, "Hello there."),
        seg(2, 4, "I'm sorry."),
        seg(4, 6, "I'm sorry."),
        seg(6, 8, "I'm sorry!"),
        seg(8, 10, "Goodbye."),
    ]
    assert guard.loops(segments) == [guard.Suspect(1, 3, "loop")]
    assert guard.Suspect(1, 3, "loop").window(segments) == (2, 8)


def test_a_phrase_repeated_inside_and_across_segments_is_a_loop() -> None:
    inside = [seg(0, 5, "and then we went home"), seg(5, 30, "to the " + "to the " * 5 + "store")]
    assert guard.loops(inside) == [guard.Suspect(1, 1, "loop")]
    across = [
        seg(0, 3, "we will go on"),
        seg(3, 6, "we will go on we will"),
        seg(6, 9, "go on we will go on"),
    ]
    assert guard.loops(across) == [guard.Suspect(0, 2, "loop")]


def test_ordinary_speech_is_not_a_loop() -> None:
    segments = [
        seg(0, 3, "No, no, no, I said the other one."),
        seg(3, 6, "Yes. Yes."),
        seg(6, 9, "It is what it is, and that is that."),
        seg(9, 12, "Go forward ten meters."),
        seg(12, 15, "Go forward ten meters."),  # said twice: people repeat themselves
    ]
    assert guard.loops(segments) == []


def test_text_over_silence_is_suspect_but_not_over_speech() -> None:
    speech = np.zeros(int(20 / FRAME_SECONDS), dtype=bool)
    speech[: int(10 / FRAME_SECONDS)] = True
    segments = [seg(0, 9.5, "real words here"), seg(12, 15, "Thank you for watching."), seg(15, 15.5, "Bye.")]
    assert guard.text_in_silence(segments, speech) == [guard.Suspect(1, 1, "silence")]
    assert guard.suspects(segments, speech) == [guard.Suspect(1, 1, "silence")]


def test_collapse_keeps_one_copy() -> None:
    segments = [
        seg(0, 2, "Hello."),
        seg(2, 4, "I'm sorry."),
        seg(4, 6, "I'm sorry."),
        Segment(
            start=6, end=9, text="go on go on go on go on and stop", words=[Word(start=6, end=7, text="go")]
        ),
    ]
    collapsed = guard.collapse_loop(segments)
    assert [s.text for s in collapsed] == ["Hello.", "I'm sorry.", "go on and stop"]
    assert collapsed[1].end == 6
    assert collapsed[2].words is None, "the word timings belonged to the copies"
    assert guard.loops(collapsed) == []


def test_a_window_is_cut_and_shifted_back(tmp_path: Path) -> None:
    source, target = tmp_path / "a.wav", tmp_path / "b.wav"
    with wave.open(str(source), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(np.arange(16000 * 4, dtype="<i2").tobytes())
    guard.cut_wav(source, 1.0, 2.5, target)
    with wave.open(str(target), "rb") as wav:
        assert wav.getnframes() == 24000
        assert np.frombuffer(wav.readframes(1), dtype="<i2")[0] == 16000
    moved = guard.shifted(Segment(start=0.5, end=1, text="x", words=[Word(start=0.5, end=1, text="x")]), 10)
    assert (moved.start, moved.end, moved.words[0].start if moved.words else None) == (10.5, 11, 10.5)
