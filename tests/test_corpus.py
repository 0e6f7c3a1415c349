"""Every bad input of the corpus gets its status and problem type, quickly.

The corpus (``tests/bad_inputs.py``) holds 77 crafted requests; sent to the
routes each names, they make 126 exchanges. Each must answer the expected
status with the one problem+json shape and the expected ``type``, never a
5xx, and within a few seconds: a request runs on a thread with a timeout,
so a decoder that hangs fails the test instead of stalling the suite. The
decompression bombs are also checked for memory: neither the process's peak
resident size nor Python's allocations may grow by more than a few MB.
"""

from __future__ import annotations

import resource
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from PIL import ImageFile
from werkzeug.test import TestResponse

from tests.bad_inputs import CORPUS, SMALL_BODY_LIMIT, BadInput, gif_bomb, png_bomb
from tests.conftest import make_app

PROBLEM_MEDIA_TYPE = "application/problem+json"
REQUEST_TIMEOUT_SECONDS = 10
SLOW_REQUEST_SECONDS = 5
MEMORY_GROWTH_LIMIT_BYTES = 50 * 1024 * 1024

EXCHANGES = [
    pytest.param(case, route, id=f"{case.name}-{route.rsplit('/', 1)[-1]}")
    for case in CORPUS
    for route in case.expected
]


@pytest.fixture(scope="module")
def small_limit_app(models_dir: Path) -> Flask:
    return make_app(models_dir, max_body_bytes=SMALL_BODY_LIMIT)


@pytest.fixture(scope="module")
def executor() -> Any:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def send(app: Flask, executor: ThreadPoolExecutor, route: str, request: Any) -> Any:
    """POST ``request`` to ``route``, failing if it takes too long."""

    def exchange() -> tuple[TestResponse, float]:
        started = time.perf_counter()
        # Form uploads are file objects, read once: each exchange gets a copy.
        options = dict(request)
        if isinstance(options.get("data"), dict):
            options["data"] = {
                name: (type(value[0])(value[0].getvalue()), value[1])
                if isinstance(value, tuple)
                else value
                for name, value in options["data"].items()
            }
        response = app.test_client().post(route, **options)
        return response, time.perf_counter() - started

    return executor.submit(exchange).result(timeout=REQUEST_TIMEOUT_SECONDS)


@pytest.mark.parametrize(("case", "route"), EXCHANGES)
def test_bad_input_gets_its_status_and_type(
    app: Flask,
    small_limit_app: Flask,
    executor: ThreadPoolExecutor,
    case: BadInput,
    route: str,
) -> None:
    target = small_limit_app if case.small_body_limit else app
    status, slug = case.expected[route]

    response, seconds = send(target, executor, route, case.request)

    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.status_code == status, response.get_data(as_text=True)
    assert seconds < SLOW_REQUEST_SECONDS
    if slug is None:
        assert response.content_type == "application/json"
        return
    assert response.content_type == PROBLEM_MEDIA_TYPE
    body = response.json
    assert body is not None and set(body) == {"type", "title", "status", "detail"}
    assert body["type"] == f"/problems/{slug}"
    assert body["status"] == status


@pytest.mark.parametrize("make_bomb", [png_bomb, gif_bomb], ids=["png", "gif"])
def test_a_bomb_costs_no_memory(
    app: Flask,
    executor: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
    make_bomb: Any,
) -> None:
    # Pillow allocates pixels outside Python's allocator, so tracemalloc
    # alone would miss them: the peak resident size and a spy on loading
    # the pixels watch that memory.
    loads: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: loads.append(1))
    data = make_bomb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    tracemalloc.start()
    try:
        response, _ = send(
            app, executor, "/v1/classify", {"data": data, "content_type": "image/png"}
        )
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    assert response.status_code == 413
    assert response.json["type"] == "/problems/image-too-large"
    assert loads == []
    assert traced_peak < MEMORY_GROWTH_LIMIT_BYTES
    assert peak_after - peak_before < MEMORY_GROWTH_LIMIT_BYTES


def test_the_corpus_covers_its_cases() -> None:
    assert len(CORPUS) == 77
    assert len(EXCHANGES) == 126
    assert len({case.name for case in CORPUS}) == len(CORPUS)
