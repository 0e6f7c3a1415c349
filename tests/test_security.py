"""Access control, CORS and security headers, as a client sees them.

A keyed app must turn away every ``/v1`` request and every scrape of
``/metrics`` without a valid key with the one 401 body, let the probes and
CORS preflights through, and keep the keys out of the log; an app without
keys must warn that it is open. CORS headers go to allowed origins only,
errors included, and every response carries the security headers.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import (
    WerkzeugOpenAPIRequest,
    WerkzeugOpenAPIResponse,
)
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import EnvironBuilder, TestResponse

import service.security
from service.errors import register_error_handlers
from service.security import KeyRing, protect
from service.settings import Settings, SettingsError
from tests.conftest import OPENAPI_PATH, encode, make_app, photo

KEY = "first-key-5f0c2d9a8b7e6c4d3a2b1f0e"
SECOND_KEY = "second-key-91b3c7d5e2f4a6b8c0d1"
# Shares all but the last character with KEY: an early-exit comparison of
# the raw strings would spend longest on exactly this kind of guess.
NEAR_KEY = KEY[:-1] + "f"
WRONG_KEY = "wrong-key-that-must-never-be-logged"
ALLOWED_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.example.net"
SERVER_URL = "http://localhost:8000"

MISSING_KEY = {
    "type": "/problems/unauthorized",
    "title": "Unauthorized",
    "status": 401,
    "detail": (
        "This API needs a key: send it in the X-API-Key header or as "
        "Authorization: Bearer <key>."
    ),
}
INVALID_KEY = {
    "type": "/problems/unauthorized",
    "title": "Unauthorized",
    "status": 401,
    "detail": "The API key is not valid.",
}
CHALLENGE = 'Bearer realm="vision-service"'
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


# Requests ----------------------------------------------------------------------


def jpeg(name: str) -> bytes:
    return encode(photo(name))


def raw_image(name: str) -> dict[str, Any]:
    return {"data": jpeg(name), "content_type": "image/jpeg"}


def image_pair() -> dict[str, Any]:
    files = MultiDict(
        [
            ("image1", FileStorage(io.BytesIO(jpeg("astronaut")), "a.jpg")),
            ("image2", FileStorage(io.BytesIO(jpeg("astronaut")), "b.jpg")),
        ]
    )
    return {"data": files, "content_type": "multipart/form-data"}


# Each protected operation with a body it answers 200 to when the key is
# right: the key check must neither break nor bypass a real request.
KEYED_ROUTES: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    ("GET", "/metrics"): dict,
    ("GET", "/v1/models"): dict,
    ("POST", "/v1/classify"): lambda: raw_image("chelsea"),
    ("POST", "/v1/faces/detect"): lambda: raw_image("astronaut"),
    ("POST", "/v1/faces/embed"): lambda: raw_image("astronaut"),
    ("POST", "/v1/faces/verify"): image_pair,
}
ROUTE_IDS = [f"{method} {path}" for method, path in KEYED_ROUTES]
# Prometheus' exposition format; every other route answers JSON.
ANSWER_TYPES = {"/metrics": "text/plain"}


@pytest.fixture(scope="module")
def keyed_app(models_dir: Path) -> Flask:
    return make_app(
        models_dir, api_keys=(KEY, SECOND_KEY), cors_origins=(ALLOWED_ORIGIN,)
    )


@pytest.fixture
def keyed(keyed_app: Flask) -> FlaskClient:
    return keyed_app.test_client()


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    config = Config(
        extra_media_type_deserializers={
            "application/problem+json": lambda value, **_: json.loads(value)
        }
    )
    return OpenAPI.from_file_path(str(OPENAPI_PATH), config=config)


def assert_problem(response: TestResponse, body: dict[str, Any]) -> None:
    assert response.status_code == body["status"], response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.json == body


# API keys ----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), list(KEYED_ROUTES), ids=ROUTE_IDS)
def test_a_request_without_a_key_is_401(
    keyed: FlaskClient, openapi: OpenAPI, method: str, path: str
) -> None:
    response = keyed.open(path, method=method, **KEYED_ROUTES[method, path]())

    assert_problem(response, MISSING_KEY)
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    documented = EnvironBuilder(path, method=method, base_url=SERVER_URL)
    openapi.validate_response(
        WerkzeugOpenAPIRequest(documented.get_request()),
        WerkzeugOpenAPIResponse(response),
    )


WRONG_CREDENTIALS = {
    "wrong-key": {"X-API-Key": WRONG_KEY},
    "wrong-bearer": {"Authorization": f"Bearer {WRONG_KEY}"},
    "key-but-one-character": {"X-API-Key": NEAR_KEY},
    "key-with-a-suffix": {"X-API-Key": KEY + "0"},
    "key-prefix": {"X-API-Key": KEY[:16]},
    "both-keys-at-once": {"X-API-Key": f"{KEY},{SECOND_KEY}"},
    "not-ascii": {"X-API-Key": KEY[:-1] + "é"},
    "wrong-header-wins": {"X-API-Key": WRONG_KEY, "Authorization": f"Bearer {KEY}"},
}


@pytest.mark.parametrize(("method", "path"), list(KEYED_ROUTES), ids=ROUTE_IDS)
@pytest.mark.parametrize(
    "headers", list(WRONG_CREDENTIALS.values()), ids=list(WRONG_CREDENTIALS)
)
def test_a_wrong_key_is_401(
    keyed: FlaskClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = keyed.open(
        path, method=method, headers=headers, **KEYED_ROUTES[method, path]()
    )

    assert_problem(response, INVALID_KEY)
    challenge = f'{CHALLENGE}, error="invalid_token"'
    assert response.headers["WWW-Authenticate"] == challenge


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
        {"X-API-Key": "  "},
        {"Api-Key": KEY},
    ],
    ids=["basic-scheme", "empty-bearer", "blank-key", "other-header"],
)
def test_a_key_in_the_wrong_place_counts_as_missing(
    keyed: FlaskClient, headers: dict[str, str]
) -> None:
    assert_problem(keyed.get("/v1/models", headers=headers), MISSING_KEY)


@pytest.mark.parametrize(("method", "path"), list(KEYED_ROUTES), ids=ROUTE_IDS)
@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": KEY},
        {"Authorization": f"Bearer {KEY}"},
        {"X-API-Key": SECOND_KEY},
        {"Authorization": f"bearer {SECOND_KEY}"},
    ],
    ids=["x-api-key", "bearer", "second-key", "lowercase-bearer"],
)
def test_a_valid_key_is_let_through(
    keyed: FlaskClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = keyed.open(
        path, method=method, headers=headers, **KEYED_ROUTES[method, path]()
    )

    assert response.status_code == HTTPStatus.OK, response.get_data(as_text=True)
    assert response.mimetype == ANSWER_TYPES.get(path, "application/json")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_the_probes_need_no_key(keyed: FlaskClient, path: str) -> None:
    response = keyed.get(path)

    assert response.status_code == HTTPStatus.OK
    assert response.json is not None and response.json["status"] in {"ok", "ready"}


def test_unknown_paths_are_not_revealed_without_a_key(keyed: FlaskClient) -> None:
    assert_problem(keyed.get("/v1/nowhere"), MISSING_KEY)
    assert_problem(keyed.get("/healthz/"), MISSING_KEY)
    assert keyed.get("/v1/nowhere", headers={"X-API-Key": KEY}).status_code == 404


def test_an_options_request_that_is_no_preflight_needs_a_key(
    keyed: FlaskClient,
) -> None:
    assert_problem(keyed.options("/v1/classify"), MISSING_KEY)


def test_every_key_is_compared_even_after_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    comparisons: list[tuple[bytes, bytes]] = []
    compare = service.security.hmac.compare_digest

    def counting_compare(a: bytes, b: bytes) -> bool:
        comparisons.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(service.security.hmac, "compare_digest", counting_compare)
    ring = KeyRing([KEY, SECOND_KEY, WRONG_KEY])

    assert ring.accepts(KEY)
    assert len(comparisons) == 3
    # Digests of one length: the time cannot tell the length of a key.
    assert {len(a) for pair in comparisons for a in pair} == {32}
    assert not ring.accepts(NEAR_KEY)
    assert len(comparisons) == 6


# Keys from a file ----------------------------------------------------------------


def test_keys_are_read_from_a_file(models_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(
        f"# keys of the web team\n\n  {SECOND_KEY}  \n# {WRONG_KEY}\n{KEY}\n"
    )
    app = make_app(models_dir, api_keys_file=key_file)
    client = app.test_client()

    assert app.extensions["vision"].settings.api_keys == (SECOND_KEY, KEY)
    for key in (KEY, SECOND_KEY):
        assert client.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
    commented_out = client.get("/v1/models", headers={"X-API-Key": WRONG_KEY})
    assert_problem(commented_out, INVALID_KEY)


def test_keys_of_the_variable_and_the_file_add_up(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"{SECOND_KEY}\n{KEY}\n")

    settings = Settings.from_env(
        {"VISION_API_KEYS": f" {KEY} , ", "VISION_API_KEYS_FILE": str(key_file)}
    )

    assert settings.api_keys == (KEY, SECOND_KEY)
    assert settings.api_keys_file == key_file


def unreadable_file(tmp_path: Path) -> Path:
    path = tmp_path / "locked"
    path.write_text(KEY + "\n")
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("this user reads files whatever their mode (root)")
    return path


KEY_FILE_PROBLEMS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (
        lambda tmp: tmp / "no-such-file",
        "cannot read the file: No such file or directory",
    ),
    "a-folder": (lambda tmp: tmp, "cannot read the file: Is a directory"),
    "unreadable": (unreadable_file, "cannot read the file: Permission denied"),
    "only-comments": (
        lambda tmp: write(tmp / "keys", "# none yet\n\n"),
        "the file holds no key",
    ),
    "short-key": (
        lambda tmp: write(tmp / "keys", f"{KEY}\n# next\nshort-key\n"),
        "the key on line 3 is shorter than 16 characters",
    ),
    "not-utf-8": (
        lambda tmp: write(tmp / "keys", KEY + "\xff", "latin-1"),
        "the file is not UTF-8 text",
    ),
}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


@pytest.mark.parametrize(
    ("make_path", "reason"), list(KEY_FILE_PROBLEMS.values()), ids=KEY_FILE_PROBLEMS
)
def test_a_bad_key_file_stops_the_start(
    tmp_path: Path, make_path: Callable[[Path], Path], reason: str
) -> None:
    path = make_path(tmp_path)
    expected = f"VISION_API_KEYS_FILE={str(path)!r}: {reason}"

    with pytest.raises(SettingsError) as from_env:
        Settings.from_env({"VISION_API_KEYS_FILE": str(path)})
    with pytest.raises(SettingsError) as from_code:
        Settings(api_keys_file=path)

    for caught in (from_env, from_code):
        assert expected in str(caught.value)
        assert KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("tiny-key", "key 1 is shorter than 16 characters"),
        (f"{KEY}, with a space in it!", "key 2 may hold only visible ASCII"),
        ("   ", None),
        (" , ", "no key given"),
    ],
    ids=["short", "space", "blank", "only-a-comma"],
)
def test_bad_keys_are_named_by_position_not_by_value(
    raw: str, reason: str | None
) -> None:
    if reason is None:
        # A blank variable is an unset one: no keys, an open API.
        assert Settings.from_env({"VISION_API_KEYS": raw}).api_keys == ()
        return

    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"VISION_API_KEYS": raw})

    message = str(caught.value)
    assert f"VISION_API_KEYS=<hidden>: {reason}" in message
    for part in raw.split(","):
        assert not part.strip() or part.strip() not in message


def test_keys_given_in_code_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="VISION_API_KEYS: key 2 is shorter"):
        Settings(api_keys=(KEY, "tiny-key"))


def test_the_settings_repr_hides_the_keys(tmp_path: Path) -> None:
    settings = Settings(api_keys=(KEY,), api_keys_file=write(tmp_path / "k", WRONG_KEY))

    assert KEY not in repr(settings)
    assert WRONG_KEY not in repr(settings)


# Logging -----------------------------------------------------------------------


def test_keys_never_reach_the_log(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="service")
    app = make_app(models_dir, api_keys=(KEY,), log_level="DEBUG")
    client = app.test_client()

    exchanges = [
        ({"X-API-Key": KEY}, 200),
        ({"Authorization": f"Bearer {KEY}"}, 200),
        ({"X-API-Key": WRONG_KEY}, 401),
        ({"Authorization": f"Bearer {WRONG_KEY}"}, 401),
        ({"X-API-Key": NEAR_KEY}, 401),
    ]
    for headers, status in exchanges:
        assert client.get("/v1/models", headers=headers).status_code == status
    response = client.post("/v1/classify", headers={"X-API-Key": KEY}, data=b"")
    assert response.status_code == 400

    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    # The log is on at DEBUG and saw the refusals and the bad request ...
    assert "unauthorized" in logged and "empty-body" in logged
    assert "API key required" in logged
    # ... but none of the keys, right or wrong.
    for secret in (KEY, WRONG_KEY, NEAR_KEY, KEY[:16]):
        assert secret not in logged
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_open_api_warns_at_start_up(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service")
    make_app(models_dir)

    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "service.security" and r.levelno == logging.WARNING
    ]
    assert warnings == [
        "no API keys are configured (VISION_API_KEYS, VISION_API_KEYS_FILE): "
        "the API is open to anyone who can reach it"
    ]


# CORS --------------------------------------------------------------------------


def preflight(
    client: FlaskClient, origin: str, path: str = "/v1/classify"
) -> TestResponse:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key",
        },
    )


def cors_headers(response: TestResponse) -> dict[str, str]:
    return {
        name: value
        for name, value in response.headers.items()
        if name.lower().startswith("access-control-")
    }


def test_a_preflight_from_an_allowed_origin_is_answered(keyed: FlaskClient) -> None:
    response = preflight(keyed, ALLOWED_ORIGIN)

    assert response.status_code == HTTPStatus.OK
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": ALLOWED_ORIGIN,
        "Access-Control-Allow-Methods": "OPTIONS, POST",
        "Access-Control-Allow-Headers": (
            "Authorization, Content-Type, X-API-Key, X-Request-ID"
        ),
        "Access-Control-Max-Age": "600",
    }
    assert "Origin" in response.vary


def test_the_origin_is_matched_without_regard_to_case(keyed: FlaskClient) -> None:
    response = preflight(keyed, ALLOWED_ORIGIN.upper(), "/v1/models")

    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN.upper()
    assert response.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize(
    "origin",
    [OTHER_ORIGIN, ALLOWED_ORIGIN + ".evil.net", "http://app.example.com", "null"],
    ids=["other-site", "suffixed", "other-scheme", "null"],
)
def test_other_origins_get_no_cors_headers(keyed: FlaskClient, origin: str) -> None:
    answered = preflight(keyed, origin)
    refused = keyed.get("/v1/models", headers={"Origin": origin, "X-API-Key": KEY})

    assert answered.status_code == HTTPStatus.OK
    assert cors_headers(answered) == {}
    assert refused.status_code == HTTPStatus.OK
    assert cors_headers(refused) == {}


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/models", {"X-API-Key": KEY}, 200),
        ("/v1/models", {}, 401),
        ("/v1/models", {"X-API-Key": WRONG_KEY}, 401),
        ("/v1/nowhere", {"X-API-Key": KEY}, 404),
        ("/readyz", {}, 200),
    ],
    ids=["ok", "missing-key", "wrong-key", "not-found", "probe"],
)
def test_answers_to_an_allowed_origin_carry_cors_headers(
    keyed: FlaskClient, path: str, headers: dict[str, str], status: int
) -> None:
    response = keyed.get(path, headers={"Origin": ALLOWED_ORIGIN, **headers})

    assert response.status_code == status
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": ALLOWED_ORIGIN,
        "Access-Control-Expose-Headers": (
            "Allow, Retry-After, Server-Timing, WWW-Authenticate, X-Request-ID"
        ),
    }


def test_without_origins_configured_there_are_no_cors_headers(app: Flask) -> None:
    client = app.test_client()

    assert cors_headers(preflight(client, ALLOWED_ORIGIN)) == {}
    assert cors_headers(client.get("/healthz", headers={"Origin": OTHER_ORIGIN})) == {}


def bare_app(**settings: Any) -> Flask:
    """A model-free app with the security hooks and two routes, one broken."""
    app = Flask(__name__)
    register_error_handlers(app)
    protect(app, Settings(**settings))
    app.add_url_rule("/v1/echo", "echo", lambda: {"echo": True})

    def broken() -> None:
        raise RuntimeError("a bug")

    app.add_url_rule("/v1/broken", "broken", broken)
    return app


def test_a_wildcard_allows_every_origin() -> None:
    client = bare_app(cors_origins=("*",)).test_client()

    response = client.get("/v1/echo", headers={"Origin": OTHER_ORIGIN})
    answered = preflight(client, "null", "/v1/echo")

    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Origin" not in response.vary
    assert answered.headers["Access-Control-Allow-Origin"] == "*"
    assert answered.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize(
    ("raw", "origins"),
    [
        ("*", ("*",)),
        (" * ", ("*",)),
        (
            "https://App.Example.com/, http://localhost:3000",
            ("https://app.example.com", "http://localhost:3000"),
        ),
        ("https://a.example,https://a.example", ("https://a.example",)),
    ],
    ids=["wildcard", "wildcard-padded", "normalised", "duplicates"],
)
def test_cors_origins_are_parsed(raw: str, origins: tuple[str, ...]) -> None:
    assert Settings.from_env({"VISION_CORS_ORIGINS": raw}).cors_origins == origins


@pytest.mark.parametrize(
    "raw",
    [
        "app.example.com",
        "ftp://app.example.com",
        "https://app.example.com/path",
        "https://app.example.com?x=1",
        "https://user@app.example.com",
        "https://app.example.com:99999",
        "https://app.example.com,*",
    ],
)
def test_bad_cors_origins_stop_the_start(raw: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"VISION_CORS_ORIGINS={raw!r}")):
        Settings.from_env({"VISION_CORS_ORIGINS": raw})


# Security headers ----------------------------------------------------------------


def assert_security_headers(response: TestResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/healthz", {}, 200),
        ("GET", "/v1/models", {"X-API-Key": KEY}, 200),
        ("GET", "/v1/models", {}, 401),
        ("GET", "/v1/nowhere", {"X-API-Key": KEY}, 404),
        ("GET", "/v1/classify", {"X-API-Key": KEY}, 405),
        ("POST", "/v1/classify", {"X-API-Key": KEY}, 400),
        (
            "OPTIONS",
            "/v1/classify",
            {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
            200,
        ),
    ],
    ids=["probe", "ok", "unauthorized", "not-found", "wrong-method", "bad", "cors"],
)
def test_every_answer_carries_the_security_headers(
    keyed: FlaskClient, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    response = keyed.open(path, method=method, headers=headers)

    assert response.status_code == status
    assert_security_headers(response)


@pytest.mark.parametrize(
    ("path", "status"), [("/v1/models", 200), ("/v1/clasify", 404)]
)
def test_an_open_app_sends_the_security_headers_too(
    client: FlaskClient, path: str, status: int
) -> None:
    response = client.get(path)

    assert response.status_code == status
    assert_security_headers(response)


def test_an_internal_error_carries_the_security_headers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = bare_app(cors_origins=(ALLOWED_ORIGIN,)).test_client()

    response = client.get("/v1/broken", headers={"Origin": ALLOWED_ORIGIN})

    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    assert response.json is not None
    assert response.json["type"] == "/problems/internal-error"
    assert_security_headers(response)
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
