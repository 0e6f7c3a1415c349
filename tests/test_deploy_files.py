"""Checks on the HTTP contract as a file: service/openapi.yaml.

The document is read as YAML, so these tests need no server and no network.
They assert what a drifting contract would break: the OpenAPI document is
valid and its examples match its schemas, and every error is a problem+json
body. The container and Kubernetes files are checked in test_deployment.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENAPI_PATH = REPO_ROOT / "service" / "openapi.yaml"

OPENAPI_URI = "urn:vision-service:openapi"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PROBLEM_MEDIA_TYPE = "application/problem+json"

# The routes and problem types of the HTTP contract, with their statuses.
CONTRACT_ROUTES = {
    "/healthz": "get",
    "/readyz": "get",
    "/metrics": "get",
    "/v1/models": "get",
    "/v1/classify": "post",
    "/v1/faces/detect": "post",
    "/v1/faces/embed": "post",
    "/v1/faces/verify": "post",
}
FACE_ROUTES = ["/v1/faces/detect", "/v1/faces/embed", "/v1/faces/verify"]
CONTRACT_PROBLEMS = {
    "unauthorized": 401,
    "not-found": 404,
    "method-not-allowed": 405,
    "request-timeout": 408,
    "body-too-large": 413,
    "image-too-large": 413,
    "unsupported-media-type": 415,
    "empty-body": 400,
    "missing-image": 400,
    "invalid-base64": 400,
    "invalid-json": 400,
    "invalid-image": 400,
    "invalid-parameter": 400,
    "unknown-model": 400,
    "too-many-images": 400,
    "bad-request": 400,
    "no-face": 422,
    "not-ready": 503,
    "overloaded": 503,
    "internal-error": 500,
}
# Where a problem of each status is checked against the documented schema;
# any other status is checked on /v1/classify.
PROBLEM_ROUTES = {
    422: ("/v1/faces/detect", "post"),
    503: ("/readyz", "get"),
}
# Problems checked on a route of their own, whatever their status.
PROBLEM_SLUG_ROUTES = {
    "overloaded": ("/v1/classify", "post"),
}


# OpenAPI helpers --------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    document = yaml.safe_load(OPENAPI_PATH.read_text())
    assert isinstance(document, dict)
    return document


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow local $refs until the node is no reference."""
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def pointer(*parts: str) -> str:
    return "#/" + "/".join(
        quote(p.replace("~", "~0").replace("/", "~1")) for p in parts
    )


def media_types(document: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """Every media type object with a schema, with the JSON pointer to it.

    Component responses are visited where they are defined, so each is
    checked once.
    """
    places: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    for name, response in document["components"]["responses"].items():
        places.append((("components", "responses", name), response))
    for path, method, operation in operations(document):
        base = ("paths", path, method)
        if "requestBody" in operation:
            places.append((base + ("requestBody",), operation["requestBody"]))
        for status, response in operation["responses"].items():
            if "$ref" not in response:
                places.append((base + ("responses", status), response))
    for location, holder in places:
        for media_type, content in holder.get("content", {}).items():
            if "schema" in content:
                parts = location + ("content", media_type, "schema")
                yield pointer(*parts), media_type, content


def schema_validator(document: dict[str, Any], schema_pointer: str) -> Any:
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(OPENAPI_URI, resource)
    return Draft202012Validator(
        {"$ref": OPENAPI_URI + schema_pointer}, registry=registry
    )


def example_values(document: dict[str, Any], content: dict[str, Any]) -> list[Any]:
    values = [content["example"]] if "example" in content else []
    for example in content.get("examples", {}).values():
        values.append(resolve(document, example)["value"])
    return values


def problem_slugs(node: Any) -> Iterator[str]:
    """Slugs of every /problems/<slug> string anywhere in the document."""
    if isinstance(node, dict):
        for value in node.values():
            yield from problem_slugs(value)
    elif isinstance(node, list):
        for value in node:
            yield from problem_slugs(value)
    elif isinstance(node, str):
        yield from re.findall(r"^/problems/([a-z0-9-]+)$", node)


# OpenAPI tests ----------------------------------------------------------------


def test_openapi_document_is_valid(openapi: dict[str, Any]) -> None:
    validate(openapi)

    assert openapi["openapi"] == "3.1.0"
    assert openapi["info"]["title"] == "Vision inference service"
    assert openapi["info"]["version"] == "0.1.0"
    assert openapi["info"]["description"].strip()


def test_openapi_documents_every_contract_route(openapi: dict[str, Any]) -> None:
    documented = {(path, method) for path, method, _ in operations(openapi)}

    assert set(CONTRACT_ROUTES.items()) <= documented


def test_operations_have_unique_ids_and_summaries(openapi: dict[str, Any]) -> None:
    found = list(operations(openapi))
    ids = [operation.get("operationId") for _, _, operation in found]

    assert all(ids), ids
    assert len(set(ids)) == len(ids), ids
    for path, method, operation in found:
        assert operation.get("summary", "").strip(), f"{method} {path}"


@pytest.mark.parametrize(("path", "method"), sorted(CONTRACT_ROUTES.items()))
def test_operations_document_the_common_errors(
    openapi: dict[str, Any], path: str, method: str
) -> None:
    responses = openapi["paths"][path][method]["responses"]

    assert {"200", "404", "405", "500"} <= set(responses)


def test_classify_documents_its_error_statuses(openapi: dict[str, Any]) -> None:
    responses = openapi["paths"]["/v1/classify"]["post"]["responses"]

    assert {"400", "413", "415"} <= set(responses)
    assert "503" in openapi["paths"]["/readyz"]["get"]["responses"]


@pytest.mark.parametrize("path", FACE_ROUTES)
def test_face_routes_document_their_error_statuses(
    openapi: dict[str, Any], path: str
) -> None:
    responses = openapi["paths"][path]["post"]["responses"]
    unavailable = resolve(openapi, responses["503"])

    assert {"400", "413", "415", "422", "503"} <= set(responses)
    # Missing face models stay missing: retrying cannot help, so only an
    # overloaded worker sends Retry-After.
    assert unavailable["headers"]["Retry-After"]["required"] is False


def test_every_error_is_a_problem_json_body(openapi: dict[str, Any]) -> None:
    for path, method, operation in operations(openapi):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            content = resolve(openapi, response)["content"]
            assert list(content) == [PROBLEM_MEDIA_TYPE], f"{method} {path} {status}"

            schema = resolve(openapi, content[PROBLEM_MEDIA_TYPE]["schema"])
            schemas = [resolve(openapi, s) for s in schema.get("allOf", [schema])]
            problem = openapi["components"]["schemas"]["Problem"]
            assert problem in schemas, f"{method} {path} {status}"


def test_problem_schema_has_exactly_four_required_members(
    openapi: dict[str, Any],
) -> None:
    problem = openapi["components"]["schemas"]["Problem"]
    members = {"type", "title", "status", "detail"}

    assert problem["additionalProperties"] is False
    assert set(problem["required"]) == members
    assert set(problem["properties"]) == members


def test_contract_headers_are_documented(openapi: dict[str, Any]) -> None:
    classify = openapi["paths"]["/v1/classify"]["post"]["responses"]
    readyz = openapi["paths"]["/readyz"]["get"]["responses"]

    assert "Allow" in resolve(openapi, classify["405"])["headers"]
    assert "Retry-After" in resolve(openapi, classify["503"])["headers"]
    assert "Retry-After" in resolve(openapi, readyz["503"])["headers"]


def test_every_contract_problem_type_is_documented(openapi: dict[str, Any]) -> None:
    assert set(problem_slugs(openapi)) == set(CONTRACT_PROBLEMS)


@pytest.mark.parametrize(("slug", "status"), sorted(CONTRACT_PROBLEMS.items()))
def test_contract_problems_match_the_documented_error_schema(
    openapi: dict[str, Any], slug: str, status: int
) -> None:
    path, method = PROBLEM_SLUG_ROUTES.get(
        slug, PROBLEM_ROUTES.get(status, ("/v1/classify", "post"))
    )
    response = openapi["paths"][path][method]["responses"][str(status)]
    content = resolve(openapi, response)["content"][PROBLEM_MEDIA_TYPE]
    schema_pointer = content["schema"]["$ref"]
    body = {
        "type": f"/problems/{slug}",
        "title": "Reason",
        "status": status,
        "detail": "What went wrong.",
    }

    assert schema_validator(openapi, schema_pointer).is_valid(body)


def test_examples_match_their_schemas(openapi: dict[str, Any]) -> None:
    checked = 0
    for schema_pointer, media_type, content in media_types(openapi):
        validator = schema_validator(openapi, schema_pointer)
        for value in example_values(openapi, content):
            errors = [e.message for e in validator.iter_errors(value)]
            assert not errors, f"{schema_pointer}: {errors}"
            checked += 1
            if media_type == PROBLEM_MEDIA_TYPE:
                slug = value["type"].removeprefix("/problems/")
                assert CONTRACT_PROBLEMS[slug] == value["status"], value

    assert checked >= len(CONTRACT_ROUTES)


@pytest.mark.parametrize(
    "body",
    [
        {"type": "/problems/not-found", "title": "Not Found", "status": 404},
        {
            "type": "/problems/not-found",
            "title": "Not Found",
            "status": 404,
            "detail": "No route matches /nowhere.",
            "instance": "/nowhere",
        },
        {
            "type": "/problems/not-found",
            "title": "Not Found",
            "status": 400,
            "detail": "No route matches /nowhere.",
        },
    ],
    ids=["missing-detail", "extra-member", "wrong-status"],
)
def test_not_found_schema_rejects_malformed_problems(
    openapi: dict[str, Any], body: dict[str, Any]
) -> None:
    validator = schema_validator(openapi, "#/components/schemas/NotFoundProblem")

    assert not validator.is_valid(body)


@pytest.mark.parametrize(
    "prediction",
    [
        {"label": "cat", "wnid": "n0212304", "index": 281, "probability": 0.5},
        {"label": "cat", "wnid": "n02123045", "index": -1, "probability": 0.5},
        {"label": "cat", "wnid": "n02123045", "index": 281, "probability": 1.5},
    ],
    ids=["short-wnid", "negative-index", "probability-above-one"],
)
def test_prediction_schema_rejects_out_of_range_values(
    openapi: dict[str, Any], prediction: dict[str, Any]
) -> None:
    validator = schema_validator(openapi, "#/components/schemas/Prediction")

    assert not validator.is_valid(prediction)


@pytest.mark.parametrize(
    ("top_k", "valid"), [(0, False), (1, True), (20, True), (21, False)]
)
def test_top_k_schema_bounds(openapi: dict[str, Any], top_k: int, valid: bool) -> None:
    validator = schema_validator(openapi, "#/components/schemas/TopK")

    assert validator.is_valid(top_k) is valid


def point(x: float, y: float) -> dict[str, float]:
    return {"x": x, "y": y}


FACE = {
    "box": {"x": -2.5, "y": 64.9, "width": 81.5, "height": 103.6},
    "score": 0.9998,
    "landmarks": {
        "left_eye": point(20.1, 105.6),
        "right_eye": point(40.7, 101.9),
        "nose": point(24.3, 125.8),
        "mouth_left": point(21.0, 145.2),
        "mouth_right": point(40.2, 142.0),
    },
    "age": {"years": 34.6, "range": [29.0, 40.0]},
    "gender": {"label": "female", "probability": 0.9731},
}
NO_NOSE = {name: p for name, p in FACE["landmarks"].items() if name != "nose"}


@pytest.mark.parametrize(
    ("changes", "valid"),
    [
        ({}, True),
        ({"age": None, "gender": None}, True),
        ({"score": 1.5}, False),
        ({"gender": {"label": "other", "probability": 0.9}}, False),
        ({"gender": {"label": "male", "probability": 0.4}}, False),
        ({"age": {"years": 30.0, "range": [25.0, 30.0, 35.0]}}, False),
        ({"landmarks": NO_NOSE}, False),
        ({"box": {"x": 1, "y": 2, "width": -3, "height": 4}}, False),
        ({"embedding": [0.1, 0.2]}, False),
    ],
    ids=[
        "complete",
        "without-attributes",
        "score-above-one",
        "unknown-gender",
        "gender-below-half",
        "age-range-of-three",
        "landmarks-without-nose",
        "negative-width",
        "embedding-in-detect",
    ],
)
def test_detected_face_schema(
    openapi: dict[str, Any], changes: dict[str, Any], valid: bool
) -> None:
    face = {**FACE, **changes}
    face = {name: value for name, value in face.items() if value is not None}
    validator = schema_validator(openapi, "#/components/schemas/DetectedFace")

    assert validator.is_valid(face) is valid


IMAGE_SIDE = {"source": "image1", "face": 0, "box": FACE["box"]}


@pytest.mark.parametrize(
    ("faces", "valid"),
    [
        ([IMAGE_SIDE, {"source": "embedding2"}], True),
        ([{"source": "embedding1"}, {"source": "embedding2"}], True),
        ([{"source": "embedding2"}, IMAGE_SIDE], False),
        ([IMAGE_SIDE], False),
        ([{"source": "image1"}, {"source": "embedding2"}], False),
        ([{"source": "embedding1", "face": 0}, {"source": "embedding2"}], False),
    ],
    ids=[
        "image-and-embedding",
        "two-embeddings",
        "sides-swapped",
        "one-side",
        "image-without-box",
        "embedding-with-face",
    ],
)
def test_verify_response_schema_faces(
    openapi: dict[str, Any], faces: list[dict[str, Any]], valid: bool
) -> None:
    body = {
        "model": {"name": "facenet", "version": "1"},
        "distance": 0.48,
        "similarity": 0.8848,
        "threshold": 1.05,
        "verified": True,
        "faces": faces,
    }
    validator = schema_validator(openapi, "#/components/schemas/VerifyFacesResponse")

    assert validator.is_valid(body) is valid


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"image1": "R0lG", "image2": "R0lG"}, True),
        ({"embedding1": [0.1, 0.2], "image2": "R0lG", "face2": 1}, True),
        ({"image1": "R0lG", "embedding1": [0.1], "image2": "R0lG"}, False),
        ({"image1": "R0lG"}, False),
        ({"image1": "R0lG", "embedding2": []}, False),
        ({"image1": "R0lG", "image2": "R0lG", "threshold": 4.5}, False),
        ({"image1": "R0lG", "image2": "R0lG", "face1": 100}, False),
    ],
    ids=[
        "two-images",
        "embedding-and-image",
        "image-and-embedding-on-one-side",
        "no-second-side",
        "empty-embedding",
        "threshold-above-four",
        "face-index-100",
    ],
)
def test_verify_json_schema(
    openapi: dict[str, Any], body: dict[str, Any], valid: bool
) -> None:
    validator = schema_validator(openapi, "#/components/schemas/VerifyFacesJson")

    assert validator.is_valid(body) is valid


@pytest.mark.parametrize(
    ("attributes", "valid"),
    [
        ("age", True),
        ("age,gender", True),
        (" gender , age ", True),
        ("", True),
        ("age gender", False),
        ("agegender", False),
        ("age,height", False),
    ],
)
def test_face_attributes_schema(
    openapi: dict[str, Any], attributes: str, valid: bool
) -> None:
    validator = schema_validator(openapi, "#/components/schemas/FaceAttributes")

    assert validator.is_valid(attributes) is valid


@pytest.mark.parametrize(
    ("size", "valid"), [(11, False), (12, True), (4096, True), (4097, False)]
)
def test_min_face_size_schema_bounds(
    openapi: dict[str, Any], size: int, valid: bool
) -> None:
    validator = schema_validator(openapi, "#/components/schemas/MinFaceSize")

    assert validator.is_valid(size) is valid
