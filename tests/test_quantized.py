"""The int8 variants: what the exporter records, what the service serves,
and the gate that keeps a broken variant out.

The variants are the ones ``python -m export`` wrote into ``models/``. They
are checked against their own float32 models on scikit-image's photos; the
accuracy on the evaluation photos, which decides which variants are
offered, is measured by hand (README, "Int8 variants").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from flask import Flask
from flask.testing import FlaskClient
from onnx import numpy_helper
from PIL import Image

from export.__main__ import _variant_is_current
from export.artifacts import sha256_of
from export.catalog import QUANTIZATIONS
from export.manifest import exporter_fingerprint
from export.quantize import (
    ASTRONAUT_FACE_BOX,
    EmbeddingGate,
    GateError,
    Top1Gate,
    check_gate,
    classifier_calibration,
    classifier_input,
    margin_chip,
    normalise_chips,
    photo_views,
    sample_photos,
)
from service.manifest import ModelContractError, load_manifest
from service.runtime import create_session
from service.vision.classifier import Classifier
from service.vision.faces import ChipNetwork, Model, _margin_crops
from service.vision.mtcnn import Face
from tests.conftest import encode, make_app, photo

OFFERED = [q for q in QUANTIZATIONS if q.offered]
NOT_OFFERED = [q for q in QUANTIZATIONS if not q.offered]
INT8_CLASSIFIERS = [q.name for q in OFFERED if isinstance(q.gate, Top1Gate)]
INT8_EMBEDDER = "facenet-int8"


def manifest_entries(models_dir: Path) -> dict[str, dict[str, Any]]:
    manifest = json.loads((models_dir / "manifest.json").read_text())
    return {entry["name"]: entry for entry in manifest["models"]}


# --- what the exporter wrote -----------------------------------------------


@pytest.mark.parametrize("quantization", OFFERED, ids=lambda q: q.name)
def test_offered_variant_is_in_the_manifest_beside_its_float_model(
    models_dir: Path, quantization: Any
) -> None:
    entries = manifest_entries(models_dir)
    variant, base = entries[quantization.name], entries[quantization.model]

    assert variant["sha256"] == sha256_of(models_dir / variant["file"])
    assert variant["sha256"] != base["sha256"]
    assert variant["quantization"]["from"] == {
        "name": base["name"],
        "file": base["file"],
        "sha256": base["sha256"],
    }
    for key in ("task", "inputs", "outputs", "preprocessing", "source"):
        assert variant[key] == base[key], key
    assert variant.get("labels") == base.get("labels")
    calibration = variant["quantization"]["calibration"]
    assert calibration["images"] > 0 and calibration["set"]
    assert quantization.method in calibration["method"]


def test_variants_not_offered_are_not_built(models_dir: Path) -> None:
    entries = manifest_entries(models_dir)

    assert NOT_OFFERED, "the catalog lists a variant that is not offered"
    for quantization in NOT_OFFERED:
        assert quantization.name not in entries


@pytest.mark.parametrize("quantization", OFFERED, ids=lambda q: q.name)
def test_variant_file_holds_integer_kernels(
    models_dir: Path, quantization: Any
) -> None:
    graph = onnx.load(str(models_dir / f"{quantization.name}.onnx")).graph
    operators = {node.op_type for node in graph.node}
    weights = [
        numpy_helper.to_array(tensor)
        for tensor in graph.initializer
        if tensor.data_type == onnx.TensorProto.INT8
    ]

    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    assert weights
    # reduce_range: 7-bit weights, so that AVX2's 16-bit sums cannot saturate.
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64


def test_a_variant_is_rebuilt_when_its_float_file_changes(models_dir: Path) -> None:
    entries = manifest_entries(models_dir)
    name = OFFERED[0].name
    variant, base = entries[name], entries[OFFERED[0].model]
    fingerprint = exporter_fingerprint()

    assert _variant_is_current(variant, base, fingerprint, models_dir)
    assert not _variant_is_current(
        variant, {**base, "sha256": "0" * 64}, fingerprint, models_dir
    )
    assert not _variant_is_current(variant, base, "another exporter", models_dir)


# --- calibration goes through the service's own preprocessing ----------------


@pytest.mark.parametrize("name", ["efficientnet-lite0", "mobilenet-v2"])
def test_calibration_images_are_prepared_as_the_service_prepares_them(
    models_dir: Path, name: str
) -> None:
    spec = next(s for s in load_manifest(models_dir).models if s.name == name)
    classifier = Classifier(spec, create_session(spec, ["CPUExecutionProvider"], 1))

    for _, picture in sample_photos()[:3]:
        for view in list(photo_views(picture))[::3]:
            served = np.empty((3, classifier.crop, classifier.crop), np.float32)
            classifier.preprocess_into(view, served)
            np.testing.assert_array_equal(
                classifier_input(view, spec.preprocessing), served
            )


def test_calibration_chips_are_cut_as_the_service_cuts_them(
    models_dir: Path,
) -> None:
    spec = next(s for s in load_manifest(models_dir).models if s.name == "facenet")
    network = ChipNetwork(
        Model(spec, create_session(spec, ["CPUExecutionProvider"], 1))
    )
    size, margin = int(spec.preprocessing["size"]), float(spec.preprocessing["margin"])
    astronaut = Image.fromarray(photo("astronaut"))
    face = Face(box=ASTRONAUT_FACE_BOX, score=1.0, landmarks=np.zeros((5, 2)))

    served = _margin_crops(astronaut, [face], size, margin)
    ours = margin_chip(astronaut, ASTRONAUT_FACE_BOX, size, margin)

    np.testing.assert_array_equal(ours, served[0])
    np.testing.assert_allclose(
        normalise_chips(served, spec.preprocessing),
        network.normalise(served),
        rtol=0,
        atol=1e-6,
    )


# --- the service serves them ------------------------------------------------


def classify(client: FlaskClient, image: np.ndarray, model: str) -> Any:
    response = client.post(
        f"/v1/classify?model={model}&top_k=5",
        data=encode(image),
        content_type="image/jpeg",
    )
    assert response.status_code == 200, response.json
    return response.json


def test_models_lists_the_int8_variants_and_float32_stays_default(
    client: FlaskClient,
) -> None:
    listed = client.get("/v1/models").json
    assert listed is not None
    models = {m["name"]: m for m in listed["models"]}

    for quantization in OFFERED:
        assert models[quantization.name]["default"] is False
        assert models[quantization.model]["default"] is True
        assert models[quantization.name]["task"] == models[quantization.model]["task"]


@pytest.mark.parametrize("name", INT8_CLASSIFIERS)
@pytest.mark.parametrize("picture", ["chelsea", "coffee"])
def test_int8_classifier_names_the_photo_as_float32_does(
    client: FlaskClient, name: str, picture: str
) -> None:
    base = name.removesuffix("-int8")

    int8 = classify(client, photo(picture), name)
    float32 = classify(client, photo(picture), base)

    assert int8["model"]["name"] == name
    int8_top = [p["wnid"] for p in int8["results"][0]["predictions"]]
    float_top = [p["wnid"] for p in float32["results"][0]["predictions"]]
    float_probability = {
        p["wnid"]: p["probability"] for p in float32["results"][0]["predictions"]
    }
    # Chelsea is a tabby that float32 calls a tiger cat by about a point
    # over an Egyptian cat; where float32 itself hesitates between its first
    # two classes (within 5 points), int8 may pick either.
    hesitates = float_probability[float_top[0]] - float_probability[float_top[1]]
    assert int8_top[0] == float_top[0] or (
        int8_top[0] == float_top[1] and hesitates < 0.05
    )
    # The rest of the five is the same set of classes, give or take one.
    assert len(set(int8_top) & set(float_top)) >= 4


@pytest.fixture(scope="module")
def int8_face_app(models_dir: Path) -> Flask:
    """An app told to embed faces with FaceNet int8."""
    return make_app(models_dir, face_embedder=INT8_EMBEDDER)


def embed_astronaut(client: FlaskClient) -> tuple[str, np.ndarray]:
    response = client.post(
        "/v1/faces/embed", data=encode(photo("astronaut")), content_type="image/jpeg"
    )
    assert response.status_code == 200, response.json
    answer = response.json
    return answer["model"]["name"], np.asarray(
        answer["results"][0]["faces"][0]["embedding"]
    )


def test_facenet_int8_embeds_the_astronaut_close_to_float32(
    client: FlaskClient, int8_face_app: Flask
) -> None:
    float_name, float_embedding = embed_astronaut(client)
    with int8_face_app.test_client() as int8_client:
        int8_name, int8_embedding = embed_astronaut(int8_client)

    assert (float_name, int8_name) == ("facenet", INT8_EMBEDDER)
    cosine = float(float_embedding @ int8_embedding)
    assert cosine >= EmbeddingGate().min_cosine


def test_the_service_embeds_with_float32_unless_told_otherwise(
    app: Flask, int8_face_app: Flask
) -> None:
    faces = app.extensions["vision"].registry.face_analyzer()
    assert faces.embedder.model.spec.name == "facenet"

    with int8_face_app.test_client() as int8_client:
        listed = int8_client.get("/v1/models").json["models"]
    defaults = {model["name"] for model in listed if model["default"]}
    assert INT8_EMBEDDER in defaults
    assert "facenet" not in defaults


def test_an_unknown_face_embedder_stops_the_start(models_dir: Path) -> None:
    with pytest.raises(ModelContractError, match="no-such-facenet"):
        make_app(models_dir, face_embedder="no-such-facenet")


# --- the gate ---------------------------------------------------------------


def broken_copy(source: Path, folder: Path) -> Path:
    """``source`` with each per-channel scale given to another channel, as a
    quantiser that mixed up its channels would write."""
    model = onnx.load(str(source))
    scales = [
        tensor
        for tensor in model.graph.initializer
        if tensor.data_type == onnx.TensorProto.FLOAT
        and tensor.name.endswith("_scale")
        and len(tensor.dims) == 1
        and tensor.dims[0] > 1
    ]
    assert scales, "no per-channel weight scale found"
    random = np.random.default_rng(0)
    for tensor in scales:
        values = numpy_helper.to_array(tensor).copy()
        random.shuffle(values)
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    path = folder / f"broken-{source.name}"
    onnx.save(model, str(path))
    return path


def test_top1_gate_passes_the_variant_and_rejects_a_broken_one(
    models_dir: Path, tmp_path: Path
) -> None:
    quantization = next(q for q in OFFERED if q.name in INT8_CLASSIFIERS)
    base = models_dir / f"{quantization.model}.onnx"
    variant = models_dir / f"{quantization.name}.onnx"
    entries = manifest_entries(models_dir)
    images = classifier_calibration(entries[quantization.model]["preprocessing"])

    report = check_gate(quantization.gate, base, variant, images)
    assert report["top1_agreement"] >= quantization.gate.min_agreement

    broken = broken_copy(variant, tmp_path)
    with pytest.raises(GateError, match="top-1 agreement with float32"):
        check_gate(quantization.gate, base, broken, images)


def test_embedding_gate_rejects_a_broken_variant(
    models_dir: Path, tmp_path: Path
) -> None:
    quantization = next(q for q in OFFERED if q.name == INT8_EMBEDDER)
    assert quantization.gate_images is not None
    images = quantization.gate_images({})
    base = models_dir / f"{quantization.model}.onnx"

    report = check_gate(
        quantization.gate, base, models_dir / f"{quantization.name}.onnx", images
    )
    assert report["min_cosine"] >= quantization.gate.min_cosine

    broken = broken_copy(models_dir / f"{quantization.name}.onnx", tmp_path)
    with pytest.raises(GateError, match="cosine similarity with float32"):
        check_gate(quantization.gate, base, broken, images)
