"""The app and openapi.yaml describe the same HTTP API.

Two directions are checked. Every route the Flask app serves is documented
and every documented operation is served, so a route cannot be added without
its documentation. And real responses of the app, for a representative set
of requests and errors, are validated with openapi-core against the
document: status, content type, headers and body schema.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from flask import Flask, Response
from flask.testing import FlaskClient
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import (
    WerkzeugOpenAPIRequest,
    WerkzeugOpenAPIResponse,
)
from openapi_core.exceptions import OpenAPIError
from openapi_core.templating.media_types.exceptions import MediaTypeNotFound
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.validation.response.exceptions import (
    InvalidData,
    MissingRequiredHeader,
)
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import EnvironBuilder, encode_multipart

from tests.conftest import OPENAPI_PATH, encode, make_app, photo

# openapi-core finds an operation only under one of the document's servers,
# so every request is addressed to the first of them.
SERVER_URL = "http://localhost:8000"
# Flask answers these for every route by itself; the document leaves them out.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
FLASK_VARIABLE = re.compile(r"<(?:[a-z_]+(?:\([^)]*\))?:)?([A-Za-z_]\w*)>")
SMALL_BODY_LIMIT = 1000
NO_FACE_MODELS = "the face models are not in models/; `python -m export` builds them"
FACE_MODELS_INSTALLED = "this exchange needs an app without the face models"
# The page at / and the docs are for people, not part of the API: they stay
# out of the contract, and are named here so that no other route can.
PAGE_OPERATIONS = {
    ("/", "get"),
    ("/docs", "get"),
    ("/openapi.yaml", "get"),
    ("/web/{name}", "get"),
    ("/web/swagger-ui/{name}", "get"),
}
# Where the astronaut's face lies in scikit-image's photo (512x512), as
# (left, top, right, bottom) pixels; a detected box must centre inside it.
ASTRONAUT_FACE = (150, 45, 300, 195)
EMBEDDING_SIZE = 512


def json_loads(value: bytes, **parameters: str) -> Any:
    return json.loads(value)


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    # openapi-core reads only application/json and a few other JSON types
    # as JSON; without this it would check problem bodies as raw bytes.
    config = Config(
        extra_media_type_deserializers={"application/problem+json": json_loads}
    )
    return OpenAPI.from_file_path(str(OPENAPI_PATH), config=config)


@pytest.fixture(scope="module")
def small_body_app(models_dir: Path) -> Flask:
    return make_app(models_dir, max_body_bytes=SMALL_BODY_LIMIT)


@pytest.fixture(scope="module")
def classifier_only_app(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Flask:
    """An app on a models folder whose manifest lists only the classifiers,
    as one built before the face models existed."""
    folder = tmp_path_factory.mktemp("classifiers-only")
    manifest = json.loads((models_dir / "manifest.json").read_text())
    manifest["models"] = [
        entry for entry in manifest["models"] if entry["task"] == "classification"
    ]
    manifest["defaults"] = {"classification": manifest["defaults"]["classification"]}
    for entry in manifest["models"]:
        (folder / entry["file"]).symlink_to(models_dir / entry["file"])
        labels = entry["labels"]["file"]
        if not (folder / labels).exists():
            (folder / labels).symlink_to(models_dir / labels)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return make_app(folder)


# Route coverage --------------------------------------------------------------


def served_operations(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI path, lowercase method) of every route of ``app``."""
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = FLASK_VARIABLE.sub(r"{\1}", rule.rule)
        for method in (rule.methods or set()) - IMPLICIT_METHODS:
            operations.add((path, method.lower()))
    return operations


def documented_operations() -> set[tuple[str, str]]:
    document = yaml.safe_load(OPENAPI_PATH.read_text())
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS and method.upper() not in IMPLICIT_METHODS
    }


def test_an_undocumented_route_is_noticed() -> None:
    app = Flask(__name__)
    app.add_url_rule("/v1/models/<path:name>", "model", lambda name: name)
    app.add_url_rule("/v1/models/<int:version>", "remove", methods=["DELETE"])

    assert served_operations(app) - documented_operations() == {
        ("/v1/models/{name}", "get"),
        ("/v1/models/{version}", "delete"),
    }


def test_every_route_is_documented(app: Flask) -> None:
    api_operations = served_operations(app) - PAGE_OPERATIONS
    undocumented = api_operations - documented_operations()

    assert not undocumented, f"routes missing from openapi.yaml: {undocumented}"


def test_every_documented_operation_is_served(app: Flask) -> None:
    unserved = documented_operations() - served_operations(app)

    assert not unserved, f"openapi.yaml documents routes the app lacks: {unserved}"


def test_the_pages_are_served_and_kept_out_of_the_contract(app: Flask) -> None:
    assert PAGE_OPERATIONS <= served_operations(app)
    assert not PAGE_OPERATIONS & documented_operations()
    assert not any(path.startswith("/v1/") for path, _ in PAGE_OPERATIONS)


# Request bodies --------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str


@functools.cache
def jpeg(name: str, mirrored: bool = False) -> bytes:
    pixels = photo(name)
    if mirrored:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return encode(pixels)


def base64_of(data: bytes) -> str:
    return base64.b64encode(data).decode()


def json_body(document: dict[str, Any]) -> Body:
    return Body(json.dumps(document).encode(), "application/json")


def form(files: dict[str, bytes], fields: dict[str, str] | None = None) -> Body:
    parts = MultiDict(
        [
            (name, FileStorage(io.BytesIO(data), f"{name}.jpg"))
            for name, data in files.items()
        ]
    )
    for name, value in (fields or {}).items():
        parts.add(name, value)
    boundary, data = encode_multipart(parts)
    return Body(data, f"multipart/form-data; boundary={boundary}")


def raw_jpeg() -> Body:
    return Body(jpeg("chelsea"), "image/jpeg")


def octet_stream_jpeg() -> Body:
    return Body(jpeg("chelsea"), "application/octet-stream")


def truncated_jpeg() -> Body:
    data = jpeg("chelsea")
    return Body(data[: len(data) // 2], "image/jpeg")


def two_image_form() -> Body:
    parts = MultiDict(
        [
            ("image", FileStorage(io.BytesIO(jpeg(name)), f"{name}.jpg"))
            for name in ("chelsea", "coffee")
        ]
    )
    boundary, data = encode_multipart(parts)
    return Body(data, f"multipart/form-data; boundary={boundary}")


def base64_json() -> Body:
    encoded = base64.b64encode(jpeg("chelsea")).decode()
    return Body(json.dumps({"image": encoded, "top_k": 3}).encode(), "application/json")


def plain_text() -> Body:
    return Body(b"a cat", "text/plain")


def astronaut_jpeg() -> Body:
    return Body(jpeg("astronaut"), "image/jpeg")


def astronaut_json_one_face() -> Body:
    return json_body({"image": base64_of(jpeg("astronaut")), "max_faces": 1})


def astronaut_json_age() -> Body:
    document = {
        "image": base64_of(jpeg("astronaut")),
        "min_face_size": 40,
        "attributes": "age",
    }
    return json_body(document)


def grey_png() -> Body:
    return Body(encode(np.full((240, 320, 3), 128, np.uint8), "PNG"), "image/png")


def mirrored_pair_json() -> Body:
    return json_body(
        {
            "image1": base64_of(jpeg("astronaut")),
            "image2": base64_of(jpeg("astronaut", mirrored=True)),
        }
    )


def mirrored_pair_form() -> Body:
    files = {"image1": jpeg("astronaut"), "image2": jpeg("astronaut", mirrored=True)}
    return form(files, {"threshold": "1.0"})


def pair_without_image2() -> Body:
    return form({"image1": jpeg("astronaut")})


# Exchanges -------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """One request to send and what the document must say of its answer.

    ``documented_as`` names the operation whose responses describe the
    answer when the request itself has none: an unknown path or a method
    the path does not take. Every operation documents its 404 and 405.
    """

    id: str
    method: str
    path: str
    status: HTTPStatus
    body: Callable[[], Body] | None = None
    query: dict[str, str] = field(default_factory=dict)
    problem: str | None = None
    documented_as: tuple[str, str] | None = None
    app_fixture: str = "app"
    results: int = 1
    predictions: int = 5
    model: str = "efficientnet-lite0"
    # True: the exchange needs the face models; False: it needs them absent.
    face_models: bool | None = None
    attributes: tuple[str, ...] = ()
    detail: str | None = None
    # openapi-core reads a multipart file part as bytes where the schema says
    # string, and leaves its text fields uncast, so it cannot check those.
    request_checkable: bool = True

    def arguments(self, method: str, path: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "path": path,
            "method": method,
            "base_url": SERVER_URL,
            "query_string": self.query,
        }
        if self.body is not None:
            body = self.body()
            arguments.update(data=body.data, content_type=body.content_type)
        return arguments

    def sent(self) -> dict[str, Any]:
        return self.arguments(self.method, self.path)

    def as_documented(self) -> WerkzeugOpenAPIRequest:
        method, path = self.documented_as or (self.method, self.path)
        request = EnvironBuilder(**self.arguments(method, path)).get_request()
        return WerkzeugOpenAPIRequest(request)


EXCHANGES = [
    Exchange("healthz", "GET", "/healthz", HTTPStatus.OK),
    Exchange("readyz", "GET", "/readyz", HTTPStatus.OK),
    Exchange("metrics", "GET", "/metrics", HTTPStatus.OK),
    Exchange("models", "GET", "/v1/models", HTTPStatus.OK),
    Exchange("classify-raw-jpeg", "POST", "/v1/classify", HTTPStatus.OK, raw_jpeg),
    Exchange(
        "classify-multipart-two-images",
        "POST",
        "/v1/classify",
        HTTPStatus.OK,
        two_image_form,
        results=2,
        request_checkable=False,
    ),
    Exchange(
        "classify-octet-stream",
        "POST",
        "/v1/classify",
        HTTPStatus.OK,
        octet_stream_jpeg,
    ),
    Exchange(
        "classify-json-base64",
        "POST",
        "/v1/classify",
        HTTPStatus.OK,
        base64_json,
        predictions=3,
    ),
    Exchange(
        "classify-top-k-1",
        "POST",
        "/v1/classify",
        HTTPStatus.OK,
        raw_jpeg,
        query={"top_k": "1"},
        predictions=1,
    ),
    Exchange(
        "classify-mobilenet-v2",
        "POST",
        "/v1/classify",
        HTTPStatus.OK,
        raw_jpeg,
        query={"model": "mobilenet-v2"},
        model="mobilenet-v2",
    ),
    Exchange(
        "404-unknown-path",
        "POST",
        "/v1/clasify",
        HTTPStatus.NOT_FOUND,
        raw_jpeg,
        problem="not-found",
        documented_as=("POST", "/v1/classify"),
    ),
    Exchange(
        "405-get-classify",
        "GET",
        "/v1/classify",
        HTTPStatus.METHOD_NOT_ALLOWED,
        problem="method-not-allowed",
        documented_as=("POST", "/v1/classify"),
    ),
    Exchange(
        "405-post-healthz",
        "POST",
        "/healthz",
        HTTPStatus.METHOD_NOT_ALLOWED,
        problem="method-not-allowed",
        documented_as=("GET", "/healthz"),
    ),
    Exchange(
        "400-invalid-top-k",
        "POST",
        "/v1/classify",
        HTTPStatus.BAD_REQUEST,
        raw_jpeg,
        query={"top_k": "0"},
        problem="invalid-parameter",
    ),
    Exchange(
        "400-unknown-model",
        "POST",
        "/v1/classify",
        HTTPStatus.BAD_REQUEST,
        raw_jpeg,
        query={"model": "resnet50"},
        problem="unknown-model",
    ),
    Exchange(
        "400-invalid-image",
        "POST",
        "/v1/classify",
        HTTPStatus.BAD_REQUEST,
        truncated_jpeg,
        problem="invalid-image",
    ),
    Exchange(
        "415-text-plain",
        "POST",
        "/v1/classify",
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        plain_text,
        problem="unsupported-media-type",
    ),
    Exchange(
        "413-body-too-large",
        "POST",
        "/v1/classify",
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        raw_jpeg,
        problem="body-too-large",
        app_fixture="small_body_app",
    ),
    Exchange(
        "faces-detect-age-gender",
        "POST",
        "/v1/faces/detect",
        HTTPStatus.OK,
        astronaut_jpeg,
        query={"attributes": "age,gender"},
        face_models=True,
        attributes=("age", "gender"),
    ),
    Exchange(
        "faces-detect-json-age",
        "POST",
        "/v1/faces/detect",
        HTTPStatus.OK,
        astronaut_json_age,
        face_models=True,
        attributes=("age",),
    ),
    Exchange(
        "faces-embed-raw",
        "POST",
        "/v1/faces/embed",
        HTTPStatus.OK,
        astronaut_jpeg,
        face_models=True,
    ),
    Exchange(
        "faces-embed-json-one-face",
        "POST",
        "/v1/faces/embed",
        HTTPStatus.OK,
        astronaut_json_one_face,
        face_models=True,
    ),
    Exchange(
        "faces-verify-json-mirrored",
        "POST",
        "/v1/faces/verify",
        HTTPStatus.OK,
        mirrored_pair_json,
        face_models=True,
    ),
    Exchange(
        "faces-verify-form-mirrored",
        "POST",
        "/v1/faces/verify",
        HTTPStatus.OK,
        mirrored_pair_form,
        face_models=True,
        request_checkable=False,
    ),
    Exchange(
        "422-faces-detect-grey",
        "POST",
        "/v1/faces/detect",
        HTTPStatus.UNPROCESSABLE_ENTITY,
        grey_png,
        problem="no-face",
        face_models=True,
        detail="image has no face (faces of at least 20 pixels were looked for).",
    ),
    Exchange(
        "400-faces-detect-unknown-attribute",
        "POST",
        "/v1/faces/detect",
        HTTPStatus.BAD_REQUEST,
        astronaut_jpeg,
        query={"attributes": "age,height"},
        problem="invalid-parameter",
        face_models=True,
        detail="attributes may be age, gender; got height.",
    ),
    Exchange(
        "400-faces-verify-without-image2",
        "POST",
        "/v1/faces/verify",
        HTTPStatus.BAD_REQUEST,
        pair_without_image2,
        problem="missing-image",
        face_models=True,
        detail="Give exactly one of image2 and embedding2.",
    ),
    Exchange(
        "415-faces-verify-text-plain",
        "POST",
        "/v1/faces/verify",
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        plain_text,
        problem="unsupported-media-type",
        face_models=True,
    ),
    Exchange(
        "405-get-faces-detect",
        "GET",
        "/v1/faces/detect",
        HTTPStatus.METHOD_NOT_ALLOWED,
        problem="method-not-allowed",
        documented_as=("POST", "/v1/faces/detect"),
    ),
    *(
        Exchange(
            f"503-faces-{route}-without-models",
            "POST",
            f"/v1/faces/{route}",
            HTTPStatus.SERVICE_UNAVAILABLE,
            body,
            problem="not-ready",
            face_models=False,
            app_fixture="classifier_only_app",
            detail=(
                "The face models are not installed; rebuild them with "
                "`python -m export`."
            ),
        )
        for route, body in [
            ("detect", astronaut_jpeg),
            ("embed", astronaut_jpeg),
            ("verify", mirrored_pair_json),
        ]
    ),
]


@pytest.mark.parametrize("exchange", EXCHANGES, ids=[e.id for e in EXCHANGES])
def test_response_matches_the_document(
    exchange: Exchange, openapi: OpenAPI, request: pytest.FixtureRequest
) -> None:
    app: Flask = request.getfixturevalue(exchange.app_fixture)
    require_face_models(app, exchange.face_models)
    with app.test_client() as client:
        response = client.open(**exchange.sent())

    assert response.status_code == exchange.status, response.get_data(as_text=True)
    if exchange.problem is not None:
        assert response.json is not None
        assert response.json["type"] == f"/problems/{exchange.problem}"
        if exchange.detail is not None:
            assert response.json["detail"] == exchange.detail
    elif exchange.path in BODY_CHECKS:
        BODY_CHECKS[exchange.path](response.json, exchange)
    openapi.validate_response(
        exchange.as_documented(), WerkzeugOpenAPIResponse(response)
    )


ACCEPTED = [e for e in EXCHANGES if e.status == HTTPStatus.OK and e.request_checkable]


@pytest.mark.parametrize("exchange", ACCEPTED, ids=[e.id for e in ACCEPTED])
def test_accepted_request_is_documented(exchange: Exchange, openapi: OpenAPI) -> None:
    openapi.validate_request(exchange.as_documented())


def require_face_models(app: Flask, wanted: bool | None) -> None:
    """Check the app has (or lacks) the face models the exchange is about."""
    installed = app.extensions["vision"].registry.faces is not None
    if wanted is True:
        assert installed, NO_FACE_MODELS
    if wanted is False:
        assert not installed, FACE_MODELS_INSTALLED


def assert_classification(body: Any, exchange: Exchange) -> None:
    assert body["model"]["name"] == exchange.model
    assert len(body["results"]) == exchange.results
    for result in body["results"]:
        assert len(result["predictions"]) == exchange.predictions


def assert_on_astronaut_face(box: dict[str, float]) -> None:
    left, top, right, bottom = ASTRONAUT_FACE
    centre_x = box["x"] + box["width"] / 2
    centre_y = box["y"] + box["height"] / 2

    assert left < centre_x < right and top < centre_y < bottom, box


def assert_faces_of_astronaut(body: Any, exchange: Exchange) -> None:
    assert len(body["results"]) == exchange.results
    for result in body["results"]:
        assert (result["width"], result["height"]) == (512, 512)
        boxes = [face["box"] for face in result["faces"]]
        areas = [box["width"] * box["height"] for box in boxes]
        assert areas == sorted(areas, reverse=True)
    assert_on_astronaut_face(body["results"][0]["faces"][0]["box"])


def assert_detection(body: Any, exchange: Exchange) -> None:
    assert_faces_of_astronaut(body, exchange)
    assert set(body["models"]) == {"detector", *exchange.attributes}
    for result in body["results"]:
        for face in result["faces"]:
            assert set(face) == {"box", "score", "landmarks", *exchange.attributes}


def assert_embedding(body: Any, exchange: Exchange) -> None:
    assert_faces_of_astronaut(body, exchange)
    for result in body["results"]:
        for face in result["faces"]:
            embedding = np.asarray(face["embedding"])
            assert embedding.shape == (EMBEDDING_SIZE,)
            assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)


def assert_verification(body: Any, exchange: Exchange) -> None:
    distance = body["distance"]
    sources = [face["source"] for face in body["faces"]]

    assert sources == ["image1", "image2"]
    assert body["similarity"] == pytest.approx(1 - distance**2 / 2, abs=1e-5)
    # The same face under a mirror is one person by any sane threshold.
    assert body["verified"] is (distance <= body["threshold"]) is True
    assert_on_astronaut_face(body["faces"][0]["box"])


BODY_CHECKS: dict[str, Callable[[Any, Exchange], None]] = {
    "/v1/classify": assert_classification,
    "/v1/faces/detect": assert_detection,
    "/v1/faces/embed": assert_embedding,
    "/v1/faces/verify": assert_verification,
}


VERIFY_MIRRORED = next(e for e in EXCHANGES if e.id == "faces-verify-json-mirrored")


def embedding_of(client: FlaskClient, image: bytes, openapi: OpenAPI) -> list[float]:
    """The largest face's embedding from /v1/faces/embed, checked on the way."""
    exchange = Exchange(
        "embed",
        "POST",
        "/v1/faces/embed",
        HTTPStatus.OK,
        lambda: Body(image, "image/jpeg"),
    )
    response = client.open(**exchange.sent())
    assert response.status_code == HTTPStatus.OK, response.get_data(as_text=True)
    openapi.validate_response(
        exchange.as_documented(), WerkzeugOpenAPIResponse(response)
    )
    embedding: list[float] = response.json["results"][0]["faces"][0]["embedding"]
    return embedding


def embeddings_pair_json(first: list[float], second: list[float]) -> Body:
    return json_body({"embedding1": first, "embedding2": second})


def embedding_and_image_form(first: list[float], second: list[float]) -> Body:
    files = {"image2": jpeg("astronaut", mirrored=True)}
    return form(files, {"embedding1": json.dumps(first)})


@pytest.mark.parametrize(
    ("make_body", "sources", "request_checkable"),
    [
        (embeddings_pair_json, ["embedding1", "embedding2"], True),
        (embedding_and_image_form, ["embedding1", "image2"], False),
    ],
    ids=["json-two-embeddings", "form-embedding-and-image"],
)
def test_verify_with_embeddings_matches_the_document(
    app: Flask,
    openapi: OpenAPI,
    make_body: Callable[[list[float], list[float]], Body],
    sources: list[str],
    request_checkable: bool,
) -> None:
    require_face_models(app, True)
    with app.test_client() as client:
        first = embedding_of(client, jpeg("astronaut"), openapi)
        second = embedding_of(client, jpeg("astronaut", mirrored=True), openapi)
        by_images = client.open(**VERIFY_MIRRORED.sent())
        exchange = Exchange(
            "verify-embeddings",
            "POST",
            "/v1/faces/verify",
            HTTPStatus.OK,
            lambda: make_body(first, second),
        )
        response = client.open(**exchange.sent())

    assert response.status_code == HTTPStatus.OK, response.get_data(as_text=True)
    body = response.json
    assert [face["source"] for face in body["faces"]] == sources
    # The rounded embeddings give the distance the images give, to rounding.
    assert body["distance"] == pytest.approx(by_images.json["distance"], abs=1e-3)
    openapi.validate_response(
        exchange.as_documented(), WerkzeugOpenAPIResponse(response)
    )
    if request_checkable:
        openapi.validate_request(exchange.as_documented())


# The validator itself: it must reject what the document does not allow, or
# the exchanges above would pass whatever the app answered.

NOT_FOUND = (
    '{"type": "/problems/not-found", "title": "Not Found", "status": 404, '
    '"detail": "No route matches GET /nowhere."'
)
METHOD_NOT_ALLOWED = (
    '{"type": "/problems/method-not-allowed", "title": "Method Not Allowed", '
    '"status": 405, "detail": "POST is not allowed on /healthz; use GET."}'
)


def healthz_request() -> WerkzeugOpenAPIRequest:
    request = EnvironBuilder("/healthz", base_url=SERVER_URL).get_request()
    return WerkzeugOpenAPIRequest(request)


def error_chain(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__


@pytest.mark.parametrize(
    ("body", "status", "mimetype", "reason"),
    [
        pytest.param(
            '{"status": "ok", "uptime": 3}',
            200,
            "application/json",
            InvalidData,
            id="extra-member",
        ),
        pytest.param(
            '{"status": "ok"}', 200, "text/plain", MediaTypeNotFound, id="text-plain"
        ),
        pytest.param(
            '{"status": "ok"}',
            418,
            "application/json",
            ResponseNotFound,
            id="undocumented-status",
        ),
        pytest.param(
            NOT_FOUND + ', "instance": "/nowhere"}',
            404,
            "application/problem+json",
            InvalidData,
            id="problem-with-extra-member",
        ),
        pytest.param(
            NOT_FOUND + "}",
            404,
            "application/json",
            MediaTypeNotFound,
            id="problem-as-plain-json",
        ),
        pytest.param(
            METHOD_NOT_ALLOWED,
            405,
            "application/problem+json",
            MissingRequiredHeader,
            id="405-without-allow",
        ),
    ],
)
def test_validator_rejects_undocumented_responses(
    openapi: OpenAPI, body: str, status: int, mimetype: str, reason: type[Exception]
) -> None:
    response = Response(body, status=status, mimetype=mimetype)

    with pytest.raises(OpenAPIError) as raised:
        openapi.validate_response(healthz_request(), WerkzeugOpenAPIResponse(response))

    assert any(isinstance(e, reason) for e in error_chain(raised.value)), raised.value
