"""Plain text, SRT and WebVTT rendering of merged segments."""

from __future__ import annotations

import re

import pytest

from stt_common.transcript import Segment, Word
from stt_merger.formats import format_timestamp, to_srt, to_txt, to_vtt

SEGMENTS = [
    Segment(start=0.0, end=2.5, text=" Hello there. ", speaker="speaker_0"),
    Segment(start=2.5, end=2.5, text="zero length"),
    Segment(start=3.0, end=4.0, text="   "),
    Segment(start=4.25, end=6.001, text="General Kenobi!", speaker="speaker_1"),
]


def _timed(text: str, start: float, step: float = 0.5, length: float = 0.3) -> Segment:
    words = [
        Word(start=start + k * step, end=start + k * step + length, text=token)
        for k, token in enumerate(text.split())
    ]
    return Segment(start=words[0].start, end=words[-1].end, text=text, words=words)


def test_txt_one_segment_per_line() -> None:
    assert to_txt(SEGMENTS) == "Hello there.\nzero length\nGeneral Kenobi!\n"
    assert to_txt(SEGMENTS, with_speakers=True) == (
        "speaker_0: Hello there.\nzero length\nspeaker_1: General Kenobi!\n"
    )
    assert to_txt([]) == ""


def test_srt_exact() -> None:
    assert to_srt(SEGMENTS) == (
        "1\n"
        "00:00:00,000 --> 00:00:02,500\n"
        "Hello there.\n"
        "\n"
        "2\n"
        "00:00:04,250 --> 00:00:06,001\n"
        "General Kenobi!\n"
    )
    assert to_srt([]) == ""


def test_vtt_exact_with_voice_tags() -> None:
    assert to_vtt(SEGMENTS) == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:02.500\n"
        "<v speaker_0>Hello there.\n"
        "\n"
        "00:00:04.250 --> 00:00:06.001\n"
        "<v speaker_1>General Kenobi!\n"
    )
    assert "<v " not in to_vtt(SEGMENTS, voice_tags=False)
    assert to_vtt([]) == "WEBVTT\n"


def test_vtt_escapes_text_and_speaker() -> None:
    vtt = to_vtt([Segment(start=1, end=2, text="a <b> & c --> d", speaker="Ann & <Bob>")])
    assert vtt.endswith("<v Ann &amp; &lt;Bob&gt;>a &lt;b&gt; &amp; c -&gt; d\n")


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3661.5, "01:01:01,500", "01:01:01.500"),
        (36000 + 0.001, "10:00:00,001", "10:00:00.001"),
        (360000 + 62.25, "100:01:02,250", "100:01:02.250"),
        (-0.5, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps(seconds: float, srt: str, vtt: str) -> None:
    assert format_timestamp(seconds) == srt
    assert format_timestamp(seconds, separator=".") == vtt


def test_srt_after_one_hour() -> None:
    srt = to_srt([Segment(start=3725.5, end=3727.0, text="late")])
    assert srt == "1\n01:02:05,500 --> 01:02:07,000\nlate\n"


def test_long_segment_split_with_word_timings() -> None:
    seg = _timed(
        "The quick brown fox jumps over the lazy dog and keeps running far away "
        "into the distant hills beyond the river.",
        start=100.0,
    )
    assert to_srt([seg]) == (
        "1\n"
        "00:01:40,000 --> 00:01:45,300\n"
        "The quick brown fox jumps\n"
        "over the lazy dog and keeps\n"
        "\n"
        "2\n"
        "00:01:45,500 --> 00:01:50,300\n"
        "running far away into the\n"
        "distant hills beyond the river.\n"
    )


def test_two_line_cue_is_balanced() -> None:
    seg = _timed("one two three four five six seven eight nine ten eleven twelve", start=0.0)
    assert to_srt([seg]) == (
        "1\n00:00:00,000 --> 00:00:05,800\none two three four five six seven\neight nine ten eleven twelve\n"
    )


def test_every_cue_respects_the_limits() -> None:
    text = " ".join(f"word{k}" for k in range(200))
    segments = [_timed(text, start=10.0), Segment(start=0.0, end=60.0, text=text)]
    for render in (to_srt, to_vtt):
        out = render(segments)
        cues = [block.split("\n") for block in out.split("\n\n") if "-->" in block]
        assert len(cues) > 10
        for cue in cues:
            timing = next(i for i, line in enumerate(cue) if "-->" in line)
            lines = [line for line in cue[timing + 1 :] if line]
            assert 1 <= len(lines) <= 2
            assert all(len(line) <= 42 for line in lines)
        # Every word shows up once, in order.
        shown = re.findall(r"word\d+", out)
        assert shown == text.split() * 2


def test_cue_times_increase_for_text_only_segments() -> None:
    text = " ".join(["alpha beta gamma delta"] * 12)
    srt = to_srt([Segment(start=0.0, end=30.0, text=text)])
    stamps = re.findall(r"(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)", srt)
    assert len(stamps) >= 3
    assert stamps[0][0] == "00:00:00,000"
    assert stamps[-1][1] == "00:00:30,000"
    flat = [t for pair in stamps for t in pair]
    assert flat == sorted(flat)


def test_words_without_matching_text_tokens_use_word_texts() -> None:
    words = [Word(start=k, end=k + 0.5, text=f" w{k}") for k in range(30)]
    seg = Segment(start=0.0, end=30.0, text="a completely different text " * 5, words=words)
    srt = to_srt([seg])
    assert re.findall(r"w\d+", srt) == [f"w{k}" for k in range(30)]


def test_unbroken_text_is_hard_wrapped() -> None:
    srt = to_srt([Segment(start=0.0, end=10.0, text="字" * 100)])
    lines = [line for line in srt.split("\n") if line.startswith("字")]
    assert "".join(lines) == "字" * 100
    assert all(len(line) <= 42 for line in lines)


def test_invalid_limits() -> None:
    with pytest.raises(ValueError, match="positive"):
        to_srt(SEGMENTS, max_chars=0)
