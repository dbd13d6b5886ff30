"""Transcript quality through the real stages: on real speech over several chunks the pipeline is no
worse than one plain pass of the same model and loses or doubles nothing at a chunk boundary, and a
real repetition loop is decoded again and gone.

The speech is the benchmark's corpus (bench/corpus.py): the pocketsphinx test data and the Asterisk
prompts, English and Russian (Debian packages of 18 MB each, fetched once into .cache/corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.corpus import DEFAULT_DEST, CorpusItem, load_manifest, parity_recording, prepare
from stt_common.db.models import JobStatus
from stt_common.providers import ProviderRequest
from stt_common.s3 import ObjectStore, result_key
from stt_common.transcript import Segment
from stt_devstack.harness import Jobs
from stt_devstack.wer import wer
from stt_transcriber import guard
from stt_transcriber.providers.local import LocalWhisperProvider
from tests.e2e.conftest import ServiceProcess, unmatched_runs
from tests.fixtures.audio import concat_wavs

pytestmark = pytest.mark.slow

# The peer baseline: one pass over the whole file, as whisper-asr-webservice runs it.
PLAIN_PASS = {"vad_filter": False, "condition_on_previous_text": True}


@pytest.fixture(scope="module")
def long_real_speech() -> CorpusItem:
    """Eleven minutes of real English speech (four chunks of the default 180 s) and its reference."""
    return parity_recording()


async def test_real_speech_over_several_chunks_is_no_worse_than_one_plain_pass(
    pipeline: dict[str, ServiceProcess], jobs: Jobs, store: ObjectStore, long_real_speech: CorpusItem
) -> None:
    job_id = await jobs.submit(long_real_speech.path, language="en")
    # The single pass runs while the pipeline works: same model, whole file at once.
    plain = LocalWhisperProvider(**PLAIN_PASS)
    single = await plain.transcribe(long_real_speech.path, ProviderRequest(language="en"))
    job = await jobs.wait_terminal(job_id, timeout=900)
    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
    assert (job.chunks_total or 0) >= 3
    document = json.loads(await store.get_bytes(result_key(job_id, "json")))
    reference = long_real_speech.reference
    assert wer(reference, document["text"]) <= wer(reference, single.text) + 0.01, document["quality"]
    # No sentence lost or doubled at a boundary: near each cut, nothing the single pass heard is
    # missing or repeated. (Inside a chunk the two may differ either way; WER covers that.)
    cuts = [decision["cut_seconds"] for decision in document["quality"]["merge_decisions"]]
    assert len(cuts) == (job.chunks_total or 0) - 1
    for seconds, run in unmatched_runs(single.text, document):
        assert run < 4 or min(abs(seconds - cut) for cut in cuts) > 15, (seconds, run, cuts)


# A decoder without Whisper's temperature fallback (an operator's speed setting) on speech in a
# language the model does not know: the classic loop, the same line for a minute.
NO_FALLBACK = {
    "temperature": 0.0,
    "compression_ratio_threshold": None,
    "log_prob_threshold": None,
    "no_speech_threshold": None,
}


@pytest.fixture(scope="module")
def russian_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty real Russian phone prompts back to back (the Asterisk corpus source)."""
    manifest = load_manifest()
    manifest["sources"] = {k: v for k, v in manifest["sources"].items() if k == "asterisk-ru"}
    items = sorted(prepare(DEFAULT_DEST, manifest), key=lambda item: item.id)[:20]
    path = tmp_path_factory.mktemp("ru") / "prompts.wav"
    concat_wavs([item.path for item in items], path, gap_seconds=0.0)
    return path


async def test_a_real_repetition_loop_is_decoded_again_and_gone(
    pipeline: dict[str, ServiceProcess], jobs: Jobs, store: ObjectStore, russian_prompts: Path
) -> None:
    # The loop is real: one pass of the same model and options repeats a line over and over.
    single = await LocalWhisperProvider().transcribe(
        russian_prompts, ProviderRequest(language="en", options=NO_FALLBACK)
    )
    assert guard.loops(single.segments), [s.text for s in single.segments]

    job_id = await jobs.submit(russian_prompts, language="en", options=NO_FALLBACK)
    job = await jobs.wait_terminal(job_id, timeout=600)
    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
    document = json.loads(await store.get_bytes(result_key(job_id, "json")))
    segments = [Segment.model_validate(segment) for segment in document["segments"]]
    assert guard.loops(segments) == [], [s.text for s in segments]
    redecodes = document["quality"]["redecodes"]
    assert redecodes, document["quality"]
    assert {r["reason"] for r in redecodes} == {"loop"}
    assert all(r["result"] in ("fixed", "collapsed") for r in redecodes)
    assert document["quality"]["loops_suppressed"] == len(redecodes)
    assert len(segments) < len(single.segments)
