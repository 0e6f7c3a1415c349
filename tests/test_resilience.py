"""The service under load and faults, on real gunicorn over loopback.

Each test starts its own gunicorn (see ``tests/servers.py``) and drives it
with client threads that keep their HTTP connections alive, as production
clients do: many clients at once on mixed routes, a few thousand requests
against one worker while its memory is watched, a worker killed with
SIGKILL mid-traffic, SIGTERM with a request in flight, and more requests
than a worker admits. The numbers the tests measure are printed and saved
as JSON in the test's temporary folder. The admission limit itself is also
tested in-process, on a small app without models.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask
from PIL import Image

from service.api.admission import ConcurrencyLimit, limit_concurrency
from service.errors import Overloaded, register_error_handlers
from service.settings import Settings, SettingsError
from tests.conftest import encode, photo
from tests.servers import (
    READY_TIMEOUT_SECONDS,
    REQUEST_TIMEOUT_SECONDS,
    Server,
    free_port,
    gunicorn,
    multipart,
    warm_gunicorn,
)

pytestmark = pytest.mark.slow

CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967
FACENET_SIZE = 512
SOAK_REQUESTS = 5000
SOAK_WARM_UP = 300
SOAK_STEP = 500
SOAK_GROWTH_LIMIT = 1.05
GRACEFUL_TIMEOUT_SECONDS = 10


# A client ---------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


class Client:
    """One HTTP/1.1 connection, kept alive between requests like a real client.

    A request that fails at the connection level raises; the next one opens
    a fresh connection.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.connection: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> Reply:
        if self.connection is None:
            self.connection = http.client.HTTPConnection(
                self.server.host, self.server.port, timeout=REQUEST_TIMEOUT_SECONDS
            )
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            self.connection.request(method, path, body, headers)
            response = self.connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        return Reply(response.status, dict(response.headers), json.loads(data))

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def request_once(server: Server, method: str, path: str) -> Reply:
    """One request on a connection of its own, closed afterwards."""
    client = Client(server)
    try:
        return client.request(method, path)
    finally:
        client.close()


@dataclass
class Call:
    """A request of the mixed workload and the check of its answer."""

    name: str
    method: str
    path: str
    body: bytes | None
    content_type: str
    check: Callable[[Any], bool]


def top_indices(result: dict[str, Any]) -> set[int]:
    return {prediction["index"] for prediction in result["predictions"]}


def found_astronaut(body: Any) -> bool:
    faces = body["results"][0]["faces"]
    return len(faces) >= 1 and faces[0]["score"] > 0.9


def mixed_calls() -> list[Call]:
    chelsea, coffee = encode(photo("chelsea")), encode(photo("coffee"))
    astronaut = encode(photo("astronaut"))
    pair, pair_type = multipart({"chelsea.jpg": chelsea, "coffee.jpg": coffee})
    return [
        Call(
            "classify-jpeg",
            "POST",
            "/v1/classify",
            chelsea,
            "image/jpeg",
            lambda body: bool(CAT & top_indices(body["results"][0])),
        ),
        Call(
            "classify-multipart-2",
            "POST",
            "/v1/classify?top_k=3",
            pair,
            pair_type,
            lambda body: (
                bool(CAT & top_indices(body["results"][0]))
                and ESPRESSO in top_indices(body["results"][1])
            ),
        ),
        Call(
            "faces-detect",
            "POST",
            "/v1/faces/detect",
            astronaut,
            "image/jpeg",
            found_astronaut,
        ),
        Call(
            "faces-embed",
            "POST",
            "/v1/faces/embed",
            astronaut,
            "image/jpeg",
            lambda body: (
                found_astronaut(body)
                and len(body["results"][0]["faces"][0]["embedding"]) == FACENET_SIZE
            ),
        ),
        Call(
            "models",
            "GET",
            "/v1/models",
            None,
            "",
            lambda body: len(body["models"]) >= 2,
        ),
        Call(
            "healthz",
            "GET",
            "/healthz",
            None,
            "",
            lambda body: body == {"status": "ok"},
        ),
    ]


def record(tmp_path: Path, name: str, numbers: dict[str, Any]) -> None:
    """Print what a test measured and keep it as JSON next to its logs."""
    text = json.dumps(numbers, indent=2)
    print(f"{name}: {text}")
    (tmp_path / f"{name}.json").write_text(text)


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; return when it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in {timeout} s")
        time.sleep(0.02)
    return time.monotonic()


# Load -------------------------------------------------------------------------

CLIENTS = 32
REQUESTS_PER_CLIENT = 8


def test_32_clients_on_mixed_routes_all_get_correct_answers(
    tmp_path: Path, models_dir: Path
) -> None:
    calls = mixed_calls()
    # A queue timeout far above the test's length: under this load every
    # request must wait for its turn, none may be turned away.
    with warm_gunicorn(tmp_path, models_dir, 2, VISION_QUEUE_TIMEOUT="600") as server:

        def run_client(number: int) -> list[str]:
            client, problems = Client(server), []
            for index in range(REQUESTS_PER_CLIENT):
                call = calls[(number + index) % len(calls)]
                try:
                    reply = client.request(
                        call.method, call.path, call.body, call.content_type
                    )
                except (OSError, http.client.HTTPException) as error:
                    problems.append(f"{call.name}: {error!r}")
                    continue
                if reply.status != 200 or not call.check(reply.body):
                    problems.append(f"{call.name}: {reply.status} {reply.body}")
            client.close()
            return problems

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            problems = [p for ps in pool.map(run_client, range(CLIENTS)) for p in ps]
        elapsed = time.monotonic() - started

    requests = CLIENTS * REQUESTS_PER_CLIENT
    record(
        tmp_path,
        "concurrency",
        {
            "clients": CLIENTS,
            "requests": requests,
            "seconds": round(elapsed, 2),
            "errors": len(problems),
        },
    )
    assert problems == []


def test_soak_of_5000_requests_keeps_worker_memory_flat(
    tmp_path: Path, models_dir: Path
) -> None:
    small = encode(Image.fromarray(photo("chelsea")).resize((64, 64)))
    with warm_gunicorn(tmp_path, models_dir, 1) as server:
        (worker,) = server.worker_pids()
        clients = [Client(server) for _ in range(2)]
        failures: list[str] = []

        def send(number: int) -> None:
            client = clients[number % len(clients)]
            # One request in three is a probe, which costs next to nothing:
            # 5 000 classifications alone take over 60 s on two cores.
            if number % 3 == 0:
                reply = client.request("GET", "/healthz")
            else:
                reply = client.request(
                    "POST", "/v1/classify?top_k=1", small, "image/jpeg"
                )
            if reply.status != 200:
                failures.append(f"{reply.status} {reply.body}")

        def run(first: int, count: int) -> None:
            # Each client thread owns one connection: request numbers are
            # dealt out so that no two threads share a client.
            def client_loop(offset: int) -> None:
                for number in range(first + offset, first + count, len(clients)):
                    send(number)

            with ThreadPoolExecutor(len(clients)) as pool:
                list(pool.map(client_loop, range(len(clients))))

        started = time.monotonic()
        run(0, SOAK_WARM_UP)
        curve = [(SOAK_WARM_UP, resident_kib(worker))]
        while curve[-1][0] < SOAK_WARM_UP + SOAK_REQUESTS:
            done = curve[-1][0]
            run(done, SOAK_STEP)
            curve.append((done + SOAK_STEP, resident_kib(worker)))
        elapsed = time.monotonic() - started
        for client in clients:
            client.close()

    start_kib, end_kib = curve[0][1], curve[-1][1]
    peak_kib = max(kib for _, kib in curve)
    record(
        tmp_path,
        "soak",
        {
            "requests": curve[-1][0],
            "seconds": round(elapsed, 2),
            "rss_kib_after_warm_up": start_kib,
            "rss_kib_end": end_kib,
            "rss_kib_peak": peak_kib,
            "growth": round(end_kib / start_kib, 4),
            "curve": [{"requests": n, "rss_kib": kib} for n, kib in curve],
        },
    )
    assert failures == []
    assert end_kib < SOAK_GROWTH_LIMIT * start_kib, curve


# Faults -----------------------------------------------------------------------


def test_killed_worker_is_replaced_and_only_in_flight_requests_fail(
    tmp_path: Path, models_dir: Path
) -> None:
    small = encode(Image.fromarray(photo("chelsea")).resize((64, 64)))
    threads = 4
    with warm_gunicorn(tmp_path, models_dir, 2) as server:
        stop = threading.Event()
        failures: list[str] = []
        wrong_answers: list[str] = []
        successes: list[float] = []

        def loop() -> None:
            client = Client(server)
            while not stop.is_set():
                try:
                    reply = client.request(
                        "POST", "/v1/classify?top_k=1", small, "image/jpeg"
                    )
                except (OSError, http.client.HTTPException) as error:
                    failures.append(repr(error))
                    continue
                if reply.status == 200:
                    successes.append(time.monotonic())
                else:
                    wrong_answers.append(f"{reply.status} {reply.body}")
            client.close()

        workers = server.worker_pids()
        victim = min(workers)
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(threads):
                pool.submit(loop)
            wait_for(lambda: len(successes) >= 40, 30, "traffic")
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            replaced = wait_for(
                lambda: len(server.worker_pids() - workers) == 1,
                READY_TIMEOUT_SECONDS,
                "a new worker",
            )
            warm = wait_for(
                lambda: server.warm_workers() == 3,
                READY_TIMEOUT_SECONDS,
                "the new worker's warm-up",
            )
            served_after = len([t for t in successes if t > warm])
            wait_for(
                lambda: len([t for t in successes if t > warm]) >= served_after + 40,
                30,
                "traffic after the warm-up",
            )
            stop.set()

        first_answer = min(t for t in successes if t > killed)
        (new_worker,) = server.worker_pids() - workers

    record(
        tmp_path,
        "crash",
        {
            "client_threads": threads,
            "failed_requests": len(failures),
            "failures": failures,
            "seconds_kill_to_new_worker": round(replaced - killed, 3),
            "seconds_kill_to_new_worker_warm": round(warm - killed, 3),
            "seconds_kill_to_next_success": round(first_answer - killed, 3),
            "requests_served": len(successes),
        },
    )
    assert victim not in server.worker_pids() | {new_worker}
    assert len(failures) <= threads, failures
    assert wrong_answers == []
    # The surviving worker keeps serving: the service answers well within
    # the time a worker needs to warm up.
    assert first_answer - killed < warm - killed + 1.0


def test_readyz_is_503_until_the_worker_is_warm(
    tmp_path: Path, models_dir: Path
) -> None:
    """Poll a fresh worker from its first moment: not ready, then ready.

    The warm-up takes about a second on two cores; if a machine were fast
    enough to hide it, the in-process test below still covers the 503.
    """
    bind = f"127.0.0.1:{free_port()}"
    with gunicorn(
        tmp_path,
        VISION_BIND=bind,
        VISION_WORKERS="1",
        VISION_MODELS_DIR=str(models_dir),
    ) as server:
        answers: list[tuple[int, str]] = []
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not answers or answers[-1][0] != 200:
            assert time.monotonic() < deadline, answers
            try:
                reply = request_once(server, "GET", "/readyz")
            except (OSError, http.client.HTTPException):
                time.sleep(0.01)
                continue
            answers.append((reply.status, reply.body.get("type", "")))
            warm_when_answered = server.warm_workers()
        assert warm_when_answered == 1

    statuses = [status for status, _ in answers]
    assert set(answers[:-1]) <= {(503, "/problems/not-ready")}, answers
    assert statuses[-1] == 200
    if len(statuses) == 1:
        pytest.skip("the worker warmed up before its first answer")


def test_readyz_answers_503_while_models_warm_up(app: Flask) -> None:
    registry = app.extensions["vision"].registry
    registry.ready.clear()
    try:
        with app.test_client() as client:
            response = client.get("/readyz")
    finally:
        registry.ready.set()

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json == {
        "type": "/problems/not-ready",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The models are still loading.",
    }


def slow_upload(server: Server, body: bytes) -> socket.socket:
    """Send the headers and the first bytes of a POST; the rest comes later."""
    connection = socket.create_connection(
        (server.host, server.port), timeout=REQUEST_TIMEOUT_SECONDS
    )
    head = (
        "POST /v1/classify?top_k=1 HTTP/1.1\r\n"
        f"Host: {server.host}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    connection.sendall(head.encode() + body[:100])
    return connection


def finish_upload(connection: socket.socket, body: bytes, seconds: float) -> bytes:
    """Trickle the rest of ``body`` over ``seconds``; return the raw answer."""
    rest = body[100:]
    pieces = 10
    size = -(-len(rest) // pieces)
    for start in range(0, len(rest), size):
        time.sleep(seconds / pieces)
        connection.sendall(rest[start : start + size])
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    connection.close()
    return b"".join(chunks)


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(
    tmp_path: Path, models_dir: Path
) -> None:
    body = encode(photo("chelsea"))
    with warm_gunicorn(
        tmp_path,
        models_dir,
        1,
        VISION_GRACEFUL_TIMEOUT=str(GRACEFUL_TIMEOUT_SECONDS),
    ) as server:
        idle = Client(server)
        assert idle.request("GET", "/healthz").status == 200
        assert idle.connection is not None and idle.connection.sock is not None
        idle_socket = idle.connection.sock

        upload = slow_upload(server, body)
        time.sleep(0.3)  # the worker is reading the body now
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(finish_upload, upload, body, 2.0)
            time.sleep(0.5)
            newcomer_error: BaseException | None = None
            try:
                request_once(server, "GET", "/healthz")
            except (OSError, http.client.HTTPException) as error:
                newcomer_error = error
            # The idle kept-alive connection is closed by the server.
            idle_socket.settimeout(5)
            idle_closed = idle_socket.recv(1) == b""
            idle.close()
            raw = answer.result(timeout=REQUEST_TIMEOUT_SECONDS)
        code = server.process.wait(timeout=GRACEFUL_TIMEOUT_SECONDS + 5)
        stopped = time.monotonic()

    head, _, payload = raw.partition(b"\r\n\r\n")
    record(
        tmp_path,
        "shutdown",
        {
            "in_flight_status": head.split(b"\r\n")[0].decode(),
            "newcomer": repr(newcomer_error) if newcomer_error else "answered",
            "idle_keep_alive_closed": idle_closed,
            "seconds_sigterm_to_exit": round(stopped - signalled, 2),
            "exit_code": code,
        },
    )
    assert head.startswith(b"HTTP/1.1 200"), raw
    assert CAT & top_indices(json.loads(payload)["results"][0])
    # Refused, not reset: the worker closed its listening socket.
    assert isinstance(newcomer_error, ConnectionRefusedError), newcomer_error
    assert idle_closed
    assert code == 0, server.errors()
    assert stopped - signalled < GRACEFUL_TIMEOUT_SECONDS


# Admission limit --------------------------------------------------------------


def test_requests_beyond_the_limit_get_503_overloaded(
    tmp_path: Path, models_dir: Path
) -> None:
    astronaut = encode(photo("astronaut"))
    body, content_type = multipart({f"{n}.jpg": astronaut for n in range(3)})
    requests = 6
    with warm_gunicorn(
        tmp_path,
        models_dir,
        1,
        VISION_MAX_CONCURRENCY="1",
        VISION_QUEUE_TIMEOUT="0",
    ) as server:
        start = threading.Barrier(requests)

        def detect(_: int) -> Reply:
            client = Client(server)
            start.wait(timeout=REQUEST_TIMEOUT_SECONDS)
            try:
                return client.request("POST", "/v1/faces/detect", body, content_type)
            finally:
                client.close()

        with ThreadPoolExecutor(requests) as pool:
            replies = list(pool.map(detect, range(requests)))
        # The slot is free again once the burst is over.
        client = Client(server)
        after = client.request("POST", "/v1/faces/detect", body, content_type)
        client.close()

    statuses = sorted(reply.status for reply in replies)
    record(tmp_path, "admission", {"statuses": statuses})
    served = [reply for reply in replies if reply.status == 200]
    turned_away = [reply for reply in replies if reply.status != 200]
    assert served and turned_away, statuses
    assert all(len(reply.body["results"]) == 3 for reply in served)
    for reply in turned_away:
        assert reply.status == 503
        assert reply.headers["Content-Type"] == "application/problem+json"
        assert reply.headers["Retry-After"] == "1"
        assert reply.body["type"] == "/problems/overloaded"
    assert after.status == 200


@pytest.fixture
def gated_app() -> Iterator[tuple[Flask, threading.Event, threading.Event]]:
    """An app whose limited route holds its slot until ``release`` is set."""
    entered, release = threading.Event(), threading.Event()
    limited, free = Blueprint("limited", __name__), Blueprint("free", __name__)

    @limited.get("/work")
    def work() -> dict[str, str]:
        entered.set()
        assert release.wait(REQUEST_TIMEOUT_SECONDS)
        return {"status": "done"}

    @limited.get("/fail")
    def fail() -> dict[str, str]:
        raise RuntimeError("the route failed")

    @free.get("/probe")
    def probe() -> dict[str, str]:
        return {"status": "ok"}

    app = Flask(__name__)
    register_error_handlers(app)
    app.register_blueprint(limited)
    app.register_blueprint(free)
    limit_concurrency(app, ConcurrencyLimit(1, 0.0), {"limited"})
    yield app, entered, release
    release.set()


def test_limit_turns_away_a_second_request_and_frees_its_slot(
    gated_app: tuple[Flask, threading.Event, threading.Event],
) -> None:
    app, entered, release = gated_app
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(app.test_client().get, "/work")
        assert entered.wait(REQUEST_TIMEOUT_SECONDS)

        second = app.test_client().get("/work")
        probe = app.test_client().get("/probe")
        release.set()
        assert first.result(timeout=REQUEST_TIMEOUT_SECONDS).status_code == 200

    assert second.status_code == 503
    assert second.headers["Retry-After"] == "1"
    assert second.content_type == "application/problem+json"
    assert second.json == {
        "type": "/problems/overloaded",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The inference slot of this worker stayed busy for 0 s; retry later.",
    }
    assert probe.status_code == 200
    assert app.test_client().get("/work").status_code == 200


def test_limit_frees_the_slot_of_a_failed_request(
    gated_app: tuple[Flask, threading.Event, threading.Event],
) -> None:
    app, _, release = gated_app
    release.set()

    assert app.test_client().get("/fail").status_code == 500
    assert app.test_client().get("/work").status_code == 200


def test_queue_timeout_waits_for_a_slot() -> None:
    limit = ConcurrencyLimit(1, 0.2)
    limit.acquire()
    started = time.monotonic()

    with pytest.raises(Overloaded):
        limit.acquire()
    waited = time.monotonic() - started
    limit.release()
    limit.acquire()

    assert 0.2 <= waited < 2
    limit.release()
    with pytest.raises(ValueError):
        limit.release()


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("VISION_MAX_CONCURRENCY", "0"),
        ("VISION_QUEUE_TIMEOUT", "-1"),
        ("VISION_QUEUE_TIMEOUT", "soon"),
        ("VISION_GRACEFUL_TIMEOUT", "0"),
    ],
)
def test_admission_settings_are_validated(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: raw})


def test_admission_settings_defaults() -> None:
    settings = Settings.from_env({})

    assert (settings.max_concurrency, settings.queue_timeout) == (1, 0.5)
    assert settings.graceful_timeout == 30
