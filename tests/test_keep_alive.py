"""Kept-alive connections served on their own thread, against ``service.worker``.

``VisionWorker`` lets a request's thread serve the next request of its
connection when it comes within ``NEXT_REQUEST_WAIT`` and no other
connection waits for a thread. The rule is tested on a socket pair; then
real gunicorn meets more pipelining clients than it has threads, every
one of them with requests always waiting, and must still answer a
newcomer at once and every pipelined request in order.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.worker import NEXT_REQUEST_WAIT, PacedSocket, VisionWorker
from tests.servers import REQUEST_TIMEOUT_SECONDS, Server, warm_gunicorn

# The rule, on a socket pair -----------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[PacedSocket, socket.socket]]:
    server_end, client_end = socket.socketpair()
    paced = PacedSocket.adopt(server_end, 20.0)
    yield paced, client_end
    paced.close()
    client_end.close()


def next_request_comes(
    sock: socket.socket, buffered: bytes = b"", queued: int = 0
) -> tuple[bool, float]:
    """The worker's decision for a connection, and how long it took."""
    buffer = io.BytesIO()
    buffer.write(buffered)
    conn = SimpleNamespace(
        sock=sock, parser=SimpleNamespace(unreader=SimpleNamespace(buf=buffer))
    )
    worker = SimpleNamespace(_queued=queued)
    started = time.monotonic()
    decision = VisionWorker._next_request_comes(worker, conn)
    return decision, time.monotonic() - started


def test_a_silent_connection_goes_back_after_the_wait(
    pair: tuple[PacedSocket, socket.socket],
) -> None:
    paced, _ = pair
    decision, waited = next_request_comes(paced)
    assert decision is False
    assert NEXT_REQUEST_WAIT * 0.8 <= waited < NEXT_REQUEST_WAIT + 0.1


def test_a_request_that_comes_in_the_wait_stays_on_the_thread(
    pair: tuple[PacedSocket, socket.socket],
) -> None:
    paced, client = pair
    sender = threading.Timer(
        NEXT_REQUEST_WAIT / 5, client.sendall, [b"GET /healthz HTTP/1.1\r\n"]
    )
    sender.start()
    decision, waited = next_request_comes(paced)
    sender.join()
    assert decision is True
    assert waited < NEXT_REQUEST_WAIT


def test_bytes_read_ahead_are_a_request_already_here(
    pair: tuple[PacedSocket, socket.socket],
) -> None:
    paced, _ = pair
    decision, waited = next_request_comes(paced, buffered=b"GET / HTTP/1.1\r\n")
    assert decision is True
    assert waited < NEXT_REQUEST_WAIT / 2


def test_a_connection_waiting_for_a_thread_takes_precedence(
    pair: tuple[PacedSocket, socket.socket],
) -> None:
    paced, client = pair
    client.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    for buffered in (b"", b"GET / HTTP/1.1\r\n"):
        decision, waited = next_request_comes(paced, buffered, queued=1)
        assert decision is False
        assert waited < NEXT_REQUEST_WAIT / 2


# Real gunicorn ------------------------------------------------------------------

# gunicorn.conf.py gives a worker VISION_MAX_CONCURRENCY + 16 threads: 17.
PIPELINERS = 20
PIPELINED_REQUESTS = 3000
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[Server]:
    with warm_gunicorn(tmp_path_factory.mktemp("keep-alive"), models_dir, 1) as running:
        yield running


class Pipeliner(threading.Thread):
    """A client that sends many requests at once on one connection and
    counts the answers that come back, until told to stop."""

    def __init__(self, server: Server, requests: int) -> None:
        super().__init__(daemon=True)
        self.connection = server.connect()
        self.requests = requests
        self.answers = 0
        self.stop = threading.Event()

    def run(self) -> None:
        self.connection.sendall(HEALTHZ * self.requests)
        received = b""
        while not self.stop.is_set() and self.answers < self.requests:
            try:
                chunk = self.connection.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            received += chunk
            self.answers += received.count(b"HTTP/1.1 200 ")
            # Keep the tail, which may hold the start of a status line.
            received = received[-16:]

    def close(self) -> None:
        self.stop.set()
        self.connection.close()
        self.join(timeout=REQUEST_TIMEOUT_SECONDS)


def test_a_newcomer_is_served_while_every_thread_has_requests_waiting(
    server: Server,
) -> None:
    pipeliners = [Pipeliner(server, PIPELINED_REQUESTS) for _ in range(PIPELINERS)]
    try:
        for pipeliner in pipeliners:
            pipeliner.start()
        # Until every thread of the worker is busy with a connection whose
        # next request is always already there.
        deadline = time.monotonic() + REQUEST_TIMEOUT_SECONDS
        while sum(p.answers > 0 for p in pipeliners) < 17:
            assert time.monotonic() < deadline, [p.answers for p in pipeliners]
            time.sleep(0.01)

        started = time.monotonic()
        with server.connect() as newcomer:
            newcomer.sendall(HEALTHZ)
            assert newcomer.recv(65536).startswith(b"HTTP/1.1 200 ")
        waited = time.monotonic() - started

        assert waited < 1.0
        assert any(p.answers < PIPELINED_REQUESTS for p in pipeliners)
    finally:
        for pipeliner in pipeliners:
            pipeliner.close()


def test_pipelined_requests_are_all_answered_in_turn(server: Server) -> None:
    pipeliner = Pipeliner(server, 200)
    pipeliner.start()
    pipeliner.join(timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        assert pipeliner.answers == 200
    finally:
        pipeliner.close()
