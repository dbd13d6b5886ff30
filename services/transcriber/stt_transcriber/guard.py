"""Repetition and silence guard: find the windows of a chunk's transcript that a decoder got wrong in
the two ways Whisper-style models are known for, so the transcriber can decode them again.

* A **loop**: the same words over and over where the audio does not repeat them ("I'm sorry. I'm
  sorry. I'm sorry." for a minute of speech, or one phrase repeated inside a segment). It starts when
  the decoder, conditioned on its own previous text, keeps predicting it.
* **Text in silence**: a segment over audio the energy check calls silent ("Thank you." after the last
  word) — Whisper was trained on subtitles, which often carry text where nobody speaks.

Only the windows are returned; `stt_transcriber.handler` decodes each again (no conditioning on
previous text, temperature fallback) and splices the result in.
"""

from __future__ import annotations

import re
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stt_common.transcript import Segment
from stt_transcriber.coverage import FRAME_SECONDS

# A phrase of up to MAX_NGRAM words repeated back to back this many times is a loop; one word needs
# more repeats, as people do say "no, no, no" (measured on the corpus: no real utterance reaches 5).
MAX_NGRAM = 12
MIN_REPEATS = 4
MIN_REPEATS_ONE_WORD = 6
# Whole segments with the same text back to back (the loop Whisper makes across 30 s windows).
MIN_SAME_SEGMENTS = 3
# How a suspect window is decoded again: without the previous text that fed the loop (nor the job's
# prompt, which Whisper reads as previous text), and with
# Whisper's temperature fallback (sampling at rising temperatures while the text compresses too well
# or scores too low). Text in silence is also put through the VAD. Providers that do not know an
# option ignore it.
REDECODE_OPTIONS = {
    "condition_on_previous_text": False,
    "temperature": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    # Whisper's own thresholds for falling back, whatever the job or server set.
    "compression_ratio_threshold": 2.4,
    "log_prob_threshold": -1.0,
}
SILENCE_REDECODE_OPTIONS = {**REDECODE_OPTIONS, "vad_filter": True}
# A segment at least this long over audio with no frame louder than the speech threshold.
MIN_SILENT_SEGMENT_SECONDS = 1.0

_WORD = re.compile(r"[\w']+")


@dataclass(frozen=True)
class Suspect:
    """Segments `first..last` (inclusive) of a transcript, and why they are suspect."""

    first: int
    last: int
    reason: str  # "loop" or "silence"

    def window(self, segments: list[Segment]) -> tuple[float, float]:
        return segments[self.first].start, max(s.end for s in segments[self.first : self.last + 1])


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Run:
    """`repeats` copies of the `n` words at `start`, back to back."""

    start: int
    n: int
    repeats: int

    @property
    def end(self) -> int:
        return self.start + self.n * self.repeats


def repeated_run(words: list[str]) -> Run | None:
    """The first back-to-back repetition of a phrase long enough to be a loop, or None."""
    count = len(words)
    for start in range(count):
        for n in range(1, MAX_NGRAM + 1):
            needed = MIN_REPEATS_ONE_WORD if n == 1 else MIN_REPEATS
            if start + n * needed > count:
                break
            gram = words[start : start + n]
            repeats = 1
            while words[start + repeats * n : start + (repeats + 1) * n] == gram:
                repeats += 1
            if repeats >= needed:
                return Run(start, n, repeats)
    return None


def loops(segments: list[Segment]) -> list[Suspect]:
    """Runs of segments that repeat a phrase (inside one segment or across several)."""
    suspects: list[Suspect] = []
    owner: list[int] = []  # segment index of every word
    words: list[str] = []
    for index, segment in enumerate(segments):
        segment_words = _words(segment.text)
        words.extend(segment_words)
        owner.extend([index] * len(segment_words))
    offset = 0
    while (run := repeated_run(words[offset:])) is not None:
        first, last = owner[offset + run.start], owner[offset + run.end - 1]
        suspects.append(Suspect(first, last, "loop"))
        offset += run.end
    index = 0
    while index < len(segments):  # identical segments back to back, even short ones ("Okay.")
        end = index
        key = " ".join(_words(segments[index].text))
        while end + 1 < len(segments) and key and " ".join(_words(segments[end + 1].text)) == key:
            end += 1
        if end - index + 1 >= MIN_SAME_SEGMENTS:
            suspects.append(Suspect(index, end, "loop"))
        index = end + 1
    return _merged(suspects)


def text_in_silence(segments: list[Segment], speech: np.ndarray) -> list[Suspect]:
    """Segments with text whose whole span the energy mask calls silent."""
    suspects = []
    for index, segment in enumerate(segments):
        if segment.end - segment.start < MIN_SILENT_SEGMENT_SECONDS or not _words(segment.text):
            continue
        frames = speech[int(segment.start / FRAME_SECONDS) : int(np.ceil(segment.end / FRAME_SECONDS))]
        if len(frames) and not frames.any():
            suspects.append(Suspect(index, index, "silence"))
    return suspects


def suspects(segments: list[Segment], speech: np.ndarray) -> list[Suspect]:
    """Every suspect window, in order, overlapping ones merged."""
    return _merged([*loops(segments), *text_in_silence(segments, speech)])


def _merged(found: list[Suspect]) -> list[Suspect]:
    merged: list[Suspect] = []
    for suspect in sorted(found, key=lambda s: (s.first, s.last)):
        if merged and suspect.first <= merged[-1].last + 1:
            last = merged[-1]
            reason = last.reason if last.reason == suspect.reason else "loop"
            merged[-1] = Suspect(last.first, max(last.last, suspect.last), reason)
        else:
            merged.append(suspect)
    return merged


def collapse_loop(segments: list[Segment]) -> list[Segment]:
    """Last resort when decoding again still loops: one of identical segments back to back, and one
    copy of a phrase repeated inside a segment (its word timings go: they belonged to the copies)."""
    kept: list[Segment] = []
    for segment in segments:
        if kept and _words(kept[-1].text) == _words(segment.text):
            kept[-1] = kept[-1].model_copy(update={"end": segment.end})
            continue
        tokens = segment.text.split()
        while (run := repeated_run([" ".join(_words(token)) for token in tokens])) is not None:
            tokens = tokens[: run.start + run.n] + tokens[run.end :]
        if tokens != segment.text.split():
            segment = segment.model_copy(update={"text": " ".join(tokens), "words": None})
        kept.append(segment)
    return kept


def cut_wav(source: Path, start: float, end: float, target: Path) -> None:
    """Write the `start`..`end` seconds of a PCM WAV to `target` (same format)."""
    with wave.open(str(source), "rb") as wav:
        rate = wav.getframerate()
        first = max(int(start * rate), 0)
        wav.setpos(min(first, wav.getnframes()))
        frames = wav.readframes(max(int(end * rate) - first, 0))
        params = wav.getparams()
    with wave.open(str(target), "wb") as out:
        out.setparams(params)
        out.writeframes(frames)


def shifted(segment: Segment, by: float) -> Segment:
    """A segment of a window's transcript in the chunk's time."""
    words = [w.model_copy(update={"start": w.start + by, "end": w.end + by}) for w in segment.words or []]
    return segment.model_copy(
        update={"start": segment.start + by, "end": segment.end + by, "words": words or segment.words}
    )
