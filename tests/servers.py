"""Real gunicorn servers for the tests, started on a free loopback port.

``gunicorn()`` starts ``gunicorn -c gunicorn.conf.py 'service:create_app()'``
from the repository root with the given ``VISION_*`` variables and stops it
when the test ends, passed or not. Every wait here is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPOSITORY

READY_TIMEOUT_SECONDS = 60
REQUEST_TIMEOUT_SECONDS = 30
SHUTDOWN_TIMEOUT_SECONDS = 30
# What service.registry logs once a worker's models are warmed up.
WARM_MESSAGE = "models ready:"
COMMAND = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
APP = "service:create_app()"


@dataclass
class Server:
    """A running gunicorn master and the files its output goes to."""

    process: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://").rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def connect(self) -> socket.socket:
        """A plain TCP connection to the server, for raw HTTP."""
        return socket.create_connection(
            (self.host, self.port), timeout=REQUEST_TIMEOUT_SECONDS
        )

    def access_log(self) -> list[str]:
        # gunicorn.conf.py sends the access log to stdout, everything else
        # (gunicorn's error log and the service's own logs) to stderr.
        return self.stdout.read_text().splitlines()

    def errors(self) -> str:
        return self.stderr.read_text()

    def warm_workers(self) -> int:
        """How many workers logged so far that their models are warm."""
        return self.errors().count(WARM_MESSAGE)

    def worker_pids(self) -> set[int]:
        """The processes the master has forked and not yet reaped."""
        pids: set[int] = set()
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            try:
                pids.update(int(pid) for pid in children.read_text().split())
            except FileNotFoundError:  # the thread ended meanwhile
                continue
        return pids


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


@contextmanager
def warm_gunicorn(
    tmp_path: Path, models_dir: Path, workers: int, **variables: str
) -> Iterator[Server]:
    """gunicorn on a free loopback port with every worker's models warm."""
    with gunicorn(
        tmp_path,
        VISION_BIND=f"127.0.0.1:{free_port()}",
        VISION_WORKERS=str(workers),
        VISION_MODELS_DIR=str(models_dir),
        **variables,
    ) as server:
        wait_until_ready(server)
        wait_until_every_worker_is_warm(server, workers)
        yield server


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
    while server.warm_workers() < workers:
        if time.monotonic() > deadline:
            pytest.fail(f"not every worker warmed up:\n{server.errors()}")
        time.sleep(0.1)


# HTTP helpers -----------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def multipart(
    files: dict[str, bytes], fields: dict[str, str] | None = None
) -> tuple[bytes, str]:
    """Encode a multipart/form-data body; return it and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
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
            return Answer(
                reply.status,
                reply.headers["Content-Type"],
                json.load(reply),
                dict(reply.headers),
            )
    except urllib.error.HTTPError as error:
        with error:
            return Answer(
                error.code,
                error.headers["Content-Type"],
                json.load(error),
                dict(error.headers),
            )
