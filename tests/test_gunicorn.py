"""The service under real gunicorn: start, classify, shut down cleanly.

Each test starts ``gunicorn -c gunicorn.conf.py 'service:create_app()'``
from the repository root, on 127.0.0.1 and a free port, with two workers on
the real models, and talks to it over HTTP with urllib. Every wait is
bounded and every process is killed when its test ends, passed or not.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPOSITORY, encode, photo

pytestmark = pytest.mark.slow

READY_TIMEOUT_SECONDS = 60
REQUEST_TIMEOUT_SECONDS = 30
SHUTDOWN_TIMEOUT_SECONDS = 30
FAILED_START_TIMEOUT_SECONDS = 15
WORKERS = 2
# What service.registry logs once a worker's models are warmed up.
WARM_MESSAGE = "models ready:"
CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COMMAND = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
APP = "service:create_app()"


@dataclass
class Server:
    """A running gunicorn master and the files its output goes to."""

    process: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path

    def access_log(self) -> list[str]:
        # gunicorn.conf.py sends the access log to stdout, everything else
        # (gunicorn's error log and the service's own logs) to stderr.
        return self.stdout.read_text().splitlines()

    def errors(self) -> str:
        return self.stderr.read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_environment(**variables: str) -> dict[str, str]:
    """The test's environment without any VISION_* setting, plus ``variables``."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("VISION_")
    }
    environment.update(variables)
    return environment


@contextmanager
def gunicorn(tmp_path: Path, **variables: str) -> Iterator[Server]:
    """Start gunicorn with ``variables`` set; stop it on the way out."""
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    bind = variables.get("VISION_BIND", "")
    # gunicorn puts its control socket in XDG_RUNTIME_DIR, else in
    # ~/.gunicorn, where servers started side by side would share one.
    environment = server_environment(XDG_RUNTIME_DIR=str(tmp_path), **variables)
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [*COMMAND, APP],
            cwd=REPOSITORY,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        yield Server(process, f"http://{bind}", stdout, stderr)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop gunicorn gracefully if it still runs, by force if it must."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)


@contextmanager
def ready_server(tmp_path: Path, models_dir: Path) -> Iterator[Server]:
    """A gunicorn whose workers are all warmed up; /readyz answered 200."""
    variables = {
        "VISION_BIND": f"127.0.0.1:{free_port()}",
        "VISION_WORKERS": str(WORKERS),
        "VISION_MODELS_DIR": str(models_dir),
    }
    with gunicorn(tmp_path, **variables) as server:
        wait_until_ready(server)
        wait_until_every_worker_is_warm(server, WORKERS)
        yield server


def wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"gunicorn exited with {server.process.returncode} before it was "
                f"ready:\n{server.errors()}"
            )
        try:
            with urllib.request.urlopen(server.url + "/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, http.client.HTTPException, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"/readyz did not answer 200 in {READY_TIMEOUT_SECONDS} s")


def wait_until_every_worker_is_warm(server: Server, workers: int) -> None:
    """Wait until each worker logged that its models are warmed up.

    A 200 from /readyz speaks for the one worker that answered; the tests
    need all of them past the warm-up, which runs on a thread of its own.
    """
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while server.errors().count(WARM_MESSAGE) < workers:
        if time.monotonic() > deadline:
            pytest.fail(f"not every worker warmed up:\n{server.errors()}")
        time.sleep(0.1)


# HTTP helpers -----------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    body: Any


def multipart(files: dict[str, bytes], fields: dict[str, str]) -> tuple[bytes, str]:
    """Encode a multipart/form-data body; return it and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for filename, data in files.items():
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str) -> Answer:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as reply:
            return Answer(reply.status, reply.headers["Content-Type"], json.load(reply))
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.headers["Content-Type"], json.load(error))


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
