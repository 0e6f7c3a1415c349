"""Clients that send their requests too slowly, against ``service.worker``.

The pacing rule is tested on a socket pair, in milliseconds; then real
gunicorn with ``VISION_CLIENT_TIMEOUT=1`` meets clients that trickle their
headers (disconnected, threads freed for others), trickle their body (408
problem details) or upload slowly but steadily (served).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.errors import ClientTooSlow
from service.settings import Settings, SettingsError
from service.worker import MIN_UPLOAD_RATE, PacedSocket
from tests.conftest import encode, photo
from tests.servers import Server, warm_gunicorn

CLIENT_TIMEOUT = 1.0
# More slow clients than the 4 request threads gunicorn's gthread worker
# used to have.
TRICKLERS = 8
CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


# The pacing rule, on a socket pair ---------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[PacedSocket, socket.socket]]:
    server_end, client_end = socket.socketpair()
    paced = PacedSocket.adopt(server_end, 0.3)
    yield paced, client_end
    paced.close()
    client_end.close()


def test_a_silent_client_is_cut_at_the_timeout(
    pair: tuple[PacedSocket, socket.socket],
) -> None:
    paced, _ = pair
    paced.setblocking(True)
    started = time.monotonic()
    with pytest.raises(ClientTooSlow) as caught:
        paced.recv(10)
    waited = time.monotonic() - started
    assert 0.25 < waited < 1.0
    assert "0.3 s" in caught.value.detail


def test_a_trickle_is_cut_though_each_byte_comes_in_time(
    pair: tuple[PacedSocket, socket.socket],
) -> None:
    paced, client = pair
    paced.setblocking(True)
    started = time.monotonic()
    with pytest.raises(ClientTooSlow):
        while time.monotonic() - started < 5:
            client.send(b"x")
            assert paced.recv(10) == b"x"
            time.sleep(0.05)
    assert time.monotonic() - started < 1.0


def test_data_received_buys_time_at_the_minimum_rate(
    pair: tuple[PacedSocket, socket.socket],
) -> None:
    paced, client = pair
    paced.setblocking(True)
    # A quarter of a second's worth at the minimum rate, sent at once.
    chunk = b"x" * (MIN_UPLOAD_RATE // 4)
    client.sendall(chunk)
    received = 0
    while received < len(chunk):
        received += len(paced.recv(len(chunk)))
    time.sleep(0.45)  # past 0.3 s, within 0.3 + 0.25 s
    client.send(b"y")
    assert paced.recv(1) == b"y"


def test_each_request_starts_a_new_clock(
    pair: tuple[PacedSocket, socket.socket],
) -> None:
    paced, client = pair
    paced.setblocking(True)
    time.sleep(0.4)
    paced.setblocking(False)  # back to the keep-alive poller
    paced.setblocking(True)  # the next request
    client.send(b"z")
    assert paced.recv(1) == b"z"


def test_an_explicit_timeout_turns_pacing_off(
    pair: tuple[PacedSocket, socket.socket],
) -> None:
    paced, _ = pair
    paced.setblocking(True)
    paced.settimeout(0.6)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        paced.recv(1)
    assert not isinstance(caught.value, ClientTooSlow)
    assert time.monotonic() - started > 0.5


@pytest.mark.parametrize("raw", ["-1", "soon", "3601"])
def test_client_timeout_is_validated(raw: str) -> None:
    with pytest.raises(SettingsError, match="VISION_CLIENT_TIMEOUT"):
        Settings.from_env({"VISION_CLIENT_TIMEOUT": raw})


def test_client_timeout_zero_leaves_reads_unbounded(
    pair: tuple[PacedSocket, socket.socket],
) -> None:
    paced, _ = pair
    paced.client_timeout = 0
    paced.setblocking(True)
    assert paced.gettimeout() is None
    assert Settings.from_env({}).client_timeout == 20


# Real gunicorn ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[Server]:
    with warm_gunicorn(
        tmp_path_factory.mktemp("slow-clients"),
        models_dir,
        1,
        VISION_CLIENT_TIMEOUT=str(CLIENT_TIMEOUT),
    ) as running:
        yield running


def answer_of(connection: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """Read until the server closes; the status line, headers and body."""
    chunks = []
    with connection:
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def trickle_headers(server: Server, stop: threading.Event) -> float:
    """Send a request's headers a byte every 0.1 s; seconds until cut off."""
    connection = server.connect()
    started = time.monotonic()
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-Slow: " + b"a" * 200
    try:
        for byte in head:
            if stop.is_set():
                break
            connection.send(bytes([byte]))
            time.sleep(0.1)
    except OSError:  # reset by the server: cut off
        return time.monotonic() - started
    finally:
        connection.close()
    return float("inf")


@pytest.mark.slow
def test_header_tricklers_are_cut_off_while_probes_are_answered(
    server: Server,
) -> None:
    stop = threading.Event()
    with ThreadPoolExecutor(TRICKLERS) as pool:
        cut_after = pool.map(lambda _: trickle_headers(server, stop), range(TRICKLERS))
        time.sleep(CLIENT_TIMEOUT / 2)
        probe_started = time.monotonic()
        with server.connect() as probe:
            probe.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            status, _, body = answer_of(probe)
        probe_seconds = time.monotonic() - probe_started
        cut = list(cut_after)
        stop.set()
    assert status.startswith("HTTP/1.1 200 ")
    assert json.loads(body) == {"status": "ok"}
    assert probe_seconds < 0.5
    assert max(cut) < CLIENT_TIMEOUT + 1.0, cut
    log = server.errors()
    assert log.count("too slowly; giving it up") >= TRICKLERS
    assert "Traceback" not in log


@pytest.mark.slow
def test_a_body_trickle_gets_408_problem_details(server: Server) -> None:
    connection = server.connect()
    started = time.monotonic()
    connection.sendall(
        b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 100000\r\n\r\n" + b"\xff\xd8" + b"\0" * 98
    )
    status, headers, body = answer_of(connection)
    waited = time.monotonic() - started
    assert status.startswith("HTTP/1.1 408 ")
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["type"] == "/problems/request-timeout"
    assert problem["status"] == 408
    assert CLIENT_TIMEOUT * 0.9 < waited < CLIENT_TIMEOUT + 1.5


@pytest.mark.slow
def test_a_slow_steady_upload_is_served(server: Server) -> None:
    # A photo of about 100 KB sent at 3x the minimum rate takes twice
    # CLIENT_TIMEOUT, and earns the time it needs.
    rng = np.random.default_rng(7)
    cat = photo("chelsea").astype(np.int16)
    noisy = np.clip(cat + rng.integers(-12, 13, cat.shape), 0, 255).astype(np.uint8)
    body = encode(noisy, quality=98)
    assert len(body) > 100_000
    rate = 3 * MIN_UPLOAD_RATE
    connection = server.connect()
    started = time.monotonic()
    connection.sendall(
        b"POST /v1/classify?top_k=5 HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: image/jpeg\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    step = rate // 10
    for offset in range(0, len(body), step):
        connection.sendall(body[offset : offset + step])
        time.sleep(0.1)
    status, _, answer = answer_of(connection)
    assert time.monotonic() - started > 1.8 * CLIENT_TIMEOUT
    assert status.startswith("HTTP/1.1 200 "), answer
    predictions = json.loads(answer)["results"][0]["predictions"]
    assert CAT & {prediction["index"] for prediction in predictions}
