"""Probes: ``/healthz`` (the process answers) and ``/readyz`` (models warm).

Orchestrators restart a container whose liveness probe fails and route no
traffic to one whose readiness probe fails, so the two must differ: a
worker still warming up is alive but not ready.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from service.api.context import state
from service.errors import NotReady

blueprint = Blueprint("health", __name__)

RETRY_AFTER_SECONDS = "5"


@blueprint.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@blueprint.get("/readyz")
def readyz() -> dict[str, Any]:
    registry = state().registry
    if not registry.ready.is_set():
        detail = registry.failure or "The models are still loading."
        raise NotReady(detail, headers={"Retry-After": RETRY_AFTER_SECONDS})
    return {"status": "ready", "models": list(registry.models)}
