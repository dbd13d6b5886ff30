"""The client's models against the OpenAPI document of a running ingest: each `TypedDict` has exactly
the fields of the schema it mirrors, `NotRequired` exactly where the schema does not require them,
and the same JSON types (nullability, enums, arrays' items, which schema a field refers to). A field
added, dropped or retyped on the server fails here rather than in a user's code."""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import httpx
import pytest

from stt_client import models
from stt_client.models import SCHEMAS
from tests.client.conftest import Stack

pytestmark = pytest.mark.timeout(60)

# What the client calls: every schema their answers and bodies use must have a model.
CLIENT_PATHS = {
    "/api/v1/transcribe": ["post"],
    "/api/v1/transcribe/url": ["post"],
    "/api/v1/jobs": ["get"],
    "/api/v1/jobs/{job_id}": ["get", "delete"],
    "/api/v1/jobs/{job_id}/events": ["get"],
    "/api/v1/jobs/{job_id}/result": ["get"],
    "/api/v1/jobs/{job_id}/cancel": ["post"],
    "/api/v1/jobs/{job_id}/retry": ["post"],
    "/api/v1/jobs/{job_id}/webhooks": ["get"],
    "/api/v1/jobs/{job_id}/webhooks/redeliver": ["post"],
    "/api/v1/providers": ["get"],
}


@pytest.fixture(scope="module")
def openapi(stack: Stack) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{stack.url}/openapi.json", timeout=30).raise_for_status().json()
    return document


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[1]


def _enum(values: Any) -> str:
    return "enum(" + ",".join(sorted(str(value) for value in values)) + ")"


def schema_kinds(schema: dict[str, Any]) -> frozenset[str]:
    """What a JSON schema admits, as comparable names: `string`, `null`, `ref:JobView`,
    `array[ref:JobView]`, `enum(a,b)`, ..."""
    if "$ref" in schema:
        return frozenset({"ref:" + _ref_name(schema["$ref"])})
    if "anyOf" in schema:
        return frozenset().union(*(schema_kinds(part) for part in schema["anyOf"]))
    if "enum" in schema:
        return frozenset({_enum(schema["enum"])})
    kind = schema.get("type")
    if kind == "array":
        return frozenset({"array[" + "|".join(sorted(schema_kinds(schema.get("items", {})))) + "]"})
    if kind is None:
        return frozenset({"any"})
    return frozenset({kind})


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def annotation_kinds(annotation: Any) -> frozenset[str]:
    """The same names for a model's annotation (a model or enum `SCHEMAS` maps is a `ref:`)."""
    for name, model in SCHEMAS.items():
        if annotation is model or (get_origin(annotation) is Literal and annotation == model):
            return frozenset({"ref:" + name})
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return frozenset().union(*(annotation_kinds(arg) for arg in get_args(annotation)))
    if origin is Literal:
        return frozenset({_enum(get_args(annotation))})
    if origin is list:
        (item,) = get_args(annotation)
        return frozenset({"array[" + "|".join(sorted(annotation_kinds(item))) + "]"})
    if origin is dict or annotation is dict or is_typeddict(annotation):
        return frozenset({"object"})
    if annotation is Any:
        return frozenset({"any"})
    return frozenset({_SCALARS[annotation]})


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_model_matches_its_schema(openapi: dict[str, Any], name: str) -> None:
    schema = openapi["components"]["schemas"].get(name)
    assert schema is not None, f"the server has no schema {name} any more"
    model = SCHEMAS[name]
    if get_origin(model) is Literal:  # an enum
        assert set(get_args(model)) == set(schema["enum"]), name
        return
    hints = get_type_hints(model)
    properties = schema["properties"]
    assert set(hints) == set(properties), f"{name}: fields differ"
    assert model.__required_keys__ == set(schema.get("required", [])), f"{name}: required fields differ"
    for field, annotation in hints.items():
        assert annotation_kinds(annotation) == schema_kinds(properties[field]), f"{name}.{field}"


def test_every_schema_the_client_meets_has_a_model(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = _ref_name(ref)
                if name not in found:
                    found.add(name)
                    visit(components[name])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    for path, methods in CLIENT_PATHS.items():
        for method in methods:
            operation = openapi["paths"][path][method]  # a KeyError: the client calls a path that is gone
            visit(operation.get("responses"))
            visit(operation.get("requestBody"))
    assert found, "no schema found: the walk is broken"
    assert found - set(SCHEMAS) == set(), "schemas without a model"


def test_submit_options_cover_the_upload_forms_fields(openapi: dict[str, Any]) -> None:
    """The upload form (an inline schema) documents options the URL body has too (UrlSubmission,
    checked whole above), besides the file: each has its place in `SubmitOptions`."""
    form = openapi["paths"]["/api/v1/transcribe"]["post"]["requestBody"]["content"]["multipart/form-data"]
    fields = set(form["schema"]["properties"]) - {"file"}
    assert fields <= set(get_type_hints(models.SubmitOptions))
    assert set(get_type_hints(models.SubmitOptions)) == set(get_type_hints(models.UrlSubmission)) - {"url"}
    assert models.SubmitOptions.__required_keys__ == frozenset()


def test_the_checks_tell_models_apart() -> None:
    """The comparison itself sees a difference in nullability, item type and referenced schema."""
    assert annotation_kinds(str | None) == schema_kinds({"anyOf": [{"type": "string"}, {"type": "null"}]})
    assert annotation_kinds(str) != schema_kinds({"anyOf": [{"type": "string"}, {"type": "null"}]})
    assert annotation_kinds(list[models.Job]) == schema_kinds(
        {"type": "array", "items": {"$ref": "#/components/schemas/JobView"}}
    )
    assert annotation_kinds(list[models.Job]) != schema_kinds(
        {"type": "array", "items": {"$ref": "#/components/schemas/JobEventView"}}
    )
    assert annotation_kinds(models.JobStatus) == schema_kinds({"$ref": "#/components/schemas/JobStatus"})
    assert annotation_kinds(Literal["a", "b"]) != schema_kinds({"type": "string", "enum": ["a", "c"]})
