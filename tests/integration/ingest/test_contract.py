"""The API against its own OpenAPI document: schemathesis generates requests for every operation
(valid and invalid ones) and checks every answer: never a 5xx, only documented status codes and
content types, bodies and headers that match the documented schemas, and 405s that list every
method of the path in `Allow`.

The app is the real one (`create_app`, its lifespan with real Postgres, Redis, S3 and Kafka), served
in-process over ASGI, called with a valid API key whose rate limit is out of reach (schemathesis also
sends requests without the key, on purpose). In-process rather than a uvicorn process because
generated `POST /transcribe/url` bodies carry arbitrary URLs, some with public addresses that pass
the SSRF check, and this machine must never send traffic beyond loopback: here names resolve
through a stub (no DNS query leaves the process) and every outgoing httpx connection to a
non-loopback address is refused before a socket is opened (`no_egress`). Streaming uploads over
real sockets are `test_streaming.py`'s subject.

The key owns jobs in every interesting state (completed with results, failed, cancelled, running),
and valid generated job ids are swapped for theirs half the time, so the job operations answer more
than 404; operations that change or delete a job get jobs of their own, so that they do not take
the others' away. Every other submission gets a real WAV as its file or a fetchable public URL (and
the default provider and no webhook), so its other fields get past validation, into the database:
that is how NUL characters in `prompt`/`vocabulary` were found to fail the insert (500).

Bounded in time: `CONTRACT_EXAMPLES` (default 25) examples per operation, no shrinking, a fixed
seed; about 30 s. Raise `CONTRACT_EXAMPLES` for a longer hunt.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.transport.serialization import Binary
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Chunk, Job, JobEvent, JobStatus
from stt_common.s3 import ObjectStore, original_key, result_key
from stt_common.settings import Settings
from stt_common.ssrf import IPAddress
from stt_ingest.app import create_app
from tests.integration.ingest.conftest import (
    Api,
    AppFactory,
    Key,
    KeyFactory,
    StubResolver,
    ingest_settings,
)
from tests.integration.ingest.media import SAMPLES

pytestmark = pytest.mark.timeout(240)

MAX_EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
    allow_header_conformance,
]
# Not checked: `positive_data_acceptance`, because schema-valid requests are refused for reasons a
# schema cannot say (a file whose bytes are not audio, a cursor this API never gave out, a URL to a
# private address); `negative_data_rejection`, because its verdicts here are mostly about the test
# itself (the key sent on a case meant to lack it) or about form fields, which are all text (an
# "integer" vocabulary term is the string "5"). Run once with it, it found two real leniencies that
# are fixed: JSON booleans and integers are strict (`0` is not false) and `created_*` filters take
# ISO 8601 only (pydantic also read `0.5` as a Unix time).

# What every host name resolves to: public, so a URL submission passes the check and its background
# download starts; `no_egress` refuses the connection itself.
PUBLIC_ADDRESS = ipaddress.ip_address("93.184.215.14")
PUBLIC_MEDIA_URL = "https://media.example.com/interview.mp3"
# Operations that change or remove the jobs they are given (method, path).
DESTRUCTIVE = (
    ("DELETE", "/api/v1/jobs/{job_id}"),
    ("POST", "/api/v1/jobs/{job_id}/cancel"),
    ("POST", "/api/v1/jobs/{job_id}/retry"),
)
SEEDED_STATES: list[tuple[JobStatus, dict[str, Any]]] = [
    (JobStatus.COMPLETED, {"duration_seconds": 12.5, "chunks_total": 2}),
    (JobStatus.FAILED, {"error_code": "provider_unavailable", "error_message": "down", "chunks_total": 2}),
    (JobStatus.CANCELLED, {"error_code": "cancelled", "error_message": "Cancelled.", "chunks_total": 2}),
    (JobStatus.TRANSCRIBING, {"chunks_total": 2}),
    (JobStatus.UPLOADED, {}),
]


async def resolve_to_public(host: str, port: int) -> list[IPAddress]:
    return [PUBLIC_ADDRESS]


@pytest.fixture
def no_egress(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every httpx connection in this process may go to loopback only; the others are refused
    (before any socket exists) and recorded."""
    refused: list[str] = []
    original = httpx.AsyncHTTPTransport.handle_async_request

    async def guarded(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            refused.append(str(request.url))
            raise httpx.ConnectError("contract test: no traffic beyond loopback", request=request)
        return await original(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", guarded)
    return refused


@pytest.fixture
async def contract_key(make_key: KeyFactory) -> Key:
    # A limit far above what the run sends: the limiter and its headers are exercised, no 429.
    return await make_key(rate_limit=1_000_000, name="contract")


async def seed_job(
    sessionmaker_: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    key: Key,
    status: JobStatus,
    values: dict[str, Any],
) -> uuid.UUID:
    """A job of `key` as the other stages leave it: row, timeline, chunks, original, results."""
    job_id = uuid.uuid4()
    async with sessionmaker_() as session, session.begin():
        session.add(
            Job(
                id=job_id,
                api_key_id=key.id,
                status=status,
                provider="local",
                context_mode="parallel",
                options={"prompt": None, "vocabulary": [], "output": {}},
                original_filename="tone.wav",
                content_type="audio/wav",
                size_bytes=len(SAMPLES["wav"]),
                **values,
            )
        )
        await session.flush()
        session.add(JobEvent(job_id=job_id, stage="ingest", to_status=status, detail={"seeded": True}))
        for index in range(values.get("chunks_total") or 0):
            done = status == JobStatus.COMPLETED or index == 0
            session.add(
                Chunk(
                    job_id=job_id,
                    chunk_index=index,
                    status="COMPLETED" if done else "FAILED",
                    start_seconds=index * 6.0,
                    end_seconds=index * 6.0 + 6.5,
                )
            )
    await store.put_bytes(original_key(job_id), SAMPLES["wav"], content_type="audio/wav")
    if status == JobStatus.COMPLETED:
        await store.put_bytes(result_key(job_id, "json"), b'{"text": "hello", "segments": []}')
        await store.put_bytes(result_key(job_id, "txt"), b"hello\n")
        await store.put_bytes(result_key(job_id, "srt"), b"1\n00:00:00,000 --> 00:00:01,000\nhello\n")
        await store.put_bytes(result_key(job_id, "vtt"), b"WEBVTT\n\n00:00.000 --> 00:01.000\nhello\n")
    return job_id


@pytest.fixture
async def seeded_jobs(
    sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore, contract_key: Key
) -> dict[tuple[str, str] | None, list[str]]:
    """Job ids per operation: one set for each operation in `DESTRUCTIVE`, one (None) shared by
    the operations that only read."""
    pools: dict[tuple[str, str] | None, list[str]] = {}
    for pool in [None, *DESTRUCTIVE]:
        pools[pool] = [
            str(await seed_job(sessionmaker_, store, contract_key, status, values))
            for status, values in SEEDED_STATES
        ]
    return pools


@pytest.fixture
def contract_schema(
    request: pytest.FixtureRequest,
    settings: Settings,
    no_egress: list[str],
    seeded_jobs: dict[tuple[str, str] | None, list[str]],
) -> Any:
    # schemathesis 4.32's pytest integration reads and rewrites `item._nodeid`, which pytest 9 no
    # longer has (its node ids are structured); give it the plain string it expects.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    app = create_app(
        ingest_settings(settings, upload_idle_timeout_seconds=5.0, url_fetch_timeout_seconds=5.0),
        resolver=resolve_to_public,
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(
        modes=["positive", "negative"], max_examples=MAX_EXAMPLES, no_shrink=True, database="none"
    )

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
        # Only in place of a valid id, so that a case meant to be invalid stays invalid.
        if not path_parameters or not _is_uuid(path_parameters.get("job_id")) or context.operation is None:
            return st.just(path_parameters)
        operation = (context.operation.method.upper(), context.operation.path)
        jobs = seeded_jobs.get(operation, seeded_jobs[None])
        return st.one_of(
            st.just(path_parameters),
            st.sampled_from(jobs).map(lambda job_id: {**path_parameters, "job_id": job_id}),
        )

    return schema


def _with_media(path: str, body: Any) -> Any:
    """A generated upload form with a real WAV as its file, or a URL submission with a public URL;
    anything else as it is. (A form comes as a dict, or wrapped with the content types chosen for
    its parts: a dataclass with the dict in `body`.)"""
    form = body.body if dataclasses.is_dataclass(body) and not isinstance(body, type) else body
    if not isinstance(form, dict):
        return body
    if path == "/api/v1/transcribe" and isinstance(form.get("file"), (bytes, Binary)):
        form = {**form, "file": SAMPLES["wav"]}
    elif path == "/api/v1/transcribe/url" and isinstance(form.get("url"), str):
        form = {**form, "url": PUBLIC_MEDIA_URL}
    else:
        return body
    # Generated providers, models and webhook URLs are almost never acceptable (they are tried in the
    # other half): leave them out so the remaining fields get as far as the database. The model is the
    # local provider's multilingual one, so that any generated language is acceptable too.
    form = {name: value for name, value in form.items() if name not in ("provider", "model", "webhook_url")}
    form["model"] = "base"
    if dataclasses.is_dataclass(body) and not isinstance(body, type):
        return dataclasses.replace(body, body=form)
    return form


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


schema = schemathesis.pytest.from_fixture("contract_schema")
SWAPS: dict[str, int] = {}


@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)
def test_every_answer_matches_the_openapi_document(
    case: Any, contract_key: Key, no_egress: list[str]
) -> None:
    # Generated files and URLs are refused early (not audio; not a URL), which would leave the other
    # fields untried past validation: every other case gets a real WAV as its file (the API
    # documents `interview.wav` as the part's name) or a fetchable public URL.
    path = case.operation.path
    SWAPS[path] = SWAPS.get(path, 0) + 1
    if SWAPS[path] % 2 == 0:
        case.body = _with_media(path, case.body)
    case.call_and_validate(headers={"X-API-Key": contract_key.plaintext}, checks=CHECKS)

    # The fetcher connects to checked addresses only: whatever it tried must have been public.
    assert not [url for url in no_egress if not _is_public_address(httpx.URL(url).host)], no_egress


def _is_public_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return False


# -- found beyond the generated cases -------------------------------------------------------------
# Inputs that once made the API answer 500, or answer against its document. Generated cases reach
# them rarely (every other field of the request must be valid too), so they are pinned here.


@pytest.fixture
async def contract_api(make_api: AppFactory, no_egress: list[str]) -> AsyncIterator[Api]:
    resolver = StubResolver(names={"media.example.com": [str(PUBLIC_ADDRESS)]})
    async with make_api(resolver=resolver) as api:
        yield api


@pytest.mark.parametrize(
    "fields",
    [{"prompt": "before\x00after"}, {"vocabulary": ["fine", "\x00"]}],
    ids=["prompt", "vocabulary"],
)
async def test_nul_characters_are_invalid_input_not_a_server_error(
    contract_api: Api, key: Key, fields: dict[str, Any]
) -> None:
    """Postgres cannot store U+0000 (the options are jsonb): it used to fail at the insert."""
    by_url = await contract_api.client.post(
        "/api/v1/transcribe/url", headers=key.headers, json={"url": PUBLIC_MEDIA_URL, **fields}
    )
    form = {name: value for name, value in fields.items() if name != "vocabulary"}
    uploaded = await contract_api.client.post(
        "/api/v1/transcribe",
        headers=key.headers,
        data={**form, "vocabulary": fields.get("vocabulary", [])},
        files={"file": ("interview.wav", SAMPLES["wav"], "audio/wav")},
    )
    for response in (by_url, uploaded):
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_error"
        assert "\x00" not in response.text


@pytest.mark.parametrize(
    "params",
    [
        {"created_after": "9999-12-31T23:59:59-23:59"},
        {"created_before": "0001-01-01T00:00:00+14:00"},
        {"created_after": "1700000000"},
        {"created_before": "0.5"},
    ],
    ids=["after-the-last-utc-instant", "before-the-first-utc-instant", "unix-time", "fraction"],
)
async def test_created_filters_take_representable_iso_times_only(
    contract_api: Api, key: Key, params: dict[str, str]
) -> None:
    response = await contract_api.client.get("/api/v1/jobs", headers=key.headers, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor({"t": "9999-12-31T23:59:59-23:59", "i": str(uuid.UUID(int=1))}),
        _cursor({"t": "0001-01-01T00:00:00+14:00", "i": str(uuid.UUID(int=1))}),
        _cursor({"t": "2026-01-01T00:00:00+00:00", "i": 5}),
        _cursor({"t": 5, "i": str(uuid.UUID(int=1))}),
        _cursor(["t", "i"]),
        _cursor("t"),
    ],
    ids=["time-overflows", "time-underflows", "id-not-a-string", "time-not-a-string", "list", "string"],
)
async def test_a_forged_cursor_is_a_bad_request(contract_api: Api, key: Key, cursor: str) -> None:
    response = await contract_api.client.get("/api/v1/jobs", headers=key.headers, params={"cursor": cursor})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_cursor"


async def test_a_405_allows_every_method_of_the_path(contract_api: Api, key: Key) -> None:
    """One path, one route per method (`GET` and `DELETE /jobs/{id}`): Starlette named only the
    first route's methods."""
    response = await contract_api.client.request(
        "OPTIONS", f"/api/v1/jobs/{uuid.uuid4()}", headers=key.headers
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, DELETE"
    assert response.headers["content-type"] == "application/problem+json"
