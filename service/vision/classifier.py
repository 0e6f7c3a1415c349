"""ImageNet classification with one exported network.

Preprocessing follows the manifest: resize the shorter side to ``resize``,
take the centred ``crop`` square, scale each channel as (pixel - mean) /
std, and lay the batch out as NCHW float32. The resize and the crop are one
Pillow call on the crop's source box, so no intermediate image is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from PIL import Image

from service.manifest import ModelContractError, ModelSpec
from service.timing import POSTPROCESS, PREPROCESS, stage

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Prediction:
    label: str
    wnid: str
    index: int
    probability: float


class Classifier:
    """One ImageNet classifier session and the preprocessing it expects."""

    def __init__(self, spec: ModelSpec, session: ort.InferenceSession) -> None:
        self.spec = spec
        self.session = session
        self.input_name = spec.inputs[0].name
        self.output_name = spec.outputs[0].name
        pre = spec.preprocessing
        try:
            self.crop = int(pre["crop"])
            self.resize = int(pre["resize"])
            self.resample = RESAMPLING[pre["interpolation"]]
            std = np.asarray(pre["std"], dtype=np.float32).reshape(3)
            mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelContractError(
                f"model {spec.name}: preprocessing {pre!r} is not a classifier's "
                f"({error!r})"
            ) from None
        if len(spec.labels) != spec.outputs[0].shape[-1]:
            raise ModelContractError(
                f"model {spec.name}: {len(spec.labels)} labels for "
                f"{spec.outputs[0].shape[-1]} classes"
            )
        self.scale = np.float32(1.0) / std
        self.offset = -mean * self.scale

    @property
    def min_side(self) -> int:
        """Shortest image side preprocessing needs; lets JPEGs decode small."""
        return self.resize

    def preprocess_into(self, image: Image.Image, out: np.ndarray) -> None:
        """Write ``image`` as a normalised CHW tensor into ``out``."""
        width, height = image.size
        # Source box of the centre crop, in the original image's pixels.
        side = min(width, height) * self.crop / self.resize
        left = (width - side) / 2
        top = (height - side) / 2
        square = image.resize(
            (self.crop, self.crop),
            self.resample,
            box=(left, top, left + side, top + side),
        )
        pixels = np.asarray(square, dtype=np.float32)
        np.multiply(pixels, self.scale, out=pixels)
        np.add(pixels, self.offset, out=pixels)
        out[...] = pixels.transpose(2, 0, 1)

    def classify(
        self, images: Sequence[Image.Image], top_k: int
    ) -> list[list[Prediction]]:
        """Return the ``top_k`` classes of each image, most probable first."""
        with stage(PREPROCESS):
            batch = np.empty((len(images), 3, self.crop, self.crop), np.float32)
            for image, slot in zip(images, batch, strict=True):
                self.preprocess_into(image, slot)
        logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        with stage(POSTPROCESS):
            return [self._top_k(row, top_k) for row in softmax(logits)]

    def warm_up(self) -> None:
        """Run one batch so first requests do not pay for lazy allocations."""
        blank = np.zeros((1, 3, self.crop, self.crop), dtype=np.float32)
        self.session.run([self.output_name], {self.input_name: blank})

    def _top_k(self, probabilities: np.ndarray, top_k: int) -> list[Prediction]:
        top_k = min(top_k, len(probabilities))
        best = np.argpartition(-probabilities, top_k - 1)[:top_k]
        best = best[np.argsort(-probabilities[best], kind="stable")]
        labels = self.spec.labels
        return [
            Prediction(labels[i].label, labels[i].wnid, int(i), float(probabilities[i]))
            for i in best
        ]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result
