"""dlib's age and gender networks: loading, parity, export and chip geometry.

The networks are rebuilt in PyTorch from the pinned ONNX files and must
compute what those files compute under onnxruntime on real face chips; the
re-exported graphs must compute what PyTorch computes. The chips are cut
from scikit-image's astronaut photograph (Eileen Collins), with landmarks
read off the photo by eye.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
import torch
from onnx import numpy_helper
from PIL import Image

from export.age_gender import (
    AGE_OUTPUT,
    AGE_WEIGHTS,
    GENDER_OUTPUT,
    GENDER_WEIGHTS,
    INPUT_NAME,
)
from export.artifacts import default_cache_dir, fetch
from export.nets.dlib_resnet import (
    AGE_CHIP_SIZE,
    DLIB_PIXEL_SCALE,
    DLIB_RGB_MEAN,
    GENDER_CHIP_SIZE,
    GENDER_LABELS,
    load_age_net,
    load_gender_net,
)
from export.readers.torch_state import WeightsMismatchError
from service.vision.chips import (
    DLIB_CHIP_TEMPLATE,
    FaceTemplate,
    align_face,
    chip_transforms,
    dlib_chip_transforms,
    face_chips,
)

# MTCNN-style landmarks of the astronaut's face, read off a 6x enlargement
# of the photo: eye centres, nose tip, mouth corners, image-left first.
ASTRONAUT_LANDMARKS = np.array(
    [[202, 102], [247, 103], [226, 126], [203, 140], [244, 141]], dtype=np.float64
)

# What dlib's shape_predictor_5_face_landmarks finds on the same face (outer
# and inner corner of the image-right eye, then of the image-left eye, then
# the base of the nose), and dlib's template for those points.
ASTRONAUT_DLIB_POINTS = np.array(
    [[255, 104], [237, 105], [195, 101], [212, 103], [224, 135]], dtype=np.float64
)
DLIB_5_POINT_TEMPLATE = FaceTemplate(
    tuple(
        ((0.2 + x) / 1.4, (0.2 + y) / 1.4)
        for x, y in (
            (0.8595674595992, 0.2134981538014),
            (0.6460604764104, 0.2289674387677),
            (0.1205750620789, 0.2137274526848),
            (0.3340850613712, 0.2290642403242),
            (0.4901123135679, 0.6277975316475),
        )
    ),
    (1.0,) * 5,
)

# PyTorch and onnxruntime run the same float32 operations in a different
# order; on these chips the logits (magnitude up to ~15) differ by ~1e-5 and
# the probabilities by ~2e-6. 1e-4 and 1e-5 leave room for other CPUs; a
# wrong layer moves them by more than 1e-2.
LOGIT_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 1e-5

AGE_OF_CLASS = np.array([0.25, *range(1, 81)], dtype=np.float64)


def astronaut() -> np.ndarray:
    photo: np.ndarray = skimage.data.astronaut()
    return photo


def flipped(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror the image; landmarks swap sides so image-left stays first."""
    mirrored = landmarks.copy()
    mirrored[:, 0] = image.shape[1] - 1 - mirrored[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), mirrored[[1, 0, 2, 4, 3]]


def rotated(
    image: np.ndarray, landmarks: np.ndarray, degrees: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the image about its centre (canvas grown) and move landmarks."""
    picture = Image.fromarray(image).rotate(
        degrees, resample=Image.Resampling.BICUBIC, expand=True
    )
    height, width = image.shape[:2]
    angle = math.radians(degrees)
    # Pillow turns counter-clockwise on screen, i.e. by -angle in image
    # coordinates whose y axis points down.
    rotation = np.array(
        [[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]]
    )
    old_centre = np.array([(width - 1) / 2, (height - 1) / 2])
    new_centre = np.array([(picture.width - 1) / 2, (picture.height - 1) / 2])
    moved = (landmarks - old_centre) @ rotation.T + new_centre
    return np.asarray(picture), moved


def astronaut_faces() -> list[tuple[np.ndarray, np.ndarray]]:
    """The astronaut's face as photographed, mirrored and turned both ways."""
    photo = astronaut()
    cases = [(photo, ASTRONAUT_LANDMARKS), flipped(photo, ASTRONAUT_LANDMARKS)]
    cases += [rotated(photo, ASTRONAUT_LANDMARKS, degrees) for degrees in (-20, 15)]
    return cases


def chips_of(size: int) -> np.ndarray:
    return np.concatenate(
        [face_chips(image, marks[None], size) for image, marks in astronaut_faces()]
    )


def normalised(chips: np.ndarray) -> np.ndarray:
    pixels = chips.astype(np.float32) - np.float32(DLIB_RGB_MEAN)
    pixels /= np.float32(DLIB_PIXEL_SCALE)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def age_path() -> Path:
    return fetch(AGE_WEIGHTS, default_cache_dir())


@pytest.fixture(scope="module")
def gender_path() -> Path:
    return fetch(GENDER_WEIGHTS, default_cache_dir())


@pytest.fixture(scope="module")
def networks(age_path: Path, gender_path: Path) -> dict[str, torch.nn.Module]:
    return {"age": load_age_net(age_path), "gender": load_gender_net(gender_path)}


@pytest.fixture(scope="module")
def real_chips() -> dict[str, np.ndarray]:
    return {"age": chips_of(AGE_CHIP_SIZE), "gender": chips_of(GENDER_CHIP_SIZE)}


def torch_logits(network: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        result: np.ndarray = network(torch.from_numpy(batch)).numpy()
    return result


def original_outputs(path: Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the pinned ONNX file, also returning its ``logits`` tensor."""
    model = onnx.load(str(path))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    probabilities, logits = session.run(None, {"images": batch})
    return probabilities, logits


# Loading


def test_graph_takes_unnormalised_rgb_and_outputs_probabilities(
    age_path: Path, gender_path: Path
) -> None:
    for path, size in ((age_path, 64), (gender_path, 32)):
        graph = onnx.load(str(path)).graph
        first = graph.node[0]
        dims = [
            d.dim_param or d.dim_value
            for d in graph.input[0].type.tensor_type.shape.dim
        ]

        assert first.op_type == "Conv" and first.input[0] == graph.input[0].name
        assert dims == ["N", 3, size, size]
        assert graph.node[-1].op_type == "Softmax"


def test_loading_refuses_the_other_networks_weights(
    age_path: Path, gender_path: Path
) -> None:
    with pytest.raises(WeightsMismatchError, match="fit DlibAgePredictor: missing"):
        load_age_net(gender_path)
    with pytest.raises(WeightsMismatchError, match="fit DlibGenderClassifier: "):
        load_gender_net(age_path)


def test_loading_names_a_misshapen_an_extra_and_a_wrong_structural_constant(
    age_path: Path, tmp_path: Path
) -> None:
    model = onnx.load(str(age_path))
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    bias = numpy_helper.to_array(constants["layer_1_bias"])
    constants["layer_1_bias"].CopyFrom(
        numpy_helper.from_array(bias[:80], "layer_1_bias")
    )
    pads = numpy_helper.to_array(constants["layer_31_right_pads"]).copy()
    pads[6] = 0
    constants["layer_31_right_pads"].CopyFrom(
        numpy_helper.from_array(pads, "layer_31_right_pads")
    )
    model.graph.initializer.append(
        numpy_helper.from_array(np.zeros(3, np.float32), "stray_tensor")
    )
    broken = tmp_path / "age.onnx"
    onnx.save(model, str(broken))

    with pytest.raises(WeightsMismatchError) as caught:
        load_age_net(broken)

    message = str(caught.value)
    assert "layer_1_bias is float32[80], fc.bias needs float32[81]" in message
    assert "unexpected stray_tensor" in message
    assert "layer_31_right_pads" in message


# Parity with the pinned ONNX files


@pytest.mark.parametrize("task", ["age", "gender"])
def test_pytorch_matches_the_original_onnx_on_face_chips(
    task: str,
    networks: dict[str, torch.nn.Module],
    real_chips: dict[str, np.ndarray],
    age_path: Path,
    gender_path: Path,
) -> None:
    batch = normalised(real_chips[task])
    path = age_path if task == "age" else gender_path

    probabilities, logits = original_outputs(path, batch)
    ours = torch_logits(networks[task], batch)

    assert np.abs(ours - logits).max() <= LOGIT_TOLERANCE
    ours_probabilities = torch.softmax(torch.from_numpy(ours), 1).numpy()
    assert np.abs(ours_probabilities - probabilities).max() <= PROBABILITY_TOLERANCE


def test_parity_catches_a_wrong_affine_shift(
    networks: dict[str, torch.nn.Module],
    real_chips: dict[str, np.ndarray],
    gender_path: Path,
) -> None:
    network = load_gender_net(gender_path)
    with torch.no_grad():
        network.conv3.affine.shift[0] += 0.05  # type: ignore[index, operator]
    batch = normalised(real_chips["gender"])

    _, logits = original_outputs(gender_path, batch)

    assert np.abs(torch_logits(network, batch) - logits).max() > LOGIT_TOLERANCE


# The served graphs


@pytest.mark.parametrize(
    ("task", "size", "output"),
    [("age", AGE_CHIP_SIZE, AGE_OUTPUT), ("gender", GENDER_CHIP_SIZE, GENDER_OUTPUT)],
)
def test_exported_graph_matches_pytorch_at_every_batch_size(
    task: str,
    size: int,
    output: str,
    networks: dict[str, torch.nn.Module],
    real_chips: dict[str, np.ndarray],
    models_dir: Path,
) -> None:
    path = models_dir / f"dlib-{task}.onnx"
    graph = onnx.load(str(path)).graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = normalised(real_chips[task])

    expected = torch.softmax(torch.from_numpy(torch_logits(networks[task], batch)), 1)
    together = session.run([output], {INPUT_NAME: batch})[0]
    alone = np.concatenate(
        [
            session.run([output], {INPUT_NAME: batch[i : i + 1]})[0]
            for i in range(len(batch))
        ]
    )

    operators = {node.op_type for node in graph.node}
    assert "Mul" not in operators and "BatchNormalization" not in operators
    assert [o.name for o in graph.output] == [output]
    assert np.abs(together - expected.numpy()).max() <= PROBABILITY_TOLERANCE
    assert np.abs(alone - expected.numpy()).max() <= PROBABILITY_TOLERANCE


# The astronaut


def test_astronaut_is_a_woman_of_plausible_age(
    networks: dict[str, torch.nn.Module], real_chips: dict[str, np.ndarray]
) -> None:
    # Eileen Collins was about 36-42 when this portrait was taken; the
    # networks' own spread on one face is several years.
    age_logits = torch_logits(networks["age"], normalised(real_chips["age"]))
    age_probabilities = torch.softmax(torch.from_numpy(age_logits), 1).numpy()
    gender_logits = torch_logits(networks["gender"], normalised(real_chips["gender"]))
    gender_probabilities = torch.softmax(torch.from_numpy(gender_logits), 1).numpy()

    ages = age_probabilities @ AGE_OF_CLASS
    female = gender_probabilities[:, GENDER_LABELS.index("female")]

    assert np.all((ages >= 25) & (ages <= 55)), ages
    assert np.all(female > 0.5), female


# Chip geometry


def similarity(
    points: np.ndarray, scale: float, degrees: float, shift: tuple[float, float]
) -> np.ndarray:
    angle = math.radians(degrees)
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    return scale * points @ rotation.T + np.array(shift)


@pytest.mark.parametrize("size", [32, 64, 160])
def test_exact_landmarks_map_onto_the_template(size: int) -> None:
    template = np.array(DLIB_CHIP_TEMPLATE.points)
    landmarks = similarity(template * size, 2.7, 17.0, (310.0, 95.0))

    transform = chip_transforms(landmarks[None], size, DLIB_CHIP_TEMPLATE)[0]
    chip_pixels = template * size - 0.5
    mapped = np.c_[chip_pixels, np.ones(5)] @ transform.T

    assert np.abs(mapped - landmarks).max() < 1e-9


def dot_image(
    landmarks: np.ndarray, shape: tuple[int, int], sigma: float
) -> np.ndarray:
    """A black image with a soft green dot centred on each landmark."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = np.zeros((*shape, 3), dtype=np.float64)
    for x, y in landmarks:
        distance = (cols - x) ** 2 + (rows - y) ** 2
        image[..., 1] += 255 * np.exp(-distance / (2 * sigma**2))
    return np.clip(image, 0, 255).astype(np.uint8)


def dot_centres(chip: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The brightness-weighted centre of the blob nearest each expected spot."""
    rows, cols = np.mgrid[0 : chip.shape[0], 0 : chip.shape[1]]
    green = chip[..., 1].astype(np.float64)
    centres = []
    for x, y in expected:
        near = (np.abs(cols - x) <= 6) & (np.abs(rows - y) <= 6)
        weight = green * near
        centres.append([(weight * cols).sum(), (weight * rows).sum()] / weight.sum())
    return np.array(centres)


# Image pixels per chip pixel: enlarging, about 1:1, and through two levels
# of the pyramid.
@pytest.mark.parametrize("scale", [0.8, 1.9, 4.5])
def test_dots_at_the_landmarks_land_where_the_template_says(scale: float) -> None:
    size = 160
    template = np.array(DLIB_CHIP_TEMPLATE.points)
    landmarks = similarity((template - 0.5) * size, scale, -12.0, (400.0, 400.0))
    # The dots are 1.5 chip pixels wide whatever the scale.
    image = dot_image(landmarks, (800, 800), sigma=1.5 * scale)

    chip = align_face(image, landmarks[None], size, DLIB_CHIP_TEMPLATE)[0]

    expected = template * size - 0.5
    assert np.abs(dot_centres(chip, expected) - expected).max() < 0.35


@pytest.mark.parametrize("degrees", [90, 30])
def test_rotating_the_photo_gives_the_same_chip(degrees: int) -> None:
    photo = astronaut()
    if degrees == 90:
        turned = np.ascontiguousarray(np.rot90(photo))
        # np.rot90 turns counter-clockwise: (x, y) -> (y, width - 1 - x).
        moved = np.c_[
            ASTRONAUT_LANDMARKS[:, 1], photo.shape[1] - 1 - ASTRONAUT_LANDMARKS[:, 0]
        ]
    else:
        turned, moved = rotated(photo, ASTRONAUT_LANDMARKS, degrees)

    upright = face_chips(photo, ASTRONAUT_LANDMARKS[None], 64)[0].astype(int)
    again = face_chips(turned, moved[None], 64)[0].astype(int)

    # A quarter turn resamples nothing; 30 degrees passes through Pillow's
    # bicubic rotation first, which softens edges by a few levels.
    limit = 1.0 if degrees == 90 else 4.0
    assert np.abs(upright - again).mean() < limit


def test_mtcnn_points_frame_the_chip_as_dlibs_own_points_do() -> None:
    size = 64
    ours = dlib_chip_transforms(ASTRONAUT_LANDMARKS[None], size)[0]
    dlibs = dlib_chip_transforms(
        ASTRONAUT_DLIB_POINTS[None], size, DLIB_5_POINT_TEMPLATE
    )[0]
    corners = np.array(
        [[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]]
    )

    # In image pixels per chip side; hand-read landmarks are good to a pixel
    # or two, about 2 % of this face's chip.
    error = np.abs(corners @ ours.T - corners @ dlibs.T).max() / (
        size * math.sqrt(np.linalg.det(dlibs[:, :2]))
    )
    assert error < 0.06


def test_chips_of_several_faces_come_in_one_batch() -> None:
    photo = astronaut()
    _, mirrored = flipped(photo, ASTRONAUT_LANDMARKS)
    both = np.stack([ASTRONAUT_LANDMARKS, mirrored + [3.0, 4.0]])

    batch = face_chips(photo, both, 32)

    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch[0], face_chips(photo, both[:1], 32)[0])
    assert face_chips(photo, np.zeros((0, 5, 2)), 32).shape == (0, 32, 32, 3)


def test_a_face_partly_outside_the_photo_is_padded_black() -> None:
    photo = astronaut()
    shifted = ASTRONAUT_LANDMARKS - [200.0, 0.0]

    chip = face_chips(photo, shifted[None], 64)[0]

    assert chip[:, :10].max() == 0 and chip[:, -10:].max() > 0


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        (np.zeros((1, 4, 2)), r"landmarks must have shape \(faces, 5, 2\)"),
        (np.full((1, 5, 2), np.nan), "landmarks must be finite"),
    ],
)
def test_bad_landmarks_are_refused(landmarks: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        face_chips(astronaut(), landmarks, 64)


def test_a_grey_image_is_refused() -> None:
    with pytest.raises(ValueError, match="RGB uint8 array"):
        face_chips(astronaut()[..., 0], ASTRONAUT_LANDMARKS[None], 64)
