"""Access to the per-app state the factory set up, for the routes."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from service.registry import ModelRegistry
from service.settings import Settings

EXTENSION_KEY = "vision"


@dataclass(frozen=True)
class ServiceState:
    settings: Settings
    registry: ModelRegistry


def state() -> ServiceState:
    result: ServiceState = current_app.extensions[EXTENSION_KEY]
    return result
