"""MTCNN face detection: the three-network cascade in numpy.

MTCNN (Zhang et al., 2016) proposes faces with P-Net over an image pyramid,
then rescores and refines them with R-Net on 24x24 crops and O-Net on 48x48
crops, which also places five landmarks. This module is the cascade around
the networks; the networks themselves are plain callables that take a
float32 NCHW batch and return their outputs as numpy arrays, so the same
code runs on onnxruntime sessions in the service and on PyTorch modules in
the tests. Their outputs, in order:

- P-Net: box regression [N, 4, H', W'], face probability [N, H', W']
- R-Net: box regression [N, 4], face probability [N]
- O-Net: box regression [N, 4], landmarks [N, 10], face probability [N]

Each network sees RGB pixels as (pixel - 127.5) * 0.0078125. The box
arithmetic follows the published algorithm step for step as facenet-pytorch
implements it, in float32 like its tensors, so that the cascade reproduces
that implementation whenever both see the same resampled pixels. That
includes the one-based pixel indices inherited from the original MATLAB
code: a box (x1, y1, x2, y2) there spans pixel columns x1 - 1 to x2 - 1
inclusive. Results are returned in continuous image coordinates instead,
where pixel column i covers [i, i + 1), so a returned box is
(x1 - 1, y1 - 1, x2, y2) and boxes and landmarks share one frame.

Two choices differ from facenet-pytorch. Pyramid levels and crops are
resampled by Pillow's box filter on the uint8 image, about ten times
faster than facenet-pytorch's area averaging done in numpy; MTCNN's boxes
are sensitive to resampling, so the two implementations' boxes differ by
up to about 4 % of the face's side. Crops that reach past the image border
are padded with black, as in the original MTCNN, rather than squeezed to
the part inside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.timing import PREPROCESS, stage

FloatArray = npt.NDArray[np.float32]
Network = Callable[[FloatArray], Sequence[FloatArray]]
OverlapMode = Literal["union", "min"]

PIXEL_MEAN = np.float32(127.5)
PIXEL_SCALE = np.float32(0.0078125)

# P-Net is a 12x12 window classifier applied with stride 2.
PNET_WINDOW = 12
PNET_STRIDE = 2
# A final box is at most this many times P-Net's window at the level that
# proposed it (see _could_be).
LARGEST_BOX_PER_WINDOW = 2.0
RNET_INPUT_SIZE = 24
ONET_INPUT_SIZE = 48

DEFAULT_MIN_FACE_SIZE = 20.0
DEFAULT_SCALE_FACTOR = 0.709
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)

# Overlap above which the weaker of two boxes is dropped, per step.
NMS_WITHIN_SCALE = 0.5
NMS_ACROSS_SCALES = 0.7
NMS_AFTER_RNET = 0.7
NMS_AFTER_ONET = 0.7

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face in continuous image pixel coordinates.

    ``landmarks`` is a [5, 2] array of (x, y) in the order of
    ``LANDMARK_NAMES``, where left and right are as seen in the image.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: npt.NDArray[np.float64]

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return (x2 - x1) * (y2 - y1)


class MTCNN:
    """The MTCNN cascade over three network callables.

    ``min_face_size`` is the side in pixels of the smallest face looked
    for; each pyramid level shrinks the image by ``scale_factor``;
    ``thresholds`` are the face probabilities P-Net, R-Net and O-Net each
    require.
    """

    def __init__(
        self,
        pnet: Network,
        rnet: Network,
        onet: Network,
        min_face_size: float = DEFAULT_MIN_FACE_SIZE,
        scale_factor: float = DEFAULT_SCALE_FACTOR,
        thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS,
    ) -> None:
        if min_face_size <= 0:
            raise ValueError(f"min_face_size must be positive, not {min_face_size}")
        if not 0 < scale_factor < 1:
            raise ValueError(f"scale_factor must lie in (0, 1), not {scale_factor}")
        self.pnet = pnet
        self.rnet = rnet
        self.onet = onet
        self.min_face_size = min_face_size
        self.scale_factor = scale_factor
        self.thresholds = thresholds

    def detect(
        self,
        image: Image.Image | npt.NDArray[np.uint8],
        max_faces: int | None = None,
    ) -> list[Face]:
        """Return the faces in an RGB image, largest first.

        With ``max_faces``, only that many of the largest faces are wanted
        (by visible area, see ``largest``), and the search goes from the
        coarsest pyramid level (largest faces) to the finest, stopping as
        soon as the faces already confirmed are larger than any the
        remaining levels could yield (``_could_be``). The fine levels hold
        most of the pixels, so for a photo of one or two people this skips
        most of P-Net's work.
        """
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if image.mode != "RGB":
            image = image.convert("RGB")

        scales = pyramid_scales(
            image.width, image.height, self.min_face_size, self.scale_factor
        )
        rnet = CropNetwork(self.rnet, RNET_INPUT_SIZE, image)
        onet = CropNetwork(self.onet, ONET_INPUT_SIZE, image)
        if max_faces is None:
            proposals = [self._propose_level(image, scale) for scale in scales]
            return self._cascade(proposals, rnet, onet)
        per_scale: list[FloatArray] = []
        coarse_to_fine = scales[::-1]
        for position, scale in enumerate(coarse_to_fine):
            per_scale.append(self._propose_level(image, scale))
            if position + 1 == len(coarse_to_fine):
                break
            bound = _could_be(coarse_to_fine[position + 1])
            if not self._may_stop(per_scale, max_faces, bound):
                continue
            faces = largest(self._cascade(per_scale, rnet, onet), image.size, max_faces)
            if len(faces) == max_faces and visible_area(faces[-1], image.size) >= bound:
                return faces
        return largest(self._cascade(per_scale, rnet, onet), image.size, max_faces)

    @staticmethod
    def _may_stop(per_scale: list[FloatArray], wanted: int, bound: float) -> bool:
        """Whether enough P-Net windows are big enough to become ``wanted``
        faces of at least ``bound`` area; if not, the later networks need not
        run yet. A window grows by the same factor as ``_could_be`` allows;
        erring large only delays the stop."""
        if not per_scale[-1].size:
            return False
        candidates = np.concatenate(per_scale)
        sides = candidates[:, 2:4] - candidates[:, 0:2]
        areas = (LARGEST_BOX_PER_WINDOW * sides.max(axis=1)) ** 2
        return int((areas >= bound).sum()) >= wanted

    def _cascade(
        self, per_scale: list[FloatArray], rnet: CropNetwork, onet: CropNetwork
    ) -> list[Face]:
        """R-Net and O-Net over the P-Net candidates of the given levels."""
        boxes = self.propose(per_scale)
        if len(boxes):
            boxes = self.refine(boxes, rnet)
        if not len(boxes):
            return []
        boxes, landmarks = self.finish(boxes, onet)
        return _faces(boxes, landmarks)

    def _propose_level(self, image: Image.Image, scale: float) -> FloatArray:
        """P-Net's candidates at one pyramid level as [K, 9] rows."""
        width, height = image.size
        # One pixel more than the scaled size, as facenet-pytorch does.
        level_size = (int(width * scale + 1), int(height * scale + 1))
        with stage(PREPROCESS):
            level = pyramid_level(image, level_size)
        regression, probability = self.pnet(level)
        candidates = window_boxes(
            regression[0], probability[0], scale, self.thresholds[0]
        )
        keep = nms(candidates[:, :4], candidates[:, 4], NMS_WITHIN_SCALE)
        return candidates[keep]

    def propose(self, per_scale: Sequence[FloatArray]) -> FloatArray:
        """Stage 1 after P-Net: the levels' candidates merged; squared [K, 5]
        boxes and scores."""
        candidates = np.concatenate([np.zeros((0, 9), dtype=np.float32), *per_scale])
        keep = nms(candidates[:, :4], candidates[:, 4], NMS_ACROSS_SCALES)
        candidates = candidates[keep]
        # P-Net's offsets are in units of the window's side without the
        # one-pixel inclusive correction the later stages use.
        sides = candidates[:, 2:4] - candidates[:, 0:2]
        corners = candidates[:, :4] + candidates[:, 5:9] * np.tile(sides, 2)
        return np.column_stack([square(corners), candidates[:, 4]])

    def refine(self, boxes: FloatArray, rnet: CropNetwork) -> FloatArray:
        """Stage 2: R-Net rescoring and box regression; squared boxes."""
        regression, probability = rnet(boxes)
        passed = probability > self.thresholds[1]
        boxes = np.column_stack([boxes[passed, :4], probability[passed]])
        regression = regression[passed]

        keep = nms(boxes[:, :4], boxes[:, 4], NMS_AFTER_RNET)
        corners = regress(boxes[keep, :4], regression[keep])
        return np.column_stack([square(corners), boxes[keep, 4]])

    def finish(
        self, boxes: FloatArray, onet: CropNetwork
    ) -> tuple[FloatArray, FloatArray]:
        """Stage 3: O-Net scores, boxes and [K, 5, 2] landmarks."""
        regression, landmarks, probability = onet(boxes)
        passed = probability > self.thresholds[2]
        boxes = np.column_stack([boxes[passed, :4], probability[passed]])
        regression = regression[passed]
        fractions = landmarks[passed].reshape(-1, 2, 5).transpose(0, 2, 1)

        # Landmarks are fractions of the crop O-Net saw, which starts at the
        # one-based x1, y1 and spans x2 - x1 + 1 pixels.
        origin = boxes[:, None, 0:2] - 1
        sides = boxes[:, None, 2:4] - boxes[:, None, 0:2] + 1
        points = origin + fractions * sides
        corners = regress(boxes[:, :4], regression)
        keep = nms(corners, boxes[:, 4], NMS_AFTER_ONET, mode="min")
        return np.column_stack([corners[keep], boxes[keep, 4]]), points[keep]


class CropNetwork:
    """R-Net or O-Net on crops of boxes, each box cropped and run only once.

    The largest-first search reruns the later stages as levels are added;
    most boxes are the same each time, so their outputs are kept by the
    box's exact coordinates for the one image being searched.
    """

    def __init__(self, network: Network, size: int, image: Image.Image) -> None:
        self.network = network
        self.size = size
        self.image = image
        self.known: dict[bytes, list[FloatArray]] = {}

    def __call__(self, boxes: FloatArray) -> list[FloatArray]:
        keys = [row.tobytes() for row in np.ascontiguousarray(boxes[:, :4])]
        new = [index for index, key in enumerate(keys) if key not in self.known]
        if new:
            with stage(PREPROCESS):
                crops = crop_batch(self.image, boxes[new], self.size)
            outputs = self.network(crops)
            for row, index in enumerate(new):
                self.known[keys[index]] = [output[row] for output in outputs]
        rows = [self.known[key] for key in keys]
        return [np.stack(column) for column in zip(*rows, strict=True)]


def pyramid_scales(
    width: int, height: int, min_face_size: float, scale_factor: float
) -> list[float]:
    """Scales at which P-Net's 12-pixel window matches faces from
    ``min_face_size`` up to the image's shorter side."""
    scale = PNET_WINDOW / min_face_size
    shorter_side = min(width, height) * scale
    scales = []
    while shorter_side >= PNET_WINDOW:
        scales.append(scale)
        scale *= scale_factor
        shorter_side *= scale_factor
    return scales


def pyramid_level(image: Image.Image, size: tuple[int, int]) -> FloatArray:
    """The image resized to ``size`` (width, height) as a batch of one."""
    return normalise([image.resize(size, Image.Resampling.BOX)])


def crop_batch(image: Image.Image, boxes: FloatArray, size: int) -> FloatArray:
    """Crop each box (one-based, truncated to whole pixels) and resize it
    to ``size`` x ``size``; parts outside the image are black."""
    width, height = image.size
    whole = np.trunc(boxes[:, :4]).astype(np.int64)
    whole[:, 0:2] -= 1
    # A box regressed inside out still gets one pixel, never an empty crop.
    whole[:, 2:4] = np.maximum(whole[:, 2:4], whole[:, 0:2] + 1)
    crops = []
    for left, top, right, bottom in whole.tolist():
        region = (left, top, right, bottom)
        if left >= 0 and top >= 0 and right <= width and bottom <= height:
            crop = image.resize((size, size), Image.Resampling.BOX, box=region)
        else:
            # Image.crop fills whatever lies outside the image with zeros.
            crop = image.crop(region).resize((size, size), Image.Resampling.BOX)
        crops.append(crop)
    return normalise(crops)


def normalise(images: Sequence[Image.Image]) -> FloatArray:
    """Stack equally sized RGB images into a normalised NCHW float32 batch."""
    pixels = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    pixels -= PIXEL_MEAN
    pixels *= PIXEL_SCALE
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def window_boxes(
    regression: FloatArray, probability: FloatArray, scale: float, threshold: float
) -> FloatArray:
    """P-Net output cells at or above ``threshold`` as [K, 9] rows.

    Each row is the cell's window in the original image's one-based pixel
    indices (x1, y1, x2, y2), its score, and its four regression offsets.
    """
    rows, columns = np.nonzero(probability >= threshold)
    cells = np.column_stack([columns, rows]).astype(np.float32)
    # Dividing in float32, as facenet-pytorch does, decides the same way
    # when a window edge lands exactly on a pixel boundary.
    scale32 = np.float32(scale)
    first = np.floor((PNET_STRIDE * cells + 1) / scale32)
    last = np.floor((PNET_STRIDE * cells + PNET_WINDOW) / scale32)
    scores = probability[rows, columns]
    offsets = regression[:, rows, columns].T
    return np.column_stack([first, last, scores, offsets]).astype(np.float32)


def nms(
    boxes: FloatArray, scores: FloatArray, threshold: float, mode: OverlapMode = "union"
) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression; indices kept, best score first.

    A box is dropped when its overlap with a better one exceeds
    ``threshold``. "union" is intersection over union with areas measured
    continuously, as torchvision (and so facenet-pytorch) measures them;
    "min" is intersection over the smaller area with pixels counted
    inclusively, as in the MATLAB original that facenet-pytorch ports for
    this last step.
    """
    inclusive = 1 if mode == "min" else 0
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + inclusive) * (y2 - y1 + inclusive)
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(best)
        overlap_x = np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])
        overlap_y = np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])
        intersection = np.maximum(overlap_x + inclusive, 0) * np.maximum(
            overlap_y + inclusive, 0
        )
        if mode == "min":
            overlap = intersection / np.minimum(areas[best], areas[rest])
        else:
            overlap = intersection / (areas[best] + areas[rest] - intersection)
        order = rest[overlap <= threshold]
    return np.asarray(kept, dtype=np.intp)


def regress(boxes: FloatArray, offsets: FloatArray) -> FloatArray:
    """Move each corner by its offset in units of the box's inclusive side."""
    sides = boxes[:, 2:4] - boxes[:, 0:2] + 1
    return boxes + offsets * np.tile(sides, 2)


def square(boxes: FloatArray) -> FloatArray:
    """Grow each box to a square on its longer side, keeping its centre."""
    sides = boxes[:, 2:4] - boxes[:, 0:2]
    longer = sides.max(axis=1, keepdims=True)
    corners = boxes[:, 0:2] + sides * 0.5 - longer * 0.5
    return np.column_stack([corners, corners + longer])


def _could_be(scale: float) -> float:
    """The largest face area a pyramid level at ``scale`` can yield.

    P-Net's window covers PNET_WINDOW / scale image pixels; the three
    regressions move each side by a fraction of the box, and a face much
    larger than the window is found at a coarser level instead, where its
    box is confirmed first. Twice the window's side bounds what a level
    adds with room to spare (``tests/test_mtcnn.py`` checks the bound).
    """
    side = LARGEST_BOX_PER_WINDOW * PNET_WINDOW / scale
    return side * side


def largest(faces: list[Face], size: tuple[int, int], count: int) -> list[Face]:
    """The ``count`` faces with the largest visible areas, largest first.

    A face cut by the image's edge has a box reaching past it, and must not
    outrank the subject of the photo.
    """
    return sorted(faces, key=lambda face: visible_area(face, size), reverse=True)[
        :count
    ]


def visible_area(face: Face, size: tuple[int, int]) -> float:
    """The area of the face's box that lies inside an image of ``size``."""
    x1, y1, x2, y2 = face.box
    width = min(x2, size[0]) - max(x1, 0.0)
    height = min(y2, size[1]) - max(y1, 0.0)
    return max(width, 0.0) * max(height, 0.0)


def _faces(boxes: FloatArray, landmarks: FloatArray) -> list[Face]:
    faces = [
        Face(
            # One-based inclusive columns x1..x2 are [x1 - 1, x2) in
            # continuous coordinates; the same for rows.
            box=(box[0] - 1, box[1] - 1, box[2], box[3]),
            score=box[4],
            landmarks=points.astype(np.float64),
        )
        for box, points in zip(boxes.tolist(), landmarks, strict=True)
    ]
    return sorted(faces, key=lambda face: face.area, reverse=True)
