"""Providers without timestamps, and per-chunk fallback, through the real stages.

Real English speech (the benchmark corpus) is cut into 60 s chunks. The fake wav.am (the job's
provider) and the fake HiSpeech (its fallback) answer each chunk with the recording's true words that
lie inside it — each file's reference spread over its span, cut at the chunk's bounds — and no times,
as both vendors do. What the pipeline adds (times estimated over the speech, merging by words alone)
must keep each word once: the merged text is within 1 WER point of the reference. With wav.am down
for one chunk, that chunk comes from HiSpeech and the others from wav.am.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.corpus import DEFAULT_DEST, load_manifest, long_recordings, prepare
from stt_common.db.models import JobStatus
from stt_common.s3 import ObjectStore, result_key
from stt_devstack.harness import Jobs, ServiceProcess, stop_services
from stt_devstack.wer import wer
from tests.fakes import hispeech_server, wavam_server
from tests.fakes.hispeech_server import FakeHiSpeech
from tests.fakes.wavam_server import FakeWavAm

pytestmark = pytest.mark.slow

WAVAM_TOKEN = "wavam-e2e-token"
HISPEECH_KEY = "hispeech-e2e-key"
CHUNK_SECONDS = 60


@dataclass(frozen=True)
class Recording:
    path: Path
    reference: str
    pcm: bytes  # 16 kHz mono 16-bit, as the chunker also makes it
    words: list[tuple[float, str]]  # each reference word at its estimated midpoint in the recording

    def chunk_offset(self, chunk_wav: bytes) -> float:
        """Where an uploaded chunk starts in the recording (its middle 0.2 s found in the PCM)."""
        with wave.open(io.BytesIO(chunk_wav)) as w:
            frames = w.readframes(w.getnframes())
        middle = len(frames) // 4 * 2
        probe = frames[middle : middle + 6400]
        found = self.pcm.find(probe)
        while found > 0 and found % 2:  # byte offsets inside a sample are not matches
            found = self.pcm.find(probe, found + 1)
        assert found >= 0, "the chunk is not a cut of the recording"
        assert self.pcm.find(probe, found + 2) < 0, "the chunk's middle occurs twice in the recording"
        return (found - middle) / 32000

    def text_between(self, start: float, end: float) -> str:
        return " ".join(word for at, word in self.words if start <= at < end)


@pytest.fixture(scope="module")
def recording() -> Recording:
    """Three and a half minutes of real English speech (four chunks of 60 s)."""
    manifest = load_manifest()
    manifest["sources"] = {
        k: v for k, v in manifest["sources"].items() if k in ("pocketsphinx", "asterisk-en")
    }
    items = [item for item in prepare(DEFAULT_DEST, manifest) if item.language == "en"]
    references = {item.id: item.reference for item in items}
    [long] = long_recordings(items, DEFAULT_DEST / "e2e-text-only", minutes=3.5, count=1)
    meta = json.loads(long.path.with_suffix(".json").read_text(encoding="utf-8"))
    assert not meta["repeated"], "a file heard twice would make a chunk's place ambiguous"
    pieces = meta["pieces"]
    words: list[tuple[float, str]] = []
    for piece in pieces:
        tokens = references[piece["id"]].split()
        step = (piece["end"] - piece["start"]) / max(len(tokens), 1)
        words.extend((piece["start"] + (i + 0.5) * step, token) for i, token in enumerate(tokens))
    with wave.open(str(long.path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        pcm = w.readframes(w.getnframes())
    return Recording(long.path, long.reference, pcm, words)


def true_text(recording: Recording) -> Callable[[float, bytes], str]:
    def answer(duration: float, chunk_wav: bytes) -> str:
        start = recording.chunk_offset(chunk_wav)
        return recording.text_between(start, start + duration)

    return answer


@pytest.fixture(scope="module")
def wavam(recording: Recording) -> Iterator[FakeWavAm]:
    with FakeWavAm(token=WAVAM_TOKEN, transcript_for=true_text(recording)) as fake:
        yield fake


@pytest.fixture(scope="module")
def hispeech(recording: Recording) -> Iterator[FakeHiSpeech]:
    with FakeHiSpeech(api_key=HISPEECH_KEY, transcript_for=true_text(recording)) as fake:
        yield fake


@pytest.fixture(scope="module")
async def text_only_pipeline(
    infra_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    wavam: FakeWavAm,
    hispeech: FakeHiSpeech,
) -> AsyncIterator[dict[str, ServiceProcess]]:
    log_dir = tmp_path_factory.mktemp("text-only")
    env = {
        **os.environ,
        **infra_env,
        "STT_LOG_LEVEL": "INFO",
        "STT_CHUNK_SECONDS": str(CHUNK_SECONDS),
        "STT_WAVAM_API_KEY": WAVAM_TOKEN,
        "STT_WAVAM_BASE_URL": wavam.base_url,
        "STT_HISPEECH_API_KEY": HISPEECH_KEY,
        "STT_HISPEECH_BASE_URL": hispeech.base_url,
        "STT_PROVIDER_ATTEMPTS": "2",
        "STT_BACKOFF_BASE_SECONDS": "0.05",
        "STT_BACKOFF_MAX_SECONDS": "0.2",
        "STT_MAX_IN_FLIGHT": "4",
    }
    services = {
        name: ServiceProcess(name, env, log_dir).start() for name in ("chunker", "transcriber", "merger")
    }
    try:
        await asyncio.gather(*(service.ready() for service in services.values()))
        yield services
    finally:
        stop_services(services.values())


async def test_text_without_times_is_merged_keeping_each_word_once(
    text_only_pipeline: dict[str, ServiceProcess],
    jobs: Jobs,
    store: ObjectStore,
    recording: Recording,
    wavam: FakeWavAm,
) -> None:
    job_id = await jobs.submit(recording.path, provider="wavam")
    job = await jobs.wait_terminal(job_id, timeout=300)
    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
    assert (job.chunks_total or 0) >= 3
    document = json.loads(await store.get_bytes(result_key(job_id, "json")))
    assert document["timestamps_estimated"] is True
    quality = document["quality"]
    assert quality["timestamps"] == "estimated"
    assert quality["check"] == "words_per_speech_second"
    assert {d["method"] for d in quality["merge_decisions"]} == {"untimed_word_alignment"}
    # The chunks' text is the reference's own (WER 0): the merge may add at most one point.
    assert wer(recording.reference, document["text"]) <= 0.01, quality["merge_decisions"]
    segments = document["segments"]
    assert all(s["estimated"] for s in segments)
    assert all(a["start"] <= b["start"] for a, b in itertools.pairwise(segments))
    assert segments[-1]["end"] <= (job.duration_seconds or 0) + 0.5


async def test_a_chunk_its_provider_fails_comes_from_the_fallback(
    text_only_pipeline: dict[str, ServiceProcess],
    jobs: Jobs,
    store: ObjectStore,
    recording: Recording,
    wavam: FakeWavAm,
    hispeech: FakeHiSpeech,
) -> None:
    # wav.am is down for the third chunk only (the one starting near 115 s), whoever asks and however
    # often; every other chunk it answers.
    def down_for_chunk_2(duration: float, chunk_wav: bytes) -> wavam_server.Failure | None:
        start = recording.chunk_offset(chunk_wav)
        return wavam_server.Failure.server_error(503) if 100 <= start < 150 else None

    wavam.configure(failure_for=down_for_chunk_2)
    hispeech.reset()
    try:
        job_id = await jobs.submit(
            recording.path, provider="wavam", options={"fallback_providers": ["hispeech"]}
        )
        job = await jobs.wait_terminal(job_id, timeout=300)
    finally:
        wavam.configure(failure_for=None)
    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
    document = json.loads(await store.get_bytes(result_key(job_id, "json")))
    providers = [chunk["provider"] for chunk in document["chunks"]]
    assert providers[2] == "hispeech"
    assert providers[:2] + providers[3:] == ["wavam"] * (len(providers) - 1)
    [fallback] = document["quality"]["fallbacks"]
    assert fallback["chunk"] == 2
    assert fallback["provider"] == "hispeech"
    assert [f["error_code"] for f in fallback["failed"]] == ["provider_unavailable"]
    assert len(hispeech.requests()) == 1
    assert wer(recording.reference, document["text"]) <= 0.01
    assert document["chunks"][2]["model"] == hispeech_server.FORMAL_MODEL
