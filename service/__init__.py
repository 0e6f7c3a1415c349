"""A self-hosted HTTP service that runs vision networks on posted images.

``create_app()`` builds the Flask application; see ``service.app``. It is
imported lazily: gunicorn's master imports ``service.settings`` to read its
configuration, and importing onnxruntime there, before the workers fork,
leaves each worker with runtime threads that died in the fork and makes it
abort on exit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from service.app import create_app

        return create_app
    raise AttributeError(f"module 'service' has no attribute {name!r}")
