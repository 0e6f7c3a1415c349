"""Slow clients against a running service: when they are cut off, and
whether the service keeps answering others meanwhile.

Opens ``--tricklers`` connections that send a request's headers one byte
per ``--interval`` seconds, asks ``/healthz`` while they trickle, then sends
a POST whose body stops after two bytes, and reports how long each took.
Start the service (``make serve``, or gunicorn with your settings), then::

    .venv/bin/python -m bench.slow_clients --url http://127.0.0.1:8000

With the default ``VISION_CLIENT_TIMEOUT`` of 20 s this takes about 25 s.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit


def trickle(address: tuple[str, int], interval: float, results: list[float]) -> None:
    """Send headers a byte at a time; record the seconds until cut off."""
    started = time.monotonic()
    head = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"a" * 1000
    with socket.create_connection(address) as connection:
        try:
            for byte in head:
                connection.send(bytes([byte]))
                time.sleep(interval)
        except OSError:
            results.append(time.monotonic() - started)
            return
    results.append(float("inf"))


def timed_probe(address: tuple[str, int]) -> tuple[str, float]:
    started = time.monotonic()
    with socket.create_connection(address, timeout=120) as connection:
        connection.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer.split(b"\r\n")[0].decode(), time.monotonic() - started


def stalled_body(address: tuple[str, int]) -> tuple[str, float]:
    started = time.monotonic()
    with socket.create_connection(address, timeout=600) as connection:
        connection.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: bench\r\n"
            b"Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n\xff\xd8"
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer.split(b"\r\n")[0].decode(), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--tricklers", type=int, default=6)
    parser.add_argument("--interval", type=float, default=1.0)
    arguments = parser.parse_args()
    parts = urlsplit(arguments.url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)

    cut: list[float] = []
    threads = [
        threading.Thread(target=trickle, args=(address, arguments.interval, cut))
        for _ in range(arguments.tricklers)
    ]
    for thread in threads:
        thread.start()
    time.sleep(2)
    probe_status, probe_seconds = timed_probe(address)
    body_status, body_seconds = stalled_body(address)
    for thread in threads:
        thread.join()
    report: dict[str, Any] = {
        "tricklers_cut_after_s": sorted(round(seconds, 1) for seconds in cut),
        "probe_while_trickling": {"status": probe_status, "s": round(probe_seconds, 2)},
        "stalled_body": {"status": body_status, "s": round(body_seconds, 1)},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
