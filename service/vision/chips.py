"""Aligned face chips cut from an image by five landmarks.

A chip is a square crop, rotated and scaled so that the face's landmarks
fall where a template says. The template is given in chip units: (0, 0)
is the chip's top-left corner and (1, 1) its bottom-right corner, so one
template serves every chip size. Image landmarks are in pixels with pixel
(i, j)'s centre at (i, j), as face detectors report them; chip pixel c is
sampled at the image point the fitted transform assigns to c + 0.5.

Landmarks are MTCNN's five points, image-left first: left eye centre, right
eye centre, nose tip, left mouth corner, right mouth corner.

``DLIB_CHIP_TEMPLATE`` reproduces the framing of dlib's
``get_face_chip_details`` with padding 0.2, which dlib's age and gender
networks were trained on. dlib fits its frame to its own five points (eye
corners and the base of the nose), not to MTCNN's, so the template places
MTCNN's points where dlib's mean face shape (the 68-point average in that
same frame, from dlib's interpolation code) has them: each eye centre is
the mean of its six eye-contour points, then the nose tip and the two mouth
corners.

Sampling is bilinear, with pixels outside the image black, as dlib does.
When the chip is much smaller than the face, the face region is first
halved with dlib's binomial pyramid filter until one more halving would
make it smaller than the chip, so bilinear sampling never skips pixels and
the chip is as smooth as dlib's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

FloatArray = NDArray[np.float64]
ImageArray = NDArray[np.uint8]

LANDMARK_NAMES = (
    "left_eye",
    "right_eye",
    "nose",
    "mouth_left",
    "mouth_right",
)


@dataclass(frozen=True)
class FaceTemplate:
    """Where landmarks go in a chip, in chip units, and how much each counts.

    The transform is the least-squares similarity (rotation, uniform scale,
    translation) from the weighted template points to the landmarks.
    """

    points: tuple[tuple[float, float], ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.points) != len(self.weights) or len(self.points) < 2:
            raise ValueError("a template needs two or more points, one weight each")
        if min(self.weights) < 0 or sum(1 for w in self.weights if w > 0) < 2:
            raise ValueError("template weights must be >= 0, two or more positive")


# dlib's mean 68-point face shape in its unit face frame (before padding),
# only the points that correspond to MTCNN's landmarks: the six contour
# points of each eye, the nose tip (30) and the mouth corners (48, 54).
_DLIB_MEAN_FACE = {
    "left_eye": (
        (0.121737, 0.216423),
        (0.187122, 0.178758),
        (0.265825, 0.179852),
        (0.334606, 0.231733),
        (0.260918, 0.245099),
        (0.182743, 0.244077),
    ),
    "right_eye": (
        (0.645647, 0.231733),
        (0.714428, 0.179852),
        (0.793132, 0.178758),
        (0.858516, 0.216423),
        (0.797510, 0.244077),
        (0.719335, 0.245099),
    ),
    "nose": ((0.490127, 0.515625),),
    "mouth_left": ((0.254149, 0.780233),),
    "mouth_right": ((0.726104, 0.780233),),
}

DLIB_CHIP_PADDING = 0.2

# dlib frames the chip by eye corners and the base of the nose only. Mouth
# corners move with expression (a broad smile lifts them by about 6 % of the
# chip), so they count a quarter: enough to steady the fit when an eye point
# is off, too little for a smile to shrink the chip noticeably.
_DLIB_WEIGHTS = {
    "left_eye": 1.0,
    "right_eye": 1.0,
    "nose": 1.0,
    "mouth_left": 0.25,
    "mouth_right": 0.25,
}


def dlib_chip_template(padding: float = DLIB_CHIP_PADDING) -> FaceTemplate:
    """Return MTCNN's points in dlib's face-chip frame with ``padding``."""
    points = []
    for name in LANDMARK_NAMES:
        x, y = np.mean(np.asarray(_DLIB_MEAN_FACE[name]), axis=0)
        # dlib's padded frame: the unit face square plus ``padding`` of its
        # side on every edge, rescaled to the unit chip.
        points.append(
            (
                float((padding + x) / (1 + 2 * padding)),
                float((padding + y) / (1 + 2 * padding)),
            )
        )
    weights = tuple(_DLIB_WEIGHTS[name] for name in LANDMARK_NAMES)
    return FaceTemplate(tuple(points), weights)


DLIB_CHIP_TEMPLATE = dlib_chip_template()


def chip_transforms(
    landmarks: FloatArray, size: int, template: FaceTemplate
) -> FloatArray:
    """Return one 2x3 matrix per face mapping chip pixels to image points.

    ``landmarks`` is (N, K, 2) in image pixels; row ``[x, y]`` of the result
    for face n is ``M[n] @ [column, row, 1]`` for a chip pixel.
    """
    faces = _check_landmarks(landmarks, template)
    weights = np.asarray(template.weights, dtype=np.float64)
    weights = weights / weights.sum()
    source = np.asarray(template.points, dtype=np.float64) * size
    # Complex numbers make a 2-D similarity one multiply and one add:
    # image = a * chip + b, with |a| the scale and arg(a) the rotation.
    chip_points = source[:, 0] + 1j * source[:, 1]
    image_points = faces[..., 0] + 1j * faces[..., 1]
    chip_centre = np.sum(weights * chip_points)
    image_centre = np.sum(weights * image_points, axis=1)
    chip_offsets = chip_points - chip_centre
    image_offsets = image_points - image_centre[:, None]
    a = np.sum(weights * np.conj(chip_offsets) * image_offsets, axis=1) / np.sum(
        weights * np.abs(chip_offsets) ** 2
    )
    # Chip pixel c sits at c + 0.5 in template units times size.
    b = image_centre + a * (0.5 + 0.5j - chip_centre)
    transforms = np.empty((len(faces), 2, 3), dtype=np.float64)
    transforms[:, 0] = np.stack([a.real, -a.imag, b.real], axis=1)
    transforms[:, 1] = np.stack([a.imag, a.real, b.imag], axis=1)
    return transforms


def cut_chips(image: ImageArray, transforms: FloatArray, size: int) -> ImageArray:
    """Sample a (size, size) RGB chip per 2x3 transform from ``image``."""
    _check_image(image)
    picture = Image.fromarray(image)
    chips = np.zeros((len(transforms), size, size, 3), dtype=np.uint8)
    for index, transform in enumerate(transforms):
        chips[index] = _cut_chip(picture, transform, size)
    return chips


def align_face(
    image: ImageArray, landmarks: FloatArray, size: int, template: FaceTemplate
) -> ImageArray:
    """Cut one chip per face: (N, K, 2) landmarks -> (N, size, size, 3)."""
    return cut_chips(image, chip_transforms(landmarks, size, template), size)


def face_chips(image: ImageArray, landmarks: FloatArray, size: int) -> ImageArray:
    """Cut dlib-framed chips (age: 64, gender: 32) for MTCNN landmarks."""
    return cut_chips(image, dlib_chip_transforms(landmarks, size), size)


def dlib_chip_transforms(
    landmarks: FloatArray, size: int, template: FaceTemplate = DLIB_CHIP_TEMPLATE
) -> FloatArray:
    """Return the chip-to-image transforms dlib's chip extraction would use.

    The frame is ``template``'s; two details of dlib's
    ``extract_image_chip`` are then reproduced, because the networks were
    trained on its output. It spreads the chip's ``size`` pixels over
    ``size * scale - 1`` image pixels about the chip's centre, not over
    ``size * scale``, which widens small chips by up to 3 %. And its image
    pyramid maps points a quarter of a pixel off its filter's centre, which
    moves the content by (2 ** levels - 1) * (-0.5, +0.5) image pixels.
    Given dlib's own five points and template, the chips this makes equal
    dlib's pixel for pixel at 64 and 200 and within 1.5 grey levels at 32
    (measured on the astronaut photo and its mirror image).
    """
    transforms = chip_transforms(landmarks, size, template)
    middle_pixel = np.full(2, (size - 1) / 2)
    for transform in transforms:
        middle = transform @ np.append(middle_pixel, 1.0)
        linear = transform[:, :2]
        scale = _scale_of(linear)
        if scale == 0:
            continue
        linear *= (size * scale - 1) / ((size - 1) * scale)
        levels = _pyramid_levels(_scale_of(linear))
        shift = np.array([-0.5, 0.5]) * (2**levels - 1)
        transform[:, 2] = middle - linear @ middle_pixel + shift
    return transforms


def _cut_chip(picture: Image.Image, transform: FloatArray, size: int) -> ImageArray:
    linear = transform[:, :2]
    offset = transform[:, 2]
    levels = _pyramid_levels(_scale_of(linear))
    if levels:
        picture, linear, offset = _pyramid_region(picture, linear, offset, size, levels)
    # Pillow maps output pixel edges to input pixel edges: shift by half a
    # pixel on both sides of our centre-based transform.
    edge_offset = offset + 0.5 - linear @ np.array([0.5, 0.5])
    coefficients = (*linear[0], edge_offset[0], *linear[1], edge_offset[1])
    chip = picture.transform(
        (size, size),
        Image.Transform.AFFINE,
        tuple(float(c) for c in coefficients),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    return np.asarray(chip, dtype=np.uint8)


def _scale_of(linear: FloatArray) -> float:
    return math.sqrt(abs(float(np.linalg.det(linear))))


def _pyramid_levels(scale: float) -> int:
    """How often to halve the image before sampling at ``scale`` pixels apart.

    As in dlib, halving stops when one more would make the image coarser
    than the chip, so the final bilinear step spans 1 to 2 pixels.
    """
    levels = 0
    while scale / 2 ** (levels + 1) > 1:
        levels += 1
    return levels


def _pyramid_region(
    picture: Image.Image,
    linear: FloatArray,
    offset: FloatArray,
    size: int,
    levels: int,
) -> tuple[Image.Image, FloatArray, FloatArray]:
    """Halve the chip's image region ``levels`` times; adjust the transform."""
    step = 2**levels
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]]) - 0.5
    reach = corners @ linear.T + offset
    width, height = picture.size
    # A margin of a few coarse pixels keeps the filter's and the bilinear
    # sampler's neighbours inside the region.
    margin = 3 * step
    left = max(0, math.floor(reach[:, 0].min()) - margin)
    top = max(0, math.floor(reach[:, 1].min()) - margin)
    right = min(width, math.ceil(reach[:, 0].max()) + margin)
    bottom = min(height, math.ceil(reach[:, 1].max()) + margin)
    if right - left < 2 or bottom - top < 2:
        # The chip lies (almost) wholly outside the image: nothing to filter.
        return picture, linear, offset
    region = np.asarray(picture.crop((left, top, right, bottom)), dtype=np.float32)
    for _ in range(levels):
        region = _halve(region)
    reduced = Image.fromarray(region.astype(np.uint8))
    # Pixel (u, v) of the reduced region is centred on original pixel
    # (left + step * u, top + step * v).
    origin = np.array([left, top], dtype=np.float64)
    return reduced, linear / step, (offset - origin) / step


# dlib's pyramid_down<2> smooths with this binomial (Gaussian-like) kernel
# before dropping every other row and column. The weights are powers of two
# over 16, so float32 sums of 8-bit pixels are exact.
_BINOMIAL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def _halve(region: NDArray[np.float32]) -> NDArray[np.float32]:
    """Smooth with the binomial kernel and keep pixels 0, 2, 4, ... per axis.

    The result is truncated to whole levels, as dlib's integer division is.
    """
    for axis in (0, 1):
        length = region.shape[axis]
        kept = (length + 1) // 2
        padding = [(0, 0)] * 3
        padding[axis] = (2, 2)
        padded = np.pad(region, padding, mode="edge")
        taps = []
        for shift, weight in enumerate(_BINOMIAL):
            index = [slice(None)] * 3
            index[axis] = slice(shift, shift + 2 * kept - 1, 2)
            taps.append(weight * padded[tuple(index)])
        region = np.sum(taps, axis=0, dtype=np.float32)
    return np.floor(region)


def _check_image(image: ImageArray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be an RGB uint8 array (H, W, 3), got {image.dtype} "
            f"{image.shape}"
        )


def _check_landmarks(landmarks: FloatArray, template: FaceTemplate) -> FloatArray:
    faces = np.asarray(landmarks, dtype=np.float64)
    expected = len(template.points)
    if faces.ndim != 3 or faces.shape[1:] != (expected, 2):
        raise ValueError(
            f"landmarks must have shape (faces, {expected}, 2), got {faces.shape}"
        )
    if not np.isfinite(faces).all():
        raise ValueError("landmarks must be finite numbers")
    return faces
