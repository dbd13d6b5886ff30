"""Render merged segments as plain text, SubRip (SRT) and WebVTT.

Subtitle cues follow the usual readability limits: at most ``max_chars`` characters per line and
``max_lines`` lines per cue. A longer segment is split into several cues, timed by its word
timestamps when the provider gave them, otherwise by interpolating over the segment's duration in
proportion to character count. Segments with no text or no duration are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from stt_common.transcript import Segment

MAX_CHARS_PER_LINE = 42
MAX_LINES_PER_CUE = 2


def format_timestamp(seconds: float, *, separator: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or, with ``separator="."``, ``HH:MM:SS.mmm`` (WebVTT).

    Hours keep growing past 99 (``123:04:05,678``); negative times clamp to zero.
    """
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_txt(segments: Sequence[Segment], *, with_speakers: bool = False) -> str:
    """One segment per line (``speaker: text`` when ``with_speakers`` and a speaker is set)."""
    lines: list[str] = []
    for seg in segments:
        text = " ".join(seg.text.split())
        if not text:
            continue
        if with_speakers and seg.speaker:
            text = f"{seg.speaker}: {text}"
        lines.append(text)
    return "".join(f"{line}\n" for line in lines)


def to_srt(
    segments: Sequence[Segment], *, max_chars: int = MAX_CHARS_PER_LINE, max_lines: int = MAX_LINES_PER_CUE
) -> str:
    blocks: list[str] = []
    for cue in _cues(segments, max_chars, max_lines):
        start, end = format_timestamp(cue.start), format_timestamp(cue.end)
        text = "\n".join(_no_arrow(line) for line in cue.lines)
        blocks.append(f"{len(blocks) + 1}\n{start} --> {end}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(
    segments: Sequence[Segment],
    *,
    max_chars: int = MAX_CHARS_PER_LINE,
    max_lines: int = MAX_LINES_PER_CUE,
    voice_tags: bool = True,
) -> str:
    """WebVTT; with ``voice_tags`` a cue of a segment with a speaker starts with ``<v speaker>``."""
    blocks: list[str] = []
    for cue in _cues(segments, max_chars, max_lines):
        start = format_timestamp(cue.start, separator=".")
        end = format_timestamp(cue.end, separator=".")
        text = "\n".join(_vtt_escape(_no_arrow(line)) for line in cue.lines)
        if voice_tags and cue.speaker:
            text = f"<v {_vtt_escape(' '.join(cue.speaker.split()))}>{text}"
        blocks.append(f"{start} --> {end}\n{text}\n")
    return "WEBVTT\n\n" + "\n".join(blocks) if blocks else "WEBVTT\n"


# --------------------------------------------------------------------------------------------------
# cue building


@dataclass
class _Token:
    text: str
    start: float
    end: float


@dataclass
class _Cue:
    start: float
    end: float
    lines: list[str]
    speaker: str | None


def _no_arrow(text: str) -> str:
    # "-->" inside a cue's text would read as a timing line.
    return text.replace("-->", "->")


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _interpolated(text_tokens: Sequence[str], start: float, end: float) -> list[_Token]:
    """Token times spread over [start, end] in proportion to character offsets."""
    total = sum(len(t) for t in text_tokens) + len(text_tokens) - 1
    tokens: list[_Token] = []
    offset = 0
    for text in text_tokens:
        t0 = start + (end - start) * offset / total
        t1 = start + (end - start) * (offset + len(text)) / total
        tokens.append(_Token(text, t0, t1))
        offset += len(text) + 1
    return tokens


def _tokens(seg: Segment, max_chars: int) -> list[_Token]:
    text_tokens = seg.text.split()
    words = [w for w in seg.words or [] if w.text.strip()]
    if words and len(words) == len(text_tokens):
        # The segment text carries the provider's punctuation and casing; the words carry timing.
        tokens = [_Token(t, w.start, w.end) for t, w in zip(text_tokens, words, strict=True)]
    elif words:
        tokens = [_Token(w.text.strip(), w.start, w.end) for w in words]
    else:
        tokens = _interpolated(text_tokens, seg.start, seg.end)
    out: list[_Token] = []
    for token in tokens:
        if len(token.text) <= max_chars:
            out.append(token)
            continue
        # A run without spaces (e.g. Chinese) longer than a line: hard-wrap it.
        pieces = [token.text[i : i + max_chars] for i in range(0, len(token.text), max_chars)]
        duration = token.end - token.start
        offset = 0
        for piece in pieces:
            t0 = token.start + duration * offset / len(token.text)
            offset += len(piece)
            out.append(_Token(piece, t0, token.start + duration * offset / len(token.text)))
    return out


def _width(tokens: Sequence[_Token]) -> int:
    return sum(len(t.text) for t in tokens) + max(0, len(tokens) - 1)


def _wrap(tokens: Sequence[_Token], max_chars: int) -> list[list[_Token]]:
    """Greedy line filling."""
    lines: list[list[_Token]] = []
    for token in tokens:
        if lines and _width([*lines[-1], token]) <= max_chars:
            lines[-1].append(token)
        else:
            lines.append([token])
    return lines


def _balanced_lines(tokens: Sequence[_Token], max_chars: int, max_lines: int) -> list[list[_Token]]:
    """Lines for one cue: two lines of similar length rather than a full line and a stub."""
    if _width(tokens) <= max_chars:
        return [list(tokens)]
    if max_lines != 2:
        return _wrap(tokens, max_chars)
    best = min(range(1, len(tokens)), key=lambda k: max(_width(tokens[:k]), _width(tokens[k:])))
    return [list(tokens[:best]), list(tokens[best:])]


def _groups(tokens: Sequence[_Token], max_chars: int, max_lines: int) -> list[list[_Token]]:
    """Tokens split into cues that each fit ``max_lines`` lines, of similar length.

    As many cues as greedy filling would need, but each aiming at an equal share of the text, so
    a long segment does not end in a cue holding a single word.
    """
    lines = _wrap(tokens, max_chars)
    count = math.ceil(len(lines) / max_lines)
    target = _width(tokens) / count
    groups: list[list[_Token]] = []
    current: list[_Token] = []
    for token in tokens:
        candidate = [*current, token]
        too_long = len(_wrap(candidate, max_chars)) > max_lines
        past_target = (
            len(groups) < count - 1
            and _width(candidate) > target
            and target - _width(current) <= _width(candidate) - target
        )
        if current and (too_long or past_target):
            groups.append(current)
            current = [token]
        else:
            current = candidate
    if current:
        groups.append(current)
    return groups


def _segment_cues(seg: Segment, max_chars: int, max_lines: int) -> list[_Cue]:
    text = " ".join(seg.text.split())
    if not text or seg.end <= seg.start:
        return []
    if len(text) <= max_chars:
        return [_Cue(seg.start, seg.end, [text], seg.speaker)]
    groups = _groups(_tokens(seg, max_chars), max_chars, max_lines)
    cues: list[_Cue] = []
    for i, group in enumerate(groups):
        start = seg.start if i == 0 else max(seg.start, group[0].start)
        end = seg.end if i == len(groups) - 1 else min(seg.end, group[-1].end)
        if cues:
            start = max(start, cues[-1].end)
        if end <= start:
            # Missing or inconsistent word times: give the cue a sliver rather than a negative span.
            end = start + 0.001
        lines_text = [" ".join(t.text for t in line) for line in _balanced_lines(group, max_chars, max_lines)]
        cues.append(_Cue(start, end, lines_text, seg.speaker))
    return cues


def _cues(segments: Sequence[Segment], max_chars: int, max_lines: int) -> list[_Cue]:
    if max_chars < 1 or max_lines < 1:
        raise ValueError("max_chars and max_lines must be positive")
    cues: list[_Cue] = []
    for seg in segments:
        cues.extend(_segment_cues(seg, max_chars, max_lines))
    return cues


__all__ = ["MAX_CHARS_PER_LINE", "MAX_LINES_PER_CUE", "format_timestamp", "to_srt", "to_txt", "to_vtt"]
