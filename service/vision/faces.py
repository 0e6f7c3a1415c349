"""Faces: detection, embeddings, age and gender, one batch per network.

``FaceAnalyzer`` ties the MTCNN cascade (``service.vision.mtcnn``) to the
networks that read the faces it finds. Every network runs once per request
on all the faces of all its images: chips are cut per face, stacked, and
sent in a single onnxruntime call.

Detection runs on the image scaled down so that its longer side is at most
``DETECTION_MAX_SIDE``: faces smaller than that cut would be below the
smallest face MTCNN looks for anyway, and P-Net's cost grows with the
pixels. Boxes and landmarks are scaled back, and chips are cut from the
full-resolution image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image

from service.manifest import ModelContractError, ModelSpec
from service.metrics import FACES_DETECTED
from service.timing import PREPROCESS, stage
from service.vision.chips import face_chips
from service.vision.mtcnn import MTCNN, Face, largest

FloatArray = npt.NDArray[np.float32]

DETECTION_MAX_SIDE = 1600
DEFAULT_MIN_FACE_SIZE = 20


@dataclass(frozen=True)
class AgeEstimate:
    """Expected age in years and the middle half of the distribution."""

    years: float
    low: float
    high: float


@dataclass(frozen=True)
class GenderEstimate:
    label: str
    probability: float


@dataclass(frozen=True)
class Model:
    """A session with its manifest entry, callable on an NCHW batch."""

    spec: ModelSpec
    session: ort.InferenceSession
    input_name: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_name", self.spec.inputs[0].name)

    def __call__(self, batch: FloatArray) -> list[FloatArray]:
        outputs: list[FloatArray] = self.session.run(None, {self.input_name: batch})
        return outputs

    def preprocessing_value(self, key: str) -> object:
        try:
            return self.spec.preprocessing[key]
        except KeyError:
            raise ModelContractError(
                f"model {self.spec.name}: preprocessing has no {key!r}"
            ) from None


class ChipNetwork:
    """A network that reads face chips: size, normalisation, session."""

    def __init__(self, model: Model) -> None:
        self.model = model
        pre = model.spec.preprocessing
        try:
            self.size = int(pre["size"])
            mean = np.asarray(pre["mean"], dtype=np.float32).reshape(-1)
            std = np.asarray(pre["std"], dtype=np.float32).reshape(-1)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelContractError(
                f"model {model.spec.name}: preprocessing {pre!r} does not describe "
                f"face chips ({error!r})"
            ) from None
        self.scale = np.float32(1.0) / std
        self.offset = -mean * self.scale

    def normalise(self, chips: npt.NDArray[np.uint8]) -> FloatArray:
        """(N, size, size, 3) uint8 chips -> normalised NCHW float32."""
        pixels = chips.astype(np.float32)
        pixels *= self.scale
        pixels += self.offset
        return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))

    def run(self, chips: npt.NDArray[np.uint8]) -> list[FloatArray]:
        with stage(PREPROCESS):
            batch = self.normalise(chips)
        return self.model(batch)

    def warm_up(self) -> None:
        self.run(np.zeros((1, self.size, self.size, 3), dtype=np.uint8))


class FaceAnalyzer:
    """Detect faces, then embed them or estimate their age and gender."""

    def __init__(
        self,
        pnet: Model,
        rnet: Model,
        onet: Model,
        embedder: Model,
        age: Model,
        gender: Model,
    ) -> None:
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.embedder = ChipNetwork(embedder)
        self.age = ChipNetwork(age)
        self.gender = ChipNetwork(gender)
        self.margin = float(str(embedder.preprocessing_value("margin")))
        self.class_years = np.asarray(
            _as_list(age.preprocessing_value("class_years")), dtype=np.float64
        )
        self.gender_labels = [
            str(label) for label in _as_list(gender.preprocessing_value("classes"))
        ]
        if len(self.gender_labels) != 2:
            raise ModelContractError(
                f"model {gender.spec.name}: expected two gender classes, got "
                f"{self.gender_labels}"
            )

    @property
    def embedding_size(self) -> int:
        dims = self.embedder.model.spec.outputs[0].shape[-1]
        if not isinstance(dims, int):
            raise ModelContractError(
                f"model {self.embedder.model.spec.name}: embedding size is symbolic"
            )
        return dims

    def detect(
        self,
        image: Image.Image,
        min_face_size: float = DEFAULT_MIN_FACE_SIZE,
        max_faces: int | None = None,
    ) -> list[Face]:
        """Faces in ``image``, largest first, in its pixel coordinates.

        ``max_faces`` keeps only the largest ones, and lets the search stop
        once it has found them (see ``MTCNN.detect``).
        """
        scale = min(1.0, DETECTION_MAX_SIDE / max(image.size))
        work = image
        if scale < 1.0:
            # A side may not shrink to nothing: a 20000x1 strip stays 1 high.
            size = (
                max(1, round(image.width * scale)),
                max(1, round(image.height * scale)),
            )
            with stage(PREPROCESS):
                work = image.resize(size, Image.Resampling.BOX)
            scale = work.width / image.width
        detector = MTCNN(
            self.pnet, self.rnet, self.onet, min_face_size=min_face_size * scale
        )
        faces = detector.detect(work, max_faces)
        if scale < 1.0:
            faces = [_rescale(face, 1.0 / scale) for face in faces]
        found = largest(faces, image.size, max_faces or len(faces))
        FACES_DETECTED.inc(len(found))
        return found

    def embed(
        self, images: Sequence[Image.Image], faces: Sequence[Sequence[Face]]
    ) -> list[FloatArray]:
        """Unit-length embeddings, one (faces, dims) array per image."""
        size = self.embedder.size
        with stage(PREPROCESS):
            chips = [
                _margin_crops(image, image_faces, size, self.margin)
                for image, image_faces in zip(images, faces, strict=True)
            ]
        embeddings = _run_split(self.embedder, chips)
        return [e / np.linalg.norm(e, axis=1, keepdims=True) for e in embeddings]

    def estimate_age(
        self, images: Sequence[Image.Image], faces: Sequence[Sequence[Face]]
    ) -> list[list[AgeEstimate]]:
        """Age per face: expected value and interquartile range, in years."""
        chips = self._dlib_chips(self.age.size, images, faces)
        results = []
        for probabilities in _run_split(self.age, chips):
            ages = self.class_years
            cumulative = np.cumsum(probabilities, axis=1)
            results.append(
                [
                    AgeEstimate(
                        years=float(row @ ages),
                        low=_quantile(ages, cdf, 0.25),
                        high=_quantile(ages, cdf, 0.75),
                    )
                    for row, cdf in zip(probabilities, cumulative, strict=True)
                ]
            )
        return results

    def estimate_gender(
        self, images: Sequence[Image.Image], faces: Sequence[Sequence[Face]]
    ) -> list[list[GenderEstimate]]:
        chips = self._dlib_chips(self.gender.size, images, faces)
        results = []
        for probabilities in _run_split(self.gender, chips):
            best = probabilities.argmax(axis=1)
            results.append(
                [
                    GenderEstimate(self.gender_labels[i], float(row[i]))
                    for row, i in zip(probabilities, best, strict=True)
                ]
            )
        return results

    def warm_up(self) -> None:
        self.detect(Image.new("RGB", (64, 64)))
        for network in (self.embedder, self.age, self.gender):
            network.warm_up()

    def _dlib_chips(
        self,
        size: int,
        images: Sequence[Image.Image],
        faces: Sequence[Sequence[Face]],
    ) -> list[npt.NDArray[np.uint8]]:
        chips = []
        with stage(PREPROCESS):
            for image, image_faces in zip(images, faces, strict=True):
                if not image_faces:
                    chips.append(np.zeros((0, size, size, 3), dtype=np.uint8))
                    continue
                landmarks = np.stack([face.landmarks for face in image_faces])
                chips.append(face_chips(np.asarray(image), landmarks, size))
        return chips


def _run_split(
    network: ChipNetwork, chips: list[npt.NDArray[np.uint8]]
) -> list[FloatArray]:
    """Run all images' chips in one batch and split the first output back."""
    counts = [len(c) for c in chips]
    if not sum(counts):
        dims = network.model.spec.outputs[0].shape[-1]
        width = dims if isinstance(dims, int) else 0
        return [np.zeros((0, width), dtype=np.float32) for _ in chips]
    output = network.run(np.concatenate(chips))[0]
    return np.split(output, np.cumsum(counts)[:-1])


def _margin_crops(
    image: Image.Image, faces: Sequence[Face], size: int, margin: float
) -> npt.NDArray[np.uint8]:
    """Square-resized crops of each box grown by ``margin`` of its size.

    FaceNet was trained on MTCNN boxes grown by a margin, clipped to the
    image and resized without keeping the aspect ratio; cutting the same
    way keeps its accuracy.
    """
    crops = np.zeros((len(faces), size, size, 3), dtype=np.uint8)
    for index, face in enumerate(faces):
        x1, y1, x2, y2 = face.box
        grow_x = (x2 - x1) * margin / 2
        grow_y = (y2 - y1) * margin / 2
        box = (
            max(0.0, x1 - grow_x),
            max(0.0, y1 - grow_y),
            min(float(image.width), x2 + grow_x),
            min(float(image.height), y2 + grow_y),
        )
        crops[index] = np.asarray(
            image.resize((size, size), Image.Resampling.BILINEAR, box=box)
        )
    return crops


def _quantile(
    values: npt.NDArray[np.float64], cdf: npt.NDArray[np.float32], q: float
) -> float:
    """The smallest class value whose cumulative probability reaches ``q``."""
    index = min(int(np.searchsorted(cdf, q)), len(values) - 1)
    return float(values[index])


def _rescale(face: Face, factor: float) -> Face:
    return Face(
        box=(
            face.box[0] * factor,
            face.box[1] * factor,
            face.box[2] * factor,
            face.box[3] * factor,
        ),
        score=face.score,
        landmarks=face.landmarks * factor,
    )


def _as_list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ModelContractError(f"expected a list, got {value!r}")
    return value
