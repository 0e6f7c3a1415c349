"""MTCNN: exported networks against PyTorch, the numpy cascade against
facenet-pytorch's own implementation, and detections on real photos.

The networks are exported from the pinned weights into a temporary folder
once per session. The reference is facenet-pytorch's ``detect_face`` run
with facenet-pytorch's own network classes, imported from the unpacked
wheel (never installed). It needs torchvision only for ``batched_nms``,
which is replaced by a pure-PyTorch equivalent of torchvision's.
"""

from __future__ import annotations

import importlib
import sys
import types
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from export.artifacts import _download_wheel, default_cache_dir, fetch
from export.nets.mtcnn import (
    ONET_WEIGHTS,
    OUTPUT_NAMES,
    PNET_WEIGHTS,
    RNET_WEIGHTS,
    load_onet,
    load_pnet,
    load_rnet,
)
from service.vision import mtcnn
from service.vision.mtcnn import MTCNN, Face, FloatArray, Network
from tests.conftest import photo

STAGES = ("pnet", "rnet", "onet")
WEIGHTS = {"pnet": PNET_WEIGHTS, "rnet": RNET_WEIGHTS, "onet": ONET_WEIGHTS}
LOADERS = {"pnet": load_pnet, "rnet": load_rnet, "onet": load_onet}
THRESHOLDS = [0.6, 0.7, 0.7]

# ONNX against PyTorch on the same float32 input: only the order of
# floating-point sums differs, which moves outputs of magnitude ~1 by about
# 1e-6. 1e-4 leaves room for other CPUs; a wrong weight or layout moves
# them by more than 0.01.
NETWORK_TOLERANCE = 1e-4

# Fed facenet-pytorch's own resampling, the cascade repeats its arithmetic
# in float32 step for step; what remains is ONNX-vs-PyTorch noise of about
# 1e-4 pixels.
SAME_PIXELS_TOLERANCE = 0.01

# With the cascade's own Pillow box-filter resampling, P-Net proposes
# slightly different windows and the later networks see slightly different
# crops. Measured on the astronaut scaled from 0.25 to 1.4, rotated by up
# to 12 degrees and mirrored, box edges moved by up to 4.0 pixels (4.4 % of
# an 88-pixel face; 2.1 pixels on a 22-pixel one) and landmarks by up to
# 1.9 pixels. Hence a few pixels plus a share of the face's side. The exact
# arithmetic is pinned by the same-pixels test above; this one guards the
# resampling the service really uses.
BOX_TOLERANCE_PIXELS = 2.0
BOX_TOLERANCE_SHARE = 0.04
LANDMARK_TOLERANCE_PIXELS = 1.0
LANDMARK_TOLERANCE_SHARE = 0.02


def astronaut() -> np.ndarray:
    return photo("astronaut")


def resized(image: np.ndarray, scale: float) -> np.ndarray:
    height, width = image.shape[:2]
    size = (round(width * scale), round(height * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def two_astronauts() -> np.ndarray:
    """The astronaut beside her mirror image."""
    image = astronaut()
    return np.concatenate([image, image[:, ::-1]], axis=1)


def three_astronauts() -> np.ndarray:
    """Three faces of different sizes on a mid-grey canvas."""
    canvas = np.full((384, 760, 3), 128, dtype=np.uint8)
    placements = [
        (resized(astronaut(), 0.7), (10, 10)),
        (resized(astronaut()[:, ::-1], 0.5), (380, 40)),
        (resized(astronaut(), 0.35), (560, 200)),
    ]
    for image, (left, top) in placements:
        height, width = image.shape[:2]
        canvas[top : top + height, left : left + width] = image
    return canvas


COMPARED_IMAGES = {
    "astronaut": astronaut,
    "three_astronauts": three_astronauts,
    "two_astronauts": two_astronauts,
}


# --- networks ---------------------------------------------------------------


@pytest.fixture(scope="session")
def torch_nets() -> dict[str, torch.nn.Module]:
    cache = default_cache_dir()
    return {stage: LOADERS[stage](fetch(WEIGHTS[stage], cache)) for stage in STAGES}


@pytest.fixture(scope="session")
def onnx_paths(models_dir: Path) -> dict[str, Path]:
    """The graphs ``python -m export`` wrote for the service."""
    return {stage: models_dir / f"mtcnn-{stage}.onnx" for stage in STAGES}


@pytest.fixture(scope="session")
def onnx_nets(onnx_paths: dict[str, Path]) -> dict[str, Network]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    nets: dict[str, Network] = {}
    for stage, path in onnx_paths.items():
        session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        nets[stage] = _session_network(session)
    return nets


def _session_network(session: Any) -> Network:
    def run(batch: FloatArray) -> Sequence[FloatArray]:
        outputs: list[FloatArray] = session.run(None, {"image": batch})
        return outputs

    return run


def _torch_network(module: torch.nn.Module) -> Network:
    def run(batch: FloatArray) -> Sequence[FloatArray]:
        with torch.no_grad():
            return [output.numpy() for output in module(torch.from_numpy(batch))]

    return run


@pytest.fixture(scope="session")
def detector(onnx_nets: dict[str, Network]) -> MTCNN:
    return MTCNN(onnx_nets["pnet"], onnx_nets["rnet"], onnx_nets["onet"])


def network_inputs(stage: str) -> list[FloatArray]:
    """Real photo inputs: P-Net at two sizes (one batch of two photos each),
    R-Net and O-Net on crops of the face, of its surroundings and of coffee.
    """
    coffee = Image.fromarray(photo("coffee")).convert("RGB")
    face = Image.fromarray(astronaut())
    if stage == "pnet":
        return [
            mtcnn.normalise([image.resize(size) for image in (face, coffee)])
            for size in ((97, 131), (160, 120))
        ]
    size = mtcnn.RNET_INPUT_SIZE if stage == "rnet" else mtcnn.ONET_INPUT_SIZE
    boxes = np.array(
        [
            [180, 60, 270, 160],
            [170, 50, 280, 170],
            [0, 0, 100, 100],
            [300, 300, 480, 480],
        ],
        dtype=np.float32,
    )
    return [
        np.concatenate(
            [mtcnn.crop_batch(face, boxes, size), mtcnn.crop_batch(coffee, boxes, size)]
        )
    ]


@pytest.mark.parametrize("stage", STAGES)
def test_onnx_matches_pytorch_on_photo_crops(
    stage: str, torch_nets: dict[str, torch.nn.Module], onnx_nets: dict[str, Network]
) -> None:
    for batch in network_inputs(stage):
        expected = _torch_network(torch_nets[stage])(batch)
        found = onnx_nets[stage](batch)
        single = [onnx_nets[stage](batch[i : i + 1]) for i in range(len(batch))]

        assert len(found) == len(OUTPUT_NAMES[stage])
        for index, (want, got) in enumerate(zip(expected, found, strict=True)):
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= NETWORK_TOLERANCE
            alone = np.concatenate([outputs[index] for outputs in single])
            assert np.abs(alone - want).max() <= NETWORK_TOLERANCE


def test_networks_tell_the_face_crop_from_the_others(
    onnx_nets: dict[str, Network],
) -> None:
    for stage in ("rnet", "onet"):
        probability = onnx_nets[stage](network_inputs(stage)[0])[-1]

        assert probability[0] > 0.9
        assert (probability[2:] < 0.5).all()


def test_graphs_have_dynamic_axes_and_no_pad(onnx_paths: dict[str, Path]) -> None:
    for stage, path in onnx_paths.items():
        graph = onnx.load(str(path)).graph
        dims = graph.input[0].type.tensor_type.shape.dim
        dynamic = [bool(dim.dim_param) for dim in dims]

        assert [value.name for value in graph.input] == ["image"]
        assert [value.name for value in graph.output] == OUTPUT_NAMES[stage]
        assert "Pad" not in {node.op_type for node in graph.node}
        if stage == "pnet":
            assert dynamic == [True, False, True, True]
        else:
            assert dynamic == [True, False, False, False]


# --- the cascade on photos --------------------------------------------------


def assert_plausible_face(face: Face) -> None:
    x1, y1, x2, y2 = face.box
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks

    assert ((face.landmarks >= (x1, y1)) & (face.landmarks <= (x2, y2))).all()
    assert left_eye[0] < nose[0] < right_eye[0]
    assert mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1]
    assert nose[1] < min(mouth_left[1], mouth_right[1])
    assert face.score > 0.9


def test_finds_the_astronaut(detector: MTCNN) -> None:
    faces = detector.detect(astronaut())

    assert len(faces) == 1
    assert_plausible_face(faces[0])
    # Her face lies around (225, 120) in the photo.
    x1, y1, x2, y2 = faces[0].box
    assert x1 < 225 < x2 and y1 < 120 < y2


def test_finds_both_astronauts_largest_first(detector: MTCNN) -> None:
    image = two_astronauts()
    width = image.shape[1]

    faces = detector.detect(Image.fromarray(image))

    assert len(faces) == 2
    for face in faces:
        assert_plausible_face(face)
    assert faces[0].area >= faces[1].area
    centres = sorted((face.box[0] + face.box[2]) / 2 for face in faces)
    # The mirrored face sits where the mirror puts the original one.
    assert centres[1] == pytest.approx(width - centres[0], abs=4)


def test_faces_are_ordered_by_size(detector: MTCNN) -> None:
    faces = detector.detect(three_astronauts())

    assert len(faces) == 3
    sides = [face.box[2] - face.box[0] for face in faces]
    assert sides == sorted(sides, reverse=True)
    assert sides[0] / sides[2] == pytest.approx(0.7 / 0.35, rel=0.1)


@pytest.mark.parametrize(
    "image",
    [photo("coffee"), np.full((300, 400, 3), 128, dtype=np.uint8)],
    ids=["coffee", "grey"],
)
def test_finds_no_face_where_there_is_none(detector: MTCNN, image: np.ndarray) -> None:
    assert detector.detect(image) == []


def test_image_smaller_than_the_smallest_face_has_no_faces(detector: MTCNN) -> None:
    assert detector.detect(np.zeros((15, 40, 3), dtype=np.uint8)) == []


def portrait_with_bystander(face_scale: float, bystander_scale: float) -> np.ndarray:
    """An 800x600 photo: the astronaut at one size, a mirrored bystander at
    another, on a textured background (the coffee photo)."""
    canvas = np.asarray(
        Image.fromarray(photo("coffee")).resize((800, 600), Image.Resampling.BILINEAR)
    ).copy()
    subject = resized(astronaut()[:260, 100:360], face_scale)
    bystander = resized(astronaut()[:260, 100:360][:, ::-1], bystander_scale)
    for image, (left, top) in ((subject, (20, 20)), (bystander, (560, 330))):
        height, width = image.shape[:2]
        canvas[top : top + height, left : left + width] = image[
            : 600 - top, : 800 - left
        ]
    return canvas


SEARCHED_IMAGES = {
    "astronaut": astronaut,
    "two_astronauts": two_astronauts,
    "three_astronauts": three_astronauts,
    **{
        f"portrait_{subject}_{bystander}": (
            lambda subject=subject, bystander=bystander: portrait_with_bystander(
                subject, bystander
            )
        )
        for subject, bystander in ((2.0, 0.3), (1.2, 0.9), (0.5, 0.25), (0.3, 0.6))
    },
}


def overlap(a: Face, b: Face) -> float:
    ax1, ay1, ax2, ay2 = a.box
    bx1, by1, bx2, by2 = b.box
    width = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    height = max(0.0, min(ay2, by2) - max(ay1, by1))
    intersection = width * height
    return intersection / (a.area + b.area - intersection)


@pytest.mark.parametrize("name", sorted(SEARCHED_IMAGES))
@pytest.mark.parametrize("wanted", [1, 2])
def test_largest_first_search_finds_the_largest_faces(
    detector: MTCNN, name: str, wanted: int
) -> None:
    image = Image.fromarray(SEARCHED_IMAGES[name]())
    everything = mtcnn.largest(detector.detect(image), image.size, wanted)

    early = detector.detect(image, max_faces=wanted)

    assert len(early) == len(everything)
    for found, reference in zip(early, everything, strict=True):
        # The same face; P-Net's candidates from finer levels, which the
        # full search also merges, may move its box by a few pixels.
        assert overlap(found, reference) > 0.85
        assert found.score == pytest.approx(reference.score, abs=0.05)


def test_largest_first_search_skips_the_fine_levels(
    onnx_nets: dict[str, Network],
) -> None:
    pixels = {"seen": 0}

    def counting_pnet(batch: FloatArray) -> Sequence[FloatArray]:
        pixels["seen"] += batch.shape[2] * batch.shape[3]
        return onnx_nets["pnet"](batch)

    detector = MTCNN(counting_pnet, onnx_nets["rnet"], onnx_nets["onet"])
    image = Image.fromarray(portrait_with_bystander(2.0, 0.3))
    detector.detect(image)
    full = pixels["seen"]
    pixels["seen"] = 0

    faces = detector.detect(image, max_faces=1)

    assert len(faces) == 1
    # The subject's face is over 200 pixels wide; the levels that look for
    # faces a fifth of that size or smaller hold most of the pyramid.
    assert pixels["seen"] < 0.2 * full


def test_finds_a_face_cut_by_the_border(detector: MTCNN) -> None:
    # The face starts near x = 180; cutting there leaves most of it.
    image = astronaut()[30:220, 190:330]

    faces = detector.detect(image)

    assert len(faces) == 1
    assert faces[0].box[0] < 5


# --- against facenet-pytorch --------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """facenet-pytorch's cascade functions and networks."""

    detect_face: Callable[..., tuple[np.ndarray, np.ndarray]]
    imresample: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
    pad: Callable[[torch.Tensor, int, int], tuple[np.ndarray, ...]]
    window_boxes: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    nets: tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]


def torchvision_batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float
) -> torch.Tensor:
    """torchvision's batched NMS: continuous areas, IoU above ``threshold``
    suppressed, groups kept apart by shifting each group's boxes away."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    shifted = boxes + (idxs.to(boxes) * (boxes.max() + 1))[:, None]
    x1, y1, x2, y2 = shifted.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True)
    kept = []
    while order.numel():
        best, rest = order[0], order[1:]
        kept.append(best)
        width = torch.minimum(x2[best], x2[rest]) - torch.maximum(x1[best], x1[rest])
        height = torch.minimum(y2[best], y2[rest]) - torch.maximum(y1[best], y1[rest])
        intersection = width.clamp(min=0) * height.clamp(min=0)
        iou = intersection / (areas[best] + areas[rest] - intersection)
        order = rest[iou <= threshold]
    return torch.stack(kept)


def _stand_in_modules(package_root: Path) -> dict[str, types.ModuleType]:
    """torchvision as far as detect_face uses it, and facenet_pytorch's
    packages without their ``__init__`` (which imports training tools)."""
    modules = {
        name: types.ModuleType(name)
        for name in (
            "torchvision",
            "torchvision.ops",
            "torchvision.ops.boxes",
            "torchvision.transforms",
            "torchvision.transforms.functional",
        )
    }
    modules["torchvision.ops.boxes"].batched_nms = torchvision_batched_nms
    for name, folder in (
        ("facenet_pytorch", package_root),
        ("facenet_pytorch.models", package_root / "models"),
    ):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        modules[name] = package
    return modules


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    # The wheel the weights were pinned from, from the exporter's cache.
    wheel = _download_wheel(PNET_WEIGHTS, default_cache_dir() / "wheels")
    unpacked = tmp_path_factory.mktemp("facenet_pytorch")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)

    # The stand-ins live in sys.modules only while facenet-pytorch imports:
    # the ONNX exporter looks for the real torchvision.
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as patch:
        for name, module in _stand_in_modules(unpacked / "facenet_pytorch").items():
            patch.setitem(sys.modules, name, module)
        networks = importlib.import_module("facenet_pytorch.models.mtcnn")
        cascade = importlib.import_module("facenet_pytorch.models.utils.detect_face")
    for name in set(sys.modules) - before:
        del sys.modules[name]

    # The classes load the weights shipped beside them in the wheel.
    nets = (networks.PNet().eval(), networks.RNet().eval(), networks.ONet().eval())
    return Reference(
        cascade.detect_face,
        cascade.imresample,
        cascade.pad,
        cascade.generateBoundingBox,
        nets,
    )


@dataclass(frozen=True)
class ReferenceFaces:
    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


@pytest.fixture(scope="session")
def reference_faces(reference: Reference) -> dict[str, ReferenceFaces]:
    """facenet-pytorch's detections on each compared image."""
    results = {}
    for name, make_image in COMPARED_IMAGES.items():
        with torch.no_grad():
            boxes, points = reference.detect_face(
                make_image(), 20, *reference.nets, THRESHOLDS, 0.709, "cpu"
            )
        found = np.asarray(boxes[0], dtype=np.float64).reshape(-1, 5)
        landmarks = np.asarray(points[0], dtype=np.float64).reshape(-1, 5, 2)
        # facenet-pytorch reports one-based x1, y1 (see the cascade's module
        # docstring); in continuous coordinates the box starts one earlier.
        corners = found[:, :4] - (1, 1, 0, 0)
        results[name] = ReferenceFaces(corners, found[:, 4], landmarks)
    return results


def facenet_resampling(
    reference: Reference,
) -> tuple[
    Callable[[Image.Image, tuple[int, int]], FloatArray],
    Callable[[Image.Image, FloatArray, int], FloatArray],
]:
    """Pyramid and crop functions that resample as facenet-pytorch does:
    area interpolation in float, crops clipped to the image."""

    def as_tensor(image: Image.Image) -> torch.Tensor:
        pixels = np.array(image, dtype=np.float32)
        return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)

    def normalised(pixels: torch.Tensor) -> FloatArray:
        array: FloatArray = ((pixels - 127.5) * 0.0078125).numpy()
        return array

    def pyramid_level(image: Image.Image, size: tuple[int, int]) -> FloatArray:
        width, height = size
        return normalised(reference.imresample(as_tensor(image), (height, width)))

    def crop_batch(image: Image.Image, boxes: FloatArray, size: int) -> FloatArray:
        pixels = as_tensor(image)
        width, height = image.size
        top, bottom, left, right = reference.pad(torch.from_numpy(boxes), width, height)
        crops = [
            reference.imresample(pixels[:, :, y - 1 : ey, x - 1 : ex], (size, size))
            for y, ey, x, ex in zip(top, bottom, left, right, strict=True)
        ]
        return normalised(torch.cat(crops))

    return pyramid_level, crop_batch


def paired(faces: list[Face], expected: ReferenceFaces) -> list[tuple[Face, int]]:
    """Each face with the index of the reference face nearest to it.

    Pairing by position rather than by order: two faces of nearly equal
    size may be listed either way round.
    """
    assert len(faces) == len(expected.boxes)
    centres = (expected.boxes[:, :2] + expected.boxes[:, 2:]) / 2
    pairs = []
    for face in faces:
        centre = (np.array(face.box[:2]) + np.array(face.box[2:])) / 2
        pairs.append((face, int(np.argmin(np.linalg.norm(centres - centre, axis=1)))))
    assert sorted(index for _, index in pairs) == list(range(len(faces)))
    return pairs


@pytest.mark.parametrize("name", sorted(COMPARED_IMAGES))
def test_cascade_repeats_facenet_pytorch_on_the_same_pixels(
    name: str,
    detector: MTCNN,
    reference: Reference,
    reference_faces: dict[str, ReferenceFaces],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pyramid_level, crop_batch = facenet_resampling(reference)
    monkeypatch.setattr(mtcnn, "pyramid_level", pyramid_level)
    monkeypatch.setattr(mtcnn, "crop_batch", crop_batch)

    expected = reference_faces[name]

    faces = detector.detect(COMPARED_IMAGES[name]())

    for face, index in paired(faces, expected):
        box_error = np.abs(np.array(face.box) - expected.boxes[index]).max()
        landmark_error = np.abs(face.landmarks - expected.landmarks[index]).max()
        assert box_error <= SAME_PIXELS_TOLERANCE
        assert landmark_error <= SAME_PIXELS_TOLERANCE
        assert face.score == pytest.approx(expected.scores[index], abs=1e-4)


@pytest.mark.parametrize("name", sorted(COMPARED_IMAGES))
def test_cascade_agrees_with_facenet_pytorch(
    name: str, detector: MTCNN, reference_faces: dict[str, ReferenceFaces]
) -> None:
    expected = reference_faces[name]

    faces = detector.detect(COMPARED_IMAGES[name]())

    for face, index in paired(faces, expected):
        side = expected.boxes[index, 2] - expected.boxes[index, 0]
        box_error = np.abs(np.array(face.box) - expected.boxes[index]).max()
        landmark_error = np.abs(face.landmarks - expected.landmarks[index]).max()
        assert box_error <= BOX_TOLERANCE_PIXELS + BOX_TOLERANCE_SHARE * side
        assert (
            landmark_error
            <= LANDMARK_TOLERANCE_PIXELS + LANDMARK_TOLERANCE_SHARE * side
        )


def test_torch_and_onnx_networks_give_the_same_faces(
    detector: MTCNN, torch_nets: dict[str, torch.nn.Module]
) -> None:
    on_torch = MTCNN(*(_torch_network(torch_nets[stage]) for stage in STAGES))
    image = resized(two_astronauts(), 0.5)

    expected = on_torch.detect(image)
    faces = detector.detect(image)

    assert len(faces) == len(expected) == 2
    for face, want in zip(faces, expected, strict=True):
        assert face.box == pytest.approx(want.box, abs=0.01)
        np.testing.assert_allclose(face.landmarks, want.landmarks, atol=0.01)


def test_proposal_windows_match_facenet_pytorch(
    reference: Reference, onnx_nets: dict[str, Network]
) -> None:
    # At scale 0.6 many window edges fall exactly on a pixel boundary in
    # exact arithmetic, where float32 and float64 division round apart.
    scale = 0.6
    image = Image.fromarray(astronaut())
    level = mtcnn.pyramid_level(image, (308, 308))
    regression, probability = onnx_nets["pnet"](level)

    windows = mtcnn.window_boxes(regression[0], probability[0], scale, 0.0)
    expected, _ = reference.window_boxes(
        torch.from_numpy(regression), torch.from_numpy(probability), scale, 0.0
    )

    np.testing.assert_array_equal(windows, expected.numpy())


@pytest.mark.parametrize(
    ("second", "mode", "survives"),
    [
        # Continuous areas: IoU 50 / 150 = 0.33 keeps the second box;
        # counting pixels inclusively would give 66 / 176 = 0.375.
        ((5, 0, 15, 10), "union", True),
        # A wider overlap, 60 / 140 = 0.43, drops it either way.
        ((4, 0, 14, 10), "union", False),
        # Inclusive pixels: 50 / 100 = 0.5 drops it; continuous areas would
        # give 36 / 81 = 0.44.
        ((5, 0, 14, 9), "min", False),
    ],
)
def test_overlap_conventions(
    second: tuple[int, int, int, int], mode: mtcnn.OverlapMode, survives: bool
) -> None:
    first = (0, 0, 10, 10) if mode == "union" else (0, 0, 9, 9)
    threshold = 0.35 if mode == "union" else 0.45
    boxes = np.array([first, second], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)

    kept = mtcnn.nms(boxes, scores, threshold, mode)

    assert kept.tolist() == ([0, 1] if survives else [0])
