"""``Server-Timing``: the recorder of ``service.timing`` and the header the
inference routes answer with.

The recorder is checked on a clock the test moves by hand, so the sums are
exact. The routes are checked on the real models: each answer names its
stages, every duration is non-negative, and stages plus the rest of the
app's time fit inside the wall time the test measured around the request.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Callable

import numpy as np
import pytest
import yaml
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from service import timing
from service.client import parse_server_timing
from service.timing import Recorder
from tests.conftest import OPENAPI_PATH, encode, photo

# The routes split their work at least this finely; service.vision may add
# "preprocess" (and a route that got no further reports less).
ROUTE_STAGES = {"queue", "receive", "decode", "inference", "postprocess", "serialise"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", fake)
    return fake


def header_pattern() -> re.Pattern[str]:
    document = yaml.safe_load(OPENAPI_PATH.read_text())
    schema = document["components"]["headers"]["ServerTiming"]["schema"]
    return re.compile(schema["pattern"])


# The recorder ----------------------------------------------------------------


def test_a_repeated_stage_adds_up(clock: FakeClock) -> None:
    recorder = Recorder()
    for seconds in (0.002, 0.003):
        with recorder.stage("decode"):
            clock.advance(seconds)

    assert recorder.durations == {"decode": pytest.approx(0.005)}


def test_an_inner_stage_is_taken_out_of_the_outer_one(clock: FakeClock) -> None:
    recorder = Recorder()
    with recorder.stage("inference"):
        clock.advance(0.001)
        with recorder.stage("preprocess"):
            clock.advance(0.004)
        clock.advance(0.010)
        with recorder.stage("postprocess"):
            clock.advance(0.002)

    assert recorder.durations == {
        "inference": pytest.approx(0.011),
        "preprocess": pytest.approx(0.004),
        "postprocess": pytest.approx(0.002),
    }


def test_a_stage_that_fails_is_still_recorded(clock: FakeClock) -> None:
    recorder = Recorder()
    with pytest.raises(ValueError), recorder.stage("decode"):
        clock.advance(0.007)
        raise ValueError("broken image")

    assert recorder.durations == {"decode": pytest.approx(0.007)}


def test_the_header_lists_stages_in_pipeline_order_then_total(
    clock: FakeClock,
) -> None:
    recorder = Recorder()
    for name, seconds in [
        ("serialise", 0.0001),
        ("custom", 0.002),
        ("decode", 0.0031),
        ("receive", 0.0005),
    ]:
        with recorder.stage(name):
            clock.advance(seconds)
    clock.advance(0.001)

    value = recorder.header_value()

    assert value == (
        "receive;dur=0.500, decode;dur=3.100, serialise;dur=0.100, "
        "custom;dur=2.000, total;dur=6.700"
    )
    assert header_pattern().fullmatch(value)


def test_outside_a_request_a_stage_does_nothing() -> None:
    with timing.stage("decode"):
        timing.record("batching", 1.0)

    assert timing.current() is None


def test_recording_times_a_block_outside_any_request(clock: FakeClock) -> None:
    with timing.recording() as recorder:
        with timing.stage("inference"):
            clock.advance(0.010)
            # A wait measured apart, as a micro-batcher's caller would.
            timing.record("batching", 0.004)
        assert timing.current() is recorder

    assert timing.current() is None
    assert recorder.durations == {
        "inference": pytest.approx(0.006),
        "batching": pytest.approx(0.004),
    }


def test_the_client_reads_the_header_back() -> None:
    value = 'a;dur=1.5, b;desc="x, y; z";dur=2, c, a;dur=0.5, total;dur=9'

    assert parse_server_timing(value) == {"a": 2.0, "b": 2.0, "c": 0.0, "total": 9.0}


# The routes ------------------------------------------------------------------


def jpeg(name: str, mirrored: bool = False) -> bytes:
    pixels = photo(name)
    if mirrored:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return encode(pixels)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def classify_two(client: FlaskClient) -> TestResponse:
    files = [(io.BytesIO(jpeg(name)), f"{name}.jpg") for name in ("chelsea", "coffee")]
    return client.post("/v1/classify?top_k=2", data={"image": files})


def detect(client: FlaskClient) -> TestResponse:
    return client.post(
        "/v1/faces/detect?attributes=age,gender",
        data=jpeg("astronaut"),
        content_type="image/jpeg",
    )


def embed(client: FlaskClient) -> TestResponse:
    return client.post(
        "/v1/faces/embed", data=jpeg("astronaut"), content_type="image/jpeg"
    )


def verify(client: FlaskClient) -> TestResponse:
    document = {
        "image1": b64(jpeg("astronaut")),
        "image2": b64(jpeg("astronaut", mirrored=True)),
    }
    return client.post(
        "/v1/faces/verify",
        data=json.dumps(document),
        content_type="application/json",
    )


ROUTES: dict[str, Callable[[FlaskClient], TestResponse]] = {
    "classify-two-images": classify_two,
    "detect-age-gender": detect,
    "embed": embed,
    "verify-images": verify,
}


def timed(
    send: Callable[[FlaskClient], TestResponse], client: FlaskClient
) -> tuple[TestResponse, float]:
    """The answer, and the wall time around it in milliseconds."""
    started = time.perf_counter()
    response = send(client)
    return response, (time.perf_counter() - started) * 1000


def assert_fits(durations: dict[str, float], wall_ms: float) -> None:
    stages = {name: ms for name, ms in durations.items() if name != "total"}
    # Each value is rounded to the microsecond.
    rounding = 0.001 * len(durations)
    assert all(ms >= 0 for ms in durations.values()), durations
    assert sum(stages.values()) <= durations["total"] + rounding, durations
    assert durations["total"] <= wall_ms + rounding, (durations, wall_ms)


@pytest.mark.parametrize("route", ROUTES)
def test_an_inference_answer_says_where_its_time_went(
    client: FlaskClient, route: str
) -> None:
    response, wall_ms = timed(ROUTES[route], client)

    assert response.status_code == 200, response.get_data(as_text=True)
    value = response.headers["Server-Timing"]
    assert header_pattern().fullmatch(value), value
    durations = parse_server_timing(value)
    assert list(durations)[-1] == "total"
    assert ROUTE_STAGES <= set(durations) <= ROUTE_STAGES | {"preprocess", "total"}
    assert durations["decode"] > 0 and durations["inference"] > 0, durations
    assert_fits(durations, wall_ms)


def test_an_error_after_the_work_began_is_timed_too(client: FlaskClient) -> None:
    grey = encode(np.full((240, 320, 3), 128, np.uint8), "PNG")

    response, wall_ms = timed(
        lambda c: c.post("/v1/faces/detect", data=grey, content_type="image/png"),
        client,
    )

    assert response.status_code == 422
    durations = parse_server_timing(response.headers["Server-Timing"])
    assert {"receive", "decode", "inference", "total"} <= set(durations)
    assert "serialise" not in durations
    assert_fits(durations, wall_ms)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models"])
def test_other_routes_carry_no_timing(client: FlaskClient, path: str) -> None:
    # A timed request before must not leave its recorder to the next one.
    assert "Server-Timing" in embed(client).headers

    assert "Server-Timing" not in client.get(path).headers
    assert timing.current() is None
