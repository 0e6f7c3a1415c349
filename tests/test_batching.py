"""Micro-batching (``service.batching``) on the real classifier and FaceNet.

Concurrent callers must get exactly what they would get alone, their runs
must really be merged, errors must reach every caller of the failed batch,
and the app must answer the same with batching on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from flask import Flask

from service.batching import BatchedSession, batchable
from service.manifest import load_manifest
from service.runtime import create_session
from service.settings import Settings, SettingsError
from tests.conftest import encode, make_app, photo

CALLERS = 6


class CountingSession:
    """The real session, counting its runs and the images in each."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        with self.lock:
            self.batches.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


@pytest.fixture(scope="module")
def classifier_session(models_dir: Path) -> ort.InferenceSession:
    spec = next(
        spec
        for spec in load_manifest(models_dir).models
        if spec.name == "efficientnet-lite0"
    )
    return create_session(spec, ["CPUExecutionProvider"], 1)


@pytest.fixture
def inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [
        rng.normal(size=(size, 3, 224, 224)).astype(np.float32)
        for size in (1, 2, 1, 1, 3, 1)
    ]


@pytest.fixture
def counting(classifier_session: ort.InferenceSession) -> Iterator[CountingSession]:
    yield CountingSession(classifier_session)


def run_together(session: Any, inputs: list[np.ndarray]) -> list[Any]:
    name = session.get_inputs()[0].name
    start = threading.Barrier(len(inputs))

    def call(batch: np.ndarray) -> Any:
        start.wait()
        return session.run(None, {name: batch})

    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(call, inputs))


def test_concurrent_callers_share_runs_and_get_their_own_rows(
    counting: CountingSession,
    classifier_session: ort.InferenceSession,
    inputs: list[np.ndarray],
) -> None:
    batched = BatchedSession(counting, window=0.2, max_batch=64)
    name = classifier_session.get_inputs()[0].name

    results = run_together(batched, inputs)

    assert len(counting.batches) < len(inputs)
    assert sum(counting.batches) == sum(len(batch) for batch in inputs)
    for batch, outputs in zip(inputs, results, strict=True):
        (alone,) = classifier_session.run(None, {name: batch})
        assert outputs[0].shape == alone.shape
        np.testing.assert_allclose(outputs[0], alone, atol=1e-4)


def test_a_batch_never_exceeds_the_maximum(
    counting: CountingSession, inputs: list[np.ndarray]
) -> None:
    batched = BatchedSession(counting, window=0.2, max_batch=3)

    run_together(batched, inputs)

    assert max(counting.batches) <= 3
    assert sum(counting.batches) == sum(len(batch) for batch in inputs)


def test_a_failed_batch_raises_in_every_caller(
    classifier_session: ort.InferenceSession,
) -> None:
    batched = BatchedSession(classifier_session, window=0.2, max_batch=64)
    wrong = [np.zeros((1, 3, 100, 100), dtype=np.float32)] * 3

    name = classifier_session.get_inputs()[0].name
    start = threading.Barrier(len(wrong))
    errors = []

    def call(batch: np.ndarray) -> None:
        start.wait()
        try:
            batched.run(None, {name: batch})
        except Exception as error:
            errors.append(error)

    with ThreadPoolExecutor(len(wrong)) as pool:
        list(pool.map(call, wrong))

    assert len(errors) == len(wrong)
    # The session still serves callers after a failure.
    good = np.zeros((1, 3, 224, 224), dtype=np.float32)
    assert batched.run(None, {name: good})[0].shape == (1, 1000)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (("batch", 3, 224, 224), True),
        (("batch", 3, "height", "width"), False),  # P-Net
        ((1, 3, 224, 224), False),
        (("batch",), False),
    ],
)
def test_only_inputs_with_a_free_batch_axis_are_batched(
    shape: tuple[int | str, ...], expected: bool
) -> None:
    assert batchable(shape) is expected


@pytest.fixture(scope="module")
def batching_app(models_dir: Path) -> Flask:
    return make_app(models_dir, batch_window_ms=20.0)


def test_the_app_answers_the_same_with_batching(
    app: Flask, batching_app: Flask
) -> None:
    images = [encode(photo(name)) for name in ("chelsea", "coffee", "astronaut")]

    def classify(flask_app: Flask, image: bytes) -> Any:
        with flask_app.test_client() as client:
            response = client.post(
                "/v1/classify?top_k=3", data=image, content_type="image/jpeg"
            )
            assert response.status_code == 200
            return response.json["results"][0]["predictions"]

    with ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(lambda image: classify(batching_app, image), images))
    for image, predictions in zip(images, together, strict=True):
        alone = classify(app, image)
        assert [p["index"] for p in predictions] == [p["index"] for p in alone]
        for mine, theirs in zip(predictions, alone, strict=True):
            assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-4)

    models = batching_app.extensions["vision"].registry.models
    assert isinstance(models["efficientnet-lite0"].session, BatchedSession)
    assert not isinstance(models["mtcnn-pnet"].session, BatchedSession)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("VISION_BATCH_WINDOW_MS", "-1"),
        ("VISION_BATCH_WINDOW_MS", "2000"),
        ("VISION_MAX_BATCH", "0"),
    ],
)
def test_batching_settings_are_validated(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: raw})
