"""The application factory: settings, models, routes and error handling.

``create_app()`` is what gunicorn serves (``service:create_app()``). It runs
once per worker process, after the fork, so every worker owns its
onnxruntime sessions; nothing is loaded at import time.
"""

from __future__ import annotations

import logging

from flask import Flask

from service import metrics, pages, timing
from service.api import classify, faces, health, models
from service.api.admission import ConcurrencyLimit, limit_concurrency
from service.api.context import EXTENSION_KEY, ServiceState
from service.errors import register_error_handlers
from service.logs import configure_logging, track_request_ids
from service.registry import ModelRegistry
from service.security import protect
from service.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; ``settings`` default to the environment's."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]

    registry = ModelRegistry.load(settings)
    app.extensions[EXTENSION_KEY] = ServiceState(settings, registry)

    register_error_handlers(app)
    # First of the request hooks: the metrics' clock, so that every answer
    # is counted, then an id for the logs, then the key check, so a caller
    # without a valid key is turned away before anything else runs.
    metrics.count_requests(app)
    track_request_ids(app)
    protect(app, settings)
    for blueprint in (
        health.blueprint,
        metrics.blueprint,
        models.blueprint,
        classify.blueprint,
        faces.blueprint,
        pages.blueprint,
    ):
        app.register_blueprint(blueprint)
    inference = {classify.blueprint.name, faces.blueprint.name}
    # Server-Timing: the clock starts after the key check and before the
    # wait for an inference slot, which becomes the "queue" stage.
    timing.time_requests(app, inference)
    limit = ConcurrencyLimit(settings.max_concurrency, settings.queue_timeout)
    limit_concurrency(app, limit, inference)
    timing.time_queue(app)

    registry.start_warm_up()
    return app
