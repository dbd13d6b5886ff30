"""Cross-cutting rules: auth, the rate limit (shared by replicas), problem+json, request ids,
health/readiness/metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_ingest import keys
from tests.helpers import free_port
from tests.integration.ingest.conftest import Api, AppFactory, Key, KeyFactory
from tests.integration.ingest.media import SAMPLES

pytestmark = pytest.mark.timeout(120)

PROBLEM_FIELDS = {"type", "title", "status", "code", "instance", "request_id"}


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert set(problem) >= PROBLEM_FIELDS, problem
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["type"] == f"urn:stt:problem:{code}"
    assert problem["request_id"] == response.headers["x-request-id"]
    text = response.text
    assert "Traceback" not in text
    assert 'File "' not in text
    assert not re.search(r"127\.0\.0\.1:\d+|postgresql|redis://|s3\.", text), text
    return problem


async def post_upload(api: Api, key: Key, **kwargs: Any) -> Any:
    return await api.client.post(
        "/api/v1/transcribe",
        headers=key.headers,
        files={"file": ("a.wav", SAMPLES["wav"], "audio/wav")},
        **kwargs,
    )


# -- auth ---------------------------------------------------------------------------------------


async def test_requests_without_a_valid_key_are_401(
    api: Api, make_key: KeyFactory, sessionmaker_: async_sessionmaker[AsyncSession]
) -> None:
    missing = await api.client.get("/api/v1/jobs")
    assert_problem(missing, 401, "unauthenticated")
    assert missing.headers["www-authenticate"] == 'ApiKey header="X-API-Key", Bearer'
    for presented in ("stt_not-a-real-key", "x" * 1000, "stt_" + "A" * 43):
        assert_problem(
            await api.client.get("/api/v1/jobs", headers={"X-API-Key": presented}), 401, "invalid_api_key"
        )
    key = await make_key()
    assert (await api.client.get("/api/v1/jobs", headers=key.headers)).status_code == 200
    bearer = {"Authorization": f"Bearer {key.headers['X-API-Key']}"}
    assert (await api.client.get("/api/v1/jobs", headers=bearer)).status_code == 200
    assert_problem(
        await api.client.get("/api/v1/jobs", headers={"Authorization": "Bearer stt_not-a-real-key"}),
        401,
        "invalid_api_key",
    )
    await keys.revoke_key(sessionmaker_, str(key.id))
    assert_problem(await api.client.get("/api/v1/jobs", headers=key.headers), 401, "invalid_api_key")
    assert_problem(await api.client.get("/api/v1/jobs", headers=bearer), 401, "invalid_api_key")
    assert_problem(await post_upload(api, key), 401, "invalid_api_key")


# -- rate limit ---------------------------------------------------------------------------------


async def test_the_eleventh_submission_in_a_minute_is_429(api: Api, make_key: KeyFactory) -> None:
    key = await make_key(rate_limit=None)  # the service default: 10 per minute
    for number in range(1, 11):
        response = await post_upload(api, key)
        assert response.status_code == 202, response.text
        assert response.headers["ratelimit-limit"] == "10"
        assert response.headers["ratelimit-remaining"] == str(10 - number)
        assert response.headers["ratelimit-policy"] == "10;w=60"
    refused = await post_upload(api, key)
    problem = assert_problem(refused, 429, "rate_limited")
    assert "10 submissions per 60 seconds" in problem["detail"]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-reset"] == str(retry_after)
    # URL submissions count against the same budget; reads do not.
    url = await api.client.post(
        "/api/v1/transcribe/url", headers=key.headers, json={"url": "http://127.0.0.1/a.wav"}
    )
    assert_problem(url, 429, "rate_limited")
    assert (await api.client.get("/api/v1/jobs", headers=key.headers)).status_code == 200
    # Another key is not affected.
    other = await make_key(rate_limit=None)
    assert (await post_upload(api, other)).status_code == 202


async def test_the_limit_is_shared_by_replicas_and_exact_under_concurrency(
    make_api: AppFactory, make_key: KeyFactory
) -> None:
    key = await make_key(rate_limit=6)
    async with make_api() as replica_a, make_api() as replica_b:
        responses = await asyncio.gather(
            *(post_upload(replica, key) for replica in (replica_a, replica_b) * 5)
        )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [202] * 6 + [429] * 4


async def test_a_key_can_have_its_own_limit_or_none(api: Api, make_key: KeyFactory) -> None:
    strict = await make_key(rate_limit=1)
    assert (await post_upload(api, strict)).status_code == 202
    assert (await post_upload(api, strict)).status_code == 429
    unlimited = await make_key(rate_limit=0)
    for _ in range(12):
        response = await post_upload(api, unlimited)
        assert response.status_code == 202
        assert "ratelimit-limit" not in response.headers


async def test_a_key_holds_at_most_its_share_of_unfinished_jobs(
    make_api: AppFactory, make_key: KeyFactory
) -> None:
    busy, other = await make_key(rate_limit=0), await make_key(rate_limit=0)
    async with make_api(max_active_jobs_per_key=2) as started:
        accepted = [await post_upload(started, busy) for _ in range(2)]
        assert [response.status_code for response in accepted] == [202, 202]
        refused = await post_upload(started, busy)
        problem = assert_problem(refused, 429, "too_many_active_jobs")
        assert "2 unfinished jobs" in problem["detail"]
        assert "as they finish" in problem["detail"]
        assert refused.headers["retry-after"] == "30"
        url = await started.client.post(
            "/api/v1/transcribe/url", headers=busy.headers, json={"url": "http://127.0.0.1/a.wav"}
        )
        assert_problem(url, 429, "too_many_active_jobs")  # refused before the URL is even looked at
        # Another key is not held back by this one's backlog.
        assert (await post_upload(started, other)).status_code == 202
        # A finished job frees its place.
        job_id = accepted[0].json()["job_id"]
        cancel = await started.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=busy.headers)
        assert cancel.status_code == 200, cancel.text
        assert (await post_upload(started, busy)).status_code == 202
        metrics = (await started.client.get("/metrics")).text
    assert 'stt_ingest_submissions_total{kind="upload",outcome="too_many_active_jobs"} 1.0' in metrics


# -- problems, request ids ----------------------------------------------------------------------


async def test_framework_errors_are_problems_too(api: Api, key: Key) -> None:
    assert_problem(await api.client.get("/api/v1/nothing-here", headers=key.headers), 404, "not_found")
    assert_problem(await api.client.put("/api/v1/jobs", headers=key.headers), 405, "method_not_allowed")
    problem = assert_problem(
        await api.client.get("/api/v1/jobs", headers=key.headers, params={"limit": "many"}),
        422,
        "validation_error",
    )
    assert problem["errors"] == [
        {"loc": ["query", "limit"], "msg": problem["errors"][0]["msg"], "type": "int_parsing"}
    ]


async def test_an_unhandled_error_is_a_bare_500_problem(make_api: AppFactory, key: Key) -> None:
    async with make_api() as started:

        async def boom() -> None:
            raise RuntimeError("secret detail: postgresql://admin:hunter2@10.0.0.5/db")

        started.app.add_api_route("/boom", boom)

        response = await started.client.get("/boom", headers={"X-Request-ID": "trace-me-123"})
    problem = assert_problem(response, 500, "internal_error")
    assert response.headers["x-request-id"] == "trace-me-123"
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert set(problem) == {"type", "title", "status", "detail", "instance", "code", "request_id"}


async def test_request_ids_are_echoed_or_made(api: Api) -> None:
    given = await api.client.get("/healthz", headers={"X-Request-ID": "abc-123.def"})
    assert given.headers["x-request-id"] == "abc-123.def"
    made = await api.client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    hostile = await api.client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 300})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])


# -- operations ---------------------------------------------------------------------------------


async def test_health_readiness_and_metrics(api: Api, key: Key) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok", "checks": None}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "checks": {"postgres": "ok", "redis": "ok", "s3": "ok", "kafka": "ok"},
    }
    await api.client.get(f"/api/v1/jobs/{'0' * 8}-0000-0000-0000-{'0' * 12}", headers=key.headers)
    metrics = (await api.client.get("/metrics")).text
    assert 'stt_http_requests_total{method="GET",route="/api/v1/jobs/{job_id}",status="404"}' in metrics
    assert 'stt_http_request_duration_seconds_bucket{le="0.005",route="/readyz"}' in metrics
    assert "00000000-0000" not in metrics  # route templates, never ids


async def test_readiness_fails_when_a_dependency_is_away(make_api: AppFactory) -> None:
    async with make_api(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", readiness_timeout_seconds=2
    ) as started:
        response = await started.client.get("/readyz")
    problem = assert_problem(response, 503, "not_ready")
    assert problem["checks"] == {"postgres": "ok", "redis": "ok", "s3": "ok", "kafka": "unavailable"}


async def test_openapi_documents_everything(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path, methods in {
        "/api/v1/transcribe": {"post"},
        "/api/v1/transcribe/url": {"post"},
        "/api/v1/jobs": {"get"},
        "/api/v1/jobs/{job_id}": {"get", "delete"},
        "/api/v1/jobs/{job_id}/events": {"get"},
        "/api/v1/jobs/{job_id}/result": {"get"},
        "/api/v1/jobs/{job_id}/cancel": {"post"},
        "/api/v1/jobs/{job_id}/retry": {"post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }.items():
        assert methods <= set(paths[path]), path
    upload = paths["/api/v1/transcribe"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["file"]["format"] == "binary"
    assert form["required"] == ["file"]
    assert (
        upload["responses"]["429"]["content"]["application/problem+json"]["schema"]["$ref"]
        == "#/components/schemas/Problem"
    )
    # Either scheme (a list of alternatives): the key in X-API-Key, or as a bearer token.
    assert upload["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}]
    schemas = spec["components"]["schemas"]
    assert {"Problem", "FieldError", "JobView", "UrlSubmission", "Submitted", "JobPage"} <= set(schemas)
    assert "HTTPValidationError" not in schemas
    for path_item in paths.values():
        for operation in path_item.values():
            if "422" in operation["responses"]:
                assert "application/problem+json" in operation["responses"]["422"]["content"]
    assert schemas["UrlSubmission"]["examples"]
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_json_bodies_are_capped(api: Api, key: Key) -> None:
    huge = {"url": "https://media.example/a.wav", "prompt": "x" * 100_000}
    declared = await api.client.post("/api/v1/transcribe/url", headers=key.headers, json=huge)
    assert_problem(declared, 413, "payload_too_large")

    async def chunks() -> Any:
        yield b'{"url": "https://media.example/a.wav", "prompt": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    streamed = await api.client.post(
        "/api/v1/transcribe/url",
        headers={**key.headers, "Content-Type": "application/json"},
        content=chunks(),
    )
    assert_problem(streamed, 413, "payload_too_large")
