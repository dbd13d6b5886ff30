"""RFC 9457 problem details: every 4xx/5xx the API gives is `application/problem+json` with a stable
`code` that clients can branch on (the `title` and `detail` are for humans and may change).

Nothing internal leaks: validation errors carry locations and messages but never the rejected input,
and an unhandled exception becomes a generic 500 whose only link to the log is the request id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:stt:problem:"

# Codes for plain HTTP errors raised by the framework (unknown route, wrong method, ...).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where the error is: `body`, `query`, `header`, then names.")
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(description="URI of the problem type: `urn:stt:problem:<code>`.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = Field(default=None, description="The request path.")
    code: str = Field(description="Stable machine-readable error code.")
    request_id: str | None = Field(default=None, description="The X-Request-ID of the request.")
    errors: list[FieldError] | None = Field(default=None, description="Per-field validation errors.")
    checks: dict[str, str] | None = Field(
        default=None, description="`/readyz` only: each dependency's state."
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "type": "urn:stt:problem:job_not_found",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "No job with this id.",
                    "instance": "/api/v1/jobs/6b4f5f46-9f0a-4a53-9c46-0d5f0d0b6f7e",
                    "code": "job_not_found",
                    "request_id": "5f0c2b4bd0b94f3a8d7a0c1f1e2d3c4b",
                }
            ]
        }
    }


class ApiProblem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[FieldError] | None = None,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(
    status: int,
    code: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    request_id: str | None = None,
    title: str | None = None,
    errors: Sequence[FieldError] | None = None,
) -> dict[str, Any]:
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + code,
        title=title or _title(status),
        status=status,
        detail=detail,
        instance=instance,
        code=code,
        request_id=request_id,
        errors=list(errors) if errors is not None else None,
    )
    return problem.model_dump(exclude_none=True)


def request_id_of(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return str(value) if value is not None else None


def problem_response(request: Request, problem: ApiProblem) -> JSONResponse:
    body = problem_body(
        problem.status,
        problem.code,
        problem.detail,
        instance=request.url.path,
        request_id=request_id_of(request),
        title=problem.title,
        errors=problem.errors,
    )
    return JSONResponse(
        body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_MEDIA_TYPE
    )


def _validation_errors(exc: RequestValidationError) -> list[FieldError]:
    errors: list[FieldError] = []
    for error in exc.errors():
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        errors.append(
            FieldError(loc=loc, msg=str(error.get("msg", "invalid")), type=str(error.get("type", "")))
        )
    return errors


async def _api_problem_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return problem_response(request, exc)


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _method_index(app: Any) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path pattern, methods) of every documented path, built once per app from its OpenAPI
    document (public API only: how the framework nests included routers is its own business)."""
    index: list[tuple[re.Pattern[str], frozenset[str]]] | None = getattr(app.state, "allow_index", None)
    if index is None:
        index = []
        for template, item in app.openapi().get("paths", {}).items():
            # Exactly the documented methods: API routes do not answer HEAD for GET.
            methods = frozenset(method.upper() for method in item if method.upper() in _METHOD_ORDER)
            index.append((compile_path(template)[0], methods))
        app.state.allow_index = index
    return index


def _allowed_methods(request: Request) -> str | None:
    """Every method the request's path answers to. Starlette's 405 names only the methods of the
    first route whose path matched, but a path has a route per method here (`GET` and `DELETE
    /jobs/{id}`), and RFC 9110 wants them all in `Allow`."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for pattern, route_methods in _method_index(request.app):
        if pattern.match(path):
            methods |= route_methods
    if not methods:
        return None
    return ", ".join(method for method in _METHOD_ORDER if method in methods)


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _HTTP_CODES.get(status, f"http_{status}")
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != _title(status) else None
    headers = dict(exc.headers or {})
    if status == 405:
        allowed = _allowed_methods(request)
        if allowed is not None:
            headers["Allow"] = allowed
    return problem_response(request, ApiProblem(status, code, detail, headers=headers))


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    return problem_response(
        request,
        ApiProblem(422, "validation_error", "The request does not match the API schema.", errors=errors),
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiProblem, _api_problem_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem+json answers."""
    return {
        status: {
            "description": _title(status),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
