"""Int8 variants of exported float32 models: static quantisation and its gate.

A variant is derived from the float32 ONNX file the exporter has just
written and checked. onnxruntime's ``quant_pre_process`` first infers every
tensor's shape (the quantiser needs them to place its nodes), then
``quantize_static`` rewrites the graph in QDQ form: int8 weights with one
scale per output channel, uint8 activations with one scale per tensor, the
activation ranges measured by running the float32 graph on calibration
images. onnxruntime fuses the QDQ pairs back into integer kernels
(``QLinearConv``, ``QLinearAdd``, ``QGemm``) when it loads the file.

Two choices come from measurements on this project's CPU (AMD EPYC, AVX2
without VNNI), on the evaluation photos:

- Weights use 7 of their 8 bits (``reduce_range``). Without VNNI, the
  uint8 x int8 kernels add pairs of products in 16 bits, which saturate
  with full-range weights; EfficientNet-Lite0 then loses 5 points of top-1
  instead of 1. Int8 activations avoid the saturation but have no fast
  kernels there (no faster than float32 on MobileNetV2).
- Classifiers take their activation ranges where the histogram of the
  quantised values diverges least from the float32 one (entropy, as
  TensorRT's calibrator does); min/max ranges, which outliers stretch, lose
  one more ImageNet image. FaceNet's min/max ranges already keep every
  verification decision, and are the quickest to compute.

Calibration images come from the project's own dependencies: the sample
photographs that ship inside scikit-image, with deterministic crops,
mirror images and reductions, and its 100 LFW face crops. They go through
the service's own preprocessing (``tests/test_quantized.py`` holds the two
to the same pixels). The evaluation photos are never used here: CI does not
have them, and ranges fitted to them would flatter the measurement.

The gate compares the variant with its float32 model rather than with
PyTorch: int8 cannot match to 1e-3, so it asks for the same decisions
(classifiers) or nearly the same direction (embeddings).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from PIL import Image

from export.parity import ParityError

logger = logging.getLogger(__name__)

SUFFIX = "-int8"

# scikit-image's sample photographs, in colour and in grey: the objects,
# animals and scenes ImageNet is made of, and textures, text and
# micrographs, so that no activation meets values outside its range.
COLOUR_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "logo",
)
GREY_PHOTOS = (
    "camera",
    "coins",
    "moon",
    "grass",
    "gravel",
    "brick",
    "clock",
    "page",
    "text",
    "cell",
)

# Face boxes the service's MTCNN finds in scikit-image's two portraits, as
# (x1, y1, x2, y2) pixels; FaceNet's chips are cut around them.
ASTRONAUT_FACE_BOX = (179.4, 60.5, 268.3, 174.5)
CAMERAMAN_FACE_BOX = (195.8, 117.8, 253.4, 196.2)
# The first 100 images of ``skimage.data.lfw_subset()`` are faces, 25x25
# grey crops from Labeled Faces in the Wild; the other 100 are not faces.
LFW_FACES = 100

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
PERCENTILE = 99.999


class GateError(ParityError):
    """The int8 variant does not decide as its float32 model does."""


# --- calibration images, prepared as the service prepares its inputs -------


def sample_photos() -> list[tuple[str, Image.Image]]:
    """scikit-image's sample photographs as RGB Pillow images, by name."""
    import skimage.data

    photos = []
    for name in (*COLOUR_PHOTOS, *GREY_PHOTOS):
        photos.append((name, _as_rgb(Image.fromarray(getattr(skimage.data, name)()))))
    left, right, _ = skimage.data.stereo_motorcycle()
    photos.append(("motorcycle_left", Image.fromarray(left)))
    photos.append(("motorcycle_right", Image.fromarray(right)))
    return photos


def _as_rgb(image: Image.Image) -> Image.Image:
    """RGB as the service converts uploads: transparency over white."""
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


def photo_views(photo: Image.Image) -> Iterator[Image.Image]:
    """Eight deterministic views of a photo: itself, its mirror image, its
    four corners and its centre at 60 % and 50 % of each side, and a copy
    reduced to a third (an upload smaller than the network's input)."""
    width, height = photo.size
    yield photo
    yield photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    corner_width, corner_height = int(width * 0.6), int(height * 0.6)
    for right, bottom in ((0, 0), (1, 0), (0, 1), (1, 1)):
        left = (width - corner_width) * right
        top = (height - corner_height) * bottom
        yield photo.crop((left, top, left + corner_width, top + corner_height))
    yield photo.crop(
        (width // 4, height // 4, width - width // 4, height - height // 4)
    )
    yield photo.resize((max(1, width // 3), max(1, height // 3)), Image.Resampling.BOX)


RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def classifier_input(image: Image.Image, preprocessing: dict[str, Any]) -> np.ndarray:
    """One image as a classifier's CHW input, by the manifest's recipe:
    the shorter side resized to ``resize``, the centred ``crop`` square cut
    in the same Pillow call, then (pixel - mean) / std written as the
    service writes it, pixel * (1 / std) + (-mean / std)."""
    crop, resize = int(preprocessing["crop"]), int(preprocessing["resize"])
    scale = np.float32(1.0) / np.asarray(preprocessing["std"], dtype=np.float32)
    offset = -np.asarray(preprocessing["mean"], dtype=np.float32) * scale
    width, height = image.size
    side = min(width, height) * crop / resize
    left, top = (width - side) / 2, (height - side) / 2
    square = image.resize(
        (crop, crop),
        RESAMPLING[preprocessing["interpolation"]],
        box=(left, top, left + side, top + side),
    )
    pixels = np.asarray(square, dtype=np.float32) * scale + offset
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def classifier_calibration(preprocessing: dict[str, Any]) -> np.ndarray:
    """Every view of every sample photo, as the classifier's input batch."""
    return np.stack(
        [
            classifier_input(view, preprocessing)
            for _, photo in sample_photos()
            for view in photo_views(photo)
        ]
    )


def margin_chip(
    image: Image.Image,
    box: tuple[float, float, float, float],
    size: int,
    margin: float,
) -> np.ndarray:
    """The square chip FaceNet reads: ``box`` grown by ``margin`` of its
    size, clipped to the image, resized to ``size`` without keeping the
    aspect ratio, as uint8 HWC."""
    x1, y1, x2, y2 = box
    grow_x, grow_y = (x2 - x1) * margin / 2, (y2 - y1) * margin / 2
    grown = (
        max(0.0, x1 - grow_x),
        max(0.0, y1 - grow_y),
        min(float(image.width), x2 + grow_x),
        min(float(image.height), y2 + grow_y),
    )
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=grown))


def normalise_chips(chips: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """(N, size, size, 3) uint8 chips as NCHW float32, as the service does."""
    scale = np.float32(1.0) / np.asarray(preprocessing["std"], dtype=np.float32)
    offset = -np.asarray(preprocessing["mean"], dtype=np.float32) * scale
    pixels = chips.astype(np.float32) * scale + offset
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def _jittered_boxes(
    box: tuple[float, float, float, float],
) -> Iterator[tuple[float, float, float, float]]:
    """The box moved by a tenth of its size each way and scaled by 0.9, 1
    and 1.2: the spread of boxes MTCNN gives one face across photos."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    for shift_x in (-0.1, 0.0, 0.1):
        for shift_y in (-0.1, 0.0, 0.1):
            for scale in (0.9, 1.0, 1.2):
                centre_x = (x1 + x2) / 2 + shift_x * width
                centre_y = (y1 + y2) / 2 + shift_y * height
                half_width, half_height = width * scale / 2, height * scale / 2
                yield (
                    centre_x - half_width,
                    centre_y - half_height,
                    centre_x + half_width,
                    centre_y + half_height,
                )


def face_calibration(preprocessing: dict[str, Any]) -> np.ndarray:
    """FaceNet chips: the 100 LFW faces (each crop is a whole face, so the
    chip is the whole crop), and 27 boxes around each of the two portraits'
    faces, with their mirror images."""
    import skimage.data

    size, margin = int(preprocessing["size"]), float(preprocessing["margin"])
    chips = []
    for face in skimage.data.lfw_subset()[:LFW_FACES]:
        grey = Image.fromarray(np.round(face * 255).astype(np.uint8)).convert("RGB")
        chips.append(margin_chip(grey, (0, 0, grey.width, grey.height), size, 0.0))
    portraits = (
        (Image.fromarray(skimage.data.astronaut()), ASTRONAUT_FACE_BOX),
        (Image.fromarray(skimage.data.camera()).convert("RGB"), CAMERAMAN_FACE_BOX),
    )
    for portrait, face_box in portraits:
        for box in _jittered_boxes(face_box):
            chip = margin_chip(portrait, box, size, margin)
            chips.extend([chip, chip[:, ::-1]])
    return normalise_chips(np.stack(chips), preprocessing)


# --- quantisation -----------------------------------------------------------


class _Images(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration images one at a time, from the slice the quantiser
    asks for (see ``CALIBRATION_STRIDE``)."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self.input_name = input_name
        self.images = images
        self.set_range(0, len(images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(range(start_index, min(end_index, len(self.images))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        index = next(self._next, None)
        if index is None:
            return None
        return {self.input_name: self.images[index : index + 1]}


# The histogram calibrators keep every activation of every image they are
# given until they bin them: 65 MB per EfficientNet image, 11 GB for all
# 168. Given this many images at a time, they bin as they go (the option's
# name says MinMax, but onnxruntime applies it to every method).
CALIBRATION_STRIDE = 8


def quantize(
    float_path: Path,
    int8_path: Path,
    calibration: np.ndarray,
    method: str,
) -> None:
    """Write the int8 QDQ variant of ``float_path`` to ``int8_path``."""
    input_name = _session(float_path).get_inputs()[0].name
    # The strides must divide the images evenly.
    usable = len(calibration) - len(calibration) % CALIBRATION_STRIDE
    with tempfile.TemporaryDirectory(prefix="quantize-") as work:
        inferred = Path(work) / "inferred.onnx"
        quant_pre_process(str(float_path), str(inferred))
        # The histogram calibrators print their progress once per stride.
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter):
            quantize_static(
                str(inferred),
                str(int8_path),
                _Images(input_name, calibration[:usable]),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=METHODS[method],
                extra_options={
                    "CalibPercentile": PERCENTILE,
                    "CalibStridedMinMax": CALIBRATION_STRIDE,
                },
            )
        logger.debug("%s", chatter.getvalue())


def describe_method(method: str) -> str:
    if method == "percentile":
        return f"percentile ({PERCENTILE} %)"
    return method


# --- the gate ---------------------------------------------------------------


@dataclass(frozen=True)
class Top1Gate:
    """Classifiers: where float32 is sure of its class, int8 must mostly
    pick the same one.

    Photos a classifier cannot name (textures, text, micrographs) get flat
    probabilities whose order any rounding changes, so only the views
    where float32 gives its class at least ``min_confidence`` count. There
    the variants kept here agree on about 95 %; a variant whose kernels
    saturate (full-range weights without VNNI) agrees on about 85 %, and
    one with a wrong scale on far fewer.
    """

    min_confidence: float = 0.5
    min_agreement: float = 0.9

    def check(self, float_out: np.ndarray, int8_out: np.ndarray) -> dict[str, Any]:
        probabilities = _softmax(float_out)
        confident = probabilities.max(axis=1) >= self.min_confidence
        same = float_out.argmax(axis=1) == int8_out.argmax(axis=1)
        agreement = float(same[confident].mean()) if confident.any() else 0.0
        report = {
            "reference": "float32",
            "images": len(float_out),
            "top1_agreement_all": float(same.mean()),
            "confident_images": int(confident.sum()),
            "min_confidence": self.min_confidence,
            "top1_agreement": agreement,
            "min_top1_agreement": self.min_agreement,
        }
        if not confident.any() or agreement < self.min_agreement:
            raise GateError(
                f"top-1 agreement with float32 is {agreement:.1%} on the "
                f"{int(confident.sum())} images float32 is sure of (at least "
                f"{self.min_agreement:.0%} needed)"
            )
        return report


@dataclass(frozen=True)
class EmbeddingGate:
    """Embedders: every int8 embedding must point where the float32 one
    does. The variant kept here stays above 0.996 on every gate image; a
    broken one falls far below. A cosine of 0.99 lets a unit embedding move
    by 0.14, about the gap between the service's threshold and the nearest
    evaluation pairs, so this gate only catches a broken variant: whether
    decisions change is measured on the evaluation pairs
    (``bench/quantized_faces.py``)."""

    min_cosine: float = 0.99

    def check(self, float_out: np.ndarray, int8_out: np.ndarray) -> dict[str, Any]:
        cosines = np.sum(_unit(float_out) * _unit(int8_out), axis=1)
        lowest = float(cosines.min())
        report = {
            "reference": "float32",
            "images": len(float_out),
            "min_cosine": lowest,
            "median_cosine": float(np.median(cosines)),
            "min_cosine_required": self.min_cosine,
        }
        if lowest < self.min_cosine:
            raise GateError(
                f"cosine similarity with float32 falls to {lowest:.4f} "
                f"(at least {self.min_cosine} needed)"
            )
        return report


Gate = Top1Gate | EmbeddingGate


def check_gate(
    gate: Gate, float_path: Path, int8_path: Path, images: np.ndarray
) -> dict[str, Any]:
    """Run both graphs on ``images`` and apply ``gate``; raises GateError."""
    float_out = _run(float_path, images)
    int8_out = _run(int8_path, images)
    try:
        return gate.check(float_out, int8_out)
    except GateError as error:
        name = int8_path.name.removesuffix(".partial")
        raise GateError(f"{name}: {error}") from None


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    session = _session(path)
    name = session.get_inputs()[0].name
    # Batches of 16 keep memory flat for FaceNet's 160x160 inputs.
    outputs = [
        session.run(None, {name: images[i : i + 16]})[0]
        for i in range(0, len(images), 16)
    ]
    return np.concatenate(outputs)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


def _unit(vectors: np.ndarray) -> np.ndarray:
    result: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return result


# --- what the catalog lists -------------------------------------------------


@dataclass(frozen=True)
class Quantization:
    """How one float32 model becomes its int8 variant, and how the variant
    is judged. ``offered`` is False for a variant measured to lose too much
    accuracy: it is built only on request, for measuring it again."""

    model: str
    method: str
    calibration: Callable[[dict[str, Any]], np.ndarray]
    calibration_set: str
    gate: Gate
    # The images the gate compares on; default: the calibration images.
    gate_images: Callable[[dict[str, Any]], np.ndarray] | None = None
    offered: bool = True

    @property
    def name(self) -> str:
        return self.model + SUFFIX
