"""Face routes over HTTP with the real exported models on real photos.

scikit-image's astronaut (Eileen Collins) is the real face; more cases are
made from it: mirrored, rescaled, rotated, re-lit, and pasted side by side.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image, ImageEnhance

from tests.conftest import encode, photo


def astronaut() -> Image.Image:
    return Image.fromarray(photo("astronaut"))


def another_photo_of_her() -> Image.Image:
    """A different-looking photo of the same face: smaller, turned, darker,
    and cropped to another frame."""
    image = astronaut().rotate(12, resample=Image.Resampling.BICUBIC, expand=False)
    image = image.crop((60, 10, 460, 400)).resize((300, 292))
    return ImageEnhance.Brightness(image).enhance(0.75)


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    canvas = Image.new(
        "RGB", (left.width + right.width, max(left.height, right.height))
    )
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def post_image(client: FlaskClient, path: str, image: Image.Image) -> Any:
    return client.post(path, data=encode(image), content_type="image/jpeg")


def verify(client: FlaskClient, first: Image.Image, second: Image.Image) -> Any:
    response = client.post(
        "/v1/faces/verify",
        data={
            "image1": (io.BytesIO(encode(first)), "1.jpg"),
            "image2": (io.BytesIO(encode(second)), "2.jpg"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.json
    return response.json


def test_detect_finds_the_face_with_landmarks_inside_it(client: FlaskClient) -> None:
    response = post_image(client, "/v1/faces/detect", astronaut())

    assert response.status_code == 200
    faces = response.json["results"][0]["faces"]
    assert len(faces) == 1
    box = faces[0]["box"]
    # Her face spans roughly columns 175-270 and rows 55-180 of the photo.
    assert 160 < box["x"] < 200 and 40 < box["y"] < 80
    assert 70 < box["width"] < 120 and 90 < box["height"] < 140
    assert faces[0]["score"] > 0.95
    points = faces[0]["landmarks"]
    for point in points.values():
        assert box["x"] < point["x"] < box["x"] + box["width"]
        assert box["y"] < point["y"] < box["y"] + box["height"]
    assert points["left_eye"]["x"] < points["right_eye"]["x"]
    assert points["left_eye"]["y"] < points["nose"]["y"] < points["mouth_left"]["y"]


def test_detect_orders_faces_largest_first(client: FlaskClient) -> None:
    small = astronaut().resize((256, 256))
    pair = side_by_side(small, astronaut().transpose(Image.Transpose.FLIP_LEFT_RIGHT))

    response = post_image(client, "/v1/faces/detect?max_faces=5", pair)

    faces = response.json["results"][0]["faces"]
    assert len(faces) == 2
    areas = [f["box"]["width"] * f["box"]["height"] for f in faces]
    assert areas[0] > 2 * areas[1]
    # The large face is the mirrored one, pasted on the right.
    assert faces[0]["box"]["x"] > 256


def test_max_faces_keeps_the_largest(client: FlaskClient) -> None:
    pair = side_by_side(astronaut().resize((256, 256)), astronaut())

    response = post_image(client, "/v1/faces/detect?max_faces=1", pair)

    faces = response.json["results"][0]["faces"]
    assert len(faces) == 1 and faces[0]["box"]["x"] > 256


def test_age_and_gender_of_the_astronaut_are_plausible(client: FlaskClient) -> None:
    response = post_image(client, "/v1/faces/detect?attributes=age,gender", astronaut())

    face = response.json["results"][0]["faces"][0]
    # Eileen Collins was about 40 when this NASA portrait was taken.
    assert 25 <= face["age"]["years"] <= 55
    low, high = face["age"]["range"]
    assert low <= face["age"]["years"] <= high
    assert face["gender"]["label"] == "female"
    assert face["gender"]["probability"] > 0.8
    assert set(response.json["models"]) == {"detector", "age", "gender"}


def test_embeddings_are_unit_length_and_one_per_face(client: FlaskClient) -> None:
    pair = side_by_side(astronaut(), another_photo_of_her())

    response = post_image(client, "/v1/faces/embed", pair)

    faces = response.json["results"][0]["faces"]
    assert len(faces) == 2
    vectors = np.asarray([face["embedding"] for face in faces])
    assert vectors.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert response.json["model"]["name"] == "facenet"


def test_a_face_and_its_mirror_are_the_same_person(client: FlaskClient) -> None:
    mirrored = astronaut().transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    result = verify(client, astronaut(), mirrored)

    assert result["verified"] is True
    assert result["distance"] < result["threshold"]
    assert result["similarity"] == pytest.approx(1 - result["distance"] ** 2 / 2)


def test_two_different_photos_of_one_person_verify(client: FlaskClient) -> None:
    result = verify(client, astronaut(), another_photo_of_her())

    assert result["verified"] is True


def test_two_different_people_do_not_verify(client: FlaskClient) -> None:
    # The cameraman, in profile-ish three-quarter view, is another person.
    cameraman = Image.fromarray(photo("camera")).convert("RGB")

    result = verify(client, astronaut(), cameraman)

    assert result["verified"] is False
    assert result["distance"] > result["threshold"]


def test_verify_compares_the_face_asked_for(client: FlaskClient) -> None:
    pair = side_by_side(astronaut().resize((256, 256)), astronaut())

    response = client.post(
        "/v1/faces/verify?face2=1",
        data={
            "image1": (io.BytesIO(encode(astronaut())), "1.jpg"),
            "image2": (io.BytesIO(encode(pair)), "2.jpg"),
        },
        content_type="multipart/form-data",
    )

    assert response.status_code == 200
    second = response.json["faces"][1]
    assert second["face"] == 1 and second["box"]["x"] < 256


def test_verify_with_embeddings_matches_verify_with_images(
    client: FlaskClient,
) -> None:
    first = post_image(client, "/v1/faces/embed", astronaut()).json
    second = post_image(client, "/v1/faces/embed", another_photo_of_her()).json

    response = client.post(
        "/v1/faces/verify",
        json={
            "embedding1": first["results"][0]["faces"][0]["embedding"],
            "embedding2": second["results"][0]["faces"][0]["embedding"],
            "threshold": 0.5,
        },
    )

    from_images = verify(client, astronaut(), another_photo_of_her())
    assert response.json["distance"] == pytest.approx(from_images["distance"], abs=1e-4)
    assert response.json["threshold"] == 0.5
    assert response.json["verified"] is (response.json["distance"] <= 0.5)


def test_an_image_without_a_face_is_a_422_naming_it(client: FlaskClient) -> None:
    response = client.post(
        "/v1/faces/detect",
        data={
            "image": [
                (io.BytesIO(encode(astronaut())), "a.jpg"),
                (io.BytesIO(encode(photo("coffee"))), "b.jpg"),
            ]
        },
        content_type="multipart/form-data",
    )

    assert response.status_code == 422
    assert response.json == {
        "type": "/problems/no-face",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "image 2 has no face (faces of at least 20 pixels were looked for).",
    }


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        (
            "min_face_size=5",
            "min_face_size must be a whole number from 12 to 4096, got '5'.",
        ),
        ("max_faces=0", "max_faces must be a whole number from 1 to 100, got '0'."),
        ("attributes=age,mood", "attributes may be age, gender; got mood."),
    ],
)
def test_bad_detect_options_are_400(
    client: FlaskClient, query: str, detail: str
) -> None:
    # A flat image: the options must be refused before detection runs.
    blank = Image.new("RGB", (64, 64), (128, 128, 128))

    response = post_image(client, f"/v1/faces/detect?{query}", blank)

    assert response.status_code == 400
    assert response.json["detail"] == detail


def test_an_embedding_of_the_wrong_size_is_a_400(client: FlaskClient) -> None:
    response = client.post(
        "/v1/faces/verify",
        json={"embedding1": [1.0, 0.0, 0.0], "embedding2": [0.0] * 511 + [1.0]},
    )

    assert response.status_code == 400
    assert response.json["detail"] == (
        "embedding1 has 3 numbers; facenet embeddings have 512."
    )
