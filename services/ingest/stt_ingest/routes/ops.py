"""`/healthz` (the process answers), `/readyz` (Postgres, Redis, S3 and Kafka answer), `/metrics`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stt_common.db.engine import ping
from stt_common.logs import get_logger
from stt_ingest.problems import PROBLEM_MEDIA_TYPE, problem_body, problem_responses, request_id_of
from stt_ingest.routes.common import StateDep
from stt_ingest.schemas import Health
from stt_ingest.state import AppState

log = get_logger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process serves requests")
async def healthz() -> Health:
    return Health(status="ok")


def _checks(state: AppState) -> dict[str, Callable[[], Awaitable[object]]]:
    async def redis_ping() -> object:
        return await state.redis.ping()

    return {
        "postgres": lambda: ping(state.engine),
        "redis": redis_ping,
        "s3": state.store.ping,
        "kafka": state.trigger.ping,
    }


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: every dependency answers",
    responses=problem_responses(503),
)
async def readyz(request: Request, state: StateDep) -> JSONResponse:
    checks = _checks(state)
    timeout = state.settings.readiness_timeout_seconds

    async def one(name: str, check: Callable[[], Awaitable[object]]) -> str:
        try:
            await asyncio.wait_for(check(), timeout)
        except Exception as exc:
            # The reason goes to the log only: it may name internal hosts and ports.
            log.warning("dependency not ready", dependency=name, error=f"{type(exc).__name__}: {exc}"[:300])
            return "unavailable"
        return "ok"

    names = list(checks)
    results = dict(
        zip(names, await asyncio.gather(*(one(name, checks[name]) for name in names)), strict=True)
    )
    if all(result == "ok" for result in results.values()):
        return JSONResponse(Health(status="ready", checks=results).model_dump())
    body = problem_body(
        503,
        "not_ready",
        "A dependency does not answer.",
        instance=request.url.path,
        request_id=request_id_of(request),
    )
    body["checks"] = results
    return JSONResponse(body, status_code=503, media_type=PROBLEM_MEDIA_TYPE)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
