"""dlib's age predictor and gender classifier, rebuilt from their ONNX graphs.

Both networks were trained with dlib's DNN toolkit (``dnn_age_predictor_v1``
and ``dnn_gender_classifier_v1``) and are published as ONNX conversions that
keep dlib's layer structure one node per layer. Three dlib habits shape the
modules here:

- BatchNorm is stored as dlib's ``affine`` layer: a per-channel scale and
  shift applied after a convolution that has its own bias. ``Affine`` keeps
  them as parameters so the weights load unchanged, and ``fold_for_export``
  merges each into the convolution before it.
- A residual sum of tensors of different sizes (``add_prev``) zero-extends
  the smaller one at the end of the channel, row and column axes, keeping
  the top-left corner aligned. The age network's downsampling blocks rely on
  it: their 2x2 average-pooled shortcut has half the channels of the branch,
  and the stride-2 unpadded convolution yields one row and column fewer.
- Dropout becomes a ``multiply`` layer by the keep probability at inference;
  ``ScaledLinear`` applies it before its fully connected layer, where it
  folds into the weights.

Inputs are RGB, NCHW, ``(pixel - mean) / 256`` with dlib's channel means;
the normalisation is not part of these modules. ``forward`` returns logits.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.readers.onnx_initializers import read_onnx_constants
from export.readers.torch_state import WeightsMismatchError

# dlib's input_rgb_image layer: (pixel - mean) / 256 per channel, RGB order.
DLIB_RGB_MEAN = (122.782, 117.001, 104.298)
DLIB_PIXEL_SCALE = 256.0

AGE_CHIP_SIZE = 64
GENDER_CHIP_SIZE = 32
AGE_CLASSES = 81
GENDER_LABELS = ("female", "male")


class Affine(nn.Module):
    """dlib's ``affine`` layer: ``x * scale + shift`` for each channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


class ConvAffine(nn.Module):
    """A biased convolution followed by dlib's per-channel affine layer."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.affine = Affine(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(self.conv(x))

    def folded(self) -> nn.Conv2d:
        """Return one convolution computing the same as conv then affine."""
        conv = copy.deepcopy(self.conv)
        # Folding in float64 keeps the merged weights as close to the
        # two-step float32 result as a single rounding allows.
        scale = self.affine.scale.detach().double()
        weight = conv.weight.detach().double() * scale[:, None, None, None]
        assert conv.bias is not None
        bias = conv.bias.detach().double() * scale + self.affine.shift.detach().double()
        with torch.no_grad():
            conv.weight.copy_(weight.float())
            conv.bias.copy_(bias.float())
        return conv


class ScaledLinear(nn.Module):
    """Flatten, multiply by a constant (dlib's inference-time dropout), fc."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.register_buffer("factor", torch.ones(1))
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(x, 1) * self.get_buffer("factor"))

    def folded(self) -> nn.Sequential:
        """Return flatten and one linear layer with the factor in its weights."""
        linear = copy.deepcopy(self.linear)
        factor = self.get_buffer("factor").double()
        with torch.no_grad():
            linear.weight.copy_((linear.weight.double() * factor).float())
        return nn.Sequential(nn.Flatten(1), linear)


def zero_extended_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Add two NCHW tensors as dlib's ``add_prev`` does.

    Each operand is zero-padded at the end of the channel, row and column
    axes to the larger of the two sizes, so the top-left corners align.
    """
    size = [max(a.shape[axis], b.shape[axis]) for axis in (1, 2, 3)]
    return _zero_extend(a, size) + _zero_extend(b, size)


def _zero_extend(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    channels, rows, cols = (
        target - x.shape[axis]
        for axis, target in (
            (1, size[0]),
            (2, size[1]),
            (3, size[2]),
        )
    )
    if channels == rows == cols == 0:
        return x
    # F.pad lists (before, after) pairs from the last axis backwards.
    return F.pad(x, (0, cols, 0, rows, 0, channels))


class ResidualBlock(nn.Module):
    """Two 3x3 conv+affine layers with a shortcut, as in dlib's ``res``.

    The downsampling form (dlib's ``res_down``) runs its first convolution
    with stride 2 and no padding, and average-pools the shortcut 2x2.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        stride, padding = (2, 0) if downsample else (1, 1)
        self.conv1 = ConvAffine(in_channels, out_channels, 3, stride, padding)
        self.conv2 = ConvAffine(out_channels, out_channels, 3, 1, 1)
        self.shortcut: nn.Module = nn.AvgPool2d(2, 2) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv2(F.relu(self.conv1(x)))
        return F.relu(zero_extended_sum(self.shortcut(x), branch))


class DlibAgePredictor(nn.Module):
    """dlib's ``dnn_age_predictor_v1``: a ResNet-10 on 64x64 chips, 81 ages."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvAffine(3, 64, 7, stride=2, padding=0)
        self.pool = nn.MaxPool2d(3, 2)
        self.blocks = nn.Sequential(
            ResidualBlock(64, 64, downsample=False),
            ResidualBlock(64, 128, downsample=True),
            ResidualBlock(128, 128, downsample=False),
            ResidualBlock(128, 256, downsample=True),
            ResidualBlock(256, 256, downsample=False),
        )
        self.fc = nn.Linear(256, AGE_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.stem(x)))
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


class DlibGenderClassifier(nn.Module):
    """dlib's ``dnn_gender_classifier_v1``: a small CNN on 32x32 chips.

    Output index 0 is female, 1 is male (``GENDER_LABELS``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvAffine(3, 32, 3, padding=1)
        self.conv2 = ConvAffine(32, 32, 3, padding=1)
        self.conv3 = ConvAffine(32, 64, 3, padding=1)
        self.conv4 = ConvAffine(64, 64, 3, padding=1)
        self.pool = nn.AvgPool2d(2, 2)
        self.hidden = ScaledLinear(64 * 8 * 8, 16)
        self.classifier = ScaledLinear(16, len(GENDER_LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = self.pool(x)
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        x = self.pool(x)
        return self.classifier(F.relu(self.hidden(x)))


def fold_for_export(module: nn.Module) -> nn.Module:
    """Return a copy with every affine and multiply merged into its neighbour.

    The copy computes the same function up to float32 rounding, with one
    ``Conv`` per ``ConvAffine`` and one ``Gemm`` per ``ScaledLinear`` in the
    exported graph instead of separate ``Mul``/``Add`` nodes.
    """
    folded = copy.deepcopy(module).eval()
    _fold_children(folded)
    return folded


def _fold_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, ConvAffine | ScaledLinear):
            setattr(module, name, child.folded())
        else:
            _fold_children(child)


# How a module tensor is laid out in the graph: dlib's affine parameters are
# stored broadcastable as [1, C, 1, 1], and a Gemm with transB=0 holds its
# weight as [in, out] where nn.Linear keeps [out, in].
Layout = Literal["same", "per_channel", "gemm"]


@dataclass(frozen=True)
class _Source:
    """One module tensor and the graph constant it is read from."""

    target: str
    constant: str
    layout: Layout = "same"


def _graph_shape(layout: Layout, shape: tuple[int, ...]) -> tuple[int, ...]:
    if layout == "per_channel":
        return (1, *shape, 1, 1)
    if layout == "gemm":
        return shape[::-1]
    return shape


def _to_module_layout(layout: Layout, value: np.ndarray) -> np.ndarray:
    if layout == "per_channel":
        return value.reshape(-1)
    if layout == "gemm":
        return value.T
    return value


def _conv_affine(prefix: str, conv_layer: int, affine_layer: int) -> list[_Source]:
    return [
        _Source(f"{prefix}.conv.weight", f"layer_{conv_layer}_weights"),
        _Source(f"{prefix}.conv.bias", f"layer_{conv_layer}_bias"),
        _Source(f"{prefix}.affine.scale", f"layer_{affine_layer}_scale", "per_channel"),
        _Source(
            f"{prefix}.affine.shift", f"layer_{affine_layer}_offset", "per_channel"
        ),
    ]


def _linear(prefix: str, layer: int) -> list[_Source]:
    return [
        _Source(f"{prefix}.weight", f"layer_{layer}_weights", "gemm"),
        _Source(f"{prefix}.bias", f"layer_{layer}_bias"),
    ]


# The converter names each constant after dlib's layer index, counted from
# the output (layer 1 is the last fc); these tables pair them with modules.
AGE_SOURCES = (
    *_conv_affine("stem", 52, 51),
    *_conv_affine("blocks.0.conv1", 47, 46),
    *_conv_affine("blocks.0.conv2", 44, 43),
    *_conv_affine("blocks.1.conv1", 39, 38),
    *_conv_affine("blocks.1.conv2", 36, 35),
    *_conv_affine("blocks.2.conv1", 28, 27),
    *_conv_affine("blocks.2.conv2", 25, 24),
    *_conv_affine("blocks.3.conv1", 20, 19),
    *_conv_affine("blocks.3.conv2", 17, 16),
    *_conv_affine("blocks.4.conv1", 9, 8),
    *_conv_affine("blocks.4.conv2", 6, 5),
    *_linear("fc", 1),
)

# Pad amounts of the downsampling blocks' residual sums, in ONNX order
# (begin N, C, H, W, then end N, C, H, W). They carry no weights, but they
# must describe the zero extension ``zero_extended_sum`` performs.
AGE_STRUCTURE: dict[str, tuple[int, ...]] = {
    "layer_31_left_pads": (0, 0, 0, 0, 0, 64, 0, 0),
    "layer_31_right_pads": (0, 0, 0, 0, 0, 0, 1, 1),
    "layer_12_left_pads": (0, 0, 0, 0, 0, 128, 0, 0),
}

GENDER_SOURCES = (
    *_conv_affine("conv1", 19, 18),
    *_conv_affine("conv2", 16, 15),
    *_conv_affine("conv3", 12, 11),
    *_conv_affine("conv4", 9, 8),
    _Source("hidden.factor", "layer_5_scalar"),
    *_linear("hidden.linear", 4),
    _Source("classifier.factor", "layer_2_scalar"),
    *_linear("classifier.linear", 1),
)


def load_age_net(onnx_path: Path) -> DlibAgePredictor:
    """Build the age predictor from ``age-v1.onnx``'s constants, in eval mode."""
    module = DlibAgePredictor()
    _load_constants(module, onnx_path, AGE_SOURCES, AGE_STRUCTURE)
    return module.eval()


def load_gender_net(onnx_path: Path) -> DlibGenderClassifier:
    """Build the gender classifier from ``gender-v1.onnx``'s constants."""
    module = DlibGenderClassifier()
    _load_constants(module, onnx_path, GENDER_SOURCES, {})
    return module.eval()


def _load_constants(
    module: nn.Module,
    onnx_path: Path,
    sources: tuple[_Source, ...],
    structure: dict[str, tuple[int, ...]],
) -> None:
    """Copy graph constants into ``module`` with strict name and shape checks.

    Every tensor of the module must be named by exactly one source, every
    constant of the graph must be either a source or a structural constant
    with the expected value, and every shape must match; all problems are
    reported together.
    """
    constants = read_onnx_constants(onnx_path)
    state = module.state_dict()
    problems = _mapping_problems(state, constants, sources, structure)

    converted: dict[str, torch.Tensor] = {}
    for source in sources:
        if source.target not in state or source.constant not in constants:
            continue
        value = constants[source.constant]
        expected = _graph_shape(source.layout, tuple(state[source.target].shape))
        if value.shape != expected or value.dtype != np.float32:
            problems.append(
                f"{source.constant} is {value.dtype}{list(value.shape)}, "
                f"{source.target} needs float32{list(expected)}"
            )
            continue
        value = _to_module_layout(source.layout, value)
        converted[source.target] = torch.from_numpy(np.array(value, dtype=np.float32))

    if problems:
        raise WeightsMismatchError(
            f"{onnx_path.name} does not fit {type(module).__name__}: "
            + "; ".join(problems[:10])
        )
    module.load_state_dict(converted, strict=True)


def _mapping_problems(
    state: dict[str, torch.Tensor],
    constants: dict[str, np.ndarray],
    sources: tuple[_Source, ...],
    structure: dict[str, tuple[int, ...]],
) -> list[str]:
    problems = []
    targets = [source.target for source in sources]
    used = [source.constant for source in sources]
    for name in sorted({t for t in targets if targets.count(t) > 1}):
        problems.append(f"{name} is assigned more than once")
    for name in sorted({c for c in used if used.count(c) > 1}):
        problems.append(f"{name} is read more than once")
    for name in sorted(state.keys() - set(targets)):
        problems.append(f"nothing is read into {name}")
    for name in sorted(set(targets) - state.keys()):
        problems.append(f"the module has no {name}")
    for name in sorted(set(used) - constants.keys()):
        problems.append(f"missing {name}")
    for name in sorted(constants.keys() - set(used) - structure.keys()):
        problems.append(f"unexpected {name}")
    for name, expected in structure.items():
        found = constants.get(name)
        if found is None or tuple(int(v) for v in found.ravel()) != expected:
            problems.append(f"{name} is {found}, expected {list(expected)}")
    return problems
