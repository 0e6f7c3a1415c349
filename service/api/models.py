"""``GET /v1/models``: what this worker serves and where it came from."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from service.api.context import state

blueprint = Blueprint("models", __name__)


@blueprint.get("/v1/models")
def list_models() -> dict[str, Any]:
    return {"models": state().registry.describe()}
