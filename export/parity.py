"""Parity gate: the exported ONNX graph must compute what PyTorch computes.

Both run on the same real photographs (scikit-image's sample data, cut to
what each network expects). The gate fails unless the largest absolute
difference over every output stays within the recipe's tolerance and, for
classifiers, the top-1 class agrees on every image. The graph runs once on
the whole batch and once per image, which also proves the symbolic batch
axis gives the same answer at every size.
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
DEFAULT_TOLERANCE = 1e-3

SAMPLE_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")


class ParityError(RuntimeError):
    """The ONNX graph and the PyTorch module disagree."""


@dataclass(frozen=True)
class ParityReport:
    images: int
    max_abs_diff: float
    top1_agreement: float | None
    tolerance: float

    def as_dict(self) -> dict[str, float | int | None]:
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
    photos: list[np.ndarray],
    size: int | tuple[int, int],
    mean: list[float],
    std: list[float],
) -> np.ndarray:
    """Resize each photo to ``size`` (side or (width, height)) and normalise
    it into an NCHW float batch."""
    width, height = (size, size) if isinstance(size, int) else size
    tensors = []
    for photo in photos:
        image = Image.fromarray(photo).convert("RGB")
        resized = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32)
        pixels = (pixels - np.float32(mean)) / np.float32(std)
        tensors.append(pixels.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(tensors))


def torch_outputs(module: nn.Module, batch: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        result = module.eval()(torch.from_numpy(batch))
    if isinstance(result, torch.Tensor):
        return [result.numpy()]
    return [tensor.numpy() for tensor in result]


def check_parity(
    module: nn.Module,
    onnx_path: Path,
    batch: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE,
    compare_top1: bool = True,
) -> ParityReport:
    """Compare ``module`` and the graph at ``onnx_path`` on ``batch``."""
    expected = torch_outputs(module, batch)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    batched = session.run(None, {input_name: batch})
    singles = [
        session.run(None, {input_name: batch[i : i + 1]}) for i in range(len(batch))
    ]
    single = [np.concatenate(parts) for parts in zip(*singles, strict=True)]

    max_diff = max(
        float(np.abs(got - want).max())
        for run in (batched, single)
        for got, want in zip(run, expected, strict=True)
    )
    agreement = None
    if compare_top1:
        top1 = expected[0].argmax(1)
        agreement = float(
            np.mean((batched[0].argmax(1) == top1) & (single[0].argmax(1) == top1))
        )
    report = ParityReport(len(batch), max_diff, agreement, tolerance)
    if max_diff > tolerance or (agreement is not None and agreement < 1.0):
        shown = "n/a" if agreement is None else f"{agreement:.0%}"
        raise ParityError(
            f"{onnx_path.name}: max |onnx - torch| = {max_diff:.2e} "
            f"(tolerance {tolerance:.0e}), top-1 agreement {shown}"
        )
    return report
