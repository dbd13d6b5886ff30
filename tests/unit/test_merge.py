"""The overlap merge: deterministic boundary cases and a property test over synthetic speech."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from stt_common.transcript import ChunkTranscript, Segment, Word
from stt_merger.merge import ChunkInput, MergedTranscript, MergeOptions, merge_chunks, normalise

# --------------------------------------------------------------------------------------------------
# helpers: words are written in absolute time and shifted into each chunk's own time base


Spoken = tuple[float, float, str]  # absolute start, end, text


def _stream(text: str, start: float = 0.0, word: float = 0.4, gap: float = 0.2) -> list[Spoken]:
    out: list[Spoken] = []
    t = start
    for token in text.split():
        out.append((round(t, 3), round(t + word, 3), token))
        t += word + gap
    return out


def _chunk(
    index: int,
    start: float,
    end: float,
    words: Sequence[Spoken],
    *,
    per_segment: int = 6,
    speakers: Sequence[str | None] | None = None,
    with_words: bool = True,
) -> ChunkInput:
    """A chunk holding the given absolute-time words (those inside [start, end]), in segments."""
    inside = [w for w in words if start <= (w[0] + w[1]) / 2 <= end]
    segments: list[Segment] = []
    for k in range(0, len(inside), per_segment):
        group = inside[k : k + per_segment]
        segments.append(
            Segment(
                start=round(group[0][0] - start, 3),
                end=round(group[-1][1] - start, 3),
                text=" ".join(w[2] for w in group),
                words=[Word(start=round(s - start, 3), end=round(e - start, 3), text=t) for s, e, t in group]
                if with_words
                else None,
                speaker=speakers[k // per_segment] if speakers else None,
            )
        )
    return ChunkInput(
        index=index,
        start_seconds=start,
        end_seconds=end,
        transcript=ChunkTranscript(segments=segments, language="en", provider="fake"),
    )


def _words(merged: MergedTranscript) -> list[str]:
    return [w.text for s in merged.segments for w in s.words or []]


def _texts(spoken: Sequence[Spoken]) -> list[str]:
    return [w[2] for w in spoken]


SENTENCE = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu one two three four five six seven "
    "eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty "
    "red orange yellow green blue indigo violet black white grey brown pink cyan magenta gold silver"
)


# --------------------------------------------------------------------------------------------------
# deterministic cases


def test_single_chunk_is_shifted_to_absolute_time() -> None:
    spoken = _stream("hello there general kenobi", start=100.5)
    merged = merge_chunks([_chunk(3, 100.0, 130.0, spoken)])
    assert _words(merged) == _texts(spoken)
    assert merged.segments[0].start == pytest.approx(100.5)
    assert merged.segments[0].words is not None
    assert merged.segments[0].words[1].start == pytest.approx(101.1)
    assert merged.text == "hello there general kenobi"
    assert merged.language == "en"
    assert merged.decisions == []


def test_no_chunks() -> None:
    merged = merge_chunks([])
    assert merged.segments == []
    assert merged.text == ""
    assert merged.language is None


def test_clean_overlap_keeps_every_word_once() -> None:
    spoken = _stream(SENTENCE)  # 70 words over ~42 s
    chunks = [_chunk(0, 0.0, 25.0, spoken), _chunk(1, 15.0, 42.0, spoken)]
    merged = merge_chunks(chunks)
    assert _words(merged) == _texts(spoken)
    assert merged.text == " ".join(_texts(spoken))
    (decision,) = merged.decisions
    assert decision.method == "word_alignment"
    assert decision.score == 1.0
    assert 18.0 <= decision.cut_seconds <= 22.0  # near the middle of the 15-25 s overlap
    assert decision.overlap_start_seconds == 15.0
    assert decision.overlap_end_seconds == 25.0
    assert decision.dropped_left_words + decision.dropped_right_words == sum(
        1 for s, e, _ in spoken if 15.0 <= (s + e) / 2 <= 25.0
    )


def test_chunks_given_out_of_order_are_sorted() -> None:
    spoken = _stream(SENTENCE)
    chunks = [_chunk(1, 15.0, 42.0, spoken), _chunk(0, 0.0, 25.0, spoken)]
    assert _words(merge_chunks(chunks)) == _texts(spoken)


def test_errors_at_the_chunk_edges_are_not_kept() -> None:
    spoken = _stream(SENTENCE)
    left = _chunk(0, 0.0, 25.0, spoken)
    right = _chunk(1, 15.0, 42.0, spoken)
    # The left chunk's last word is cut in half and the one before misheard; the right chunk
    # drops its first word and mishears its second.
    last = left.transcript.segments[-1]
    assert last.words is not None
    last.words[-1].text = last.words[-1].text[:2]
    last.words[-2].text = "zzzz"
    first = right.transcript.segments[0]
    assert first.words is not None
    del first.words[0]
    first.words[0].text = "qqqq"
    merged = merge_chunks([left, right])
    assert _words(merged) == _texts(spoken)
    assert merged.decisions[0].method == "word_alignment"


def test_word_timing_jitter_and_punctuation_still_align() -> None:
    spoken = _stream(SENTENCE)
    right_spoken = [(s + 0.12, e - 0.05, t.capitalize() + ",") for s, e, t in spoken]
    merged = merge_chunks([_chunk(0, 0.0, 25.0, spoken), _chunk(1, 15.0, 42.0, right_spoken)])
    assert [normalise(t) for t in _words(merged)] == _texts(spoken)
    assert merged.decisions[0].method == "word_alignment"


def test_silent_overlap_cuts_at_the_midpoint() -> None:
    before = _stream("one two three four five six seven eight nine ten", start=0.0)  # until ~6 s
    after = _stream("red orange yellow green blue indigo violet", start=32.0)
    spoken = before + after
    merged = merge_chunks([_chunk(0, 0.0, 30.0, spoken), _chunk(1, 20.0, 50.0, spoken)])
    assert _words(merged) == _texts(spoken)
    (decision,) = merged.decisions
    assert decision.method == "midpoint"
    assert decision.cut_seconds == pytest.approx(25.0)
    assert decision.dropped_left_words == decision.dropped_right_words == 0


def test_midpoint_cut_moves_into_a_pause() -> None:
    # Alignment is impossible (the sides disagree on every word) but a pause at 21-23 s exists.
    left_words = _stream("a b c d e f g h", start=17.0) + _stream("i j k l", start=23.2)
    right_words = _stream("p q r s t u v w", start=17.0) + _stream("x y z zz", start=23.2)
    left = _chunk(0, 0.0, 26.0, left_words)
    right = _chunk(1, 16.0, 40.0, right_words)
    merged = merge_chunks([left, right])
    (decision,) = merged.decisions
    assert decision.method == "midpoint"
    assert 21.6 <= decision.cut_seconds <= 23.2
    assert _words(merged) == ["a", "b", "c", "d", "e", "f", "g", "h", "x", "y", "z", "zz"]


def test_side_with_nothing_in_the_overlap_yields_to_the_other() -> None:
    spoken = _stream(SENTENCE)
    left = _chunk(0, 0.0, 25.0, spoken)
    # The right chunk's provider heard nothing in the overlap (15-25 s).
    right = _chunk(1, 15.0, 42.0, [w for w in spoken if (w[0] + w[1]) / 2 > 25.0])
    merged = merge_chunks([left, right])
    assert _words(merged) == _texts(spoken)
    assert merged.decisions[0].method == "midpoint"
    assert merged.decisions[0].cut_seconds == pytest.approx(25.0)


def test_repeated_words_are_not_misaligned() -> None:
    spoken = _stream("we said " + "no " * 30 + "and left", start=0.0)
    # The right chunk's clock runs 0.25 s late: within a repeated word's spacing (0.6 s).
    late = [(s + 0.25, e + 0.25, t) for s, e, t in spoken]
    merged = merge_chunks([_chunk(0, 0.0, 12.0, spoken), _chunk(1, 4.0, 30.0, late)])
    assert _words(merged) == _texts(spoken)


def test_empty_chunk_and_chunks_without_overlap() -> None:
    spoken = _stream(SENTENCE)
    chunks = [
        _chunk(0, 0.0, 15.0, spoken),
        _chunk(1, 15.0, 25.0, []),  # silence: the provider returned nothing
        _chunk(2, 25.0, 42.0, spoken),  # no overlap with chunk 1 at all
    ]
    # Chunk 0 and 1 touch without overlapping; chunk 1 is empty, so nothing between 15 and 25 s.
    merged = merge_chunks(chunks)
    expected = [t for s, e, t in spoken if not 15.0 < (s + e) / 2 < 25.0]
    assert _words(merged) == expected
    assert [d.method for d in merged.decisions] == ["midpoint", "midpoint"]


def test_split_segment_text_is_rebuilt_from_its_kept_words() -> None:
    spoken = _stream(SENTENCE)
    merged = merge_chunks([_chunk(0, 0.0, 25.0, spoken, per_segment=50), _chunk(1, 15.0, 42.0, spoken)])
    first = merged.segments[0]
    assert first.words is not None
    assert first.text == " ".join(w.text for w in first.words)
    assert first.start == first.words[0].start
    assert first.end == first.words[-1].end
    assert len(first.words) < 40  # the tail after the cut went to the right chunk
    assert _words(merged) == _texts(spoken)


def test_three_and_more_chunks() -> None:
    spoken = _stream(" ".join([SENTENCE] * 3))  # ~126 s
    windows = [(0.0, 35.0), (27.0, 62.0), (53.0, 90.0), (84.0, 127.0)]
    chunks = [_chunk(i, s, e, spoken) for i, (s, e) in enumerate(windows)]
    merged = merge_chunks(chunks)
    assert _words(merged) == _texts(spoken)
    assert [d.method for d in merged.decisions] == ["word_alignment"] * 3
    assert [(d.left_index, d.right_index) for d in merged.decisions] == [(0, 1), (1, 2), (2, 3)]
    starts = [s.start for s in merged.segments]
    assert starts == sorted(starts)


def test_segments_without_words_fall_back_to_segment_similarity() -> None:
    spoken = _stream(SENTENCE)
    left = _chunk(0, 0.0, 25.0, spoken, with_words=False)
    right = _chunk(1, 15.0, 42.0, spoken, with_words=False)
    merged = merge_chunks([left, right])
    (decision,) = merged.decisions
    assert decision.method == "segment_similarity"
    assert decision.matched >= 1
    assert merged.text == " ".join(_texts(spoken))
    assert all(s.words is None for s in merged.segments)


def _gemini_like() -> list[ChunkInput]:
    def seg(start: float, end: float, text: str) -> Segment:
        return Segment(start=start, end=end, text=text)

    left = ChunkInput(
        index=0,
        start_seconds=0.0,
        end_seconds=30.0,
        transcript=ChunkTranscript(
            provider="gemini",
            segments=[
                seg(0.0, 18.0, "We walked along the river until the sun went down."),
                seg(19.0, 29.5, "It was late and everyone was tired, so we went home."),
            ],
        ),
    )
    right = ChunkInput(
        index=1,
        start_seconds=20.0,
        end_seconds=50.0,
        transcript=ChunkTranscript(
            provider="gemini",
            segments=[
                seg(0.5, 9.5, "everyone was tired so we went home"),
                seg(10.5, 25.0, "The next morning we started again."),
            ],
        ),
    )
    return [left, right]


def test_untimed_segments_align_on_their_text_tokens() -> None:
    merged = merge_chunks(_gemini_like())
    assert merged.decisions[0].method == "segment_similarity"
    # The cut falls inside the duplicated sentence: its first half from the left chunk, the
    # rest (without the left chunk's punctuation) from the right one; no word twice, none lost.
    assert [s.text for s in merged.segments] == [
        "We walked along the river until the sun went down.",
        "It was late and everyone was",
        "tired so we went home",
        "The next morning we started again.",
    ]
    assert all(s.words is None for s in merged.segments)
    assert merged.segments[2].start >= 20.5


def test_whole_segment_fallback_keeps_the_fuller_copy_of_a_truncated_segment() -> None:
    # Token times interpolated over a segment can be far off; with a zero tolerance the token
    # alignment finds nothing and whole segments are compared instead.
    merged = merge_chunks(_gemini_like(), MergeOptions(untimed_time_diff_seconds=0.0))
    assert merged.decisions[0].method == "segment_similarity"
    assert [s.text for s in merged.segments] == [
        "We walked along the river until the sun went down.",
        "It was late and everyone was tired, so we went home.",
        "The next morning we started again.",
    ]
    assert merged.segments[2].start == pytest.approx(30.5)
    assert merged.decisions[0].dropped_right_segments == 1


def test_whole_segment_fallback_keeps_what_the_kept_copy_lacks() -> None:
    spoken = _stream(SENTENCE)
    # Both chunks cut the overlap into segments at different places (groups of 6 words counted
    # from each chunk's first word): the dropped copy's extra words must survive.
    left = _chunk(0, 0.0, 25.0, spoken, with_words=False)
    right = _chunk(1, 15.0, 42.0, spoken, with_words=False)
    merged = merge_chunks([left, right], MergeOptions(untimed_time_diff_seconds=0.0))
    assert merged.decisions[0].method == "segment_similarity"
    assert merged.text == " ".join(_texts(spoken))


def test_segment_fallback_without_duplicates_cuts_by_segment_midpoint() -> None:
    # The providers disagree on everything in the 20-30 s overlap: each side keeps what lies
    # nearer its own middle (by segment midpoint), so "x y" (21-23 s) from the left chunk and
    # "q r" (26-28 s) from the right one.
    left = ChunkInput(
        index=0,
        start_seconds=0.0,
        end_seconds=30.0,
        transcript=ChunkTranscript(
            provider="x",
            segments=[
                Segment(start=0.0, end=10.0, text="first part"),
                Segment(start=21.0, end=23.0, text="x y"),
                Segment(start=26.5, end=29.0, text="left late"),
            ],
        ),
    )
    right = ChunkInput(
        index=1,
        start_seconds=20.0,
        end_seconds=40.0,
        transcript=ChunkTranscript(
            provider="x",
            segments=[
                Segment(start=0.5, end=2.0, text="right early"),
                Segment(start=6.0, end=8.0, text="q r"),
                Segment(start=10.0, end=15.0, text="last"),
            ],
        ),
    )
    merged = merge_chunks([left, right])
    (decision,) = merged.decisions
    assert decision.method == "midpoint"
    assert 23.0 <= decision.cut_seconds <= 26.0
    assert [s.text for s in merged.segments] == ["first part", "x y", "q r", "last"]
    assert decision.dropped_left_segments == decision.dropped_right_segments == 1


def test_mixed_word_and_segment_chunks_use_segment_level() -> None:
    spoken = _stream(SENTENCE)
    merged = merge_chunks([_chunk(0, 0.0, 25.0, spoken), _chunk(1, 15.0, 42.0, spoken, with_words=False)])
    assert merged.decisions[0].method == "segment_similarity"
    assert merged.text == " ".join(_texts(spoken))


def _diarised_chunk(
    index: int, start: float, end: float, spoken: Sequence[Spoken], labels: dict[str, str]
) -> ChunkInput:
    """Segments cut at speaker turns; ``labels`` maps the true speaker to this chunk's local label."""
    segments: list[Segment] = []
    for s, e, text in spoken:
        if not start <= (s + e) / 2 <= end:
            continue
        label = labels[_true_speaker((s + e) / 2)]
        word = Word(start=s - start, end=e - start, text=text)
        if segments and segments[-1].speaker == label and len(segments[-1].words or []) < 6:
            last = segments[-1]
            segments[-1] = last.model_copy(
                update={"end": word.end, "text": f"{last.text} {text}", "words": [*(last.words or []), word]}
            )
        else:
            segments.append(Segment(start=word.start, end=word.end, text=text, words=[word], speaker=label))
    return ChunkInput(
        index=index,
        start_seconds=start,
        end_seconds=end,
        transcript=ChunkTranscript(segments=segments, provider="fake"),
    )


def _true_speaker(t: float) -> str:
    return "A" if t < 10 else "B" if t < 19 else "A" if t < 30 else "C"


def test_speakers_are_relabelled_across_chunks() -> None:
    spoken = _stream(SENTENCE)  # 0-42 s; A speaks until 10 s, B until 19 s, A until 30 s, then C
    left = _diarised_chunk(0, 0.0, 25.0, spoken, {"A": "speaker_0", "B": "speaker_1"})
    # The right chunk's diarisation numbers the same people differently, and its "speaker_0" is
    # the newcomer C, who never speaks in the overlap.
    right = _diarised_chunk(1, 15.0, 42.0, spoken, {"A": "speaker_1", "B": "speaker_2", "C": "speaker_0"})
    merged = merge_chunks([left, right])
    assert _words(merged) == _texts(spoken)
    expected = {"A": "speaker_0", "B": "speaker_1", "C": "speaker_2"}
    for segment in merged.segments:
        for word in segment.words or []:
            assert segment.speaker == expected[_true_speaker((word.start + word.end) / 2)]
    assert {s.speaker for s in merged.segments} == {"speaker_0", "speaker_1", "speaker_2"}


def test_speaker_mapping_is_one_to_one_and_keeps_free_names() -> None:
    spoken = _stream(SENTENCE)
    left = _chunk(0, 0.0, 25.0, spoken, per_segment=100, speakers=["speaker_0"])
    right = _chunk(1, 15.0, 42.0, spoken, per_segment=100, speakers=["speaker_3"])
    merged = merge_chunks([left, right])
    assert {s.speaker for s in merged.segments} == {"speaker_0"}
    # No overlap words for the right chunk's speaker: it keeps its name, which is free.
    right = _chunk(1, 15.0, 42.0, [w for w in spoken if w[0] > 26.0], per_segment=100, speakers=["spk_b"])
    merged = merge_chunks([left, right])
    assert [s.speaker for s in merged.segments] == ["speaker_0", "spk_b"]


def test_normalise() -> None:
    assert normalise("Hello,") == "hello"
    assert normalise("  DON'T! ") == "dont"
    assert normalise("2024.") == "2024"
    # Armenian, with the Armenian full stop; casefold expands the "և" ligature, on both sides alike.
    assert normalise("Բարև\u0589") == normalise("բարև") == "բարեւ"
    assert normalise("...") == ""


def test_decisions_serialise() -> None:
    spoken = _stream(SENTENCE)
    merged = merge_chunks([_chunk(0, 0.0, 25.0, spoken), _chunk(1, 15.0, 42.0, spoken)])
    dumped = merged.model_dump(mode="json")
    assert dumped["decisions"][0]["method"] == "word_alignment"
    assert MergedTranscript.model_validate(dumped) == merged


# --------------------------------------------------------------------------------------------------
# property test: synthetic speech cut into overlapping windows, with provider noise at the edges

_COMMON_TEXT = (
    "the a and to of in that it is was for on are with as i his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do "
    "their time if will way about many then them write would like so these her long make thing see him "
    "two has look more day could go come did number sound no most people my over know water than call "
    "first who may down side been now find 1 2 3 10 20 100 2024"
)
_COMMON = _COMMON_TEXT.split()


def _vocabulary(size: int = 300) -> list[str]:
    rng = random.Random(1234)
    words = list(dict.fromkeys(_COMMON))
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    while len(words) < size:
        syllables = rng.randint(1, 3)
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        if word not in words:
            words.append(word)
    return words


VOCABULARY = _vocabulary()
ID_SCALE = 1_000_000  # word ids travel through the merge in Word.probability


@dataclass(frozen=True)
class _Original:
    id: int
    start: float
    end: float
    text: str

    @property
    def mid(self) -> float:
        return (self.start + self.end) / 2


def _windows(rng: random.Random, count: int) -> list[tuple[float, float]]:
    windows = [(0.0, rng.uniform(30, 60))]
    for _ in range(count - 1):
        start = windows[-1][1] - rng.uniform(5, 10)
        windows.append((start, start + rng.uniform(30, 60)))
    return windows


def _speech(rng: random.Random, total: float) -> list[_Original]:
    words: list[_Original] = []
    t = rng.uniform(0.0, 1.0)
    while True:
        if rng.random() < 0.04:
            t += rng.uniform(1.0, 4.0)  # a pause
        duration = rng.uniform(0.2, 0.6)
        if t + duration > total:
            return words
        words.append(_Original(len(words), t, t + duration, rng.choice(VOCABULARY)))
        t += duration + rng.uniform(0.05, 0.5)


def _misspell(rng: random.Random, text: str) -> str:
    k = rng.randrange(len(text))
    return text[:k] + rng.choice("xqjw") + text[k + 1 :]


def _transcribe(
    rng: random.Random, speech: Sequence[_Original], window: tuple[float, float], inner: tuple[bool, bool]
) -> ChunkTranscript:
    """What a provider might return for one window: jittered times, errors near cut edges."""
    start, end = window
    words: list[Word] = []
    for original in speech:
        if original.end <= start or original.start >= end:
            continue
        text = original.text
        w_start, w_end = original.start, original.end
        at_start = inner[0] and original.mid - start < 1.0
        at_end = inner[1] and end - original.mid < 1.0
        if w_start < start or w_end > end:  # cut by the window edge
            roll = rng.random()
            if roll < 0.4:
                continue
            if roll < 0.8 and len(text) > 1:
                keep = rng.randint(1, len(text) - 1)
                text = text[-keep:] if w_start < start else text[:keep]
        elif at_start or at_end:
            roll = rng.random()
            if roll < 0.1:
                continue
            if roll < 0.25:
                text = _misspell(rng, text)
        shift = rng.uniform(-0.07, 0.07)
        w_start = min(max(w_start + shift + rng.uniform(-0.03, 0.03), start), end)
        w_end = min(max(w_end + shift + rng.uniform(-0.03, 0.03), w_start), end)
        if rng.random() < 0.05:
            text = text.capitalize() + rng.choice([",", ".", "?"])
        words.append(
            Word(start=w_start - start, end=w_end - start, text=text, probability=original.id / ID_SCALE)
        )
    segments: list[Segment] = []
    k = 0
    while k < len(words):
        group = words[k : k + rng.randint(5, 15)]
        k += len(group)
        segments.append(
            Segment(
                start=group[0].start,
                end=group[-1].end,
                text=" ".join(w.text for w in group),
                words=group,
            )
        )
    return ChunkTranscript(segments=segments, language="en", provider="synthetic")


def _scenario(seed: int, count: int) -> tuple[list[_Original], list[tuple[float, float]], list[ChunkInput]]:
    rng = random.Random(seed)
    windows = _windows(rng, count)
    speech = _speech(rng, windows[-1][1])
    chunks = [
        ChunkInput(
            index=i,
            start_seconds=s,
            end_seconds=e,
            transcript=_transcribe(rng, speech, (s, e), (i > 0, i < count - 1)),
        )
        for i, (s, e) in enumerate(windows)
    ]
    return speech, windows, chunks


def _check(seed: int, count: int) -> None:
    speech, windows, chunks = _scenario(seed, count)
    merged = merge_chunks(chunks)
    assert len(merged.decisions) == count - 1

    merged_words = [w for s in merged.segments for w in s.words or []]
    ids = [round((w.probability or 0.0) * ID_SCALE) for w in merged_words]
    by_id = {o.id: o for o in speech}
    # Every kept word sits where it was spoken (absolute time, within the provider's jitter).
    for word, ident in zip(merged_words, ids, strict=True):
        assert abs((word.start + word.end) / 2 - by_id[ident].mid) < 0.11

    # Away from the cut edges, every word is there exactly once and in order.
    edges = [s for s, _ in windows[1:]] + [e for _, e in windows[:-1]]
    protected = [o.id for o in speech if all(abs(o.mid - edge) > 1.5 for edge in edges)]
    counts = Counter(ids)
    assert [i for i in protected if counts[i] != 1] == []
    protected_set = set(protected)
    assert [i for i in ids if i in protected_set] == protected
    # Near the edges a word may be lost or doubled (provider errors), but only a few.
    assert abs(len(ids) - len(speech)) <= count - 1
    assert len(ids) - len(counts) <= count - 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), count=st.integers(min_value=1, max_value=5))
def test_property_no_word_lost_or_doubled_away_from_edges(seed: int, count: int) -> None:
    _check(seed, count)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), count=st.integers(min_value=1, max_value=5))
def test_property_untimed_segments_merge_to_the_spoken_text(seed: int, count: int) -> None:
    """The same speech with the word timings removed: only segment texts and times to go by."""
    speech, _, chunks = _scenario(seed, count)
    for chunk in chunks:
        for segment in chunk.transcript.segments:
            segment.words = None
    merged = merge_chunks(chunks)
    got = [normalise(token) for token in merged.text.split()]
    # A few tokens may differ per boundary (interpolated times are rough), no more.
    assert Levenshtein.distance(got, [o.text for o in speech]) <= 3 * (count - 1)


# --------------------------------------------------------------------------------------------------
# text-only providers: times estimated from the speech mask, aligned by words alone

PARAGRAPH = (
    "When the old harbour closed in the spring of that year, most of the fishermen moved their boats "
    "to the new marina on the other side of the bay. It was a difficult decision for many of them. "
    "The marina was modern and safe, but the rent was high, and the walk from the village took almost "
    "forty minutes. Some of the older men refused to go at all; they sold their boats to younger "
    "families and spent their mornings on the bench outside the bakery, talking about the weather "
    "and the price of diesel. The mayor promised a bus service, and for a few months a small yellow "
    "bus did run twice a day, but nobody used it in the afternoon, so the council cancelled the "
    "second trip. By the autumn the village felt quieter than anyone could remember. The school lost "
    "two teachers, the post office opened only three days a week, and the café near the church "
    "started closing at noon. Then, in November, something unexpected happened. A group of students "
    "from the university arrived with cameras, notebooks and a plan to record the stories of the "
    "harbour before they were forgotten. They sat with the old fishermen for hours, asking about "
    "storms, about the years when the catch was so large that the boats nearly sank, and about the "
    "night the lighthouse keeper disappeared. The recordings were played on the local radio every "
    "Sunday evening, and people who had left the village years before began to write letters. "
    "Some of them came back for the summer festival, and one family even reopened the small hotel "
    "by the water. Nobody would say that the village was saved, but for the first time in a long "
    "while, people talked about the future rather than the past."
)


def _read_aloud(seed: int) -> list[Spoken]:
    """The paragraph spoken: longer words take longer, each sentence at its own pace, pauses after
    punctuation. What the provider never tells, and the estimate gets only roughly right."""
    rng = random.Random(seed)
    spoken: list[Spoken] = []
    t, pace = 0.5, 1.0
    for token in PARAGRAPH.split():
        duration = (0.05 * len(token) + 0.12) * pace * rng.uniform(0.7, 1.3)
        spoken.append((round(t, 3), round(t + duration, 3), token))
        t += duration + rng.uniform(0.03, 0.15)
        if token[-1] in ".;,":
            t += rng.uniform(0.3, 1.0)
        if token[-1] in ".;":
            pace = rng.uniform(0.7, 1.4)
    return spoken


def _text_only_chunks(
    spoken: Sequence[Spoken], seed: int, *, length: float = 40.0, overlap: float = 10.0
) -> tuple[list[ChunkInput], list[str]]:
    """Overlapping text-only chunks with times estimated from a mask of the true speech, and the text
    a perfect merge of them would give (each chunk's own errors away from its edges included).

    Recognition errors: a chunk after the first drops or mishears its first word, a chunk before the
    last drops or mishears its last one (the words a chunk edge cuts), and every chunk mishears one
    word that no other chunk holds.
    """
    from stt_transcriber.timing import estimate_times

    rng = random.Random(seed)
    total = spoken[-1][1] + 0.5
    starts = [0.0]
    while starts[-1] + length < total:
        starts.append(starts[-1] + length - overlap)
    expected = [w[2] for w in spoken]
    chunks: list[ChunkInput] = []
    for index, start in enumerate(starts):
        end = min(start + length, total)
        inside = [k for k, (s, e, _) in enumerate(spoken) if start <= (s + e) / 2 <= end]
        tokens = [spoken[k][2] for k in inside]
        own = [k for k in inside if start + overlap + 2 <= spoken[k][0] and spoken[k][1] <= end - overlap - 2]
        if own:
            k = rng.choice(own)
            tokens[inside.index(k)] = expected[k] = "mmm"
        if index < len(starts) - 1:
            tokens[-1:] = [] if rng.random() < 0.5 else ["uh"]
        if index > 0:
            tokens[:1] = [] if rng.random() < 0.5 else ["eh"]
        mask = np.zeros(round((end - start) * 10), dtype=bool)
        for s, e, _ in spoken:
            mask[max(round((s - start) * 10), 0) : max(round((e - start) * 10), 0)] = True
        text_only = ChunkTranscript(
            provider="hispeech",
            language="en",
            segments=[Segment(start=0.0, end=end - start, text=" ".join(tokens), estimated=True)],
        )
        chunks.append(
            ChunkInput(
                index=index,
                start_seconds=start,
                end_seconds=end,
                transcript=estimate_times(text_only, mask, end - start),
            )
        )
    return chunks, expected


def _pooled_wer(pairs: Sequence[tuple[str, str]]) -> float:
    from stt_devstack.wer import word_errors

    counts = [word_errors(reference, hypothesis) for reference, hypothesis in pairs]
    errors = sum(c.substitutions + c.deletions + c.insertions for c in counts)
    return errors / sum(c.reference_words for c in counts)


@pytest.mark.parametrize("seed", range(8))
def test_text_only_chunks_merge_each_word_once(seed: int) -> None:
    from stt_devstack.wer import wer

    spoken = _read_aloud(seed)
    chunks, expected = _text_only_chunks(spoken, seed)
    assert len(chunks) >= 4
    merged = merge_chunks(chunks)
    assert [d.method for d in merged.decisions] == ["untimed_word_alignment"] * (len(chunks) - 1)
    assert merged.text.split() == expected  # every word once, each from where the chunks agree
    assert all(s.estimated and s.words for s in merged.segments)
    # As good as the chunks themselves: their errors against their own stretch of the paragraph.
    own = _pooled_wer(
        [
            (
                " ".join(w[2] for w in spoken if c.start_seconds <= (w[0] + w[1]) / 2 <= c.end_seconds),
                c.transcript.text,
            )
            for c in chunks
        ]
    )
    assert wer(PARAGRAPH, merged.text) <= own + 0.01


def test_estimated_times_are_not_trusted() -> None:
    """A chunk whose estimate is 4 s late (a stretch of music it took for speech, say): still aligned."""
    spoken = _read_aloud(1)
    chunks, expected = _text_only_chunks(spoken, 1)
    late = chunks[1].transcript
    for segment in late.segments:
        segment.start, segment.end = segment.start + 4, segment.end + 4
        for word in segment.words or []:
            word.start, word.end = word.start + 4, word.end + 4
    merged = merge_chunks(chunks)
    assert merged.text.split() == expected
    assert merged.decisions[0].method == "untimed_word_alignment"


def test_a_timed_chunk_next_to_an_estimated_one() -> None:
    from stt_devstack.wer import word_errors

    spoken = _read_aloud(2)
    chunks, _ = _text_only_chunks(spoken, 2)
    timed = _chunk(0, chunks[0].start_seconds, chunks[0].end_seconds, spoken)  # provider times
    merged = merge_chunks([timed, chunks[1]])
    assert merged.decisions[0].method == "untimed_word_alignment"
    heard = " ".join(w[2] for w in spoken if (w[0] + w[1]) / 2 <= chunks[1].end_seconds)
    errors = word_errors(heard, merged.text)
    # No word twice, none lost: only the estimated chunk's own two errors remain, the word it
    # misheard in its middle and its last one (both fillers, which the WER measure drops).
    assert errors.insertions == 0
    assert errors.substitutions + errors.deletions <= 2
    assert not merged.segments[0].estimated
    assert merged.segments[-1].estimated


def test_estimated_chunks_that_do_not_align_cut_at_the_midpoint() -> None:
    def chunk(index: int, start: float, text: str) -> ChunkInput:
        segment = Segment(start=0.0, end=30.0, text=text, estimated=True)
        transcript = ChunkTranscript(provider="wavam", segments=[segment])
        return ChunkInput(index=index, start_seconds=start, end_seconds=start + 30.0, transcript=transcript)

    left = chunk(0, 0.0, " ".join(f"left{i}" for i in range(60)))
    right = chunk(1, 20.0, " ".join(f"right{i}" for i in range(60)))
    merged = merge_chunks([left, right])
    (decision,) = merged.decisions
    assert decision.method == "midpoint"
    assert 20.0 <= decision.cut_seconds <= 30.0
    # Each side keeps what its (estimated) times put on its side of the cut: about 20 s of each.
    tokens = merged.text.split()
    kept_left = sum(1 for t in tokens if t.startswith("left"))
    assert tokens == [f"left{i}" for i in range(kept_left)] + [f"right{i}" for i in range(kept_left - 40, 60)]
    assert all(s.estimated for s in merged.segments)


def test_speaker_turns_without_times_keep_their_speakers() -> None:
    """wav.am-like: one turn per sentence, two speakers, labels numbered afresh in every chunk."""
    from stt_transcriber.timing import estimate_times

    spoken = _read_aloud(3)
    sentences: list[list[Spoken]] = [[]]
    for word in spoken:
        sentences[-1].append(word)
        if word[2][-1] == ".":
            sentences.append([])
    speaker_of = {w: n % 2 for n, sentence in enumerate(sentences) for w in sentence}
    chunks: list[ChunkInput] = []
    for index, (start, end) in enumerate([(0.0, 40.0), (30.0, 70.0)]):
        inside = [w for w in spoken if start <= (w[0] + w[1]) / 2 <= end]
        first = speaker_of[inside[0]]  # each chunk calls its first voice speaker_0
        turns: list[Segment] = []
        for w in inside:
            label = f"speaker_{speaker_of[w] ^ first}"
            if turns and turns[-1].speaker == label:
                turns[-1].text += " " + w[2]
            else:
                turns.append(Segment(start=0, end=40, text=w[2], speaker=label, estimated=True))
        mask = np.zeros(400, dtype=bool)
        for s, e, _ in spoken:
            mask[max(round((s - start) * 10), 0) : max(round((e - start) * 10), 0)] = True
        transcript = estimate_times(ChunkTranscript(provider="wavam", segments=turns), mask, 40.0)
        chunks.append(ChunkInput(index=index, start_seconds=start, end_seconds=end, transcript=transcript))
    merged = merge_chunks(chunks)
    heard = [w for w in spoken if (w[0] + w[1]) / 2 <= 70.0]
    assert merged.text.split() == [w[2] for w in heard]
    # Segments follow the spoken words in order: each one's first word tells whose turn it is.
    voices: set[tuple[int, str | None]] = set()
    position = 0
    for segment in merged.segments:
        voices.add((speaker_of[heard[position]], segment.speaker))
        position += len(segment.text.split())
    assert voices == {(0, "speaker_0"), (1, "speaker_1")}  # one global label per voice


def test_low_confidence_share_counts_time_not_segments() -> None:
    from stt_merger.handler import low_confidence_share

    segments = [
        Segment(start=0, end=9, text="clear", avg_logprob=-0.2),
        Segment(start=9, end=10, text="mumbled", avg_logprob=-1.4),
        Segment(start=10, end=12, text="no score"),
    ]
    assert low_confidence_share(segments) == 0.1
    assert low_confidence_share([Segment(start=0, end=1, text="x")]) is None


def test_result_document_says_which_times_and_which_check() -> None:
    import uuid

    from stt_common.db.models import Chunk, Job
    from stt_merger.handler import _renderings, result_document

    spoken = _read_aloud(4)
    estimated, _ = _text_only_chunks(spoken, 4)
    job = Job(id=uuid.uuid4(), provider="hispeech", duration_seconds=spoken[-1][1])
    rows = [
        Chunk(chunk_index=c.index, start_seconds=c.start_seconds, end_seconds=c.end_seconds)
        for c in estimated
    ]
    # What the transcriber writes for a text-only provider; the last chunk's document predates the
    # keys (the flag on its segments still tells).
    documents: list[dict[str, object]] = [
        {
            "transcript": c.transcript.model_dump(mode="json"),
            "timestamps": "estimated",
            "check": "words_per_speech_second",
            "words_per_speech_second": 2.5,
            "warnings": [],
        }
        for c in estimated[:-1]
    ] + [{"transcript": estimated[-1].transcript.model_dump(mode="json")}]
    # Chunk 1 was transcribed by a fallback after the job's provider was rate limited.
    failed = [{"provider": "wavam", "error_code": "rate_limited", "error": "wavam: HTTP 429"}]
    documents[1] = {**documents[1], "provider": "hispeech", "model": "model-01052025", "fallbacks": failed}
    document = result_document(job, rows, documents, None)
    assert document["quality"]["fallbacks"] == [{"chunk": 1, "provider": "hispeech", "failed": failed}]
    assert [c["fallbacks"] for c in document["chunks"]][:3] == [[], failed, []]
    assert document["chunks"][1]["model"] == "model-01052025"
    assert document["timestamps_estimated"] is True
    quality = document["quality"]
    assert quality["timestamps"] == "estimated"
    assert quality["check"] == "mixed"  # the old document was checked for coverage
    assert quality["words_per_speech_second"] == {c.index: 2.5 for c in estimated[:-1]}
    assert {d["method"] for d in quality["merge_decisions"]} == {"untimed_word_alignment"}
    assert all(s["estimated"] is True for s in document["segments"])
    rendered = _renderings(document)
    assert rendered["srt"].startswith(b"1\n00:00:00,")
    assert rendered["vtt"].startswith(b"WEBVTT\n\n00:00:00.")
    assert rendered["txt"].decode().split() == document["text"].split()

    # A provider with times, documents as before: nothing changes for them.
    timed = [_chunk(0, 0.0, 25.0, spoken), _chunk(1, 15.0, 42.0, spoken)]
    rows = [
        Chunk(chunk_index=c.index, start_seconds=c.start_seconds, end_seconds=c.end_seconds) for c in timed
    ]
    document = result_document(
        job, rows, [{"transcript": c.transcript.model_dump(mode="json")} for c in timed], None
    )
    assert document["timestamps_estimated"] is False
    assert (document["quality"]["timestamps"], document["quality"]["check"]) == ("provider", "coverage")
    assert document["quality"]["words_per_speech_second"] == {}
    assert all("estimated" not in s for s in document["segments"])
