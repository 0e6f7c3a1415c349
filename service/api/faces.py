"""Face routes: detect (with age and gender), embed, and verify.

``POST /v1/faces/detect`` and ``/v1/faces/embed`` take images the way
``/v1/classify`` does. ``POST /v1/faces/verify`` compares two faces, each
given as an image (``image1``, ``image2``) or as an embedding from
``/v1/faces/embed`` (``embedding1``, ``embedding2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from flask import Blueprint, Response, request
from PIL import Image

from service.api.context import state
from service.api.inputs import (
    float_option,
    int_option,
    read_image_request,
    read_pair_request,
    str_option,
)
from service.errors import InvalidParameter, NoFace
from service.imaging import decode_image
from service.manifest import ModelSpec
from service.timing import (
    DECODE,
    INFERENCE,
    POSTPROCESS,
    RECEIVE,
    json_response,
    stage,
)
from service.vision.faces import (
    DEFAULT_MIN_FACE_SIZE,
    AgeEstimate,
    FaceAnalyzer,
    GenderEstimate,
)
from service.vision.mtcnn import LANDMARK_NAMES, Face

blueprint = Blueprint("faces", __name__)

ATTRIBUTES = ("age", "gender")
MAX_FACES = 100
MIN_FACE_SIZE_LIMITS = (12, 4096)
# Euclidean distance between unit embeddings at or below which two faces
# are taken to be one person: the middle of the gap between the farthest
# same-person pair (0.91) and the nearest different-person pair (1.17) of
# the evaluation photos; the README gives the measured error rates.
DEFAULT_THRESHOLD = 1.05


@blueprint.post("/v1/faces/detect")
def detect() -> Response:
    face_request = read_face_request()
    attributes = _attributes(face_request.options)
    analyzer, images, faces = find_faces(face_request)

    with stage(INFERENCE):
        ages = analyzer.estimate_age(images, faces) if "age" in attributes else None
        genders = (
            analyzer.estimate_gender(images, faces) if "gender" in attributes else None
        )
    with stage(POSTPROCESS):
        body = _detection_body(analyzer, images, faces, ages, genders)
    return json_response(body)


def _detection_body(
    analyzer: FaceAnalyzer,
    images: list[Image.Image],
    faces: list[list[Face]],
    ages: list[list[AgeEstimate]] | None,
    genders: list[list[GenderEstimate]] | None,
) -> dict[str, Any]:
    results = []
    for number, (image, image_faces) in enumerate(zip(images, faces, strict=True)):
        described = []
        for index, face in enumerate(image_faces):
            entry = describe_face(face)
            if ages is not None:
                age = ages[number][index]
                entry["age"] = {
                    "years": round(age.years, 1),
                    "range": [age.low, age.high],
                }
            if genders is not None:
                gender = genders[number][index]
                entry["gender"] = {
                    "label": gender.label,
                    "probability": round(gender.probability, 4),
                }
            described.append(entry)
        results.append(
            {"width": image.width, "height": image.height, "faces": described}
        )

    models = {"detector": {"name": "mtcnn", "version": analyzer.onet.spec.version}}
    if ages is not None:
        models["age"] = _model_name(analyzer.age.model.spec)
    if genders is not None:
        models["gender"] = _model_name(analyzer.gender.model.spec)
    return {"models": models, "results": results}


@blueprint.post("/v1/faces/embed")
def embed() -> Response:
    analyzer, images, faces = find_faces(read_face_request())
    with stage(INFERENCE):
        embeddings = analyzer.embed(images, faces)

    with stage(POSTPROCESS):
        results = []
        for image, image_faces, vectors in zip(images, faces, embeddings, strict=True):
            described = []
            for face, vector in zip(image_faces, vectors, strict=True):
                entry = describe_face(face)
                entry["embedding"] = [round(float(v), 6) for v in vector]
                described.append(entry)
            results.append(
                {"width": image.width, "height": image.height, "faces": described}
            )
        body = {
            "model": _model_name(analyzer.embedder.model.spec),
            "results": results,
        }
    return json_response(body)


@blueprint.post("/v1/faces/verify")
def verify() -> Response:
    settings = state().settings
    with stage(RECEIVE):
        pair = read_pair_request(request)
    options = pair.options
    threshold = float_option(options, "threshold", DEFAULT_THRESHOLD, 0.0, 4.0)
    min_face_size = int_option(
        options, "min_face_size", DEFAULT_MIN_FACE_SIZE, *MIN_FACE_SIZE_LIMITS
    )
    face_indices = {
        side: int_option(options, f"face{side}", 0, 0, MAX_FACES - 1)
        for side in ("1", "2")
    }
    analyzer = state().registry.face_analyzer()
    dimensions = analyzer.embedding_size
    for side, vector in pair.embeddings.items():
        if len(vector) != dimensions:
            raise InvalidParameter(
                f"embedding{side} has {len(vector)} numbers; "
                f"{analyzer.embedder.model.spec.name} embeddings have {dimensions}."
            )

    vectors: dict[str, npt.NDArray[np.float32]] = {}
    compared: dict[str, dict[str, Any]] = {}
    images, faces, sides = [], [], []
    for side, face_index in face_indices.items():
        if side in pair.embeddings:
            vectors[side] = pair.embeddings[side]
            compared[side] = {"source": f"embedding{side}"}
            continue
        label = f"image{side}"
        with stage(DECODE):
            image = decode_image(
                pair.images[side], max_pixels=settings.max_pixels, label=label
            )
        # Only the faces up to the one compared are needed, which lets the
        # detector skip the search for smaller ones.
        with stage(INFERENCE):
            found = analyzer.detect(image, min_face_size, max_faces=face_index + 1)
        if not found:
            raise NoFace(_no_face_detail(label, min_face_size))
        if face_index >= len(found):
            raise InvalidParameter(
                f"face{side} is {face_index} but {label} has {len(found)} "
                f"face{'s' if len(found) != 1 else ''}."
            )
        face = found[face_index]
        images.append(image)
        faces.append([face])
        sides.append(side)
        box = describe_box(face)
        compared[side] = {"source": label, "face": face_index, "box": box}
    # Both faces go through the embedder in one batch.
    with stage(INFERENCE):
        embeddings = analyzer.embed(images, faces)
    for side, embedding in zip(sides, embeddings, strict=True):
        vectors[side] = embedding[0]

    with stage(POSTPROCESS):
        distance = float(np.linalg.norm(vectors["1"] - vectors["2"]))
        body = {
            "model": _model_name(analyzer.embedder.model.spec),
            "distance": round(distance, 6),
            "similarity": round(1.0 - distance**2 / 2.0, 6),
            "threshold": threshold,
            "verified": distance <= threshold,
            "faces": [compared["1"], compared["2"]],
        }
    return json_response(body)


@dataclass
class FaceRequest:
    """The images of a detect or embed request and its common options."""

    images: list[bytes]
    labels: list[str]
    options: dict[str, Any]
    min_face_size: int
    max_faces: int


def read_face_request() -> FaceRequest:
    """Read the images and check the options shared by detect and embed.

    Nothing is decoded or searched yet, so a route can check its own
    options too before the slow part starts.
    """
    with stage(RECEIVE):
        parsed = read_image_request(request, state().settings.max_images)
    options = parsed.options
    min_face_size = int_option(
        options, "min_face_size", DEFAULT_MIN_FACE_SIZE, *MIN_FACE_SIZE_LIMITS
    )
    max_faces = int_option(options, "max_faces", MAX_FACES, 1, MAX_FACES)
    return FaceRequest(parsed.images, parsed.labels, options, min_face_size, max_faces)


def find_faces(
    face_request: FaceRequest,
) -> tuple[FaceAnalyzer, list[Image.Image], list[list[Face]]]:
    """Decode every image and detect its faces; one without any is a 422."""
    analyzer = state().registry.face_analyzer()
    max_pixels = state().settings.max_pixels
    with stage(DECODE):
        images = [
            decode_image(data, max_pixels=max_pixels, label=label)
            for data, label in zip(
                face_request.images, face_request.labels, strict=True
            )
        ]
    # service.vision marks the pyramid and the crops as preprocessing; the
    # rest of the cascade, networks and box merging, counts as inference.
    with stage(INFERENCE):
        faces = [
            analyzer.detect(image, face_request.min_face_size, face_request.max_faces)
            for image in images
        ]
    for label, image_faces in zip(face_request.labels, faces, strict=True):
        if not image_faces:
            raise NoFace(_no_face_detail(label, face_request.min_face_size))
    return analyzer, images, faces


def _attributes(options: dict[str, Any]) -> set[str]:
    raw = str_option(options, "attributes") or ""
    wanted = {name.strip() for name in raw.split(",") if name.strip()}
    unknown = sorted(wanted - set(ATTRIBUTES))
    if unknown:
        raise InvalidParameter(
            f"attributes may be {', '.join(ATTRIBUTES)}; got {', '.join(unknown)}."
        )
    return wanted


def _no_face_detail(label: str, min_face_size: int) -> str:
    return (
        f"{label} has no face (faces of at least {min_face_size} pixels were "
        "looked for)."
    )


def _model_name(spec: ModelSpec) -> dict[str, str]:
    return {"name": spec.name, "version": spec.version}


def describe_box(face: Face) -> dict[str, float]:
    x1, y1, x2, y2 = face.box
    return {
        "x": round(x1, 1),
        "y": round(y1, 1),
        "width": round(x2 - x1, 1),
        "height": round(y2 - y1, 1),
    }


def describe_face(face: Face) -> dict[str, Any]:
    return {
        "box": describe_box(face),
        "score": round(float(face.score), 4),
        "landmarks": {
            name: {"x": round(float(x), 1), "y": round(float(y), 1)}
            for name, (x, y) in zip(LANDMARK_NAMES, face.landmarks, strict=True)
        },
    }
