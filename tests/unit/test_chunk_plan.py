"""Chunk planning: where long recordings are cut, how chunks overlap, and what is never violated."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stt_chunker.plan import ChunkPlanner, ChunkWindow, chunk_seconds_within, max_chunk_seconds, plan_chunks


def spans(chunks: list[ChunkWindow]) -> list[tuple[float, float]]:
    return [(round(c.start, 6), round(c.end, 6)) for c in chunks]


@pytest.mark.parametrize("duration", [0.0, 0.5, 42.0, 299.9, 300.0])
def test_short_audio_is_one_chunk(duration: float) -> None:
    assert plan_chunks(duration) == [ChunkWindow(0, 0.0, duration)]


@pytest.mark.parametrize("duration", [301.0, 310.0, 315.0])
def test_a_small_tail_stays_in_the_only_chunk(duration: float) -> None:
    assert plan_chunks(duration) == [ChunkWindow(0, 0.0, duration)]


def test_exact_multiples_cut_on_the_grid_without_a_callback() -> None:
    assert spans(plan_chunks(600.0)) == [(0, 305), (295, 600)]
    assert spans(plan_chunks(900.0)) == [(0, 305), (295, 605), (595, 900)]
    assert [c.index for c in plan_chunks(3600.0)] == list(range(12))


def test_a_tiny_tail_is_merged_into_the_previous_chunk() -> None:
    # 901 s: a third boundary at 900 would leave a 1 s chunk; the last chunk takes it instead.
    chunks = plan_chunks(901.0)
    assert spans(chunks) == [(0, 305), (295, 605), (595, 901)]
    assert chunks[-1].duration <= max_chunk_seconds()


def test_a_longer_tail_gets_its_own_chunk_of_at_least_the_tolerance() -> None:
    # 320 s: the remainder (20 s) is over the 15 s tolerance; the cut may not come later than
    # 15 s before the end even if the callback asks for it.
    chunks = plan_chunks(320.0, quietest=lambda low, high: high)
    assert spans(chunks) == [(0, 310), (300, 320)]
    assert chunks[1].end - (chunks[1].start + 5) >= 15


def test_consecutive_chunks_overlap_by_exactly_the_overlap() -> None:
    chunks = plan_chunks(2000.0, overlap_seconds=12, quietest=lambda low, high: low + (high - low) / 3)
    for before, after in itertools.pairwise(chunks):
        assert before.end - after.start == pytest.approx(12)


def test_zero_overlap_makes_contiguous_chunks() -> None:
    chunks = plan_chunks(1000.0, overlap_seconds=0)
    assert spans(chunks) == [(0, 300), (300, 600), (600, 900), (900, 1000)]


def test_boundary_moves_to_the_quiet_point_the_callback_returns() -> None:
    calls: list[tuple[float, float]] = []

    def quietest(low: float, high: float) -> float:
        calls.append((low, high))
        return low + 3.5  # a pause 6.5 s before the planned cut

    chunks = plan_chunks(700.0, quietest=quietest)
    # first window is 300 ± 10; the second is planned 300 s after the *moved* first cut.
    assert calls == [(290.0, 310.0), (583.5, 603.5)]
    assert spans(chunks) == [(0, 298.5), (288.5, 592), (582, 700)]


def test_an_answer_outside_the_window_is_clamped() -> None:
    assert spans(plan_chunks(700.0, quietest=lambda low, high: -1e9))[0] == (0, 295)
    assert spans(plan_chunks(700.0, quietest=lambda low, high: 1e9))[0] == (0, 315)
    assert spans(plan_chunks(700.0, quietest=lambda low, high: math.nan))[0] == (0, 305)


def test_the_callback_is_never_asked_beyond_the_audio_or_too_near_its_end() -> None:
    asked: list[tuple[float, float]] = []

    def quietest(low: float, high: float) -> float:
        asked.append((low, high))
        return high

    plan_chunks(318.0, quietest=quietest)
    assert asked == [(290.0, 303.0)]  # 318 - 15 s tolerance


def test_no_search_window_means_no_callback() -> None:
    def fail(low: float, high: float) -> float:
        raise AssertionError("called")

    assert spans(plan_chunks(605.0, search_window_seconds=0, quietest=fail)) == [(0, 305), (295, 605)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_seconds": 0},
        {"overlap_seconds": -1},
        {"search_window_seconds": -1},
        {"chunk_seconds": 20, "overlap_seconds": 10, "search_window_seconds": 20},
        {"tail_tolerance_seconds": 0},
        {"tail_tolerance_seconds": 5},  # = overlap / 2
        {"tail_tolerance_seconds": -1},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    values = {"chunk_seconds": 300.0, "overlap_seconds": 10.0, "search_window_seconds": 20.0} | kwargs
    with pytest.raises(ValueError, match="must"):
        plan_chunks(
            1000.0,
            chunk_seconds=values["chunk_seconds"],
            overlap_seconds=values["overlap_seconds"],
            search_window_seconds=values["search_window_seconds"],
            tail_tolerance_seconds=values.get("tail_tolerance_seconds"),
        )


@pytest.mark.parametrize("duration", [-1.0, math.nan, math.inf])
def test_invalid_durations_are_refused(duration: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        plan_chunks(duration)


def test_max_chunk_with_defaults_is_chunk_plus_search_window() -> None:
    assert max_chunk_seconds() == 320.0


@settings(max_examples=400, deadline=None)
@given(
    duration=st.floats(min_value=0, max_value=6 * 3600, allow_nan=False),
    chunk_seconds=st.floats(min_value=30, max_value=900),
    overlap_fraction=st.floats(min_value=0, max_value=0.3),
    search_fraction=st.floats(min_value=0, max_value=0.6),
    tail_fraction=st.none() | st.floats(min_value=0.01, max_value=0.5),
    answers=st.lists(st.floats(min_value=-0.5, max_value=1.5), min_size=1, max_size=50),
)
def test_plan_invariants(
    duration: float,
    chunk_seconds: float,
    overlap_fraction: float,
    search_fraction: float,
    tail_fraction: float | None,
    answers: list[float],
) -> None:
    overlap = chunk_seconds * overlap_fraction
    search = chunk_seconds * search_fraction
    tail = None if tail_fraction is None else overlap / 2 + chunk_seconds * tail_fraction
    asked: list[tuple[float, float]] = []

    def quietest(low: float, high: float) -> float:
        # Answers anywhere in (and beyond) the window, to exercise the clamping.
        asked.append((low, high))
        return low + (high - low) * answers[len(asked) % len(answers)]

    chunks = plan_chunks(
        duration,
        chunk_seconds=chunk_seconds,
        overlap_seconds=overlap,
        search_window_seconds=search,
        tail_tolerance_seconds=tail,
        quietest=quietest,
    )
    eps = 1e-6
    longest = max_chunk_seconds(
        chunk_seconds=chunk_seconds,
        overlap_seconds=overlap,
        search_window_seconds=search,
        tail_tolerance_seconds=tail,
    )

    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].start == 0.0
    assert chunks[-1].end == duration
    for low, high in asked:
        assert 0 <= low < high <= duration
    for chunk in chunks:
        assert 0 <= chunk.start <= chunk.end <= duration
        assert chunk.duration <= longest + eps
        if len(chunks) > 1:
            assert chunk.duration > 0
    for before, after in itertools.pairwise(chunks):
        # contiguous with an overlap of exactly `overlap` (every point covered, no gap) ...
        assert after.start <= before.end
        assert before.end - after.start == pytest.approx(overlap, abs=eps)
        # ... moving forward, each chunk bringing new audio
        assert after.start > before.start
        assert after.end > before.end
    for first, third in zip(chunks, chunks[2:], strict=False):
        assert third.start >= first.end - eps  # only neighbours overlap
    if duration <= chunk_seconds:
        assert len(chunks) == 1
    # never many more chunks than the nominal count
    assert len(chunks) <= max(1, math.ceil(duration / max(chunk_seconds - search / 2, 1e-9)))


@settings(max_examples=300, deadline=None)
@given(
    duration=st.floats(min_value=0, max_value=4 * 3600, allow_nan=False),
    chunk_seconds=st.floats(min_value=30, max_value=900),
    overlap_fraction=st.floats(min_value=0, max_value=0.3),
    search_fraction=st.floats(min_value=0, max_value=0.6),
    progress=st.lists(st.floats(min_value=0, max_value=1), max_size=40),
    answers=st.lists(st.floats(min_value=-0.5, max_value=1.5), min_size=1, max_size=50),
)
def test_planning_while_decoding_gives_the_same_plan(
    duration: float,
    chunk_seconds: float,
    overlap_fraction: float,
    search_fraction: float,
    progress: list[float],
    answers: list[float],
) -> None:
    """Chunks handed out as the audio arrives are final: the same as planning the whole recording."""
    overlap, search = chunk_seconds * overlap_fraction, chunk_seconds * search_fraction

    def quietest(low: float, high: float) -> float:
        # A pure function of the window, as a quiet point of fixed audio is.
        return low + (high - low) * answers[int(low) % len(answers)]

    planner = ChunkPlanner(
        chunk_seconds=chunk_seconds, overlap_seconds=overlap, search_window_seconds=search, quietest=quietest
    )
    streamed: list[ChunkWindow] = []
    for fraction in sorted(progress):
        streamed.extend(planner.advance(duration * fraction))
    streamed.extend(planner.finish(duration))
    whole = plan_chunks(
        duration,
        chunk_seconds=chunk_seconds,
        overlap_seconds=overlap,
        search_window_seconds=search,
        quietest=quietest,
    )
    assert streamed == whole


def test_chunks_are_handed_out_as_soon_as_their_boundary_is_certain() -> None:
    planner = ChunkPlanner(quietest=lambda low, high: low + 4.0)
    assert planner.advance(324.9) == []  # the search reaches 310 s; 15 s of tail must follow it
    assert planner.advance(325.0) == [ChunkWindow(0, 0.0, 299.0)]
    assert planner.advance(325.0) == []  # nothing twice
    assert planner.advance(1000.0) == [ChunkWindow(1, 289.0, 593.0), ChunkWindow(2, 583.0, 887.0)]
    assert planner.finish(1000.0) == [ChunkWindow(3, 877.0, 1000.0)]
    with pytest.raises(RuntimeError, match="finished"):
        planner.advance(2000.0)


@pytest.mark.parametrize("limit", [None, 1400.0, 120.0, 60.0, 25.0])
def test_chunks_fit_a_providers_request_limit(limit: float | None) -> None:
    settings = {"overlap_seconds": 10.0, "search_window_seconds": 20.0}
    chunk = chunk_seconds_within(limit, chunk_seconds=300.0, **settings)
    longest = max_chunk_seconds(chunk_seconds=chunk, **settings)
    if limit is None or limit >= 320.0:
        assert chunk == 300.0  # the default already fits
    elif limit >= 41.0:
        assert longest <= limit
        windows = plan_chunks(3600.0, chunk_seconds=chunk, **settings)
        assert max(w.duration for w in windows) <= limit
    else:  # no plan can be that short: the shortest the planner accepts
        assert chunk == 21.0
