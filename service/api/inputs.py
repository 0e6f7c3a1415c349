"""Read images and options from a request, in any of the accepted forms.

An image arrives as a multipart form field ``image`` (repeatable), as the
raw body with an ``image/*`` (or ``application/octet-stream``) content type,
or as JSON ``{"image": "<base64>"}``. Options come from the query string or,
for form and JSON bodies, from fields of the same name; a body field wins.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from flask import Request

from service.errors import (
    EmptyBody,
    InvalidBase64,
    InvalidJSON,
    InvalidParameter,
    MissingImage,
    TooManyImages,
    UnsupportedMediaType,
)

ACCEPTED_TYPES = "multipart/form-data, image/*, application/json"
RAW_TYPES = ("application/octet-stream",)
MAX_EMBEDDING_SIZE = 4096


@dataclass
class ImageRequest:
    """The images of a request, with a label each, and its options."""

    images: list[bytes]
    labels: list[str]
    options: dict[str, Any] = field(default_factory=dict)


def read_image_request(request: Request, max_images: int) -> ImageRequest:
    mimetype = request.mimetype
    if request.content_length == 0:
        raise EmptyBody(f"The request has no body; send an image as {ACCEPTED_TYPES}.")
    if mimetype == "multipart/form-data":
        parsed = _read_multipart(request)
    elif mimetype == "application/json" or mimetype.endswith("+json"):
        parsed = _read_json(request)
    elif mimetype.startswith("image/") or mimetype in RAW_TYPES:
        parsed = _read_raw(request)
    elif not mimetype and not _has_body(request):
        raise EmptyBody(f"The request has no body; send an image as {ACCEPTED_TYPES}.")
    else:
        shown = (
            f"Content-Type {mimetype}" if mimetype else "A body without Content-Type"
        )
        raise UnsupportedMediaType(f"{shown} is not accepted; use {ACCEPTED_TYPES}.")

    if len(parsed.images) > max_images:
        raise TooManyImages(
            f"The request holds {len(parsed.images)} images; the limit is {max_images}."
        )
    for name, value in request.args.items():
        parsed.options.setdefault(name, value)
    return parsed


def _has_body(request: Request) -> bool:
    return bool(request.get_data(cache=True))


def _read_raw(request: Request) -> ImageRequest:
    data = request.get_data(cache=False)
    if not data:
        raise EmptyBody("The request body is empty; it should be the image.")
    return ImageRequest([data], ["image"])


def _read_multipart(request: Request) -> ImageRequest:
    files = request.files.getlist("image")
    options: dict[str, Any] = {
        name: value for name, value in request.form.items() if name != "image"
    }
    if not files:
        if "image" in request.form:
            raise MissingImage(
                "Form field 'image' must be a file upload, not a text value."
            )
        names = sorted(set(request.files) | set(request.form))
        found = f"; found {', '.join(names)}" if names else ""
        raise MissingImage(f"The form has no file field 'image'{found}.")
    images = [upload.read() for upload in files]
    if len(files) == 1:
        labels = ["image"]
    else:
        labels = [f"image {number}" for number in range(1, len(files) + 1)]
    return ImageRequest(images, labels, options)


def _read_json(request: Request) -> ImageRequest:
    document = _json_object(request, "an 'image' member")
    encoded = document.pop("image", None)
    if encoded is None:
        raise MissingImage("The JSON object has no 'image' member.")
    if not isinstance(encoded, str):
        raise InvalidParameter("'image' must be a base64 string.")
    return ImageRequest([decode_base64(encoded)], ["image"], document)


def _json_object(request: Request, expected: str) -> dict[str, Any]:
    raw = request.get_data(cache=False)
    if not raw:
        raise EmptyBody("The request body is empty; expected a JSON object.")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidJSON(f"The body is not valid JSON: {error}.") from None
    except RecursionError:
        raise InvalidJSON("The JSON body is nested too deeply to parse.") from None
    except ValueError:
        # Python refuses to convert integers of more than 4300 digits.
        raise InvalidJSON("The JSON body holds a number too long to parse.") from None
    if not isinstance(document, dict):
        raise InvalidJSON(f"The JSON body must be an object with {expected}.")
    return document


@dataclass
class PairRequest:
    """Two faces to compare, each as image bytes or as an embedding."""

    images: dict[str, bytes]
    embeddings: dict[str, npt.NDArray[np.float32]]
    options: dict[str, Any]


PAIR_SIDES = ("1", "2")


def read_pair_request(request: Request) -> PairRequest:
    """Read ``image1``/``image2`` or ``embedding1``/``embedding2``.

    Multipart forms carry images as files; JSON carries base64 images or
    embeddings as arrays of numbers. Each side needs exactly one of the two.
    """
    mimetype = request.mimetype
    if request.content_length == 0 or (not mimetype and not _has_body(request)):
        raise EmptyBody("The request has no body; send image1 and image2.")
    if mimetype == "multipart/form-data":
        fields: dict[str, Any] = {name: value for name, value in request.form.items()}
        for name in request.files:
            fields[name] = request.files[name].read()
    elif mimetype == "application/json" or mimetype.endswith("+json"):
        fields = _json_object(request, "image1 and image2 or embeddings")
    else:
        shown = (
            f"Content-Type {mimetype}" if mimetype else "A body without Content-Type"
        )
        raise UnsupportedMediaType(
            f"{shown} is not accepted; use multipart/form-data or application/json."
        )

    images: dict[str, bytes] = {}
    embeddings: dict[str, npt.NDArray[np.float32]] = {}
    for side in PAIR_SIDES:
        image = fields.pop(f"image{side}", None)
        embedding = fields.pop(f"embedding{side}", None)
        if (image is None) == (embedding is None):
            raise MissingImage(f"Give exactly one of image{side} and embedding{side}.")
        if embedding is not None:
            embeddings[side] = _embedding(embedding, f"embedding{side}")
        elif isinstance(image, bytes):
            images[side] = image
        elif isinstance(image, str) and mimetype != "multipart/form-data":
            images[side] = decode_base64(image, f"image{side}")
        else:
            raise MissingImage(f"image{side} must be a file upload.")
    for name, value in request.args.items():
        fields.setdefault(name, value)
    return PairRequest(images, embeddings, fields)


def _embedding(value: Any, name: str) -> npt.NDArray[np.float32]:
    if isinstance(value, bytes | str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            value = None
    numbers = (
        isinstance(value, list)
        and 0 < len(value) <= MAX_EMBEDDING_SIZE
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )
    try:
        vector = np.asarray(value if numbers else [], dtype=np.float64)
    except OverflowError:  # an integer beyond the range of a float
        vector = np.asarray([], dtype=np.float64)
    # Scaled by its largest magnitude first, a vector of huge but finite
    # numbers has a norm that does not overflow.
    peak = float(np.abs(vector).max(initial=0.0))
    if not np.isfinite(peak) or peak == 0.0:
        raise InvalidParameter(
            f"{name} must be a non-zero array of numbers, as /v1/faces/embed returns."
        )
    scaled = vector / peak
    return (scaled / np.linalg.norm(scaled)).astype(np.float32)


def decode_base64(encoded: str, name: str = "image") -> bytes:
    """Decode standard or URL-safe base64, with or without a data: prefix."""
    if encoded.startswith("data:"):
        header, _, encoded = encoded.partition(",")
        if not header.endswith(";base64"):
            raise InvalidBase64(f"A data: URL {name} must be base64 encoded.")
    compact = "".join(encoded.split())
    if not compact:
        raise EmptyBody(f"'{name}' is an empty string.")
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64(f"'{name}' is not valid base64.") from None


def int_option(
    options: dict[str, Any], name: str, default: int, low: int, high: int
) -> int:
    """Read an integer option and check it lies in ``[low, high]``."""
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        value = None
    else:
        try:
            value = int(raw)
        except ValueError:
            value = None
    if value is None or not low <= value <= high:
        raise InvalidParameter(
            f"{name} must be a whole number from {low} to {high}, got {raw!r}."
        )
    return value


def str_option(options: dict[str, Any], name: str) -> str | None:
    raw = options.get(name)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise InvalidParameter(f"{name} must be a string, got {raw!r}.")
    return raw


def float_option(
    options: dict[str, Any], name: str, default: float, low: float, high: float
) -> float:
    """Read a number option and check it lies in ``[low, high]``."""
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    value: float | None = None
    if isinstance(raw, int | float | str) and not isinstance(raw, bool):
        try:
            value = float(raw)
        except (ValueError, OverflowError):
            value = None
    if value is None or not low <= value <= high:
        raise InvalidParameter(
            f"{name} must be a number from {low:g} to {high:g}, got {raw!r}."
        )
    return value
