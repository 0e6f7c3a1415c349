"""Parity gate: the exported ONNX graph must compute what PyTorch computes.

Both run on the same real photographs (scikit-image's sample data). The
gate fails unless the largest absolute difference of the logits stays
within ``LOGIT_TOLERANCE`` and the top-1 class agrees on every image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

# Float32 reassociation across fused kernels moves ImageNet logits (whose
# magnitude is about 10-20) by around 1e-5 here; 1e-3 leaves room for other
# CPUs while still catching any real mistake, which moves them by >0.1.
LOGIT_TOLERANCE = 1e-3

SAMPLE_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")


class ParityError(RuntimeError):
    """The ONNX graph and the PyTorch module disagree."""


@dataclass(frozen=True)
class ParityReport:
    images: int
    max_abs_diff: float
    top1_agreement: float
    tolerance: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "images": self.images,
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement,
            "tolerance": self.tolerance,
        }


def sample_photos() -> list[np.ndarray]:
    """Return scikit-image's sample photographs as RGB uint8 arrays."""
    import skimage.data

    return [getattr(skimage.data, name)() for name in SAMPLE_IMAGES]


def normalised_batch(
    photos: list[np.ndarray], size: int, mean: list[float], std: list[float]
) -> np.ndarray:
    """Square-resize each photo and normalise it into an NCHW float batch."""
    tensors = []
    for photo in photos:
        image = Image.fromarray(photo).convert("RGB")
        resized = image.resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32)
        pixels = (pixels - np.float32(mean)) / np.float32(std)
        tensors.append(pixels.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(tensors))


def check_parity(module: nn.Module, onnx_path: Path, batch: np.ndarray) -> ParityReport:
    """Compare ``module`` and the graph at ``onnx_path`` on ``batch``.

    The graph runs once on the whole batch and once per image, which also
    proves the dynamic batch axis gives the same answer at every size.
    """
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(batch)).numpy()

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    batched = session.run(None, {input_name: batch})[0]
    single = np.concatenate(
        [
            session.run(None, {input_name: batch[i : i + 1]})[0]
            for i in range(len(batch))
        ]
    )

    max_diff = float(
        max(np.abs(batched - expected).max(), np.abs(single - expected).max())
    )
    agreement = float(
        np.mean(
            (batched.argmax(1) == expected.argmax(1))
            & (single.argmax(1) == expected.argmax(1))
        )
    )
    report = ParityReport(len(batch), max_diff, agreement, LOGIT_TOLERANCE)
    if max_diff > LOGIT_TOLERANCE or agreement < 1.0:
        raise ParityError(
            f"{onnx_path.name}: max |onnx - torch| = {max_diff:.2e} "
            f"(tolerance {LOGIT_TOLERANCE:.0e}), top-1 agreement {agreement:.0%}"
        )
    return report
