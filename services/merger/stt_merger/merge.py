"""Merge per-chunk transcripts into one transcript in absolute time (pure functions, no I/O).

The chunker cuts the audio into windows that overlap by about 10 s (less or more where it moved a
cut point into silence), so every word spoken in an overlap is transcribed twice, and the words at a
window's edges are the least reliable ones (a word cut in half, a word the provider dropped or
misheard for lack of context). Merging therefore decides, for each boundary between chunk N and
N+1, one *cut*: everything before it comes from N, everything from it onward from N+1, so every
spoken word is kept exactly once and is taken from the chunk where it lies farther from the edge.

How the cut is found, best evidence first:

1. ``word_alignment`` (both chunks have word timings): the words of N that fall in the overlap (plus
   a margin) are aligned with the head words of N+1 (Smith-Waterman over word sequences; a pair
   matches when the normalised words are similar by ``rapidfuzz.fuzz.ratio`` and their times are
   within ``max_time_diff_seconds``). The cut is the matched pair closest to the middle of the
   overlap (a pair without a matched neighbour counts as a little farther): words of N before that
   pair are kept, words of N+1 from that pair on are kept. When a pause (no word in either chunk)
   lies nearer the middle and no matched pair straddles it, the cut is in that pause instead:
   a cut in silence cannot split a word.
2. ``segment_similarity`` (a side has no word timings): first the same alignment over the tokens of
   the segment texts, timed by interpolation over their segment (so with the looser
   ``untimed_time_diff_seconds``); a segment split by the cut keeps its tokens on the kept side.
   If the tokens do not align, whole segments are compared (``fuzz.ratio``, and
   ``fuzz.token_set_ratio`` for a copy truncated by the chunk edge): the duplicate pair closest to
   the middle is the cut, kept from the side with the fuller copy (when equal, the side where it is
   farther from the edge); duplicates beyond the cut are dropped, except the words of the cut's
   dropped copy that its kept copy lacks (chunks rarely split sentences at the same places).
3. ``untimed_word_alignment`` (a side's times are ``estimated``: the provider gave text only and the
   transcriber spread its words over the chunk's speech, see ``stt_transcriber.timing``): such times
   can be off by seconds, so they neither match words nor place the cut. N's tail words and N+1's
   head words are taken from a generous window (the overlap widened by its own length on the outer
   side, ``untimed_window_factor``) and aligned by their normalised text alone (``fuzz.ratio``, the
   same Smith-Waterman; time only breaks ties between repeated words). The cut is the matched pair
   in the middle of the matched pairs, counted in words, among pairs with a matched neighbour (a
   lone common word such as "the" matches by chance); N's words before it and N+1's from it on are
   kept, so each spoken word once. The alignment is trusted when it matches half the words that the
   estimated times put in the overlap (``min_score``) or holds a run of ``untimed_min_run`` words;
   otherwise ``midpoint`` on the estimated times.
4. ``midpoint`` (no convincing alignment, e.g. silence in the overlap): the cut is a time near the
   middle of the overlap, moved into a pause when there is one so that no word straddles it; a word
   (or, without word timings, a text token) belongs to N when its midpoint is before the cut and to
   N+1 otherwise. When one side has nothing at all in the overlap, the other side's are all kept.

Segments are then rebuilt from what is kept: provider segment boundaries are preserved, a segment
split by a cut keeps only its kept words (text rebuilt from them, start/end from them).

Speaker labels ("speaker_0", ...) are local to a chunk. Chunk N+1's labels are mapped onto chunk
N's (already global) labels by how long they co-occur in the overlap (time intersection of words,
or of segments; after ``untimed_word_alignment``, the number of matched words instead, since
estimated times may put a short turn beside the wrong one), greedily and one-to-one, largest
co-occurrence first; a label left unmatched keeps its own name when that name is still free,
otherwise it gets a fresh ``speaker_<n>``.
"""

from __future__ import annotations

import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, Field
from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from stt_common.transcript import ChunkTranscript, Segment, Word

MergeMethod = Literal["word_alignment", "segment_similarity", "untimed_word_alignment", "midpoint"]


class ChunkInput(BaseModel):
    """One transcribed chunk: its window in the original audio and the provider's output.

    ``transcript`` times are relative to ``start_seconds``.
    """

    index: int
    start_seconds: float
    end_seconds: float
    transcript: ChunkTranscript


class MergeDecision(BaseModel):
    """How one boundary between two consecutive chunks was resolved (for the quality report)."""

    left_index: int
    right_index: int
    method: MergeMethod
    # Absolute time of the cut: content before it comes from the left chunk, from it on the right.
    cut_seconds: float
    # Share of the overlap's words (tokens, segments) that the alignment matched, 0..1 (0: none).
    score: float
    overlap_start_seconds: float
    overlap_end_seconds: float
    matched: int = 0
    dropped_left_words: int = 0
    dropped_right_words: int = 0
    dropped_left_segments: int = 0
    dropped_right_segments: int = 0


class MergedTranscript(BaseModel):
    segments: list[Segment] = Field(default_factory=list)
    text: str = ""
    language: str | None = None
    decisions: list[MergeDecision] = Field(default_factory=list)


@dataclass(frozen=True)
class MergeOptions:
    """Tuning knobs; the defaults suit overlaps of 5-15 s and providers with ~0.1 s timing noise."""

    # Words of N this far before the overlap's start (and of N+1 after its end) join the alignment.
    margin_seconds: float = 2.0
    # Two copies of one word are never further apart than this (midpoint to midpoint).
    max_time_diff_seconds: float = 1.5
    # The same when a side's word times are interpolated over its segment (no word timings).
    untimed_time_diff_seconds: float = 4.0
    # fuzz.ratio / 100 above which two normalised words count as the same word.
    word_similarity: float = 0.75
    # Similarity / 100 above which two segments count as duplicates.
    segment_similarity: float = 0.8
    # An alignment needs at least this many matched words to be trusted.
    min_matches: int = 2
    # Cutting at a matched word with no matched neighbour costs as much as being this much farther
    # from the overlap's middle.
    isolated_match_penalty_seconds: float = 0.5
    # Matched words / words in the overlap (the smaller side) needed to trust an alignment.
    min_score: float = 0.5
    # A pause at least this long is a safe place for a midpoint cut.
    min_gap_seconds: float = 0.3
    # Estimated times (text-only providers): N's words from this many overlap lengths before the
    # overlap, and N+1's up to as many after it, are aligned (at least untimed_time_diff_seconds).
    untimed_window_factor: float = 1.0
    # There, a run of this many consecutive matched words is trusted even below min_score (which is
    # measured against the words that estimated times put in the overlap, only roughly right): a
    # phrase this long rarely repeats by chance within the window.
    untimed_min_run: int = 4


# --------------------------------------------------------------------------------------------------
# internal model


@dataclass
class _Unit:
    """A word, a text token (no word timings) or a whole segment in absolute time, comparable."""

    start: float
    end: float
    norm: str
    segment: int  # index into _Chunk.segments
    word: int  # index into the segment's words (untimed: its text tokens); -1 for a segment unit
    speaker: str | None
    tokens: int = 1
    position: int = 0  # index in the chunk's unit list (provider order)

    @property
    def mid(self) -> float:
        return (self.start + self.end) / 2


@dataclass
class _Chunk:
    index: int
    start: float
    end: float
    language: str | None
    segments: list[Segment]  # absolute times, sorted by start, empty ones removed
    has_words: bool
    estimated: bool  # some segment's times were estimated, not given by the provider
    # The chunk's words in segment order, then provider order. Without word timings: the tokens of
    # the segment texts, timed by interpolation over their segment (see `_interpolate`).
    words: list[_Unit]
    segment_units: list[_Unit]  # one per segment, same order
    dropped_words: set[tuple[int, int]] = field(default_factory=set)
    dropped_segments: set[int] = field(default_factory=set)
    # Segments replaced by their part that a duplicate elsewhere lacks (segment-level merge).
    trimmed: dict[int, Segment] = field(default_factory=dict)
    speaker_map: dict[str, str] = field(default_factory=dict)
    # Words matched with the previous chunk's by ``untimed_word_alignment``: who said them there is
    # better evidence for the speaker mapping than estimated times.
    matched_previous: list[tuple[_Unit, _Unit]] = field(default_factory=list)


def normalise(text: str) -> str:
    """Casefold and keep letters, digits and combining marks only (any script)."""
    return "".join(ch for ch in text.casefold() if unicodedata.category(ch)[0] in "LNM")


def _interpolate(tokens: Sequence[str], start: float, end: float) -> list[tuple[float, float]]:
    """Times for the tokens of an untimed segment, in proportion to their character offsets."""
    total = max(1, len(" ".join(tokens)))
    duration = max(0.0, end - start)
    times: list[tuple[float, float]] = []
    offset = 0
    for token in tokens:
        times.append((start + duration * offset / total, start + duration * (offset + len(token)) / total))
        offset += len(token) + 1
    return times


def _prepare(chunk: ChunkInput) -> _Chunk:
    offset = chunk.start_seconds
    segments: list[Segment] = []
    for seg in chunk.transcript.segments:
        shifted = (
            [w.model_copy(update={"start": w.start + offset, "end": w.end + offset}) for w in seg.words]
            if seg.words
            else None
        )
        text = seg.text.strip()
        if not text and not shifted:
            continue
        segments.append(
            seg.model_copy(
                update={"start": seg.start + offset, "end": seg.end + offset, "text": text, "words": shifted}
            )
        )
    segments.sort(key=lambda s: (s.start, s.end))
    has_words = all(s.words for s in segments)

    words: list[_Unit] = []
    segment_units: list[_Unit] = []
    for si, seg in enumerate(segments):
        tokens = [normalise(t) for t in seg.text.split()]
        tokens = [t for t in tokens if t]
        segment_units.append(
            _Unit(seg.start, seg.end, " ".join(tokens), si, -1, seg.speaker, tokens=len(tokens))
        )
        if has_words and seg.words:
            for wi, w in enumerate(seg.words):
                end = max(w.end, w.start)
                words.append(_Unit(w.start, end, normalise(w.text), si, wi, seg.speaker))
        elif not has_words:
            raw = seg.text.split()
            for ti, (start, end) in enumerate(_interpolate(raw, seg.start, seg.end)):
                words.append(_Unit(start, end, normalise(raw[ti]), si, ti, seg.speaker))
    # Provider order, not re-sorted by time: jittered timestamps must not reorder spoken words.
    for units in (words, segment_units):
        for position, unit in enumerate(units):
            unit.position = position
    return _Chunk(
        index=chunk.index,
        start=chunk.start_seconds,
        end=chunk.end_seconds,
        language=chunk.transcript.language,
        segments=segments,
        has_words=has_words,
        estimated=any(s.estimated for s in segments),
        words=words,
        segment_units=segment_units,
    )


# --------------------------------------------------------------------------------------------------
# alignment


def _align(
    a: Sequence[_Unit],
    b: Sequence[_Unit],
    score: Callable[[_Unit, _Unit], float | None],
    *,
    mismatch: float = 1.0,
    gap: float = 0.7,
) -> list[tuple[_Unit, _Unit]]:
    """Smith-Waterman local alignment of two unit sequences; returns the matched pairs in order.

    ``score`` gives a positive reward for a match or ``None`` for a mismatch. Local (not global)
    alignment because the windows are ragged: N's tail starts earlier than N+1's head and N+1's
    head runs past N's end, and the very edges hold partial or missing words.
    """
    n, m = len(a), len(b)
    if not n or not m:
        return []
    h = [[0.0] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]  # 0 stop, 1 diagonal, 2 up (skip a), 3 left (skip b)
    matched = [[False] * (m + 1) for _ in range(n + 1)]
    best, best_i, best_j = 0.0, 0, 0
    for i in range(1, n + 1):
        row, prev = h[i], h[i - 1]
        for j in range(1, m + 1):
            s = score(a[i - 1], b[j - 1])
            diag = prev[j - 1] + (s if s is not None else -mismatch)
            up = prev[j] - gap
            left = row[j - 1] - gap
            value, step = 0.0, 0
            if diag > value:
                value, step = diag, 1
            if up > value:
                value, step = up, 2
            if left > value:
                value, step = left, 3
            row[j] = value
            move[i][j] = step
            matched[i][j] = step == 1 and s is not None
            if value > best:
                best, best_i, best_j = value, i, j
    pairs: list[tuple[_Unit, _Unit]] = []
    i, j = best_i, best_j
    while i > 0 and j > 0 and h[i][j] > 0:
        step = move[i][j]
        if step == 1:
            if matched[i][j]:
                pairs.append((a[i - 1], b[j - 1]))
            i, j = i - 1, j - 1
        elif step == 2:
            i -= 1
        elif step == 3:
            j -= 1
        else:
            break
    pairs.reverse()
    return pairs


def _runs(pairs: Sequence[tuple[_Unit, _Unit]]) -> list[list[tuple[_Unit, _Unit]]]:
    """Split matched pairs into runs of consecutive matches (no skipped unit on either side)."""
    runs: list[list[tuple[_Unit, _Unit]]] = []
    for pair in pairs:
        if runs:
            last = runs[-1][-1]
            if pair[0].position == last[0].position + 1 and pair[1].position == last[1].position + 1:
                runs[-1].append(pair)
                continue
        runs.append([pair])
    return runs


def _word_score(options: MergeOptions, *, timed: bool) -> Callable[[_Unit, _Unit], float | None]:
    limit = options.max_time_diff_seconds if timed else options.untimed_time_diff_seconds
    threshold = options.word_similarity

    def score(a: _Unit, b: _Unit) -> float | None:
        distance = abs(a.mid - b.mid)
        if distance > limit or not a.norm or not b.norm:
            return None
        similarity = 1.0 if a.norm == b.norm else fuzz.ratio(a.norm, b.norm) / 100
        if similarity < threshold:
            return None
        # Closer in time is better: among repeated words ("no, no, no") pick the right copy.
        return similarity - 0.25 * distance / limit

    return score


def segment_similarity(a: str, b: str) -> float:
    """Similarity of two normalised segment texts, 0..1.

    ``token_set_ratio`` recognises a segment that is a truncated copy of the other (a chunk that
    starts mid-sentence), but only when both have a few tokens: with one or two it matches anything.
    """
    if not a or not b:
        return 0.0
    similarity = fuzz.ratio(a, b)
    if min(a.count(" "), b.count(" ")) >= 2:
        similarity = max(similarity, fuzz.token_set_ratio(a, b))
    return similarity / 100


def _segment_score(options: MergeOptions) -> Callable[[_Unit, _Unit], float | None]:
    tolerance = options.max_time_diff_seconds
    threshold = options.segment_similarity

    def score(a: _Unit, b: _Unit) -> float | None:
        if a.start > b.end + tolerance or b.start > a.end + tolerance:
            return None
        similarity = segment_similarity(a.norm, b.norm)
        return similarity if similarity >= threshold else None

    return score


def _gaps(units: Sequence[_Unit], start: float, end: float) -> list[tuple[float, float]]:
    """The stretches of [start, end] that no unit covers."""
    spans = sorted((max(u.start, start), min(u.end, end)) for u in units if u.end > start and u.start < end)
    gaps: list[tuple[float, float]] = []
    cursor = start
    for span_start, span_end in spans:
        if span_start > cursor:
            gaps.append((cursor, span_start))
        cursor = max(cursor, span_end)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def _pause_cut(
    left: Sequence[_Unit],
    right: Sequence[_Unit],
    ov_start: float,
    ov_end: float,
    options: MergeOptions,
    pairs: Sequence[tuple[_Unit, _Unit]] = (),
) -> float | None:
    """The time nearest the overlap's middle inside a pause that neither chunk puts a word in.

    Only pauses of at least ``min_gap_seconds`` count: two copies of one word cannot fall on
    opposite sides of such a pause unless their timings disagree by more than a word's length.
    With an alignment at hand, a pause that would still separate two matched copies is refused.
    """
    middle = (ov_start + ov_end) / 2
    wide = [g for g in _gaps([*left, *right], ov_start, ov_end) if g[1] - g[0] >= options.min_gap_seconds]

    def placed(gap: tuple[float, float]) -> float:
        pad = min((gap[1] - gap[0]) / 2, 0.25)
        return min(max(middle, gap[0] + pad), gap[1] - pad)

    for cut in sorted((placed(g) for g in wide), key=lambda t: abs(t - middle)):
        if all((a.mid < cut) == (b.mid < cut) for a, b in pairs):
            return cut
    return None


def _cut_time(
    left: Sequence[_Unit], right: Sequence[_Unit], ov_start: float, ov_end: float, options: MergeOptions
) -> float:
    """A cut time for the midpoint method: the overlap's middle, moved into a pause if possible."""
    middle = (ov_start + ov_end) / 2
    if ov_end <= ov_start:
        return middle
    left_in = any(ov_start <= u.mid <= ov_end for u in left)
    right_in = any(ov_start <= u.mid <= ov_end for u in right)
    if right_in and not left_in:
        return ov_start  # N heard nothing there: keep N+1's words
    if left_in and not right_in:
        return ov_end  # N+1 heard nothing there: keep N's words
    pause = _pause_cut(left, right, ov_start, ov_end, options)
    if pause is not None:
        return pause
    gaps = _gaps([*left, *right], ov_start, ov_end)
    if gaps:
        start, end = max(gaps, key=lambda g: g[1] - g[0])
        return (start + end) / 2
    return middle


# --------------------------------------------------------------------------------------------------
# one boundary


def _remainder(kept: _Unit, seg: Segment, *, tail: bool) -> Segment | None:
    """The part of a dropped duplicate ``seg`` that its kept copy lacks, on the side away from the cut.

    Two chunks rarely segment the overlap identically: the left copy of a sentence may stop a word
    before the right copy does. When the left copy is kept, the right copy's unmatched *tail*
    survives (``tail=True``); when the right copy is kept, the left copy's unmatched *head*.
    Tokens are matched exactly (normalised) with Levenshtein opcodes over token sequences.
    """
    raw = seg.text.split()
    norms = [normalise(t) for t in raw]
    index = [i for i, n in enumerate(norms) if n]
    tokens = [norms[i] for i in index]
    equal = [op for op in Levenshtein.opcodes(kept.norm.split(), tokens) if op.tag == "equal"]
    if not equal:
        return None
    if tail:
        if equal[-1].dest_end >= len(tokens):
            return None
        first, last = index[equal[-1].dest_end - 1] + 1, len(raw)
    else:
        if equal[0].dest_start == 0:
            return None
        first, last = 0, index[equal[0].dest_start]
    words = seg.words if seg.words and len(seg.words) == len(raw) else None
    if words:
        start, end = words[first].start, words[last - 1].end
        part_words: list[Word] | None = words[first:last]
    else:
        total = len(" ".join(raw))
        before = len(" ".join(raw[:first])) + (1 if first else 0)
        length = len(" ".join(raw[first:last]))
        duration = seg.end - seg.start
        start = seg.start + duration * before / total
        end = seg.start + duration * (before + length) / total
        part_words = None
    text = " ".join(raw[first:last])
    # A copy, not a new Segment: the part keeps the segment's speaker and decoder confidences.
    return seg.model_copy(update={"start": start, "end": end, "text": text, "words": part_words})


def _drop_words(chunk: _Chunk, units: Sequence[_Unit]) -> tuple[int, int]:
    """Drop word units from a chunk; returns (words dropped, segments left without any word)."""
    keys = {(u.segment, u.word) for u in units}
    chunk.dropped_words |= keys
    touched = {u.segment for u in units}
    emptied = 0
    for si in touched:
        if all((u.segment, u.word) in chunk.dropped_words for u in chunk.words if u.segment == si):
            emptied += 1
    return len(keys), emptied


def _drop_segments(chunk: _Chunk, units: Sequence[_Unit]) -> tuple[int, int]:
    """Drop segment units from a chunk; returns (words dropped, segments dropped)."""
    indices = {u.segment for u in units}
    chunk.dropped_segments |= indices
    words = sum(len(chunk.segments[si].words or []) for si in indices)
    return words, len(indices)


@dataclass(frozen=True)
class _Cut:
    """Where one boundary is cut, how sure the choice is, and what each side drops there.

    ``score`` and ``matched`` describe the alignment that was tried, even when it was not trusted
    and the method fell back to ``midpoint``.
    """

    method: MergeMethod
    cut: float
    score: float
    matched: int
    drop_left: Sequence[_Unit] = ()
    drop_right: Sequence[_Unit] = ()
    segment_level: bool = False  # the drops are whole segments (else words, or untimed tokens)
    # A dropped duplicate's words that its kept copy lacks: (chunk, its segment unit, the remainder).
    trim: tuple[_Chunk, _Unit, Segment] | None = None


def _merge_boundary(left: _Chunk, right: _Chunk, options: MergeOptions) -> MergeDecision:
    ov_start, ov_end = right.start, left.end
    if ov_end <= ov_start:
        found = _Cut("midpoint", (ov_start + ov_end) / 2, 0.0, 0)
    elif left.estimated or right.estimated:
        found = _untimed_cut(left, right, options)
    else:
        found = _aligned_cut(left, right, options)
    if found.method == "midpoint":
        # By word (or, untimed, by interpolated token): a long segment straddling the cut would
        # otherwise be kept or dropped whole.
        cut = _cut_time(left.words, right.words, ov_start, ov_end, options)
        found = _Cut(
            "midpoint",
            cut,
            found.score,
            found.matched,
            [u for u in left.words if u.mid >= cut],
            [u for u in right.words if u.mid < cut],
        )

    drop = _drop_segments if found.segment_level else _drop_words
    left_words, left_segments = drop(left, found.drop_left)
    right_words, right_segments = drop(right, found.drop_right)
    if found.trim is not None:
        chunk, unit, rest = found.trim
        chunk.trimmed[unit.segment] = rest
    return MergeDecision(
        left_index=left.index,
        right_index=right.index,
        method=found.method,
        cut_seconds=round(found.cut, 3),
        score=round(found.score, 3),
        overlap_start_seconds=ov_start,
        overlap_end_seconds=ov_end,
        matched=found.matched,
        dropped_left_words=left_words,
        dropped_right_words=right_words,
        dropped_left_segments=left_segments,
        dropped_right_segments=right_segments,
    )


def _aligned_cut(left: _Chunk, right: _Chunk, options: MergeOptions) -> _Cut:
    """Word alignment over the overlap, with trusted times (or, untimed, interpolated tokens).

    ``midpoint`` when the words do not align well enough and both sides have word timings (the
    caller then cuts by time); untimed, whole-segment duplicates are tried next (`_segment_cut`).
    """
    ov_start, ov_end = right.start, left.end
    middle = (ov_start + ov_end) / 2
    # Without word timings on a side, its "words" are segment-text tokens with interpolated times.
    timed = left.has_words and right.has_words
    margin = (
        options.margin_seconds if timed else max(options.margin_seconds, options.untimed_time_diff_seconds)
    )

    def in_overlap(units: Sequence[_Unit]) -> int:
        return sum(1 for u in units if ov_start <= u.mid <= ov_end)

    tail = [u for u in left.words if u.mid >= ov_start - margin]
    head = [u for u in right.words if u.mid <= ov_end + margin]
    pairs = _align(tail, head, _word_score(options, timed=timed))
    smaller = min(in_overlap(left.words), in_overlap(right.words))
    score = min(1.0, len(pairs) / smaller) if smaller else 0.0
    if len(pairs) < options.min_matches or score < options.min_score:
        if not timed:
            return _segment_cut(left, right, options)
        return _Cut("midpoint", middle, score, len(pairs))
    # A pair inside a run of consecutive matches is surer than an isolated one.
    run_length = [len(run) for run in _runs(pairs) for _ in run]

    def cost(k: int) -> float:
        distance = abs((pairs[k][0].mid + pairs[k][1].mid) / 2 - middle)
        return distance + (options.isolated_match_penalty_seconds if run_length[k] == 1 else 0)

    a, b = pairs[min(range(len(pairs)), key=cost)]
    pair_cut = (a.start + b.start) / 2
    # Interpolated times say nothing about pauses: only real word timings can place a cut in silence.
    pause = _pause_cut(left.words, right.words, ov_start, ov_end, options, pairs) if timed else None
    method: MergeMethod = "word_alignment" if timed else "segment_similarity"
    if pause is None or abs(pause - middle) >= abs(pair_cut - middle):
        return _Cut(method, pair_cut, score, len(pairs), left.words[a.position :], right.words[: b.position])
    # A pause nearer the middle, consistent with the alignment: as safe a cut.
    return _Cut(
        method,
        pause,
        score,
        len(pairs),
        [u for u in left.words if u.mid >= pause],
        [u for u in right.words if u.mid < pause],
    )


def _untimed_cut(left: _Chunk, right: _Chunk, options: MergeOptions) -> _Cut:
    """Word alignment that does not trust the times, for estimated ones (see the module docstring).

    ``midpoint`` with no drops when the words do not align (the caller then cuts by time). A trusted
    alignment's pairs are kept in ``right.matched_previous`` for the speaker mapping.
    """
    ov_start, ov_end = right.start, left.end
    middle = (ov_start + ov_end) / 2
    window = max((ov_end - ov_start) * options.untimed_window_factor, options.untimed_time_diff_seconds)
    tail = [u for u in left.words if u.mid >= ov_start - window]
    head = [u for u in right.words if u.mid <= ov_end + window]
    threshold, spread = options.word_similarity, ov_end - ov_start + 2 * window

    def score(a: _Unit, b: _Unit) -> float | None:
        if not a.norm or not b.norm:
            return None
        similarity = 1.0 if a.norm == b.norm else fuzz.ratio(a.norm, b.norm) / 100
        if similarity < threshold:
            return None
        # Time only breaks ties ("no, no, no"): never enough to turn a match into a mismatch.
        return similarity - 0.1 * min(1.0, abs(a.mid - b.mid) / spread)

    pairs = _align(tail, head, score)
    runs = [run for run in _runs(pairs) if len(run) >= 2]
    in_runs = [pair for run in runs for pair in run]
    # Estimated times put only roughly the right words inside the overlap; when they put none of a
    # side's there, the windows' sizes stand in.
    smaller = min(
        sum(1 for u in left.words if ov_start <= u.mid <= ov_end),
        sum(1 for u in right.words if ov_start <= u.mid <= ov_end),
    ) or min(len(tail), len(head))
    share = min(1.0, len(pairs) / smaller) if smaller else 0.0
    long_run = any(len(run) >= options.untimed_min_run for run in runs)
    if len(in_runs) < options.min_matches or (share < options.min_score and not long_run):
        return _Cut("midpoint", middle, share, len(pairs))
    # The middle of what both chunks heard is the middle of the overlap, counted in words.
    a, b = in_runs[(len(in_runs) - 1) // 2]
    right.matched_previous = pairs
    return _Cut(
        "untimed_word_alignment",
        (a.start + b.start) / 2,
        share,
        len(pairs),
        left.words[a.position :],
        right.words[: b.position],
    )


def _segment_cut(left: _Chunk, right: _Chunk, options: MergeOptions) -> _Cut:
    """Whole-segment duplicates, for when even the segment texts' tokens do not align.

    ``midpoint`` when no pair of segments is similar enough (the caller then cuts by time); else the
    drops are whole segments, and the dropped copy's remainder, if any, is the ``trim``.
    """
    ov_start, ov_end = right.start, left.end
    middle = (ov_start + ov_end) / 2
    tail = [u for u in left.segment_units if u.end > ov_start]
    head = [u for u in right.segment_units if u.start < ov_end]
    pairs = _align(tail, head, _segment_score(options))
    if not pairs:
        return _Cut("midpoint", middle, 0.0, 0)
    score = min(1.0, len(pairs) / min(len(tail), len(head)))
    a, b = min(pairs, key=lambda p: abs((p[0].mid + p[1].mid) / 2 - middle))
    # Keep the fuller copy (the other was cut at a chunk edge); if equal, the one farther from its
    # chunk's edge. The dropped copy's words that the kept one lacks survive (`_remainder`).
    keep_left = a.tokens > b.tokens if a.tokens != b.tokens else (a.mid + b.mid) / 2 < middle
    if keep_left:
        rest = _remainder(a, right.segments[b.segment], tail=True)
        drop_right = right.segment_units[: b.position + (1 if rest is None else 0)]
        return _Cut(
            "segment_similarity",
            a.end,
            score,
            len(pairs),
            left.segment_units[a.position + 1 :],
            drop_right,
            segment_level=True,
            trim=None if rest is None else (right, b, rest),
        )
    rest = _remainder(b, left.segments[a.segment], tail=False)
    drop_left = left.segment_units[a.position + (0 if rest is None else 1) :]
    return _Cut(
        "segment_similarity",
        b.start,
        score,
        len(pairs),
        drop_left,
        right.segment_units[: b.position],
        segment_level=True,
        trim=None if rest is None else (left, a, rest),
    )


# --------------------------------------------------------------------------------------------------
# speakers


def _speaker_units(chunk: _Chunk, start: float, end: float) -> list[_Unit]:
    units = chunk.words if chunk.has_words else chunk.segment_units
    return [u for u in units if u.speaker is not None and u.end > start and u.start < end]


def _fresh_label(taken: set[str]) -> str:
    n = 0
    while f"speaker_{n}" in taken:
        n += 1
    return f"speaker_{n}"


def _assign_speakers(chunks: Sequence[_Chunk]) -> None:
    """Map each chunk's local speaker labels to global ones (see the module docstring)."""
    used: set[str] = set()
    previous: _Chunk | None = None
    for chunk in chunks:
        labels = list(dict.fromkeys(s.speaker for s in chunk.segments if s.speaker is not None))
        mapping: dict[str, str] = {}
        if previous is not None and labels:
            start, end = chunk.start, previous.end
            together: defaultdict[tuple[str, str], float] = defaultdict(float)
            if chunk.matched_previous:
                for a, b in chunk.matched_previous:
                    if a.speaker is not None and b.speaker is not None:
                        together[(previous.speaker_map[a.speaker], b.speaker)] += 1
            else:
                for a in _speaker_units(previous, start, end):
                    for b in _speaker_units(chunk, start, end):
                        shared = min(a.end, b.end, end) - max(a.start, b.start, start)
                        if shared > 0 and a.speaker is not None and b.speaker is not None:
                            together[(previous.speaker_map[a.speaker], b.speaker)] += shared
            for (known, local), _ in sorted(together.items(), key=lambda kv: (-kv[1], kv[0])):
                if local not in mapping and known not in mapping.values():
                    mapping[local] = known
        taken = used | set(mapping.values())
        pending: list[str] = []
        for label in labels:
            if label in mapping:
                continue
            if label in taken:
                pending.append(label)
            else:
                mapping[label] = label
                taken.add(label)
        for label in pending:
            mapping[label] = _fresh_label(taken)
            taken.add(mapping[label])
        used = taken
        chunk.speaker_map = mapping
        previous = chunk


# --------------------------------------------------------------------------------------------------
# rebuild


def _join_words(words: Sequence[Word], original_text: str) -> str:
    parts = [w.text.strip() for w in words if w.text.strip()]
    # Scripts written without spaces (Chinese, Japanese, Thai) have segments without whitespace.
    separator = "" if len(parts) > 1 and not any(ch.isspace() for ch in original_text) else " "
    return separator.join(parts)


def _rebuild(chunk: _Chunk) -> list[Segment]:
    out: list[Segment] = []
    for si, seg in enumerate(chunk.segments):
        if si in chunk.dropped_segments:
            continue
        speaker = chunk.speaker_map.get(seg.speaker) if seg.speaker is not None else None
        if si in chunk.trimmed:
            out.append(chunk.trimmed[si].model_copy(update={"speaker": speaker}))
            continue
        part = _kept_part(chunk, si, seg) if chunk.has_words else _kept_tokens(chunk, si, seg)
        if part is seg:
            text = seg.text or _join_words(seg.words or [], seg.text)
            out.append(seg.model_copy(update={"speaker": speaker, "text": text}))
        elif part is not None:
            out.append(part.model_copy(update={"speaker": speaker}))
    return out


def _kept_part(chunk: _Chunk, si: int, seg: Segment) -> Segment | None:
    """``seg`` itself when all its words are kept, its kept words' segment, or None."""
    words = seg.words or []
    kept = [w for wi, w in enumerate(words) if (si, wi) not in chunk.dropped_words]
    if len(kept) == len(words):
        return seg
    if not kept:
        return None
    return seg.model_copy(
        update={
            "start": min(w.start for w in kept),
            "end": max(w.end for w in kept),
            "text": _join_words(kept, seg.text),
            "words": kept,
        }
    )


def _kept_tokens(chunk: _Chunk, si: int, seg: Segment) -> Segment | None:
    """The same for a segment without word timings, whose units are its text's tokens."""
    raw = seg.text.split()
    kept = [ti for ti in range(len(raw)) if (si, ti) not in chunk.dropped_words]
    if len(kept) == len(raw):
        return seg
    if not kept:
        return None
    times = _interpolate(raw, seg.start, seg.end)
    words = seg.words if seg.words and len(seg.words) == len(raw) else None
    return seg.model_copy(
        update={
            "start": times[kept[0]][0],
            "end": times[kept[-1]][1],
            "text": " ".join(raw[ti] for ti in kept),
            "words": [words[ti] for ti in kept] if words else None,
        }
    )


def _language(chunks: Sequence[_Chunk]) -> str | None:
    languages = Counter(c.language for c in chunks if c.language)
    return languages.most_common(1)[0][0] if languages else None


def merge_chunks(chunks: Sequence[ChunkInput], options: MergeOptions | None = None) -> MergedTranscript:
    """Merge chunk transcripts (any order; sorted by window start) into one absolute-time transcript."""
    options = options or MergeOptions()
    prepared = [_prepare(c) for c in sorted(chunks, key=lambda c: (c.start_seconds, c.index))]
    # Boundaries first: an untimed alignment's matched words serve the speaker mapping.
    decisions = [_merge_boundary(a, b, options) for a, b in pairwise(prepared)]
    _assign_speakers(prepared)
    segments = [seg for chunk in prepared for seg in _rebuild(chunk)]
    return MergedTranscript(
        segments=segments,
        text=" ".join(s.text for s in segments if s.text),
        language=_language(prepared),
        decisions=decisions,
    )
