"""Request ids and log formats (``service.logs``).

The id is checked on the app's answers, the formatter and filter on their
own, and both together on real gunicorn, whose own lines (access and
error log) must follow the chosen format too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from service.logs import HEADER, JsonFormatter, RequestIdFilter
from service.settings import Settings, SettingsError
from tests.conftest import encode, photo
from tests.servers import Server, warm_gunicorn

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("path", ["/healthz", "/v1/models", "/no-such-route"])
def test_every_answer_carries_a_new_request_id(client: FlaskClient, path: str) -> None:
    first = client.get(path).headers[HEADER]
    second = client.get(path).headers[HEADER]

    assert GENERATED.fullmatch(first)
    assert first != second


def test_a_usable_client_id_is_kept(client: FlaskClient) -> None:
    response = client.get("/healthz", headers={HEADER: "trace-7f3a:span/2"})

    assert response.headers[HEADER] == "trace-7f3a:span/2"


@pytest.mark.parametrize(
    "offered", ["", "has space", "x" * 129, 'quote"d', "semi;colon", "é"]
)
def test_an_unusable_client_id_is_replaced(client: FlaskClient, offered: str) -> None:
    response = client.get("/healthz", headers={HEADER: offered})

    assert GENERATED.fullmatch(response.headers[HEADER])


def test_problem_answers_carry_the_id(client: FlaskClient) -> None:
    response = client.post(
        "/v1/classify",
        data=b"not an image",
        content_type="image/jpeg",
        headers={HEADER: "bad-upload-1"},
    )

    assert response.status_code == 400
    assert response.headers[HEADER] == "bad-upload-1"


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(
        "service.test", logging.ERROR, __file__, 1, message, None, None
    )
    made.__dict__.update(extra)
    return made


def test_json_lines_hold_the_fields_and_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord(
            "service.test",
            logging.ERROR,
            __file__,
            1,
            "failed %s",
            ("here",),
            sys.exc_info(),
        )
    RequestIdFilter().filter(failed)

    entry = json.loads(JsonFormatter().format(failed))

    assert entry["message"] == "failed here"
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "service.test"
    assert entry["request_id"] == "-"
    assert "ValueError: boom" in entry["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


def test_an_access_line_takes_the_id_from_the_answer() -> None:
    access = record("line")
    access.args = {"{x-request-id}o": "abc-123", "s": "200"}

    RequestIdFilter().filter(access)

    assert access.request_id == "abc-123"  # type: ignore[attr-defined]


@pytest.mark.parametrize("raw", ["xml", "JSON lines"])
def test_log_format_is_validated(raw: str) -> None:
    with pytest.raises(SettingsError, match="VISION_LOG_FORMAT"):
        Settings.from_env({"VISION_LOG_FORMAT": raw})


@pytest.fixture(scope="module")
def json_server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[Server]:
    with warm_gunicorn(
        tmp_path_factory.mktemp("json-logs"), models_dir, 1, VISION_LOG_FORMAT="json"
    ) as server:
        yield server


@pytest.mark.slow
def test_gunicorn_writes_json_lines_with_request_ids(json_server: Server) -> None:
    request = urllib.request.Request(
        json_server.url + "/v1/classify",
        data=encode(photo("chelsea")),
        headers={"Content-Type": "image/jpeg", HEADER: "cat-request-1"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.headers[HEADER] == "cat-request-1"

    # gunicorn writes the access line once the answer is out.
    deadline = time.monotonic() + 10
    while "cat-request-1" not in "".join(json_server.access_log()):
        assert time.monotonic() < deadline, json_server.access_log()
        time.sleep(0.05)
    errors = [json.loads(line) for line in json_server.errors().splitlines() if line]
    access = [json.loads(line) for line in json_server.access_log() if line]
    assert {entry["logger"] for entry in errors} >= {
        "gunicorn.error",
        "service.registry",
    }
    assert any(
        entry["request_id"] == "cat-request-1"
        and "POST /v1/classify" in entry["message"]
        for entry in access
    )
