"""Shared fixtures: the real exported models, an app on them, sample photos.

The models are the ones ``python -m export`` wrote into ``models/`` (the
README's test command builds them first). Photos come from scikit-image's
sample data, which ships real photographs inside the package.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from service import create_app
from service.settings import Settings

REPOSITORY = Path(__file__).resolve().parents[1]
MODELS_DIR = REPOSITORY / "models"
# The HTTP contract ships inside the package: the service serves it at /docs.
OPENAPI_PATH = REPOSITORY / "service" / "openapi.yaml"
READY_TIMEOUT_SECONDS = 60


@pytest.fixture(scope="session")
def models_dir() -> Path:
    if not (MODELS_DIR / "manifest.json").is_file():
        pytest.fail("models/ is empty: run `python -m export` (`make test` does)")
    return MODELS_DIR


def make_app(models_dir: Path, **overrides: Any) -> Flask:
    """Create an app on the real models and wait until it is warmed up."""
    settings = Settings(
        models_dir=models_dir, providers="cpu", workers=1, threads=2, **overrides
    )
    app = create_app(settings)
    assert app.extensions["vision"].registry.ready.wait(READY_TIMEOUT_SECONDS)
    return app


@pytest.fixture(scope="session")
def app(models_dir: Path) -> Flask:
    return make_app(models_dir)


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as test_client:
        yield test_client


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo ("chelsea", "coffee", ...) as RGB uint8."""
    array: np.ndarray = getattr(skimage.data, name)()
    return array


def encode(image: np.ndarray | Image.Image, fmt: str = "JPEG", **options: Any) -> bytes:
    """Encode an array or Pillow image into the bytes of an image file."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()
