"""The one error shape of the service: RFC 9457 problem details.

Every failure a client can see is a ``ProblemError`` subclass that knows its
HTTP status and a stable ``type`` (``/problems/<slug>``); Werkzeug's own
errors (404, 405, 413, ...) are translated into the same body. The body has
exactly four members, ``type``, ``title``, ``status`` and ``detail``, and is
sent as ``application/problem+json``. A 500 says nothing internal; its
traceback goes to the log with the request's method and path.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import ClassVar

from flask import Flask, Response, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ProblemError(Exception):
    """Base of every error that leaves the service as problem details."""

    status: ClassVar[HTTPStatus] = HTTPStatus.BAD_REQUEST
    slug: ClassVar[str] = "bad-request"

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})

    def to_response(self) -> Response:
        return problem_response(self.status, self.slug, self.detail, self.headers)


class EmptyBody(ProblemError):
    slug = "empty-body"


class MissingImage(ProblemError):
    slug = "missing-image"


class InvalidBase64(ProblemError):
    slug = "invalid-base64"


class InvalidJSON(ProblemError):
    slug = "invalid-json"


class InvalidImage(ProblemError):
    slug = "invalid-image"


class InvalidParameter(ProblemError):
    slug = "invalid-parameter"


class UnknownModel(ProblemError):
    slug = "unknown-model"


class TooManyImages(ProblemError):
    slug = "too-many-images"


class NoFace(ProblemError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    slug = "no-face"


class ImageTooLarge(ProblemError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    slug = "image-too-large"


class UnsupportedMediaType(ProblemError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    slug = "unsupported-media-type"


class Unauthorized(ProblemError):
    status = HTTPStatus.UNAUTHORIZED
    slug = "unauthorized"


class NotReady(ProblemError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    slug = "not-ready"


class Overloaded(ProblemError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    slug = "overloaded"


class RequestTimeout(ProblemError):
    status = HTTPStatus.REQUEST_TIMEOUT
    slug = "request-timeout"


class ClientTooSlow(ConnectionResetError):
    """Raised by the worker's socket when a request arrives too slowly.

    It is a connection reset to gunicorn, which then closes the connection
    without logging a traceback; inside the app, where the body is read, it
    becomes a 408 (``RequestTimeout``) before the connection is closed.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(errno.ECONNRESET, detail)
        self.detail = detail


# Werkzeug raises these itself; each gets a slug and a detail that names
# what the client did.
_HTTP_SLUGS = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}


# RFC 9110 renamed 413 and 422; Python's phrases follow its version.
TITLES = {
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "Content Too Large",
    HTTPStatus.UNPROCESSABLE_ENTITY: "Unprocessable Content",
}


def problem_response(
    status: HTTPStatus | int,
    slug: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    status = HTTPStatus(status)
    body = {
        "type": f"/problems/{slug}",
        "title": TITLES.get(status, status.phrase),
        "status": status.value,
        "detail": detail,
    }
    response = Response(
        json.dumps(body), status=status.value, mimetype=PROBLEM_MEDIA_TYPE
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Make every error of ``app`` leave as problem details."""
    app.register_error_handler(ProblemError, _handle_problem)
    app.register_error_handler(ClientTooSlow, _handle_client_too_slow)
    app.register_error_handler(ClientDisconnected, _handle_client_disconnected)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)


def _handle_problem(error: ProblemError) -> Response:
    logger.debug("%s %s -> %s: %s", request.method, request.path, error.slug, error)
    return error.to_response()


def _handle_client_too_slow(error: ClientTooSlow) -> Response:
    # The rest of the body may never come, so the connection cannot be reused.
    return RequestTimeout(error.detail, {"Connection": "close"}).to_response()


def _handle_client_disconnected(error: ClientDisconnected) -> Response:
    # Werkzeug turns every failed body read into ClientDisconnected; the
    # worker's deadline is one of them, and keeps its own answer.
    if isinstance(error.__context__, ClientTooSlow):
        return _handle_client_too_slow(error.__context__)
    return _handle_http_exception(error)


def _handle_http_exception(error: HTTPException) -> Response:
    code = error.code or 500
    if code >= 500:
        return _handle_unexpected(error)
    slug = _HTTP_SLUGS.get(code) or HTTPStatus(code).phrase.lower().replace(" ", "-")
    headers = {}
    if code == 405:
        allowed = _allowed_methods(error)
        headers["Allow"] = ", ".join(allowed)
        detail = (
            f"{request.method} is not allowed on {request.path}; "
            f"use {', '.join(allowed)}."
        )
    elif code == 404:
        detail = f"No route matches {request.method} {request.path}."
    elif code == 413:
        limit = request.max_content_length
        detail = f"The request body exceeds the limit of {limit} bytes."
    else:
        detail = error.description or HTTPStatus(code).description
    return problem_response(code, slug, detail, headers)


def _allowed_methods(error: HTTPException) -> list[str]:
    # Werkzeug collects the methods in a set; sorted, the header and the
    # detail read the same in every process.
    for name, value in error.get_headers():
        if name.lower() == "allow":
            return sorted(method.strip() for method in value.split(","))
    return []


def _handle_unexpected(error: Exception) -> Response:
    logger.error(
        "unhandled error on %s %s", request.method, request.path, exc_info=error
    )
    return problem_response(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "internal-error",
        "The server failed to process the request; the error has been logged.",
    )
