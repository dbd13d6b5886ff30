"""Timestamps for providers that return text only, and the check that replaces coverage for them.

Some vendors answer with text and nothing else: one transcription string per upload (HiSpeech), or
speaker turns without times (wav.am). The merger needs times to know roughly where each word lies,
and subtitles need them to show a line at all, so they are estimated from the one thing known about
the chunk's timing: where its audio holds speech (`coverage.speech_mask`, one boolean per 100 ms).

Input convention (what an adapter returns for a text-only answer): the provider's text in spoken
order, one segment per text unit the vendor gives (one for a single transcription string, one per
speaker turn with ``speaker`` set to the vendor's label), each with ``estimated=True``,
``words=None``, ``start=0`` and ``end`` = the chunk's duration. `estimate_times` ignores those times;
it uses only the segments' order, text and speakers.

Estimation: each word weighs its characters plus one (a longer word takes longer to say; the one is
the gap after it). The words are laid end to end over the chunk's *speech time*, its speech frames
concatenated with the silences removed: word i starts at ``speech seconds * (weight before i) /
total weight``, mapped back to the chunk's clock. Silences therefore get no words, and a word that
would straddle one is moved wholly into the speech run holding most of it. With no speech in the mask
(digital silence, or audio too quiet for its threshold) the words are spread evenly over the chunk.
Such times drift by up to a few seconds where the speaking rate changes; the merger knows this.

The text is cut into segments at sentence ends, at the provider's segment (speaker turn) boundaries,
and every MAX_SEGMENT_WORDS words (a vendor that writes no punctuation would otherwise give one
five-minute segment). Each segment gets its words, ``estimated=True`` and its turn's speaker.

Coverage (is speech left untranscribed?) says nothing about such times: every speech frame gets a
word by construction. The check for these providers is the speaking rate instead, words per second
of speech (`sanity_check`): a provider that dropped a stretch of the chunk, or wrote text over noise,
shows too few or too many words for the speech the audio holds.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

import numpy as np

from stt_common.transcript import ChunkTranscript, Segment, Word
from stt_transcriber.coverage import FRAME_SECONDS

# Latin, Armenian full stop (U+0589), CJK and ellipsis: a token ending in one ends a sentence.
SENTENCE_ENDS = frozenset(".!?…\u0589\u3002\uff01\uff1f")
_CLOSERS = "\"'»\u201d\u2019)]}"
MAX_SEGMENT_WORDS = 40

# Normal speech is about 2-3 words per second of speech (150 words a minute, pauses excluded by the
# mask), a fast speaker 4-5; languages of long words (Armenian, Finnish) say fewer, about 1.5-2.
# The energy mask also counts noise, music and breathing as speech, which lowers the rate further.
# So only a rate far outside those (a quarter of the slowest, or above any sustained speech) means
# text was dropped or invented; anything closer is left alone rather than cry wolf on every chunk.
MIN_WORDS_PER_SPEECH_SECOND = 0.5
MAX_WORDS_PER_SPEECH_SECOND = 6.0
# Below this much speech the rate is too noisy to judge (one long word over 1 s is "0.5 words/s"),
# and an empty answer may be right (a cough, a door).
MIN_SPEECH_SECONDS = 5.0


def _speech_runs(mask: np.ndarray, duration: float) -> list[tuple[float, float]]:
    """The mask's runs of speech frames in seconds, clipped to the chunk; the whole chunk if none."""
    edges = np.diff(np.concatenate(([0], np.asarray(mask, dtype=np.int8), [0])))
    runs = [
        (float(start) * FRAME_SECONDS, min(float(end) * FRAME_SECONDS, duration))
        for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    ]
    runs = [(start, end) for start, end in runs if end > start]
    return runs or [(0.0, max(duration, 0.0))]


def _spread(tokens: list[str], runs: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(start, end) per token, in proportion to characters, laid over the speech runs only."""
    offsets = [0.0]  # speech time before each run
    for start, end in runs:
        offsets.append(offsets[-1] + end - start)
    speech = offsets.pop()
    total = sum(len(t) + 1 for t in tokens)

    def clock(position: float, *, ending: bool) -> tuple[float, int]:
        # A position on a run boundary is the start of the next run, or (for an end) the previous one's end.
        k = (bisect_left if ending else bisect_right)(offsets, position) - 1
        k = min(max(k, 0), len(runs) - 1)
        return min(runs[k][0] + position - offsets[k], runs[k][1]), k

    times: list[tuple[float, float]] = []
    weight = 0
    for token in tokens:
        start, first = clock(speech * weight / total, ending=False)
        end, last = clock(speech * (weight + len(token)) / total, ending=True)
        weight += len(token) + 1
        if first != last:  # straddles a silence: keep it in the run that holds most of it
            k = max(range(first, last + 1), key=lambda r: min(end, runs[r][1]) - max(start, runs[r][0]))
            start, end = max(start, runs[k][0]), min(end, runs[k][1])
        times.append((round(start, 3), round(max(end, start), 3)))
    return times


def _ends_sentence(token: str) -> bool:
    stripped = token.rstrip(_CLOSERS)
    return bool(stripped) and stripped[-1] in SENTENCE_ENDS


def estimate_times(transcript: ChunkTranscript, mask: np.ndarray, duration: float) -> ChunkTranscript:
    """Give a text-only transcript (see the module docstring) word and segment times from the mask.

    ``mask`` is `coverage.speech_mask` of the chunk's audio, ``duration`` the chunk's length in
    seconds. Every returned segment has ``words`` and ``estimated=True``; the text is unchanged but
    for whitespace. Calling it again on its own output gives the same times.
    """
    pieces: list[tuple[Segment, list[str]]] = []  # (provider segment, its tokens for one new segment)
    for segment in transcript.segments:
        current: list[str] = []
        for token in segment.text.split():
            current.append(token)
            if _ends_sentence(token) or len(current) >= MAX_SEGMENT_WORDS:
                pieces.append((segment, current))
                current = []
        if current:
            pieces.append((segment, current))
    if not pieces:
        return transcript.model_copy(update={"segments": []})
    times = _spread([t for _, tokens in pieces for t in tokens], _speech_runs(mask, duration))
    segments: list[Segment] = []
    for source, tokens in pieces:
        spans, times = times[: len(tokens)], times[len(tokens) :]
        words = [Word(start=start, end=end, text=t) for t, (start, end) in zip(tokens, spans, strict=True)]
        segments.append(
            source.model_copy(
                update={
                    "start": words[0].start,
                    "end": words[-1].end,
                    "text": " ".join(tokens),
                    "words": words,
                    "estimated": True,
                }
            )
        )
    return transcript.model_copy(update={"segments": segments})


def words_per_speech_second(transcript: ChunkTranscript, mask: np.ndarray) -> float | None:
    """Words (whitespace-separated tokens) per second of speech in the mask; None without speech."""
    speech = float(np.count_nonzero(mask)) * FRAME_SECONDS
    if speech <= 0:
        return None
    return len(transcript.text.split()) / speech


def sanity_check(transcript: ChunkTranscript, mask: np.ndarray) -> str | None:
    """A warning when the text cannot be right for the speech the audio holds, else None.

    Replaces the coverage check for providers without times: no text over at least
    MIN_SPEECH_SECONDS of speech, or a speaking rate outside the plausible range.
    """
    speech = float(np.count_nonzero(mask)) * FRAME_SECONDS
    if speech < MIN_SPEECH_SECONDS:
        return None
    words = len(transcript.text.split())
    if not words:
        return f"{speech:.1f} s of speech but no text"
    rate = words / speech
    if rate < MIN_WORDS_PER_SPEECH_SECOND:
        return (
            f"only {rate:.2f} words per second of speech ({words} words over {speech:.1f} s): "
            "text may be missing"
        )
    if rate > MAX_WORDS_PER_SPEECH_SECOND:
        return (
            f"{rate:.2f} words per second of speech ({words} words over {speech:.1f} s): "
            "more than anyone says, text may be invented or repeated"
        )
    return None


def estimated_report(transcript: ChunkTranscript, mask: np.ndarray) -> dict[str, Any]:
    """The keys a chunk document carries for estimated times (the merger's quality report reads them);
    the `sanity_check` warning, if any, goes into the document's ``warnings`` like any other."""
    rate = words_per_speech_second(transcript, mask)
    return {
        "timestamps": "estimated",
        "check": "words_per_speech_second",
        "words_per_speech_second": None if rate is None else round(rate, 3),
    }
