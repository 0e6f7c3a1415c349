"""The service under real gunicorn: start, classify, shut down cleanly.

Each test starts ``gunicorn -c gunicorn.conf.py 'service:create_app()'``
from the repository root, on 127.0.0.1 and a free port, with two workers on
the real models, and talks to it over HTTP with urllib. Every wait is
bounded and every process is killed when its test ends, passed or not.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import encode, photo
from tests.servers import (
    SHUTDOWN_TIMEOUT_SECONDS,
    Answer,
    Server,
    free_port,
    gunicorn,
    multipart,
    post,
    warm_gunicorn,
)

pytestmark = pytest.mark.slow

FAILED_START_TIMEOUT_SECONDS = 15
WORKERS = 2
CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@contextmanager
def ready_server(tmp_path: Path, models_dir: Path) -> Iterator[Server]:
    """A gunicorn whose workers are all warmed up; /readyz answered 200."""
    with warm_gunicorn(tmp_path, models_dir, WORKERS) as server:
        yield server


def classify_chelsea(server: Server, **fields: str) -> Answer:
    body, content_type = multipart({"chelsea.jpg": encode(photo("chelsea"))}, fields)
    return post(server.url + "/v1/classify", body, content_type)


# Tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[Server]:
    with ready_server(tmp_path_factory.mktemp("gunicorn"), models_dir) as running:
        yield running


def test_classifies_a_photo(server: Server) -> None:
    answer = classify_chelsea(server)

    assert answer.status == 200, answer.body
    assert answer.content_type == "application/json"
    predictions = answer.body["results"][0]["predictions"]
    assert len(predictions) == 5
    assert CAT & {prediction["index"] for prediction in predictions}


def test_bad_request_gets_a_problem(server: Server) -> None:
    answer = classify_chelsea(server, top_k="0")

    assert answer.status == 400
    assert answer.content_type == "application/problem+json"
    assert answer.body == {
        "type": "/problems/invalid-parameter",
        "title": "Bad Request",
        "status": 400,
        "detail": "top_k must be a whole number from 1 to 20, got '0'.",
    }


def test_sigterm_stops_workers_cleanly(tmp_path: Path, models_dir: Path) -> None:
    with ready_server(tmp_path, models_dir) as server:
        assert classify_chelsea(server).status == 200

        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)

        errors = server.errors()
        assert code == 0, errors
        assert "SIGABRT" not in errors
        assert "Traceback" not in errors
        access_log = server.access_log()
        assert any("/v1/classify" in line for line in access_log), access_log
        assert not [line for line in access_log if "/readyz" in line]


def test_the_access_log_can_be_switched_off(tmp_path: Path, models_dir: Path) -> None:
    with warm_gunicorn(tmp_path, models_dir, 1, VISION_ACCESS_LOG="off") as server:
        assert classify_chelsea(server).status == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS) == 0

        # The answer was served and the worker logged its life as usual;
        # only the line per request is gone.
        assert server.access_log() == []
        assert "Booting worker" in server.errors()


def test_invalid_setting_stops_the_start(tmp_path: Path, models_dir: Path) -> None:
    variables = {
        "VISION_BIND": f"127.0.0.1:{free_port()}",
        "VISION_WORKERS": "zero",
        "VISION_MODELS_DIR": str(models_dir),
    }
    with gunicorn(tmp_path, **variables) as server:
        code = server.process.wait(timeout=FAILED_START_TIMEOUT_SECONDS)

        assert code != 0
        assert "VISION_WORKERS" in server.errors()
