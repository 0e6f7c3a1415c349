"""Prometheus metrics: what the service counts, and ``GET /metrics``.

The metrics are defined here, once per process, and recorded where each
fact happens: requests by ``count_requests``' hooks, onnxruntime runs by
``service.runtime.MeasuredSession``, decoded images by
``service.imaging``, detected faces by ``service.vision.faces`` and the
loaded models by ``service.registry``.

Under gunicorn every worker is a process of its own, and a scrape reaches
whichever worker the kernel hands the connection to. With
``PROMETHEUS_MULTIPROC_DIR`` set (``gunicorn.conf.py`` sets it before the
workers fork), prometheus-client keeps each process's values in memory-
mapped files in that folder, and ``/metrics`` sums the files of all
workers, living and dead, so any worker answers for the whole server.
Without it (the Flask test client, one process) the values live in the
process and ``/metrics`` answers from prometheus-client's own registry,
which adds the process's CPU, memory and garbage collector figures.
"""

from __future__ import annotations

import logging
import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# The route label of requests no route took (404, 405): one value, whatever
# the path, so that a scan of random paths adds no series.
UNMATCHED_ROUTE = "unmatched"
# Werkzeug passes on any method token a client sends; others count as one.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
OTHER_METHOD = "other"

# A probe answers in about a millisecond, a classification in 20 to 30 ms,
# a face request in about 100 ms on a CPU, and a request that waited for a
# slot in vain after VISION_QUEUE_TIMEOUT (0.5 s).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)
# One network run: under a millisecond for a small P-Net level, 15 to 20 ms
# for a classifier's image on one CPU thread, longer for large batches.
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Rows of one run: images, face chips, or MTCNN's candidate boxes, of which
# R-Net can get hundreds from a crowded photo.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter(
    "vision_http_requests_total",
    "HTTP requests answered, by method, route (the URL rule) and status.",
    ["method", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "vision_http_request_duration_seconds",
    "Time from the first request hook to the answer's headers, by route.",
    ["route"],
    buckets=REQUEST_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "vision_inference_duration_seconds",
    "Time of one onnxruntime run, by model.",
    ["model"],
    buckets=INFERENCE_BUCKETS,
)
INFERENCE_BATCH_SIZE = Histogram(
    "vision_inference_batch_size",
    "Rows (images, faces or candidate boxes) in one onnxruntime run, by model.",
    ["model"],
    buckets=BATCH_SIZE_BUCKETS,
)
IMAGES_DECODED = Counter(
    "vision_images_decoded_total",
    "Images decoded, by file format.",
    ["format"],
)
FACES_DETECTED = Counter(
    "vision_faces_detected_total",
    "Faces found by face detection.",
)
# 1 for each model a worker loaded. "livemax" merges the workers into one
# series per model, without a pid label that would grow with every worker
# restart, and forgets a worker once it is marked dead, so a model no live
# worker serves any more leaves the scrape.
MODEL_INFO = Gauge(
    "vision_model_info",
    "Models loaded, with their version, task and onnxruntime providers.",
    ["model", "version", "task", "providers"],
    multiprocess_mode="livemax",
)

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
def metrics() -> Response:
    """Every metric in Prometheus' text exposition format (0.0.4)."""
    return Response(generate_latest(_registry()), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _registry() -> CollectorRegistry:
    directory = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    if not directory:
        return REGISTRY
    # A registry of its own per scrape: the collector reads the workers'
    # files afresh each time, and must not meet this process's live values.
    registry = CollectorRegistry()
    # prometheus-client leaves this constructor unannotated.
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def count_requests(app: Flask) -> None:
    """Count and time every request ``app`` answers, errors included.

    Call it before any other request hook is added: its clock then starts
    first and stops last, and a request turned away by an earlier hook (a
    401) is still counted.
    """

    @app.before_request
    def start_request_clock() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count_request(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else UNMATCHED_ROUTE
        method = request.method if request.method in KNOWN_METHODS else OTHER_METHOD
        REQUESTS.labels(method, route, str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None:
            REQUEST_DURATION.labels(route).observe(time.perf_counter() - started)
        return response
