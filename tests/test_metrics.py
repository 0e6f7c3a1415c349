"""``GET /metrics``: what a Prometheus scrape sees after real requests.

Each test scrapes before and after its requests, on the real models, and
asserts the differences, so the counts other tests left in the process do
not matter. The gunicorn tests check that two workers add up into every
scrape whichever worker answers it, that a dead worker's counts stay and
its gauges go, and where the workers' files live.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.datastructures import FileStorage, MultiDict

from service.batching import BatchedSession
from service.manifest import load_manifest
from service.runtime import MeasuredSession, create_session
from tests.conftest import REPOSITORY, encode, photo
from tests.servers import (
    REQUEST_TIMEOUT_SECONDS,
    Server,
    multipart,
    post,
    warm_gunicorn,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUESTS = "vision_http_requests_total"
DECODED = "vision_images_decoded_total"
FACES = "vision_faces_detected_total"
MODEL_INFO = "vision_model_info"
CLASSIFIED = {"method": "POST", "route": "/v1/classify", "status": "200"}
WORKERS = 2
# Requests sent to two workers at once, by this many clients.
GUNICORN_REQUESTS = 24
CLIENTS = 6
SCRAPES = 8
METRICS_FOLDER = "PROMETHEUS_MULTIPROC_DIR"
WAIT_TIMEOUT_SECONDS = 30


def parse(exposition: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; a series not yet created counts as 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == EXPOSITION_TYPE
    return parse(response.get_data(as_text=True))


class Delta:
    """The change of each sample over the ``with`` block."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def __enter__(self) -> Delta:
        self.before = scrape(self.client)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.after = scrape(self.client)

    def __call__(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)


@pytest.fixture
def delta(client: FlaskClient) -> Delta:
    return Delta(client)


def jpeg(name: str) -> bytes:
    return encode(photo(name))


def images_form(*names: str) -> MultiDict[str, FileStorage]:
    return MultiDict(
        [
            ("image", FileStorage(io.BytesIO(jpeg(name)), f"{name}.jpg"))
            for name in names
        ]
    )


# One process: the Flask test client ------------------------------------------


def test_a_classification_counts_its_request_images_and_run(
    client: FlaskClient, delta: Delta
) -> None:
    with delta:
        response = client.post(
            "/v1/classify?model=mobilenet-v2",
            data=images_form("chelsea", "coffee"),
            content_type="multipart/form-data",
        )

    assert response.status_code == 200, response.get_data(as_text=True)
    assert delta(REQUESTS, **CLASSIFIED) == 1
    duration = "vision_http_request_duration_seconds"
    assert delta(f"{duration}_count", route="/v1/classify") == 1
    assert delta(f"{duration}_sum", route="/v1/classify") > 0
    assert delta(DECODED, format="jpeg") == 2
    # One run on the model the request named, with both images in it.
    runs = "vision_inference_duration_seconds_count"
    assert delta(runs, model="mobilenet-v2") == 1
    assert delta(runs, model="efficientnet-lite0") == 0
    rows = "vision_inference_batch_size"
    assert delta(f"{rows}_sum", model="mobilenet-v2") == 2
    assert delta(f"{rows}_bucket", model="mobilenet-v2", le="1.0") == 0
    assert delta(f"{rows}_bucket", model="mobilenet-v2", le="2.0") == 1


def test_a_detection_counts_the_faces_it_found(
    client: FlaskClient, delta: Delta
) -> None:
    with delta:
        response = client.post(
            "/v1/faces/detect", data=jpeg("astronaut"), content_type="image/jpeg"
        )

    assert response.status_code == 200, response.get_data(as_text=True)
    faces = response.json["results"][0]["faces"]
    assert len(faces) == 1
    assert delta(FACES) == 1
    labels = {"method": "POST", "route": "/v1/faces/detect", "status": "200"}
    assert delta(REQUESTS, **labels) == 1
    runs = "vision_inference_duration_seconds_count"
    for model in ("mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet"):
        assert delta(runs, model=model) >= 1, model


def test_errors_are_counted_under_their_status(
    client: FlaskClient, delta: Delta
) -> None:
    with delta:
        missing = client.get("/v1/clasify")
        refused = client.post("/v1/classify", data="cat", content_type="text/plain")
        unknown = client.open("/v1/models", method="BREW")

    assert (missing.status_code, refused.status_code) == (404, 415)
    assert unknown.status_code == 405
    unmatched = {"route": "unmatched", "status": "404"}
    assert delta(REQUESTS, method="GET", **unmatched) == 1
    assert delta(REQUESTS, method="POST", route="/v1/classify", status="415") == 1
    assert delta(REQUESTS, method="other", route="unmatched", status="405") == 1
    assert delta(DECODED, format="jpeg") == 0


def test_a_scrape_counts_itself_on_the_next(client: FlaskClient, delta: Delta) -> None:
    with delta:
        pass

    assert delta(REQUESTS, method="GET", route="/metrics", status="200") == 1


def test_every_served_model_is_shown_as_loaded(client: FlaskClient) -> None:
    models = client.get("/v1/models").json["models"]
    samples = scrape(client)

    assert models
    for model in models:
        labels = {
            "model": model["name"],
            "version": model["version"],
            "task": model["task"],
            "providers": ",".join(model["providers"]),
        }
        assert value(samples, MODEL_INFO, **labels) == 1, labels


def test_a_merged_batch_counts_as_one_run_with_all_its_rows(
    models_dir: Path,
) -> None:
    """Under the micro-batcher, the rows of concurrent callers that share a
    run are observed once, as that run's batch size."""
    spec = next(s for s in load_manifest(models_dir).models if s.name == "mobilenet-v2")
    model = "mobilenet-v2-merged"  # a series of this test's own
    measured = MeasuredSession(create_session(spec, ["CPUExecutionProvider"], 1), model)
    batched = BatchedSession(measured, window=1.0, max_batch=3)
    batches = [np.zeros((size, 3, 224, 224), np.float32) for size in (1, 2)]
    start = threading.Barrier(len(batches))

    def call(batch: np.ndarray) -> list[np.ndarray]:
        start.wait()
        return batched.run(None, {spec.inputs[0].name: batch})

    before = parse(generate_latest(REGISTRY).decode())
    with ThreadPoolExecutor(len(batches)) as pool:
        outputs = list(pool.map(call, batches))
    after = parse(generate_latest(REGISTRY).decode())

    assert [len(output[0]) for output in outputs] == [1, 2]
    rows = "vision_inference_batch_size"
    for name, expected in [(f"{rows}_count", 1), (f"{rows}_sum", 3)]:
        change = value(after, name, model=model) - value(before, name, model=model)
        assert change == expected, name


# gunicorn: several workers, one scrape -----------------------------------------


def fetch_metrics(server: Server) -> Samples:
    # A new connection per scrape, so that any worker may answer it.
    with urllib.request.urlopen(
        server.url + "/metrics", timeout=REQUEST_TIMEOUT_SECONDS
    ) as answer:
        assert answer.status == 200
        return parse(answer.read().decode())


def classify_concurrently(server: Server, count: int) -> None:
    body, content_type = multipart({"coffee.jpg": jpeg("coffee")})

    def classify(_: int) -> int:
        return post(server.url + "/v1/classify", body, content_type).status

    with ThreadPoolExecutor(CLIENTS) as pool:
        assert set(pool.map(classify, range(count))) == {200}


def classified_by_each_worker(folder: Path) -> list[float]:
    """Classify requests counted in each process's counter file."""
    counts = []
    for path in sorted(folder.glob("counter_*.db")):
        merged = MultiProcessCollector.merge([str(path)], accumulate=False)
        counts.append(
            sum(
                sample.value
                for family in merged
                for sample in family.samples
                if sample.name == REQUESTS and sample.labels == CLASSIFIED
            )
        )
    return counts


def leave_a_stale_count(folder: Path) -> None:
    """Count 1000 classifications in ``folder`` from a process that then
    exits, as an earlier run of the server would have."""
    script = (
        "from service.metrics import REQUESTS\n"
        "REQUESTS.labels('POST', '/v1/classify', '200').inc(1000)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPOSITORY,
        env={**os.environ, METRICS_FOLDER: str(folder)},
        check=True,
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


@pytest.fixture
def two_workers(tmp_path: Path, models_dir: Path) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path / "metrics"
    folder.mkdir()
    leave_a_stale_count(folder)
    stale = set(folder.glob("*.db"))
    assert stale
    with warm_gunicorn(
        tmp_path, models_dir, WORKERS, **{METRICS_FOLDER: str(folder)}
    ) as server:
        assert not stale & set(folder.glob("*.db")), "the earlier run's files stay"
        yield server, folder


@pytest.mark.slow
def test_every_scrape_adds_up_every_worker(two_workers: tuple[Server, Path]) -> None:
    server, folder = two_workers

    classify_concurrently(server, GUNICORN_REQUESTS)

    per_worker = classified_by_each_worker(folder)
    # Otherwise one worker's own count would pass for the sum.
    assert len([count for count in per_worker if count]) == WORKERS, per_worker
    for _ in range(SCRAPES):
        samples = fetch_metrics(server)
        assert value(samples, REQUESTS, **CLASSIFIED) == GUNICORN_REQUESTS
        assert value(samples, DECODED, format="jpeg") == GUNICORN_REQUESTS


@pytest.mark.slow
def test_a_dead_workers_counts_stay_and_its_gauges_go(
    two_workers: tuple[Server, Path],
) -> None:
    server, folder = two_workers
    classify_concurrently(server, CLIENTS)
    loaded = {
        labels: sample
        for (name, labels), sample in fetch_metrics(server).items()
        if name == MODEL_INFO
    }
    victim = min(server.worker_pids())

    os.kill(victim, signal.SIGKILL)
    gauges = folder / f"gauge_livemax_{victim}.db"
    wait_for(lambda: not gauges.exists(), "the dead worker's gauges to go")
    wait_for(lambda: server.warm_workers() == WORKERS + 1, "a new worker")

    assert (folder / f"counter_{victim}.db").exists()
    samples = fetch_metrics(server)
    assert value(samples, REQUESTS, **CLASSIFIED) == CLIENTS
    assert {
        labels: sample
        for (name, labels), sample in samples.items()
        if name == MODEL_INFO
    } == loaded


@pytest.mark.slow
def test_without_a_folder_the_server_makes_one_and_removes_it(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(METRICS_FOLDER, raising=False)
    temporary = tmp_path / "tmp"
    temporary.mkdir()

    with warm_gunicorn(tmp_path, models_dir, 1, TMPDIR=str(temporary)) as server:
        classify_concurrently(server, 1)
        samples = fetch_metrics(server)
        (private,) = temporary.glob("vision-metrics-*")
        assert list(private.glob("counter_*.db"))

    assert value(samples, REQUESTS, **CLASSIFIED) == 1
    assert not private.exists()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"waited in vain for {what}"
        time.sleep(0.1)
