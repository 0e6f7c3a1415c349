"""The bad-input corpus: what a client reads back for each mistake.

Every case posts through Flask's test client and asserts the exact status,
the ``application/problem+json`` type and the exact body, all four members,
with the detail written out as the client reads it. The limits (body size,
pixels, images per request) are lowered on apps of their own.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import encode, make_app, photo
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

CLASSIFY = "/v1/classify"
PROBLEM_MEDIA_TYPE = "application/problem+json"

CAT_JPEG = encode(photo("chelsea"), "JPEG")
CAT_BASE64 = base64.b64encode(CAT_JPEG).decode("ascii")
CAT_TIFF = encode(photo("chelsea"), "TIFF")


def bad_request(slug: str, detail: str) -> dict[str, Any]:
    return {
        "type": f"/problems/{slug}",
        "title": "Bad Request",
        "status": 400,
        "detail": detail,
    }


def unsupported_media_type(detail: str) -> dict[str, Any]:
    return {
        "type": "/problems/unsupported-media-type",
        "title": "Unsupported Media Type",
        "status": 415,
        "detail": detail,
    }


def too_large(slug: str, detail: str) -> dict[str, Any]:
    return {
        "type": f"/problems/{slug}",
        "title": "Content Too Large",
        "status": 413,
        "detail": detail,
    }


def assert_problem(response: TestResponse, expected: dict[str, Any]) -> None:
    assert response.status_code == expected["status"]
    assert response.content_type == PROBLEM_MEDIA_TYPE
    assert response.json == expected


def post(
    client: FlaskClient, form: dict[str, Any] | None = None, **options: Any
) -> TestResponse:
    """POST to the classify route; ``form`` goes as multipart/form-data.

    A form value of bytes is a file upload, a list of bytes repeated
    uploads, a string a text field.
    """
    if form is not None:
        fields = {name: _form_value(name, value) for name, value in form.items()}
        options.update(data=fields, content_type="multipart/form-data")
    return client.post(CLASSIFY, **options)


def _form_value(name: str, value: Any) -> Any:
    if isinstance(value, bytes):
        return (io.BytesIO(value), f"{name}.jpg")
    if isinstance(value, list):
        return [_form_value(name, item) for item in value]
    return value


NO_BODY = bad_request(
    "empty-body",
    "The request has no body; "
    "send an image as multipart/form-data, image/*, application/json.",
)


CORPUS = [
    pytest.param(
        {"data": b"", "content_type": "image/jpeg"},
        bad_request("empty-body", "The request body is empty; it should be the image."),
        id="empty-raw",
    ),
    pytest.param(
        {
            "data": b"",
            "content_type": "image/jpeg",
            "environ_overrides": {"CONTENT_LENGTH": "0"},
        },
        NO_BODY,
        id="empty-raw-content-length-0",
    ),
    pytest.param({}, NO_BODY, id="no-content-type-no-body"),
    pytest.param(
        {"data": b"a photo of a cat", "content_type": "text/plain"},
        unsupported_media_type(
            "Content-Type text/plain is not accepted; "
            "use multipart/form-data, image/*, application/json."
        ),
        id="text-plain",
    ),
    pytest.param(
        {"data": b"a photo of a cat"},
        unsupported_media_type(
            "A body without Content-Type is not accepted; "
            "use multipart/form-data, image/*, application/json."
        ),
        id="body-without-content-type",
    ),
    pytest.param(
        {"data": b"a photo of a cat", "content_type": "image/jpeg"},
        bad_request(
            "invalid-image",
            "image is not a recognised image; "
            "supported formats are JPEG, PNG, WEBP, GIF, BMP.",
        ),
        id="text-as-jpeg",
    ),
    pytest.param(
        {"data": CAT_JPEG[: len(CAT_JPEG) // 2], "content_type": "image/jpeg"},
        bad_request(
            "invalid-image", "image could not be decoded: the data is truncated."
        ),
        id="truncated-jpeg",
    ),
    pytest.param(
        {"data": CAT_TIFF, "content_type": "image/tiff"},
        unsupported_media_type(
            "image is TIFF; supported formats are JPEG, PNG, WEBP, GIF, BMP."
        ),
        id="tiff",
    ),
    pytest.param(
        {"data": b"{'image': 'single quotes'}", "content_type": "application/json"},
        bad_request(
            "invalid-json",
            "The body is not valid JSON: Expecting property name enclosed in "
            "double quotes: line 1 column 2 (char 1).",
        ),
        id="json-not-json",
    ),
    pytest.param(
        {"data": b"[" * 100_000, "content_type": "application/json"},
        bad_request("invalid-json", "The JSON body is nested too deeply to parse."),
        id="json-nested-too-deep",
    ),
    pytest.param(
        {"json": [CAT_BASE64]},
        bad_request(
            "invalid-json", "The JSON body must be an object with an 'image' member."
        ),
        id="json-array",
    ),
    pytest.param(
        {"json": {"top_k": 3}},
        bad_request("missing-image", "The JSON object has no 'image' member."),
        id="json-without-image",
    ),
    pytest.param(
        {"json": {"image": [1, 2, 3]}},
        bad_request("invalid-parameter", "'image' must be a base64 string."),
        id="json-image-not-a-string",
    ),
    pytest.param(
        {"json": {"image": "not base64 at all!"}},
        bad_request("invalid-base64", "'image' is not valid base64."),
        id="not-base64",
    ),
    pytest.param(
        {"json": {"image": f"data:image/jpeg,{CAT_BASE64}"}},
        bad_request("invalid-base64", "A data: URL image must be base64 encoded."),
        id="data-url-not-base64",
    ),
    pytest.param(
        {"data": CAT_JPEG, "content_type": "image/jpeg", "query_string": "top_k=0"},
        bad_request(
            "invalid-parameter",
            "top_k must be a whole number from 1 to 20, got '0'.",
        ),
        id="top-k-0",
    ),
    pytest.param(
        {"data": CAT_JPEG, "content_type": "image/jpeg", "query_string": "top_k=21"},
        bad_request(
            "invalid-parameter",
            "top_k must be a whole number from 1 to 20, got '21'.",
        ),
        id="top-k-21",
    ),
    pytest.param(
        {"data": CAT_JPEG, "content_type": "image/jpeg", "query_string": "top_k=abc"},
        bad_request(
            "invalid-parameter",
            "top_k must be a whole number from 1 to 20, got 'abc'.",
        ),
        id="top-k-abc",
    ),
    pytest.param(
        {"json": {"image": CAT_BASE64, "top_k": 2.5}},
        bad_request(
            "invalid-parameter",
            "top_k must be a whole number from 1 to 20, got 2.5.",
        ),
        id="top-k-fraction",
    ),
    pytest.param(
        {"json": {"image": CAT_BASE64, "top_k": True}},
        bad_request(
            "invalid-parameter",
            "top_k must be a whole number from 1 to 20, got True.",
        ),
        id="top-k-true",
    ),
    pytest.param(
        {"data": CAT_JPEG, "content_type": "image/jpeg", "query_string": "model=vgg"},
        bad_request(
            "unknown-model",
            "model 'vgg' is not a loaded classification model; "
            "available: efficientnet-lite0, mobilenet-v2, efficientnet-lite0-int8.",
        ),
        id="unknown-model",
    ),
    pytest.param(
        {"form": {"file": CAT_JPEG}},
        bad_request("missing-image", "The form has no file field 'image'; found file."),
        id="form-without-image",
    ),
    pytest.param(
        {"form": {"image": "cat.jpg", "top_k": "3"}},
        bad_request(
            "missing-image",
            "Form field 'image' must be a file upload, not a text value.",
        ),
        id="form-image-as-text",
    ),
]


@pytest.mark.parametrize(("request_options", "expected"), CORPUS)
def test_bad_input_gets_its_problem(
    client: FlaskClient, request_options: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = post(client, **request_options)

    assert_problem(response, expected)


def test_too_many_images(models_dir: Path) -> None:
    client = make_app(models_dir, max_images=2).test_client()

    response = post(client, form={"image": [CAT_JPEG, CAT_JPEG, CAT_JPEG]})

    assert_problem(
        response,
        bad_request("too-many-images", "The request holds 3 images; the limit is 2."),
    )


@pytest.mark.parametrize(
    "request_options",
    [
        pytest.param({"data": CAT_JPEG, "content_type": "image/jpeg"}, id="raw"),
        pytest.param({"json": {"image": CAT_BASE64}}, id="json"),
        pytest.param({"form": {"image": CAT_JPEG}}, id="multipart"),
    ],
)
def test_body_over_the_size_limit(
    models_dir: Path, request_options: dict[str, Any]
) -> None:
    client = make_app(models_dir, max_body_bytes=1000).test_client()

    response = post(client, **request_options)

    assert_problem(
        response,
        too_large(
            "body-too-large", "The request body exceeds the limit of 1000 bytes."
        ),
    )


def test_image_over_the_pixel_limit(models_dir: Path) -> None:
    client = make_app(models_dir, max_pixels=10_000).test_client()

    response = post(client, data=CAT_JPEG, content_type="image/jpeg")

    assert_problem(
        response,
        too_large(
            "image-too-large", "image is 451x300 = 135300 pixels; the limit is 10000."
        ),
    )


def test_unknown_route_is_not_found(client: FlaskClient) -> None:
    response = client.get("/v1/clasify")

    assert_problem(
        response,
        {
            "type": "/problems/not-found",
            "title": "Not Found",
            "status": 404,
            "detail": "No route matches GET /v1/clasify.",
        },
    )


def test_get_on_classify_is_not_allowed(client: FlaskClient) -> None:
    response = client.get(CLASSIFY)

    assert_problem(
        response,
        {
            "type": "/problems/method-not-allowed",
            "title": "Method Not Allowed",
            "status": 405,
            "detail": "GET is not allowed on /v1/classify; use OPTIONS, POST.",
        },
    )
    allowed = {method.strip() for method in response.headers["Allow"].split(",")}
    assert "POST" in allowed


def test_unexpected_error_is_logged_and_hidden_from_the_client(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(models_dir)

    @app.get("/v1/explode")
    def explode() -> str:
        raise RuntimeError("secret internals")

    with caplog.at_level(logging.ERROR, logger="service.errors"):
        response = app.test_client().get("/v1/explode")

    assert_problem(
        response,
        {
            "type": "/problems/internal-error",
            "title": "Internal Server Error",
            "status": 500,
            "detail": (
                "The server failed to process the request; the error has been logged."
            ),
        },
    )
    assert "secret internals" not in response.get_data(as_text=True)
    [record] = [r for r in caplog.records if r.name == "service.errors"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "unhandled error on GET /v1/explode"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert "Traceback" in caplog.text
    assert "secret internals" in caplog.text
