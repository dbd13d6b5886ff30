"""`GET /api/v1/providers` and the provider rules at submission: a job naming a provider that is allowed
but not configured (no key here) is refused with the configured ones listed, as is a job asking a
provider for a language it does not transcribe. Ingest only checks whether a key is set; it never
shows one."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Job
from stt_common.providers.catalogue import PROVIDERS
from stt_common.s3 import ObjectStore
from tests.integration.ingest.conftest import Api, AppFactory, Key, LocalServer, StubResolver
from tests.integration.ingest.media import SAMPLES

pytestmark = pytest.mark.timeout(120)

OPENAI_KEY = "sk-test-openai-7f3a9c1e5b2d4f60"
HISPEECH_KEY = "hs-test-key-2b8e41d7c9a05f36"
GEMINI_KEY = "gm-test-key-9d1c7a3e5f8b2046"


async def _upload(api: Api, key: Key, **fields: str) -> Any:
    return await api.client.post(
        "/api/v1/transcribe",
        headers=key.headers,
        files={"file": ("talk.wav", SAMPLES["wav"], "audio/wav")},
        data=fields,
    )


async def _upload_fields_after_file(api: Api, key: Key, **fields: str) -> Any:
    """A multipart body whose text fields come after the file: they are checked once it is stored."""
    boundary = "pRoViDeRbOuNdArY"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
        + SAMPLES["wav"]
        + b"\r\n"
        + b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items()
        )
        + f"--{boundary}--\r\n".encode()
    )
    return await api.client.post(
        "/api/v1/transcribe",
        headers={**key.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body,
    )


def _field_error(response: Any, field: str, error_type: str) -> str:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "validation_error"
    (error,) = [error for error in problem["errors"] if error["loc"] == ["body", field]]
    assert error["type"] == error_type, problem
    # Clients that show only the detail still see what to do.
    assert error["msg"] in problem["detail"]
    return str(error["msg"])


async def _jobs_of(sessionmaker_: async_sessionmaker[AsyncSession], key: Key) -> int:
    async with sessionmaker_() as session:
        return int(
            await session.scalar(select(func.count()).select_from(Job).where(Job.api_key_id == key.id)) or 0
        )


async def _job(sessionmaker_: async_sessionmaker[AsyncSession], response: Any) -> Job:
    assert response.status_code == 202, response.text
    async with sessionmaker_() as session:
        job = await session.get(Job, uuid.UUID(response.json()["job_id"]))
    assert job is not None
    return job


# -- GET /api/v1/providers ------------------------------------------------------------------------


async def test_the_providers_are_listed_configured_or_not_and_no_key_is_shown(
    make_api: AppFactory, key: Key
) -> None:
    async with make_api(
        openai_api_key=OPENAI_KEY,
        hispeech_api_key=HISPEECH_KEY,
        wavam_api_key="   ",  # blank: not a key
        gemini_model="gemini-2.5-pro",
        elevenlabs_model="scribe_v3_preview",
    ) as api:
        response = await api.client.get("/api/v1/providers", headers=key.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    for secret in (OPENAI_KEY, HISPEECH_KEY, "api_key", "API_KEY"):
        assert secret not in response.text
    body = response.json()
    assert body["default_provider"] == "local"
    items = {item["name"]: item for item in body["items"]}
    assert list(items) == list(PROVIDERS)  # every one allowed by default, in the catalogue's order
    assert {name: item["configured"] for name, item in items.items()} == {
        "local": True,
        "openai": True,
        "gemini": False,
        "elevenlabs": False,
        "hispeech": True,
        "wavam": False,
    }
    assert [name for name, item in items.items() if item["default"]] == ["local"]
    assert items["local"] == {
        "name": "local",
        "title": PROVIDERS["local"].title,
        "configured": True,
        "default": True,
        "default_model": "tiny.en",
        "models": ["tiny.en", "base"],
        "context_mode": "parallel",
        "capabilities": {
            "timestamps": "words",
            "diarization": False,
            "prompt": True,
            "translate": True,
            "languages": None,
            "max_request_bytes": None,
            "max_request_seconds": None,
        },
    }
    assert items["openai"]["capabilities"]["max_request_bytes"] == 25 * 1024 * 1024
    assert items["openai"]["capabilities"]["max_request_seconds"] == 1400.0
    assert items["openai"]["default_model"] == "whisper-1"
    # The deployment's model setting wins over the catalogue's default, and is listed.
    assert items["gemini"]["default_model"] == "gemini-2.5-pro"
    assert items["elevenlabs"]["default_model"] == "scribe_v3_preview"
    assert items["elevenlabs"]["models"] == [*PROVIDERS["elevenlabs"].models, "scribe_v3_preview"]
    assert {name: item["context_mode"] for name, item in items.items()} == {
        name: "chained" if name == "gemini" else "parallel" for name in PROVIDERS
    }
    assert items["hispeech"]["capabilities"]["languages"] == ["hy"]
    assert items["hispeech"]["capabilities"]["timestamps"] == "none"
    assert items["wavam"]["capabilities"]["languages"] == ["en", "hy", "ru"]
    assert items["wavam"]["capabilities"]["diarization"] is True


async def test_only_allowed_providers_are_listed_with_the_deployments_defaults(
    make_api: AppFactory, key: Key
) -> None:
    async with make_api(
        allowed_providers=["hispeech", "local", "gemini"],
        chained_providers=["hispeech"],
        default_provider="hispeech",
        hispeech_api_key=HISPEECH_KEY,
        local_model="base",
    ) as api:
        body = (await api.client.get("/api/v1/providers", headers=key.headers)).json()
    assert body["default_provider"] == "hispeech"
    items = {item["name"]: item for item in body["items"]}
    assert list(items) == ["local", "gemini", "hispeech"]
    assert [name for name, item in items.items() if item["default"]] == ["hispeech"]
    assert {name: item["context_mode"] for name, item in items.items()} == {
        "local": "parallel",
        "gemini": "parallel",
        "hispeech": "chained",
    }
    assert (items["local"]["default_model"], items["local"]["models"]) == ("base", ["tiny.en", "base"])


async def test_a_configured_local_model_of_its_own_is_listed(make_api: AppFactory, key: Key) -> None:
    async with make_api(local_model="/models/whisper-large-v3") as api:
        body = (await api.client.get("/api/v1/providers", headers=key.headers)).json()
    local = next(item for item in body["items"] if item["name"] == "local")
    assert local["default_model"] == "/models/whisper-large-v3"
    assert local["models"] == ["tiny.en", "base", "/models/whisper-large-v3"]


async def test_an_openai_compatible_server_needs_no_key(make_api: AppFactory, key: Key) -> None:
    async with make_api(openai_base_url="http://speaches.internal:8000/v1") as api:
        body = (await api.client.get("/api/v1/providers", headers=key.headers)).json()
        accepted = await _upload(api, key, provider="openai")
    assert next(item for item in body["items"] if item["name"] == "openai")["configured"] is True
    assert "speaches.internal" not in str(body)
    assert accepted.status_code == 202, accepted.text


async def test_the_list_needs_a_valid_key(api: Api) -> None:
    missing = await api.client.get("/api/v1/providers")
    assert missing.status_code == 401
    assert missing.json()["code"] == "unauthenticated"
    assert missing.headers["www-authenticate"] == 'ApiKey header="X-API-Key", Bearer'
    wrong = await api.client.get("/api/v1/providers", headers={"X-API-Key": "stt_not-a-real-key"})
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "invalid_api_key"


async def test_the_list_is_documented(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    operation = spec["paths"]["/api/v1/providers"]["get"]
    assert operation["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}]
    assert operation["tags"] == ["providers"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProviderList"
    }
    assert "application/problem+json" in operation["responses"]["401"]["content"]
    schemas = spec["components"]["schemas"]
    assert {"ProviderList", "ProviderView", "ProviderCapabilitiesView"} <= set(schemas)
    assert schemas["ProviderList"]["examples"]


# -- submissions --------------------------------------------------------------------------------


async def test_a_provider_without_a_key_is_refused_listing_the_configured_ones_and_nothing_is_kept(
    make_api: AppFactory, key: Key, store: ObjectStore, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    expected = (
        "Provider 'wavam' is not configured on this deployment (no STT_WAVAM_API_KEY); "
        "configured: local, openai. Choose one of those, or ask the operator to set the key."
    )
    async with make_api(openai_api_key=OPENAI_KEY) as api:
        before = set(await store.list_keys("jobs/"))
        upload = await _upload(api, key, provider="wavam", language="hy")
        assert _field_error(upload, "provider", "provider_not_configured") == expected
        # Named after the file: the file is stored first, then removed with its job.
        late = await _upload_fields_after_file(api, key, provider="wavam")
        assert _field_error(late, "provider", "provider_not_configured") == expected
        url = await api.client.post(
            "/api/v1/transcribe/url",
            headers=key.headers,
            json={"url": "https://media.example.com/a.wav", "provider": "WavAm"},
        )
        assert _field_error(url, "provider", "provider_not_configured") == expected
        for response in (upload, late, url):
            assert OPENAI_KEY not in response.text
        assert set(await store.list_keys("jobs/")) == before
    assert await _jobs_of(sessionmaker_, key) == 0


async def test_with_no_key_at_all_only_local_is_offered(api: Api, key: Key) -> None:
    message = _field_error(await _upload(api, key, provider="openai"), "provider", "provider_not_configured")
    assert message == (
        "Provider 'openai' is not configured on this deployment (no STT_OPENAI_API_KEY or "
        "STT_OPENAI_BASE_URL); configured: local. Choose one of those, or ask the operator to set the key."
    )


async def test_a_provider_that_is_not_allowed_is_still_unknown(make_api: AppFactory, key: Key) -> None:
    async with make_api(allowed_providers=["local", "openai"], openai_api_key=OPENAI_KEY) as api:
        response = await _upload(api, key, provider="gemini")
    assert _field_error(response, "provider", "enum") == "Unknown provider; one of: local, openai."


@pytest.mark.parametrize(
    ("provider", "language", "languages"),
    [("hispeech", "en", "hy"), ("hispeech", "ru-RU", "hy"), ("wavam", "de", "en, hy, ru")],
)
async def test_a_language_the_provider_does_not_transcribe_is_refused(
    make_api: AppFactory,
    key: Key,
    sessionmaker_: async_sessionmaker[AsyncSession],
    provider: str,
    language: str,
    languages: str,
) -> None:
    async with make_api(hispeech_api_key=HISPEECH_KEY, wavam_api_key="wv-test") as api:
        upload = await _upload(api, key, provider=provider, language=language)
        url = await api.client.post(
            "/api/v1/transcribe/url",
            headers=key.headers,
            json={"url": "https://media.example.com/a.wav", "provider": provider, "language": language},
        )
    expected = (
        f"Provider {provider!r} transcribes only {languages}, not language {language.lower()!r}: "
        "choose one of those languages, or another provider."
    )
    assert _field_error(upload, "language", "unsupported_language") == expected
    assert _field_error(url, "language", "unsupported_language") == expected
    assert await _jobs_of(sessionmaker_, key) == 0


async def test_a_configured_remote_provider_is_accepted(
    make_api: AppFactory,
    key: Key,
    sessionmaker_: async_sessionmaker[AsyncSession],
    media_server: LocalServer,
) -> None:
    resolver = StubResolver(names={"media.test": ["127.0.0.1"]})
    async with make_api(
        resolver=resolver,
        ssrf_allow_networks='["127.0.0.1/32"]',
        openai_api_key=OPENAI_KEY,
        hispeech_api_key=HISPEECH_KEY,
        gemini_api_key=GEMINI_KEY,
    ) as api:
        # The local models' rules are not theirs: any model name is passed on, any language.
        response = await _upload(api, key, provider="openai", model="whisper-1", language="ru")
        openai = await _job(sessionmaker_, response)
        assert (openai.provider, openai.model, openai.language, openai.context_mode) == (
            "openai",
            "whisper-1",
            "ru",
            "parallel",
        )
        gemini = await _job(sessionmaker_, await _upload(api, key, provider="Gemini"))
        assert (gemini.provider, gemini.context_mode) == ("gemini", "chained")
        for language in ("hy", "hy-AM", None, "auto"):
            fields = {"provider": "hispeech"} | ({"language": language} if language else {})
            hispeech = await _job(sessionmaker_, await _upload(api, key, **fields))
            assert hispeech.provider == "hispeech", language
        url = await api.client.post(
            "/api/v1/transcribe/url",
            headers=key.headers,
            json={
                "url": media_server.url("/tone.wav", host="media.test"),
                "provider": "hispeech",
                "language": "hy",
            },
        )
        by_url = await _job(sessionmaker_, url)
        assert (by_url.provider, by_url.language) == ("hispeech", "hy")


# -- fallback_providers ---------------------------------------------------------------------------


async def test_fallback_providers_are_kept_in_order(
    make_api: AppFactory, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    async with make_api(openai_api_key=OPENAI_KEY, hispeech_api_key=HISPEECH_KEY) as api:
        # A form repeats the field; JSON gives a list.
        upload = await api.client.post(
            "/api/v1/transcribe",
            headers=key.headers,
            files={"file": ("talk.wav", SAMPLES["wav"], "audio/wav")},
            data={"provider": "hispeech", "language": "hy", "fallback_providers": ["OpenAI", "local"]},
        )
        job = await _job(sessionmaker_, upload)
    assert job.options["fallback_providers"] == ["openai", "local"]


@pytest.mark.parametrize(
    ("fallbacks", "error_type"),
    [
        (["wavam"], "provider_not_configured"),  # no key for it here
        (["openai", "openai"], "duplicate"),
        (["hispeech"], "duplicate"),  # the job's own provider
        (["nope"], "enum"),
    ],
)
async def test_a_fallback_the_job_could_not_name_itself_is_refused(
    make_api: AppFactory,
    key: Key,
    sessionmaker_: async_sessionmaker[AsyncSession],
    fallbacks: list[str],
    error_type: str,
) -> None:
    async with make_api(openai_api_key=OPENAI_KEY, hispeech_api_key=HISPEECH_KEY) as api:
        response = await api.client.post(
            "/api/v1/transcribe",
            headers=key.headers,
            files={"file": ("talk.wav", SAMPLES["wav"], "audio/wav")},
            data={"provider": "hispeech", "fallback_providers": fallbacks},
        )
    assert response.status_code == 422, response.text
    problem = response.json()
    [error] = [e for e in problem["errors"] if e["loc"][:2] == ["body", "fallback_providers"]]
    assert error["type"] == error_type
    assert error["msg"] in problem["detail"]
    assert await _jobs_of(sessionmaker_, key) == 0


async def test_a_fallback_that_does_not_speak_the_jobs_language_is_refused(
    make_api: AppFactory, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    async with make_api(openai_api_key=OPENAI_KEY, hispeech_api_key=HISPEECH_KEY) as api:
        response = await api.client.post(
            "/api/v1/transcribe",
            headers=key.headers,
            files={"file": ("talk.wav", SAMPLES["wav"], "audio/wav")},
            data={"provider": "openai", "language": "en", "fallback_providers": ["hispeech"]},
        )
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "fallback_providers", 0]
    assert error["type"] == "unsupported_language"
    assert await _jobs_of(sessionmaker_, key) == 0


async def test_a_chunk_length_is_the_jobs_own_within_what_its_provider_takes_per_request(
    make_api: AppFactory, key: Key, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    async with make_api(openai_api_key=OPENAI_KEY) as api:
        local = await _job(sessionmaker_, await _upload(api, key, chunk_seconds="60"))
        assert local.options["chunk_seconds"] == 60
        default = await _job(sessionmaker_, await _upload(api, key))
        assert "chunk_seconds" not in default.options  # the chunker's STT_CHUNK_SECONDS
        # 25 MB of 16 kHz WAV per OpenAI request: about 811 s.
        assert (await _upload(api, key, provider="openai", chunk_seconds="800")).status_code == 202
        refused = await _upload(api, key, provider="openai", chunk_seconds="900")
        assert _field_error(refused, "chunk_seconds", "less_than_equal") == (
            "Provider 'openai' takes at most 811 s of audio per request: ask for chunk_seconds of at most "
            "811, or omit it for the server's default."
        )
    assert await _jobs_of(sessionmaker_, key) == 3
