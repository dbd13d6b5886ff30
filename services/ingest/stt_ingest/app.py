"""The FastAPI application: `create_app(settings)` wires everything from one settings object.

Resources (database engine, Redis, S3 client, Kafka producer, URL fetcher) are created in the
lifespan and kept on `app.state.ingest`; request handlers reach them through dependencies. Nothing
is created at import time, so tests build as many apps, with as many settings, as they like.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from redis.asyncio import Redis

from stt_common.db.engine import make_engine, make_sessionmaker
from stt_common.fetch import FetchLimits, SafeFetcher
from stt_common.logs import get_logger
from stt_common.ssrf import Resolver, system_resolver
from stt_ingest.events import Trigger
from stt_ingest.follow import FollowHub
from stt_ingest.middleware import BodyLimitMiddleware, RequestContextMiddleware
from stt_ingest.openai_compat import TRANSCRIPTIONS_PATH, TRANSLATIONS_PATH, OpenAIErrorMiddleware
from stt_ingest.problems import PROBLEM_MEDIA_TYPE, Problem, install_problem_handlers
from stt_ingest.ratelimit import RateLimiter
from stt_ingest.routes import jobs, openai_audio, ops, providers, submit, webhooks
from stt_ingest.routes.submit import UPLOAD_PATH
from stt_ingest.settings import IngestSettings
from stt_ingest.state import AppState
from stt_ingest.store import IngestStore
from stt_ingest.urlingest import UrlIngestor

log = get_logger(__name__)

API_VERSION = "1.0.0"
DESCRIPTION = """
Speech-to-text jobs: upload a file (or give a URL), follow the job, download the transcript.

* **Auth**: send your API key in `X-API-Key`. Each key sees only its own jobs.
* **Providers**: `GET /api/v1/providers` lists the providers you may name, which are configured
  here, and what each can do; a job naming one that is not configured is refused (422).
* **Rate limit**: submissions are limited per key (default 10 per minute); a 429 carries
  `Retry-After` and `RateLimit-*` headers.
* **Idempotency**: send `Idempotency-Key` on submissions to retry them safely.
* **Errors**: every error is `application/problem+json` (RFC 9457) with a stable `code`.
* **Progress**: `GET /api/v1/jobs/{job_id}/events?follow=true` with `Accept: text/event-stream`
  streams the job's timeline as Server-Sent Events until it ends (no polling needed).
* **Tracing**: `X-Request-ID` is echoed (or generated) on every response.
"""

TAGS = [
    {"name": "submit", "description": "Create transcription jobs."},
    {"name": "jobs", "description": "Follow, cancel, retry and delete jobs; download results."},
    {"name": "providers", "description": "The transcription providers this deployment offers."},
    {"name": "operations", "description": "Health, readiness and metrics."},
    {
        "name": "openai",
        "description": "OpenAI Audio API compatible endpoints (`/v1/audio/*`), for OpenAI SDKs and "
        "tools: a job like any other, answered when done; errors in OpenAI's envelope.",
    },
]

# OpenAPI links: where a job id comes from (operation, status, expression), and every operation it
# can be given to. They document the flow (submit, then follow, cancel, retry, delete) and let
# stateful clients and tests (schemathesis) chain the calls.
JOB_PATH = "/api/v1/jobs/{job_id}"
JOB_ID_SOURCES: list[tuple[str, str, str, str]] = [
    ("post", UPLOAD_PATH, "202", "$response.body#/job_id"),
    ("post", "/api/v1/transcribe/url", "202", "$response.body#/job_id"),
    ("get", "/api/v1/jobs", "200", "$response.body#/items/0/id"),
    ("get", JOB_PATH, "200", "$response.body#/id"),
    ("post", JOB_PATH + "/cancel", "200", "$response.body#/id"),
    ("post", JOB_PATH + "/retry", "202", "$response.body#/id"),
    ("delete", JOB_PATH, "204", "$request.path.job_id"),
]
JOB_ID_TARGETS: dict[str, tuple[str, str]] = {
    "GetJob": ("get", JOB_PATH),
    "GetJobEvents": ("get", JOB_PATH + "/events"),
    "GetJobResult": ("get", JOB_PATH + "/result"),
    "CancelJob": ("post", JOB_PATH + "/cancel"),
    "RetryJob": ("post", JOB_PATH + "/retry"),
    "DeleteJob": ("delete", JOB_PATH),
    "GetJobWebhooks": ("get", JOB_PATH + "/webhooks"),
    "RedeliverJobWebhook": ("post", JOB_PATH + "/webhooks/redeliver"),
}


def _lifespan(
    settings: IngestSettings, resolver: Resolver | None, fetch_ssl_context: ssl.SSLContext | None
) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
            stack.push_async_callback(engine.dispose)
            redis = Redis.from_url(settings.redis_url)
            stack.push_async_callback(redis.aclose)
            store = await stack.enter_async_context(cast(IngestStore, IngestStore.from_settings(settings)))
            trigger = Trigger(settings)
            stack.push_async_callback(trigger.close)
            sessionmaker = make_sessionmaker(engine)
            fetcher = SafeFetcher(
                resolver=resolver or system_resolver,
                allow=settings.ssrf_allow_networks,
                limits=FetchLimits(
                    max_bytes=settings.fetch_max_bytes,
                    connect_timeout=settings.url_connect_timeout_seconds,
                    read_timeout=settings.url_read_timeout_seconds,
                    max_redirects=settings.url_max_redirects,
                    dns_timeout=settings.url_dns_timeout_seconds,
                    max_url_length=settings.url_max_length,
                ),
                ssl_context=fetch_ssl_context,
            )
            ingestor = UrlIngestor(
                settings=settings, sessionmaker=sessionmaker, store=store, trigger=trigger, fetcher=fetcher
            )
            follow = FollowHub(
                sessionmaker,
                interval=settings.follow_poll_interval_seconds,
                queue_size=settings.follow_queue_size,
                max_followers=settings.follow_max_streams,
            )
            stack.push_async_callback(follow.close)
            app.state.ingest = AppState(
                settings=settings,
                engine=engine,
                sessionmaker=sessionmaker,
                redis=redis,
                store=store,
                trigger=trigger,
                limiter=RateLimiter(redis, window_seconds=settings.rate_limit_window_seconds),
                fetcher=fetcher,
                ingestor=ingestor,
                follow=follow,
            )
            log.info("ingest ready", host=settings.http_host, port=settings.http_port)
            try:
                yield
            finally:
                await ingestor.shutdown(settings.http_graceful_shutdown_seconds)
                app.state.ingest = None

    return lifespan


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with every error documented as problem+json (its default 422 schema is not
    what this API answers)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, tags=TAGS
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem.pop("$defs", {}))
    components["Problem"] = problem
    problem_content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "Validation error", "content": problem_content}
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    _add_job_links(schema["paths"])
    app.openapi_schema = schema
    return schema


def _add_job_links(paths: dict[str, Any]) -> None:
    """Links from every answer that names a job to every operation on a job."""
    for method, path, status, expression in JOB_ID_SOURCES:
        response = paths[path][method]["responses"][status]
        links = response.setdefault("links", {})
        for name, (target_method, target_path) in JOB_ID_TARGETS.items():
            links[name] = {
                "operationId": paths[target_path][target_method]["operationId"],
                "parameters": {"job_id": expression},
            }


def create_app(
    settings: IngestSettings,
    *,
    resolver: Resolver | None = None,
    fetch_ssl_context: ssl.SSLContext | None = None,
) -> FastAPI:
    """The ingest API. `resolver` (DNS for URL checks) and `fetch_ssl_context` (trust for https
    downloads) are for tests; production uses the system resolver and the default trust store."""
    app = FastAPI(
        title="Speech-to-text ingest API",
        version=API_VERSION,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=_lifespan(settings, resolver, fetch_ssl_context),
    )
    install_problem_handlers(app)
    # Added last = outermost: the request id exists before the body limit answers.
    uploads = frozenset({UPLOAD_PATH, TRANSCRIPTIONS_PATH, TRANSLATIONS_PATH})
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_json_body_bytes, exempt_paths=uploads)
    app.add_middleware(RequestContextMiddleware)
    # Outermost: every error on /v1/ (the last-resort 500 included) in OpenAI's envelope.
    app.add_middleware(OpenAIErrorMiddleware)
    app.include_router(submit.router)
    app.include_router(jobs.router)
    app.include_router(webhooks.router)
    app.include_router(providers.router)
    app.include_router(ops.router)
    app.include_router(openai_audio.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
