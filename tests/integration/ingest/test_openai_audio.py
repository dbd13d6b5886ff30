"""`/v1/audio/transcriptions` and `/v1/audio/translations` in process (real Postgres, Redis, Kafka,
S3; no pipeline: jobs stay unfinished unless a test finishes them): OpenAI's error envelope on every
`/v1/` answer, the model mapping, the submission path they share with `/api/v1/transcribe`, the
answer past the wait, one job for a repeated request, and the `task` option on `/api/v1`.

The live stack with the official OpenAI SDK as the client is `tests/e2e/test_openai_compat.py`."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Job, JobEvent, JobStatus
from stt_common.s3 import ObjectStore, result_key
from stt_ingest.routes.openai_audio import wait_seconds
from tests.integration.ingest.conftest import Api, AppFactory, Key
from tests.integration.ingest.media import wav_bytes

pytestmark = pytest.mark.timeout(120)

TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
DOCUMENT = {
    "job_id": "x",
    "text": "Hello there. General Kenobi.",
    "language": "en",
    "duration_seconds": 2.5,
    "segments": [
        {
            "start": 0.0,
            "end": 1.2,
            "text": "Hello there.",
            "avg_logprob": -0.2,
            "no_speech_prob": 0.01,
            "words": [
                {"start": 0.0, "end": 0.5, "text": "Hello"},
                {"start": 0.6, "end": 1.2, "text": "there."},
            ],
        },
        {"start": 1.4, "end": 2.5, "text": "General Kenobi.", "words": []},
    ],
}


@pytest.fixture(scope="module")
async def short_wait(make_api: AppFactory) -> AsyncIterator[Api]:
    """An app that waits 0.3 s for a job (none finishes here: no pipeline runs)."""
    async with make_api(openai_wait_seconds=0.3) as started:
        yield started


def form(content: bytes | None = None, filename: str = "talk.wav", **fields: Any) -> dict[str, Any]:
    return {
        "files": {"file": (filename, content if content is not None else wav_bytes(0.5), "audio/wav")},
        "data": {name: value for name, value in fields.items() if value is not None},
    }


def bearer(key: Key) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.plaintext}"}


async def jobs_of(sessionmaker_: async_sessionmaker[AsyncSession], key: Key) -> list[Job]:
    async with sessionmaker_() as session:
        return list(await session.scalars(select(Job).where(Job.api_key_id == key.id)))


def assert_openai_error(response: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert (error["code"], error["param"]) == (code, param), error
    assert error["message"], error
    return dict(error)


async def test_errors_on_v1_are_openai_errors_and_api_v1_keeps_problems(api: Api, key: Key) -> None:
    missing = await api.client.post(TRANSCRIPTIONS, **form(model="whisper-1"))
    error = assert_openai_error(missing, 401, "unauthenticated")
    assert error["type"] == "authentication_error"
    assert "Bearer" in error["message"]
    assert missing.headers["x-request-id"]
    wrong = await api.client.post(
        TRANSCRIPTIONS, headers={"Authorization": "Bearer sk-not-ours"}, **form(model="whisper-1")
    )
    assert_openai_error(wrong, 401, "invalid_api_key")
    unknown_path = await api.client.get("/v1/models", headers=bearer(key))
    assert_openai_error(unknown_path, 404, "not_found")
    wrong_method = await api.client.get(TRANSCRIPTIONS, headers=bearer(key))
    assert_openai_error(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"
    # The rest of the API is untouched: RFC 9457 problems.
    problem = await api.client.post("/api/v1/transcribe", **form())
    assert problem.status_code == 401
    assert problem.headers["content-type"] == "application/problem+json"
    assert problem.json()["code"] == "unauthenticated"


@pytest.mark.parametrize(
    ("fields", "status", "code", "param", "says"),
    [
        ({"model": "gpt-4o-transcribe"}, 400, "model_not_found", "model", "local/base"),
        ({"model": "nosuch/model"}, 400, "model_not_found", "model", "GET /api/v1/providers"),
        ({"model": "local/"}, 400, "model_not_found", "model", "provider/model"),
        ({"model": "local/large-v9"}, 400, "validation_error", "model", "tiny.en, base"),
        ({"model": "openai"}, 400, "validation_error", "model", "STT_OPENAI_API_KEY"),
        ({"response_format": "xml"}, 400, "invalid_value", "response_format", "verbose_json"),
        (
            {"timestamp_granularities[]": "word"},
            400,
            "invalid_value",
            "timestamp_granularities[]",
            "verbose_json",
        ),
        (
            {"response_format": "verbose_json", "timestamp_granularities[]": "letter"},
            400,
            "invalid_value",
            "timestamp_granularities[]",
            "word and/or segment",
        ),
        ({"temperature": "1.5"}, 400, "invalid_value", "temperature", "0 to 1"),
        ({"temperature": "nan"}, 400, "invalid_value", "temperature", "0 to 1"),
        ({"language": "not a language"}, 400, "invalid_value", "language", "Correct it"),
        ({"stream": "true"}, 400, "unknown_parameter", "stream", "leave it out"),
        ({"model": ["whisper-1", "local"]}, 400, "duplicate_parameter", "model", "send it once"),
    ],
)
async def test_invalid_requests_are_refused_before_any_job(
    api: Api,
    key: Key,
    sessionmaker_: async_sessionmaker[AsyncSession],
    fields: dict[str, Any],
    status: int,
    code: str,
    param: str,
    says: str,
) -> None:
    response = await api.client.post(TRANSCRIPTIONS, headers=bearer(key), **form(**fields))
    error = assert_openai_error(response, status, code, param)
    assert says in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert "x-should-retry" not in response.headers
    assert await jobs_of(sessionmaker_, key) == []


async def test_media_problems_are_400s_with_our_code(api: Api, key: Key) -> None:
    not_audio = await api.client.post(
        TRANSCRIPTIONS, headers=bearer(key), **form(b"just some text, not audio " * 20, model="whisper-1")
    )
    # Our 415 is OpenAI's 400 ("Invalid file format"), with our code.
    error = assert_openai_error(not_audio, 400, "unsupported_media_type")
    assert "not a recognised audio or video format" in error["message"]
    no_file = await api.client.post(
        TRANSCRIPTIONS, headers=bearer(key), files={"model": (None, b"whisper-1")}
    )
    assert_openai_error(no_file, 400, "missing_file")
    not_a_form = await api.client.post(TRANSCRIPTIONS, headers=bearer(key), data={"model": "whisper-1"})
    assert_openai_error(not_a_form, 400, "unsupported_content_type")


async def test_a_local_english_only_model_cannot_translate(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    response = await api.client.post(TRANSLATIONS, headers=bearer(key), **form(model="local/tiny.en"))
    error = assert_openai_error(response, 400, "validation_error", "model")
    assert "English-only" in error["message"]
    assert "'base'" in error["message"]
    assert await jobs_of(sessionmaker_, key) == []


async def test_past_the_wait_a_504_names_the_job_and_the_same_request_finds_it_again(
    short_wait: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> None:
    content = wav_bytes(0.7)
    fields = {"model": "local/base", "language": "en", "response_format": "verbose_json"}
    first = await short_wait.client.post(TRANSCRIPTIONS, headers=bearer(key), **form(content, **fields))
    error = assert_openai_error(first, 504, "job_not_finished")
    assert first.headers["x-should-retry"] == "false"
    location = first.headers["location"]
    job_id = uuid.UUID(location.rsplit("/", 1)[1])
    assert location == f"http://ingest.test/api/v1/jobs/{job_id}"
    assert str(job_id) in error["message"]
    assert "STT_OPENAI_WAIT_SECONDS" in error["message"]
    [job] = await jobs_of(sessionmaker_, key)
    assert (job.id, job.status, job.provider, job.model, job.language) == (
        job_id,
        JobStatus.UPLOADED,
        "local",
        "base",
        "en",
    )
    assert "task" not in job.options  # a transcription's options are what they always were

    # The SDK's retry (or the user sending it again) is the same request: the same job answers.
    again = await short_wait.client.post(
        TRANSCRIPTIONS,
        headers={**bearer(key), "X-Stainless-Retry-Count": "1"},
        **form(content, **{**fields, "response_format": "json"}),
    )
    assert_openai_error(again, 504, "job_not_finished")
    assert again.headers["location"] == location
    assert again.headers["idempotent-replayed"] == "true"
    assert len(await jobs_of(sessionmaker_, key)) == 1

    # Once it is done, the same request answers at once, in every format.
    await finish(sessionmaker_, store, job_id)
    answers: dict[str, Any] = {}
    for response_format in ("json", "text", "srt", "vtt", "verbose_json"):
        response = await short_wait.client.post(
            TRANSCRIPTIONS,
            headers=bearer(key),
            **form(content, **{**fields, "response_format": response_format}),
        )
        assert response.status_code == 200, response.text
        assert response.headers["location"] == location
        answers[response_format] = response.json() if "json" in response_format else response.text
    assert answers["json"] == {"text": DOCUMENT["text"], "usage": {"type": "duration", "seconds": 3}}
    assert answers["text"] == DOCUMENT["text"] + "\n"
    assert answers["srt"].startswith("1\n00:00:00,000 --> ")
    assert answers["vtt"].startswith("WEBVTT")
    verbose = answers["verbose_json"]
    assert (verbose["task"], verbose["language"], verbose["duration"]) == ("transcribe", "english", 2.5)
    assert [s["text"] for s in verbose["segments"]] == [" Hello there.", " General Kenobi."]
    assert verbose["segments"][0]["avg_logprob"] == -0.2
    assert verbose["segments"][1]["id"] == 1
    assert "words" not in verbose
    assert len(await jobs_of(sessionmaker_, key)) == 1


async def test_word_granularity_is_a_job_with_word_times_and_answers_words(
    short_wait: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> None:
    fields = {"model": "local", "response_format": "verbose_json", "timestamp_granularities[]": "word"}
    content = wav_bytes(0.6)
    first = await short_wait.client.post(TRANSCRIPTIONS, headers=bearer(key), **form(content, **fields))
    assert first.status_code == 504
    [job] = await jobs_of(sessionmaker_, key)
    assert job.options["output"]["word_timestamps"] is True
    await finish(sessionmaker_, store, job.id)
    answer = await short_wait.client.post(TRANSCRIPTIONS, headers=bearer(key), **form(content, **fields))
    verbose = answer.json()
    assert verbose["words"] == [
        {"word": "Hello", "start": 0.0, "end": 0.5},
        {"word": "there.", "start": 0.6, "end": 1.2},
    ]
    assert "segments" not in verbose  # OpenAI's rule: words only, unless segment is asked for too
    both = await short_wait.client.post(
        TRANSCRIPTIONS,
        headers=bearer(key),
        files={"file": ("talk.wav", content, "audio/wav")},
        data={**fields, "timestamp_granularities[]": ["word", "segment"]},
    )
    assert both.status_code == 200, both.text
    assert len(both.json()["segments"]) == 2
    assert len(both.json()["words"]) == 2


async def test_a_failed_job_is_not_reused_and_a_failure_says_not_to_retry(
    short_wait: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    content = wav_bytes(0.8)
    first = await short_wait.client.post(
        TRANSCRIPTIONS, headers=bearer(key), **form(content, model="whisper-1")
    )
    await fail(sessionmaker_, job_of(first), "provider_unavailable", "down")
    # The same request after its job failed is a new job, as a retry after a failure should be.
    second = await short_wait.client.post(
        TRANSCRIPTIONS, headers=bearer(key), **form(content, model="whisper-1")
    )
    assert_openai_error(second, 504, "job_not_finished")
    assert job_of(second) != job_of(first)
    assert len(await jobs_of(sessionmaker_, key)) == 2

    # A job that failed by the end of the wait (here: found through its Idempotency-Key) is answered
    # with its error, the job's place, and no invitation to retry.
    keyed = {**bearer(key), "Idempotency-Key": "fail-1"}
    other = wav_bytes(0.9)
    created = await short_wait.client.post(TRANSCRIPTIONS, headers=keyed, **form(other, model="whisper-1"))
    await fail(sessionmaker_, job_of(created), "invalid_audio", "not speech")
    answer = await short_wait.client.post(TRANSCRIPTIONS, headers=keyed, **form(other, model="whisper-1"))
    error = assert_openai_error(answer, 400, "job_invalid_audio")
    assert answer.headers["x-should-retry"] == "false"
    assert answer.headers["location"] == created.headers["location"]
    assert str(job_of(created)) in error["message"]
    assert "not speech" in error["message"]


def job_of(response: Any) -> uuid.UUID:
    return uuid.UUID(response.headers["location"].rsplit("/", 1)[1])


async def fail(
    sessionmaker_: async_sessionmaker[AsyncSession], job_id: uuid.UUID, code: str, message: str
) -> None:
    async with sessionmaker_() as session, session.begin():
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.FAILED, error_code=code, error_message=message)
        )
        session.add(
            JobEvent(job_id=job_id, stage="test", from_status="UPLOADED", to_status="FAILED", detail={})
        )


async def test_the_api_v1_task_option(
    api: Api, make_api: AppFactory, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    # A local translate job naming no model gets the multilingual one (the default is English-only).
    accepted = await api.client.post("/api/v1/transcribe", headers=key.headers, **form(task="translate"))
    assert accepted.status_code == 202, accepted.text
    [job] = await jobs_of(sessionmaker_, key)
    assert (job.model, job.options["task"]) == ("base", "translate")
    plain = await api.client.post("/api/v1/transcribe", headers=key.headers, **form(wav_bytes(0.4)))
    assert plain.status_code == 202
    async with sessionmaker_() as session:
        transcription = await session.get(Job, uuid.UUID(plain.json()["job_id"]))
    assert transcription is not None
    assert transcription.model is None
    assert "task" not in transcription.options
    refused = await api.client.post(
        "/api/v1/transcribe", headers=key.headers, **form(task="translate", model="tiny.en")
    )
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["errors"][0]["loc"] == ["body", "model"]
    assert "English-only" in problem["detail"]
    assert "'base'" in problem["detail"]
    bad = await api.client.post("/api/v1/transcribe", headers=key.headers, **form(task="summarise"))
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["body", "task"]
    async with make_api(openai_api_key="sk-test") as with_openai:
        url = await with_openai.client.post(
            "/api/v1/transcribe/url",
            headers=key.headers,
            json={"url": "https://media.example.com/a.mp3", "provider": "openai", "task": "translate"},
        )
        assert url.status_code == 422, url.text
        detail = url.json()["detail"]
        assert "'openai' cannot translate" in detail
        assert "local" in detail
        assert url.json()["errors"][0]["loc"] == ["body", "provider"]


def test_the_wait_ends_before_the_clients_read_timeout() -> None:
    assert wait_seconds(600.0, None) == 600.0
    assert wait_seconds(600.0, "600") == 595.0  # the SDK's default: answered before it gives up
    assert wait_seconds(30.0, "600") == 30.0
    assert wait_seconds(600.0, "10") == 8.0
    assert wait_seconds(600.0, "soon") == 600.0
    assert wait_seconds(600.0, "-1") == 600.0


def test_the_operations_are_documented_with_openai_errors(api: Api) -> None:
    schema = api.app.openapi()
    for path in (TRANSCRIPTIONS, TRANSLATIONS):
        operation = schema["paths"][path]["post"]
        assert operation["tags"] == ["openai"]
        assert "OpenAI" in operation["summary"]
        assert "x-should-retry" in operation["description"]
        body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert {"file", "model", "response_format", "timestamp_granularities[]"} <= set(body["properties"])
        assert "422" not in operation["responses"]
        for status, response in operation["responses"].items():
            if status != "200":
                assert set(response["content"]) == {"application/json"}, status


async def finish(
    sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore, job_id: uuid.UUID
) -> None:
    """What the merger leaves: the result in every format, the job COMPLETED with its timeline row."""
    await store.put_bytes(result_key(job_id, "json"), json.dumps(DOCUMENT).encode())
    await store.put_bytes(result_key(job_id, "txt"), b"Hello there.\nGeneral Kenobi.\n")
    await store.put_bytes(result_key(job_id, "srt"), b"1\n00:00:00,000 --> 00:00:01,200\nHello there.\n")
    await store.put_bytes(
        result_key(job_id, "vtt"), b"WEBVTT\n\n00:00:00.000 --> 00:00:01.200\nHello there.\n"
    )
    async with sessionmaker_() as session, session.begin():
        await session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.COMPLETED))
        session.add(
            JobEvent(job_id=job_id, stage="merger", from_status="MERGING", to_status="COMPLETED", detail={})
        )
    async with sessionmaker_() as session:
        count = await session.scalar(select(func.count()).select_from(Job).where(Job.id == job_id))
    assert count == 1
