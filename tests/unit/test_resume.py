"""`resume_triggers`: the one decision of what moves a job on, shared by the chunker, the
maintenance re-drive and ingest's retry."""

from __future__ import annotations

import pytest

from stt_common.messages import Topic
from stt_common.pipeline import ChunkView, resume_triggers


def chunks(*states: str) -> list[ChunkView]:
    """One letter per chunk: d(one), w(aiting: pending or under a lapsed lease), h(eld by a live lease)."""
    return [ChunkView(index, state == "d", state == "w") for index, state in enumerate(states)]


@pytest.mark.parametrize("mode", ["parallel", "chained"])
def test_a_job_without_chunks_goes_to_the_chunker(mode: str) -> None:
    assert resume_triggers(mode, [], chunked=True) == [(Topic.JOBS_SUBMITTED, None)]


@pytest.mark.parametrize("mode", ["parallel", "chained"])
def test_a_job_whose_chunking_did_not_finish_goes_to_the_chunker_whatever_its_rows_say(mode: str) -> None:
    # The chunker announces chunks while it cuts later ones: done rows of a partial set do not mean
    # the job can be merged, nor waiting rows that transcribing can resume.
    assert resume_triggers(mode, chunks("d", "d"), chunked=False) == [(Topic.JOBS_SUBMITTED, None)]
    assert resume_triggers(mode, chunks("d", "w"), chunked=False) == [(Topic.JOBS_SUBMITTED, None)]


@pytest.mark.parametrize("mode", ["parallel", "chained"])
def test_a_job_whose_chunks_are_all_done_goes_to_the_merger(mode: str) -> None:
    assert resume_triggers(mode, chunks("d", "d", "d"), chunked=True) == [(Topic.JOBS_TRANSCRIBED, None)]


def test_parallel_emits_every_waiting_chunk_and_none_a_live_lease_holds() -> None:
    assert resume_triggers("parallel", chunks("d", "w", "h", "w"), chunked=True) == [
        (Topic.CHUNKS_READY, 1),
        (Topic.CHUNKS_READY, 3),
    ]


def test_chained_emits_only_the_first_unfinished_chunk_and_only_if_it_waits() -> None:
    assert resume_triggers("chained", chunks("d", "w", "w"), chunked=True) == [(Topic.CHUNKS_READY, 1)]
    # Its transcriber is alive and will emit the next chunk itself when it is done.
    assert resume_triggers("chained", chunks("d", "h", "w"), chunked=True) == []


def test_the_order_of_the_rows_does_not_matter() -> None:
    shuffled = list(reversed(chunks("d", "w", "w")))
    assert resume_triggers("chained", shuffled, chunked=True) == [(Topic.CHUNKS_READY, 1)]
    assert resume_triggers("parallel", shuffled, chunked=True) == [
        (Topic.CHUNKS_READY, 1),
        (Topic.CHUNKS_READY, 2),
    ]
