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
    planner = ChunkPlanner(
        chunk_seconds=chunk_seconds,
        overlap_seconds=overlap_seconds,
        search_window_seconds=search_window_seconds,
        tail_tolerance_seconds=tail_tolerance_seconds,
        quietest=quietest,
    )
    return planner.finish(duration_s)


class ChunkPlanner:
    """:func:`plan_chunks` decided while the audio is still being decoded.

    :meth:`advance` is told how much audio exists so far and returns the chunks that are already
    certain: a boundary is fixed once the audio reaches past its whole search window plus the tail
    tolerance, because then no final duration can change it. :meth:`finish` is told the duration
    and returns the rest. Together they return exactly ``plan_chunks(duration)``, so a chunk can be
    cut and uploaded while later audio is still being decoded.
    """

    def __init__(
        self,
        *,
        chunk_seconds: float = 300,
        overlap_seconds: float = 10,
        search_window_seconds: float = 20,
        tail_tolerance_seconds: float | None = None,
        quietest: QuietestPoint | None = None,
    ) -> None:
        _validate(chunk_seconds, overlap_seconds, search_window_seconds, tail_tolerance_seconds)
        self._chunk = chunk_seconds
        self._half_overlap = overlap_seconds / 2
        self._half_search = search_window_seconds / 2
        self._tail = (
            default_tail_tolerance(search_window_seconds, overlap_seconds)
            if tail_tolerance_seconds is None
            else tail_tolerance_seconds
        )
        self._quietest = quietest
        self._boundaries: list[float] = []
        self._returned = 0
        self._finished = False

    def advance(self, available_s: float) -> list[ChunkWindow]:
        """The chunks made certain by the first ``available_s`` seconds of audio (none twice)."""
        self._settle(available_s, final=False)
        return self._take(len(self._boundaries))

    def finish(self, duration_s: float) -> list[ChunkWindow]:
        """The remaining chunks of a recording of ``duration_s`` seconds, the last one included."""
        if not math.isfinite(duration_s) or duration_s < 0:
            raise ValueError(f"duration must be a finite number of seconds >= 0, got {duration_s!r}")
        self._settle(duration_s, final=True)
        self._finished = True
        return self._take(len(self._boundaries) + 1, duration_s)

    def _settle(self, end_s: float, *, final: bool) -> None:
        """Set every boundary that audio ending at ``end_s`` (the true end when ``final``) decides."""
        if self._finished:
            raise RuntimeError("the plan is finished")
        while end_s - self._cursor > self._chunk + self._tail:
            target = self._cursor + self._chunk
            # Never closer than `tail` to the end; `target` itself always satisfies this because the
            # remainder exceeds chunk_seconds + tail.
            high = min(target + self._half_search, end_s - self._tail)
            if not final and high < target + self._half_search:
                break  # a longer recording would widen this search: wait for more audio
            self._boundaries.append(self._cut(target, high))

    @property
    def _cursor(self) -> float:
        return self._boundaries[-1] if self._boundaries else 0.0

    def _cut(self, target: float, high: float) -> float:
        low = target - self._half_search
        if self._quietest is None or high <= low:
            return target
        found = self._quietest(low, high)
        return target if math.isnan(found) else min(max(found, low), high)

    def _take(self, count: int, duration_s: float | None = None) -> list[ChunkWindow]:
        """Chunks ``self._returned`` up to ``count``; the last chunk ends at ``duration_s``."""
        edges = [0.0, *self._boundaries]
        chunks = []
        for index in range(self._returned, count):
            start = 0.0 if index == 0 else max(0.0, edges[index] - self._half_overlap)
            if index < len(self._boundaries):
                # A boundary lies at least `tail` (> overlap / 2) before the end, so this fits.
                end = edges[index + 1] + self._half_overlap
            else:
                assert duration_s is not None
                end = duration_s
            chunks.append(ChunkWindow(index=index, start=start, end=end))
        self._returned = count
        return chunks


def _validate(
    chunk_seconds: float,
    overlap_seconds: float,
    search_window_seconds: float,
    tail_tolerance_seconds: float | None,
) -> None:
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


def chunk_seconds_within(
    limit_seconds: float | None,
    *,
    chunk_seconds: float,
    overlap_seconds: float,
    search_window_seconds: float,
) -> float:
    """The planned chunk length, shortened so that no chunk is longer than ``limit_seconds`` (the most
    a provider takes per request); unchanged without a limit. Never below what the planner accepts
    (a step longer than the overlap), even if a limit that small cannot be met."""
    if limit_seconds is None:
        return chunk_seconds
    slack = max_chunk_seconds(
        chunk_seconds=0, overlap_seconds=overlap_seconds, search_window_seconds=search_window_seconds
    )
    shortest = search_window_seconds / 2 + overlap_seconds + 1.0
    return max(min(chunk_seconds, limit_seconds - slack), shortest)
