"""Transcript quality on real human speech: one plain faster-whisper pass against the whole pipeline.

For every file of the corpus (bench/corpus.py: real recordings with reference transcripts, from
registry packages) and for long recordings made of them (several chunks each), it measures WER
(stt_devstack.wer, the same measure as `make demo` and the tests) for:

* `single:<name>`: one `WhisperModel.transcribe` over the whole file with candidate settings;
  `single:plain` (beam 5, no VAD, Whisper's default thresholds) is what a plain peer service does,
  the baseline the pipeline must not lose to;
* `pipeline:<name>`: the whole pipeline (ingest REST upload → chunker → transcriber → merger) with
  the server's defaults (`pipeline:defaults`) and with candidate transcriber settings.

Prints the table and writes bench/results/quality.json (WER, errors by kind, wall time, real-time
factor per row). docs/quality.md says which defaults the table chose.

Run: `make bench-quality` (or `.venv/bin/python -m bench.quality [--only ID ...] [--skip-pipeline]`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from faster_whisper import WhisperModel

from bench._stack import Bench, bench_stack, write_result
from bench.corpus import DEFAULT_DEST, CorpusItem, long_recordings, parity_recording, prepare
from stt_devstack.harness import wait_until
from stt_devstack.procs import free_port
from stt_devstack.wer import word_errors
from stt_ingest.keys import create_key
from stt_transcriber import model_join
from stt_transcriber.providers.local import bundled_model_path

# One plain pass as peers run it (whisper-asr-webservice: `model.transcribe(audio, beam_size=5)`),
# and the variants of it the defaults were chosen among.
SINGLE_PASS: dict[str, dict[str, Any]] = {
    "plain": {"beam_size": 5},
    "vad": {"beam_size": 5, "vad_filter": True},
    "no_condition": {"beam_size": 5, "condition_on_previous_text": False},
}
# The pipeline with the server's defaults, and with candidate transcriber settings (environment).
PIPELINE: dict[str, dict[str, str]] = {
    "defaults": {},
    "vad": {"STT_LOCAL_VAD_FILTER": "true"},
    "no_vad": {"STT_LOCAL_VAD_FILTER": "false"},
    "no_vad_no_condition": {"STT_LOCAL_VAD_FILTER": "false", "STT_LOCAL_CONDITION_ON_PREVIOUS_TEXT": "false"},
    # Chunk length (the server's default is the chunker's STT_CHUNK_SECONDS, 300 s): what shorter
    # chunks, which finish sooner with many transcribers, cost in words (bench/README.md weighs it).
    "chunk60": {"STT_CHUNK_SECONDS": "60"},
    "chunk120": {"STT_CHUNK_SECONDS": "120"},
    "chunk180": {"STT_CHUNK_SECONDS": "180"},
    "chunk300": {"STT_CHUNK_SECONDS": "300"},
}
CPU_THREADS = int(os.environ.get("STT_BENCH_CPU_THREADS", "0"))
# Every row as it is measured, so that `--resume` after an interruption measures only what is missing.
ROWS_LOG = DEFAULT_DEST.parent / "quality-rows.jsonl"


@dataclass
class Row:
    item: str
    kind: str
    language: str
    seconds: float
    setting: str
    model: str
    wer: float
    reference_words: int
    substitutions: int
    deletions: int
    insertions: int
    wall_seconds: float
    realtime_factor: float
    detail: dict[str, Any]


def _row(item: CorpusItem, setting: str, model: str, text: str, wall: float, detail: dict[str, Any]) -> Row:
    errors = word_errors(item.reference, text, item.language)
    return Row(
        item=item.id,
        kind=item.kind,
        language=item.language,
        seconds=round(item.seconds, 1),
        setting=setting,
        model=model,
        wer=round(errors.wer, 4),
        reference_words=errors.reference_words,
        substitutions=errors.substitutions,
        deletions=errors.deletions,
        insertions=errors.insertions,
        wall_seconds=round(wall, 2),
        realtime_factor=round(item.seconds / wall, 2) if wall > 0 else 0.0,
        detail=detail,
    )


def _measured(
    done: dict[tuple[str, str, str], Row], item: CorpusItem, model: str, setting: str
) -> Row | None:
    row = done.get((item.id, model, setting))
    if row is not None:
        print(_line(row) + "  (measured before)", flush=True)
    return row


def _keep(row: Row) -> Row:
    with ROWS_LOG.open("a", encoding="utf-8") as log:
        log.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
    print(_line(row), flush=True)
    return row


def single_pass_rows(
    items: list[CorpusItem], model_name: str, settings: list[str], done: dict[tuple[str, str, str], Row]
) -> Iterator[Row]:
    model: WhisperModel | None = None
    for item in items:
        for name in settings:
            if (row := _measured(done, item, model_name, f"single:{name}")) is not None:
                yield row
                continue
            if model is None:
                model = WhisperModel(
                    _model_dir(model_name), device="cpu", compute_type="int8", cpu_threads=CPU_THREADS
                )
            kwargs = SINGLE_PASS[name]
            language = item.language if model.model.is_multilingual else "en"
            started = time.perf_counter()
            segments, _info = model.transcribe(str(item.path), language=language, **kwargs)
            text = " ".join(segment.text.strip() for segment in segments)
            wall = time.perf_counter() - started
            yield _keep(_row(item, f"single:{name}", model_name, text, wall, {"options": kwargs}))


def _model_dir(name: str) -> str:
    """The local provider's model directory by catalogue name (`base` is joined on first use)."""
    return bundled_model_path() if name == "tiny.en" else str(model_join.ensure_joined())


async def pipeline_rows(
    bench: Bench,
    items: list[CorpusItem],
    name: str,
    env: dict[str, str],
    done: dict[tuple[str, str, str], Row],
) -> list[Row]:
    """Every item through a fresh set of stages (the transcriber configured by `env`), via REST."""
    rows = [
        row for item in items if (row := _measured(done, item, "tiny.en", f"pipeline:{name}")) is not None
    ]
    items = [item for item in items if (item.id, "tiny.en", f"pipeline:{name}") not in done]
    if not items:
        return rows
    port = free_port()
    ingest = bench.service("ingest", STT_HTTP_PORT=str(port))
    stages = [bench.service(stage, **env) for stage in ("chunker", "transcriber", "merger")]
    try:
        await asyncio.gather(*(stage.ready(timeout=120) for stage in [ingest, *stages]))
        key = await create_key(
            bench.sessions, name=f"quality-{name}", tenant="bench", rate_limit_per_minute=0
        )
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}/api/v1", headers={"X-API-Key": key.api_key}, timeout=60
        ) as client:
            for item in items:
                rows.append(_keep(await _through_pipeline(client, item, name)))
    finally:
        for process in [ingest, *stages]:
            process.kill()
    return rows


async def _through_pipeline(client: httpx.AsyncClient, item: CorpusItem, name: str) -> Row:
    started = time.perf_counter()
    with item.path.open("rb") as handle:
        form = {"provider": "local", "language": item.language}
        answer = await client.post("/transcribe", files={"file": (item.path.name, handle)}, data=form)
    answer.raise_for_status()
    job_id = answer.json()["job_id"]

    async def finished() -> dict[str, Any] | None:
        job = (await client.get(f"/jobs/{job_id}")).json()
        return job if job["status"] in ("COMPLETED", "FAILED", "CANCELLED") else None

    job = await wait_until(finished, timeout=max(600.0, item.seconds * 2), what=f"{item.id} transcribed")
    wall = time.perf_counter() - started
    if job["status"] != "COMPLETED":
        raise RuntimeError(f"{item.id}: the job ended {job['status']}: {job.get('error')}")
    document = (await client.get(f"/jobs/{job_id}/result", params={"format": "json"})).json()
    quality = document.get("quality") or {}
    detail = {
        "chunks": len(document.get("chunks") or []),
        "merge": [decision.get("method") for decision in quality.get("merge_decisions") or []],
        "warnings": quality.get("warnings") or [],
    }
    detail["language"] = document.get("language")
    detail["redecodes"] = quality.get("redecodes") or []
    return _row(item, f"pipeline:{name}", document.get("model") or "", document["text"], wall, detail)


def _line(row: Row) -> str:
    return (
        f"{row.item:<44} {row.model:<8} {row.setting:<28} WER {row.wer:6.3f}  "
        f"(S {row.substitutions:3d} D {row.deletions:3d} I {row.insertions:3d} / {row.reference_words:4d})  "
        f"{row.seconds:7.1f} s audio in {row.wall_seconds:6.1f} s ({row.realtime_factor:5.1f}x)"
    )


GROUPS = ("en_long", "en_short", "ru_long", "ru_short")


def _group(row: Row) -> str:
    return f"{row.language}_{'long' if row.kind == 'long' else 'short'}"


def summary(rows: list[Row]) -> dict[str, Any]:
    """Per model and setting: pooled WER (errors / reference words) by language, long or short."""
    out: dict[str, Any] = {}
    for setting in dict.fromkeys(f"{row.model} {row.setting}" for row in rows):
        picked = [row for row in rows if f"{row.model} {row.setting}" == setting]
        out[setting] = {group: _pooled([row for row in picked if _group(row) == group]) for group in GROUPS}
    return out


def _pooled(rows: list[Row]) -> dict[str, float] | None:
    words = sum(row.reference_words for row in rows)
    if not words:
        return None
    errors = sum(row.substitutions + row.deletions + row.insertions for row in rows)
    audio = sum(row.seconds for row in rows)
    wall = sum(row.wall_seconds for row in rows)
    return {"wer": round(errors / words, 4), "files": len(rows), "realtime_factor": round(audio / wall, 2)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--single", nargs="*", default=list(SINGLE_PASS), help="single-pass settings")
    parser.add_argument("--pipeline", nargs="*", default=list(PIPELINE), help="pipeline settings")
    parser.add_argument("--base", action="store_true", help="also measure the multilingual base model")
    parser.add_argument("--long", type=int, default=2, help="long English recordings to make")
    parser.add_argument(
        "--parity", action="store_true", help="also the e2e parity test's 11-minute recording (pipeline rows)"
    )
    parser.add_argument("--resume", action="store_true", help=f"reuse the rows kept in {ROWS_LOG}")
    parser.add_argument(
        "--every", type=int, default=4, help="single-pass rows for every Nth short phone prompt only"
    )
    args = parser.parse_args()

    done: dict[tuple[str, str, str], Row] = {}
    if args.resume and ROWS_LOG.exists():
        for line in ROWS_LOG.read_text(encoding="utf-8").splitlines():
            row = Row(**json.loads(line))
            done[(row.item, row.model, row.setting)] = row
    elif ROWS_LOG.exists():
        ROWS_LOG.unlink()
    corpus = prepare()
    english = [item for item in corpus if item.language == "en"]
    russian = [item for item in corpus if item.language == "ru"]
    long_en = long_recordings(english, DEFAULT_DEST, count=args.long) if args.long else []
    # Pipeline rows: the long recordings (several chunks each) and the read and spoken files; the
    # hundreds of short phone prompts are one chunk each, so their pipeline row is a single pass.
    through_pipeline = long_en + [item for item in english if item.kind in ("read", "speech")]
    if args.parity:
        through_pipeline.append(parity_recording())
    minutes = sum(item.seconds for item in [*english, *long_en]) / 60
    print(f"{len(english)} English files and {len(long_en)} long recordings: {minutes:.1f} min", flush=True)

    # Each short file costs a whole 30 s window of the encoder: a sample of the hundreds of phone
    # prompts says as much about them (the long recordings are made of all of them).
    sample = [item for n, item in enumerate(english) if item.kind != "phone" or n % args.every == 0]
    rows = list(single_pass_rows([*long_en, *sample], "tiny.en", args.single, done))
    if args.base:
        long_ru = long_recordings(russian, DEFAULT_DEST, count=1)
        sample_ru = [item for n, item in enumerate(russian) if n % args.every == 0]
        rows += single_pass_rows([*long_ru, *sample_ru], "base", ["plain", "vad"], done)
        rows += single_pass_rows(long_en, "base", ["plain"], done)
    if args.pipeline:
        async with bench_stack() as bench:
            for name in args.pipeline:
                rows += await pipeline_rows(bench, through_pipeline, name, PIPELINE[name], done)
    table = summary(rows)
    print("\n" + f"{'model and setting':<32}" + "".join(f"{g:<22}" for g in GROUPS))
    for setting, pooled in table.items():
        cells = [
            f"{p['wer']:.3f} ({p['files']}, {p['realtime_factor']}x)" if p else "-" for p in pooled.values()
        ]
        print(f"{setting:<32}" + "".join(f"{c:<22}" for c in cells))
    write_result("quality", {"summary": table, "rows": [asdict(row) for row in rows]})


if __name__ == "__main__":
    asyncio.run(main())
