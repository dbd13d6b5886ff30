"""Submissions for the `local` provider are checked against its models at the door: a model the server
does not have, or an English-only model with another language, is a 422 naming what the server has or
what to do; the transcriber would only fail the job later."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Job
from tests.integration.ingest.conftest import Api, AppFactory, Key
from tests.integration.ingest.media import SAMPLES

pytestmark = pytest.mark.timeout(120)


async def _upload(api: Api, key: Key, **fields: str) -> Any:
    return await api.client.post(
        "/api/v1/transcribe",
        headers=key.headers,
        files={"file": ("talk.wav", SAMPLES["wav"], "audio/wav")},
        data=fields,
    )


def _error(response: Any, field: str) -> str:
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_error"
    messages = [error["msg"] for error in problem["errors"] if error["loc"] == ["body", field]]
    assert len(messages) == 1, problem
    return str(messages[0])


@pytest.mark.parametrize("fields", [{"provider": "local"}, {}])  # `local` is the default provider
@pytest.mark.parametrize("model", ["large-v9", "BASE", "tiny"])
async def test_an_unknown_local_model_is_422_listing_the_models(
    api: Api, key: Key, fields: dict[str, str], model: str
) -> None:
    message = _error(await _upload(api, key, model=model, **fields), "model")
    assert message == f"Unknown model {model!r} for provider local; this server has: tiny.en, base."


@pytest.mark.parametrize(
    ("fields", "model"),
    [
        ({"model": "tiny.en", "language": "ru"}, "tiny.en"),
        ({"model": "tiny.en", "language": "hy-AM"}, "tiny.en"),
        ({"model": "tiny.en", "language": "RU"}, "tiny.en"),
    ],
)
async def test_an_english_only_model_with_another_language_is_422(
    api: Api, key: Key, fields: dict[str, str], model: str
) -> None:
    message = _error(await _upload(api, key, provider="local", **fields), "language")
    assert f"Model {model!r} transcribes English only" in message
    assert "use model 'base' (multilingual) or omit the language" in message


async def test_url_submissions_are_checked_the_same_way(api: Api, key: Key) -> None:
    response = await api.client.post(
        "/api/v1/transcribe/url",
        headers=key.headers,
        json={"url": "http://media.test/a.wav", "model": "tiny.en", "language": "ru"},
    )
    assert "English only" in _error(response, "language")


@pytest.mark.parametrize(
    "fields",
    [
        {"provider": "local", "model": "base", "language": "ru"},
        {"model": "base", "language": "hy-AM"},
        {"model": "tiny.en", "language": "en-US"},
        {"model": "tiny.en"},
        {"language": "en"},
    ],
)
async def test_what_the_models_can_do_is_accepted(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession], fields: dict[str, str]
) -> None:
    response = await _upload(api, key, **fields)
    assert response.status_code == 202, response.text
    async with sessionmaker_() as session:
        job = await session.get(Job, uuid.UUID(response.json()["job_id"]))
    assert job is not None
    assert (job.model, job.language) == (fields.get("model"), fields.get("language", "").lower() or None)


async def test_other_providers_are_not_held_to_these_rules(
    make_api: AppFactory, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    async with make_api(openai_api_key="sk-test") as configured:  # a provider needs its key to be named
        response = await _upload(configured, key, provider="openai", model="whisper-1", language="ru")
    assert response.status_code == 202, response.text
    async with sessionmaker_() as session:
        job = await session.get(Job, uuid.UUID(response.json()["job_id"]))
    assert job is not None
    assert (job.provider, job.model, job.language) == ("openai", "whisper-1", "ru")


@pytest.mark.parametrize("language", ["hy", "ru", "hy-AM"])
async def test_a_job_in_another_language_naming_no_model_gets_the_multilingual_one(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession], language: str
) -> None:
    response = await _upload(api, key, language=language)
    assert response.status_code == 202, response.text
    async with sessionmaker_() as session:
        job = await session.get(Job, uuid.UUID(response.json()["job_id"]))
    assert job is not None
    assert (job.model, job.language) == ("base", language.lower())


@pytest.mark.parametrize("auto", ["auto", "AUTO"])
async def test_auto_means_detect_it(
    api: Api, key: Key, sessionmaker_: async_sessionmaker[AsyncSession], auto: str
) -> None:
    """`auto` is what omitting the language says (it is detected once and pinned): stored as none, and
    fine for an English-only model, which has only one to detect."""
    for model in ("base", "tiny.en"):
        response = await _upload(api, key, model=model, language=auto)
        assert response.status_code == 202, response.text
        async with sessionmaker_() as session:
            job = await session.get(Job, uuid.UUID(response.json()["job_id"]))
        assert job is not None
        assert job.language is None


async def test_the_configured_default_model_is_offered_too(make_api: AppFactory, key: Key) -> None:
    async with make_api(local_model="/models/whisper-large-v3") as configured:
        for model in ("/models/whisper-large-v3", "whisper-large-v3", "base"):
            accepted = await _upload(configured, key, model=model, language="ru")
            assert accepted.status_code == 202, (model, accepted.text)
        assert (await _upload(configured, key, language="hy")).status_code == 202  # a multilingual default
        message = _error(await _upload(configured, key, model="small"), "model")
        assert message.endswith("this server has: tiny.en, base, /models/whisper-large-v3.")

    async with make_api(local_model="distil-small.en") as english:
        assert "'distil-small.en' transcribes English only" in _error(
            await _upload(english, key, model="distil-small.en", language="ru"), "language"
        )
        assert (await _upload(english, key, language="ru")).status_code == 202  # gets `base`
