"""Where to cut a long recording into overlapping chunks. Pure: no I/O, no clock.

The decision, in numbers (defaults in brackets):

* A recording of at most ``chunk_seconds + tail_tolerance_seconds`` (300 + 15 s) is one chunk,
  so a 301 s file is never split into 300 s and a 1 s sliver.
* Otherwise boundaries are planned ``chunk_seconds`` apart, each measured from the previous
  *actual* boundary (so a cut moved late does not make the next chunk short, and every chunk keeps
  close to the nominal length however many there are).
* Each boundary may move to the quietest point that ``quietest`` finds within
  ±``search_window_seconds / 2`` (±10 s) of its planned position, so that a cut falls in a pause
  rather than in a word. The search never reaches closer than ``tail_tolerance_seconds`` to the end,
  so the last chunk always carries at least that much new audio.
* Chunk N ends at its boundary + ``overlap_seconds / 2`` and chunk N+1 starts at the same boundary
  - ``overlap_seconds / 2``: consecutive chunks share exactly ``overlap_seconds`` (10 s) centred on
  the quiet point, which the merger de-duplicates. Only neighbours overlap.
* Hence no chunk is longer than :func:`max_chunk_seconds` (with the defaults 320 s =
  ``chunk_seconds + search_window_seconds``), and every instant of ``[0, duration]`` lies in at
  least one chunk.

The plan is deterministic for a given duration and callback, which matters because a re-driven job
re-plans and chunk rows are keyed by ``(job_id, index)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

QuietestPoint = Callable[[float, float], float]
"""``quietest(start_s, end_s) -> seconds``: the quietest instant in that window of the audio."""


@dataclass(frozen=True, slots=True)
class ChunkWindow:
    """One chunk: ``[start, end)`` in seconds from the start of the normalised audio."""

    index: int
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def default_tail_tolerance(search_window_seconds: float, overlap_seconds: float) -> float:
    """How much longer than ``chunk_seconds`` the last chunk may grow rather than leave a sliver."""
    return search_window_seconds / 2 + overlap_seconds / 2


def max_chunk_seconds(
    *,
    chunk_seconds: float = 300,
    overlap_seconds: float = 10,
    search_window_seconds: float = 20,
    tail_tolerance_seconds: float | None = None,
) -> float:
    """The longest chunk :func:`plan_chunks` can produce with these settings."""
    tail = (
        default_tail_tolerance(search_window_seconds, overlap_seconds)
        if tail_tolerance_seconds is None
        else tail_tolerance_seconds
    )
    return chunk_seconds + max(search_window_seconds / 2 + overlap_seconds, tail + overlap_seconds / 2)


def plan_chunks(
    duration_s: float,
    *,
    chunk_seconds: float = 300,
    overlap_seconds: float = 10,
    search_window_seconds: float = 20,
    tail_tolerance_seconds: float | None = None,
    quietest: QuietestPoint | None = None,
) -> list[ChunkWindow]:
    """Split ``[0, duration_s]`` into overlapping chunks cut at quiet points (see the module doc).

    ``quietest`` is called once per boundary with a window inside ``[0, duration_s]``; an answer
    outside that window (or NaN) is clamped into it. Without a callback every cut stays at its
    planned position. ``tail_tolerance_seconds`` defaults to ``search_window/2 + overlap/2``; a
    value given must exceed ``overlap/2``.
    """
    _validate(duration_s, chunk_seconds, overlap_seconds, search_window_seconds, tail_tolerance_seconds)
    tail = (
        default_tail_tolerance(search_window_seconds, overlap_seconds)
        if tail_tolerance_seconds is None
        else tail_tolerance_seconds
    )
    half_search = search_window_seconds / 2
    half_overlap = overlap_seconds / 2

    boundaries: list[float] = []
    cursor = 0.0
    while duration_s - cursor > chunk_seconds + tail:
        target = cursor + chunk_seconds
        low = target - half_search
        # Never closer than `tail` to the end; `target` itself always satisfies this because the
        # remainder exceeds chunk_seconds + tail.
        high = min(target + half_search, duration_s - tail)
        cut = target
        if quietest is not None and high > low:
            found = quietest(low, high)
            cut = target if math.isnan(found) else min(max(found, low), high)
        boundaries.append(cut)
        cursor = cut

    edges = [0.0, *boundaries, duration_s]
    chunks: list[ChunkWindow] = []
    for index in range(len(edges) - 1):
        start = 0.0 if index == 0 else max(0.0, edges[index] - half_overlap)
        end = duration_s if index == len(edges) - 2 else min(duration_s, edges[index + 1] + half_overlap)
        chunks.append(ChunkWindow(index=index, start=start, end=end))
    return chunks


def _validate(
    duration_s: float,
    chunk_seconds: float,
    overlap_seconds: float,
    search_window_seconds: float,
    tail_tolerance_seconds: float | None,
) -> None:
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {duration_s!r}")
    if not math.isfinite(chunk_seconds) or chunk_seconds <= 0:
        raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds!r}")
    if overlap_seconds < 0 or search_window_seconds < 0:
        raise ValueError("overlap_seconds and search_window_seconds must be >= 0")
    if tail_tolerance_seconds is not None and not tail_tolerance_seconds > overlap_seconds / 2:
        # A smaller tail could let the last cut land so near the end that the previous chunk's
        # overlap already reaches it, leaving a last chunk with nothing new.
        raise ValueError("tail_tolerance_seconds must be > overlap_seconds / 2")
    # The shortest step between boundaries is chunk - search/2; it must exceed the overlap so that
    # only neighbouring chunks overlap and every chunk brings new audio.
    if chunk_seconds - search_window_seconds / 2 <= overlap_seconds:
        raise ValueError(
            "chunk_seconds must exceed overlap_seconds + search_window_seconds / 2 "
            f"(got chunk={chunk_seconds}, overlap={overlap_seconds}, search window={search_window_seconds})"
        )
